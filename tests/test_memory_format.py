"""Outputs keep the input's memory format, with no layout copy (issue 19, item 2).

``torch.nn.BatchNorm2d`` returns channels_last for channels_last input; a
channels_last network (AMP, tensor cores) would otherwise pay a layout copy
around every layer.  Every path is covered: SN, SSN free (general path),
latched on the host (PyTorch's kernels), latched on two normalizers
(one-hot ratios) and latched on the device only.
"""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ssn_plugins import SparseSwitchNorm2d, SparseSwitchNorm3d, SwitchNorm2d
from ssn_reference import ref_switch_norm

# (mean, var) latched choices; None: free; 'device': latched by a forward the host has not read
STATES = {'sn': None, 'free': None, 'bn': ('bn', 'bn'), 'in': ('in', 'in'), 'ln': ('ln', 'ln'),
          'mixed': ('bn', 'in'), 'device': 'device'}

COPY_OPS = ('copy_', 'clone', 'contiguous', '_to_copy')


def make_layer(state: str, channels: int = 6, cls=None, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    if state == 'sn':
        layer = (cls or SwitchNorm2d)(channels, dtype=dtype)
    else:
        layer = (cls or SparseSwitchNorm2d)(channels, dtype=dtype)
        layer.set_radius(0.3)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.3, 0.1, 0.5]))
        layer.var_weight.copy_(torch.tensor([0.2, 0.6, 0.4]))
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 1.5)
    choices = STATES[state]
    if choices == 'device':
        with torch.no_grad():
            layer.mean_weight.copy_(torch.tensor([0.0, 0.0, 3.0]))
            layer.var_weight.copy_(torch.tensor([3.0, 0.0, 0.0]))
            layer.set_radius(1.0)
            layer.train()(torch.randn(2, channels, *(3, ) * (layer._input_ranks[0] - 2), dtype=dtype))
        assert layer.selection.state != 'latched' and layer.latched
    elif choices:
        layer.latch(*choices)
    return layer


def _ratios(layer):
    mean, var = layer.ratios()
    return mean, var


def _reference(layer, x, training):
    mean, var = _ratios(layer)
    return ref_switch_norm(x, mean, var, layer.normalizers, layer.weight, layer.bias,
                           layer.running_mean, layer.running_var, training, layer.eps)


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('state', list(STATES))
def test_channels_last_in_channels_last_out_with_reference_values(state, training):
    layer = make_layer(state, dtype=torch.float64).train(training)
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64).to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    expected = _reference(layer, x, training)  # the ratios before the forward (latching keeps them)
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last), y.stride()
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    # gradients through the channels_last path equal the float64 reference's
    grad = torch.randn_like(expected)
    params = [p for p in (layer.weight, layer.bias) if p is not None]
    got = torch.autograd.grad(y, [x, *params], grad)
    want = torch.autograd.grad(expected, [x, *params], grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)
    assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('training', [True, False])
def test_channels_last_3d_kept(training):
    layer = make_layer('free', cls=SparseSwitchNorm3d).train(training)
    x = torch.randn(2, 6, 3, 4, 5).to(memory_format=torch.channels_last_3d)
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(y, layer(x.contiguous()), rtol=1e-5, atol=1e-5)


class _ActivationCopies(TorchDispatchMode):
    """Counts copy-like ATen ops (copy_, clone, contiguous, _to_copy) that write a tensor of x's size."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in COPY_OPS and isinstance(out, torch.Tensor) and out.numel() >= self.numel:
            self.count += 1
        return out


def _copies(layer: nn.Module, x: torch.Tensor) -> int:
    """Activation-sized copies in a steady-state training step (forward + backward) or eval forward."""
    x = x.detach().requires_grad_(layer.training)
    for _ in range(2):
        y = layer(x)
        if layer.training:
            y.backward(torch.ones_like(y))
    with _ActivationCopies(x.numel()) as counter:
        y = layer(x)
        if layer.training:
            y.backward(torch.ones_like(y))
    return counter.count


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('state', list(STATES))
def test_no_more_copies_than_batchnorm(state, training):
    # counted in the same run, for channels_last and contiguous input
    for fmt in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(2, 6, 5, 4).to(memory_format=fmt)
        bn = _copies(nn.BatchNorm2d(6).train(training), x)
        assert _copies(make_layer(state).train(training), x) <= bn, (fmt, bn)
