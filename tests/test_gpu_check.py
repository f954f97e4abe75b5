"""tools/gpu_check.py on a machine without CUDA: it imports, exits with a clear message,
and its table formats fake numbers (the checks themselves need a device)."""
import pytest
import torch

from lab import gpu_check
from tool_loader import load_tool


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_main_without_cuda_exits_with_message():
    tool = load_tool('gpu_check')
    with pytest.raises(SystemExit) as exit_info:
        tool.main([])
    assert exit_info.value.code == gpu_check.NO_CUDA_MESSAGE  # printed to stderr, status 1
    assert 'CUDA' in gpu_check.NO_CUDA_MESSAGE and 'nothing was checked' in gpu_check.NO_CUDA_MESSAGE
    with pytest.raises(SystemExit):
        gpu_check.run_checks()


def _fake_report(sync_passed=True):
    layer_ms = dict(bn=1.0, gn=2.0, sn=1.5, ssn_dense=1.8, ssn_half=1.6, ssn_latched_bn=1.0,
                    **{'ssn_latched_in-bn': 1.4})
    return dict(
        device='Fake GPU', torch='2.13.0', config='demo.py',
        sync=dict(passed=sync_passed, error=None if sync_passed else 'RuntimeError: called a '
                  'synchronizing CUDA operation', step_syncs=12, in_switch_norm_files=0),
        sync_latched=dict(passed=True, error=None, step_syncs=11, in_switch_norm_files=0),
        amp_fp16=dict(passed=True, losses=[3.5, 3.4, 3.2], skipped=1, grads_finite=True),
        amp_bf16=dict(passed=False, error='RuntimeError: boom'),
        layers=[dict(shape=[2, 64, 56, 56], median_ms=layer_ms),
                dict(shape=[8, 64, 56, 56], median_ms={k: 2 * v for k, v in layer_ms.items()})],
        iteration=dict(input=[2, 3, 128, 128],
                       median_ms=dict(ssn=60.0, ssn_latched_bn=45.0, bn=40.0, gn=50.0)))


def test_format_table_on_fake_numbers():
    table = gpu_check.format_table(_fake_report())
    lines = table.splitlines()
    assert lines[0] == 'GPU check on Fake GPU, torch 2.13.0'
    rows = [line for line in lines if line.startswith('|')]
    assert rows[0] == '| check | result |' and rows[1] == '|---|---|'
    assert all(row.count('|') == 3 for row in rows), rows  # one two-column table
    assert ('| no sync inside SN/SSN layers (free), train step (sync_debug_mode error) | pass |'
            in table)
    assert '| syncs in the whole Mask R-CNN step (latched, warn mode) / in ssn_plugins files | 11 / 0 |' in table
    assert 'pass (losses 3.500, 3.400, 3.200; 1 skipped steps)' in table
    assert '| AMP bf16: loss and grads finite | FAIL (RuntimeError: boom) |' in table
    assert '| layer train fwd+bwd, sn: time / BN2d, / GN(32) | 1.50x, 0.75x |' in table
    assert '| Mask R-CNN demo iteration (2, 3, 128, 128), ssn | 60.0 ms (1.50x BN) |' in table
    assert not gpu_check.passed(_fake_report())  # bf16 failed
    failed = gpu_check.format_table(_fake_report(sync_passed=False))
    assert 'FAIL (RuntimeError: called a synchronizing CUDA operation)' in failed


def test_sync_errors_cover_the_layers_forward_and_backward(monkeypatch):
    from ssn_plugins import SparseSwitchNorm2d
    modes = []
    monkeypatch.setattr(torch.cuda, 'set_sync_debug_mode', modes.append)
    conv = torch.nn.Conv2d(3, 4, 3)
    norm = SparseSwitchNorm2d(4)
    model = torch.nn.Sequential(conv, norm, torch.nn.ReLU(inplace=True), torch.nn.Conv2d(4, 2, 1))
    seen = []
    conv.register_forward_hook(lambda *args: seen.append(('conv forward', modes[-1:])))
    conv.weight.register_hook(lambda grad: seen.append(('conv backward', modes[-1:])))
    with gpu_check.sync_errors_in_switch_norms(model):
        model(torch.randn(2, 3, 8, 8)).sum().backward()
    # on in the layer's forward and in its backward only; off again at the end
    assert modes == ['error', 'default', 'error', 'default', 'default']
    assert seen == [('conv forward', []), ('conv backward', ['default'])]
    assert norm._forward_hooks == {} and norm._forward_pre_hooks == {}


@pytest.mark.parametrize('latched', [False, True], ids=['free', 'latched'])
def test_demo_step_runs_on_cpu_with_the_hooks(monkeypatch, latched):
    # what sync_check runs, minus the device: the demo model, its batch and loss
    from lab import benchmark
    monkeypatch.setattr(torch.cuda, 'set_sync_debug_mode', lambda mode: None)
    model = benchmark.build_model(gpu_check.DEMO_CONFIG, 'mmdet').train()
    if latched:
        benchmark.settle(model, gpu_check.LATCHED_MIX)
    data = benchmark.det_batch(model, benchmark.det_inputs(2, 64, num_classes=3))
    with gpu_check.sync_errors_in_switch_norms(model):
        loss = benchmark.det_loss(model, data)
        loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
