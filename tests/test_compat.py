"""ssn_plugins.compat: the calls that differ between torch 2.1 and 2.13, on the running torch."""
import importlib

import pytest
import torch
import torch._dynamo

from ssn_plugins import compat
from ssn_plugins.norm import moments


def test_version_is_parsed_from_local_builds():
    assert compat._release('2.1.2+cu121') == (2, 1)
    assert compat._release('2.13.0') == (2, 13)
    assert compat._release('2.6.0a0+git1234') == (2, 6)
    assert compat.TORCH_VERSION == compat._release(torch.__version__) >= compat.COMPILE_MIN_TORCH


def test_is_compiling_is_false_in_eager_and_true_under_dynamo():
    assert not compat.is_compiling() and not compat.is_tracing()

    @torch.compile(fullgraph=True, backend='eager')
    def which(x):
        return x + 1 if compat.is_compiling() else x - 1

    torch._dynamo.reset()
    try:
        assert which(torch.zeros(2)).tolist() == [1.0, 1.0]
    finally:
        torch._dynamo.reset()


def test_is_tracing_sees_a_fake_tensor_trace():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        assert compat.is_tracing()
    assert not compat.is_tracing()


def test_fused_functions_run_in_eager_and_under_compile_from_their_floor():
    assert compat.custom_functions_traceable()  # eager: always the fused path
    seen = []

    @torch.compile(fullgraph=True, backend='eager')
    def record(x):
        seen.append(compat.custom_functions_traceable())
        return x * 2

    torch._dynamo.reset()
    try:
        record(torch.ones(1))
    finally:
        torch._dynamo.reset()
    assert seen == [compat.TORCH_VERSION >= compat.FUNCTION_COMPILE_MIN_TORCH]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.float64])
def test_batch_norm_update_stats_has_a_meta_kernel_and_reimport_is_safe(dtype):
    """The shape rule moments.py registers where torch has none (every torch in the range)."""
    importlib.reload(moments)  # registering twice must not fail
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        mean, var = torch.batch_norm_update_stats(torch.empty(2, 5, 3, 3, dtype=dtype), None, None, 0.0)
    expected = torch.float32 if dtype == torch.float16 else dtype
    assert mean.shape == var.shape == (5, ) and mean.dtype == var.dtype == expected
    if dtype != torch.float16:  # the real CPU kernel agrees (no half kernel on every CPU torch)
        real_mean, _ = torch.batch_norm_update_stats(torch.ones(2, 5, 3, 3, dtype=dtype), None, None, 0.0)
        assert real_mean.dtype == expected and real_mean.tolist() == [1.0] * 5


def test_check_compile_names_the_torch_it_needs(monkeypatch):
    compat.check_compile()  # the running torch is supported
    monkeypatch.setattr(compat, 'TORCH_VERSION', (2, 0))
    with pytest.raises(RuntimeError, match=r'needs torch >= 2\.1; this is torch'):
        compat.check_compile()


def test_grad_scaler_and_recompile_option_exist_here():
    assert hasattr(torch._dynamo.config, compat.recompile_limit_option())
    scaler = compat.grad_scaler('cuda', enabled=False)
    assert not scaler.is_enabled()
