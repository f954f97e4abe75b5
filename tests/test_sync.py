"""SyncSN/SyncSSN: 2 real processes (gloo, CPU) against one process, conversion, registry."""
import pytest
import torch
from mmcv.cnn import build_norm_layer
from mmengine.logging import MMLogger
from mmengine.registry import MODELS
from ssn_reference import ref_sparsestmax, ref_switch_norm
from sync_workers import (C, build_layer, ddp_latch_worker, equivalence_worker, make_state,
                          run_layer, spawn)
from torch import nn

import ssn_plugins
from ssn_plugins import (SparseSwitchNorm1d, SparseSwitchNorm2d, SwitchNorm2d, SwitchNorm3d,
                         SyncSparseSwitchNorm, SyncSwitchNorm, convert_sync_switchnorm,
                         revert_sync_switchnorm)
from ssn_plugins.norm import sync as sync_module

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module', params=[[2, 2], [1, 3]], ids=['2+2', '1+3'])
def two_process_results(request, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('sync')
    return request.param, spawn(equivalence_worker, tmp_path, request.param)


@pytest.mark.slow
@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('sparse', [False, True], ids=['SyncSN', 'SyncSSN'])
def test_two_processes_equal_one_process(two_process_results, sparse, training):
    """SyncSSN on 2 processes == SSN on all 4 samples: outputs, input and parameter grads."""
    splits, ranks = two_process_results
    state = make_state()
    single = run_layer(build_layer(sparse, False, state), state['x'], state['grad_out'], training)
    parts = [r[sparse, training] for r in ranks]
    torch.testing.assert_close(torch.cat([p['y'] for p in parts]), single['y'], **TOL)
    torch.testing.assert_close(torch.cat([p['x_grad'] for p in parts]), single['x_grad'], **TOL)
    for name in ('weight', 'bias', 'mean_weight', 'var_weight'):
        # DDP sums (then averages) the per-rank gradients; the sum is the 1-process gradient.
        summed = sum(p[f'{name}_grad'] for p in parts)
        torch.testing.assert_close(summed, single[f'{name}_grad'], **TOL, msg=name)
    for p in parts:  # every rank ends with the global running statistics
        torch.testing.assert_close(p['running_mean'], single['running_mean'], **TOL)
        torch.testing.assert_close(p['running_var'], single['running_var'], **TOL)
    if training:  # the BN branch really saw the other rank's samples
        local = run_layer(build_layer(sparse, False, state), state['x'][:splits[0]],
                          state['grad_out'][:splits[0]], training)
        assert not torch.allclose(local['y'], parts[0]['y'], atol=1e-3)


def test_ranks_with_different_image_sizes_pool_all_values(two_process_results):
    """A BN-only SyncSSN equals BatchNorm over the union of every rank's values."""
    _, ranks = two_process_results
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(s, generator=gen) * 3 + 1 for s in [(2, 3, 4, 4), (3, 3, 2, 5)]]
    values = torch.cat([x.transpose(0, 1).reshape(3, -1) for x in xs], 1)  # (C, all values)
    var, mean = torch.var_mean(values, dim=1, correction=0)
    state = make_state()
    for x, result in zip(xs, ranks):
        expected = ((x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5) *
                    state['weight'].view(1, -1, 1, 1) + state['bias'].view(1, -1, 1, 1))
        torch.testing.assert_close(result['bn_only'], expected, **TOL)
        unbiased = values.var(dim=1)
        torch.testing.assert_close(result['bn_only_running_var'],
                                   0.9 * state['running_var'] + 0.1 * unbiased, **TOL)


def test_global_moments_backward_passes_gradcheck(two_process_results):
    """The closed-form backward on 2 real ranks equals float64 finite differences, cross-rank term included."""
    for result in two_process_results[1]:
        analytic, numeric = result['gradcheck'].unbind(1)
        torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)
        assert analytic.abs().min() > 1e-3  # each direction really moves the loss


@pytest.mark.slow
def test_ddp_after_latching_keeps_ranks_identical(tmp_path):
    """MMDistributedDataParallel without find_unused_parameters trains on after the layer latches."""
    rank0, rank1 = spawn(ddp_latch_worker, tmp_path)
    assert int(rank0['norm.mean_choice']) >= 0 and int(rank0['norm.var_choice']) >= 0
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('sparse', [False, True])
def test_without_process_group_equals_plain_layer_and_logs_once(sparse, tmp_path, monkeypatch):
    monkeypatch.setattr(sync_module, '_logged_local', False)
    log_file = tmp_path / 'run.log'
    MMLogger.get_instance(f'test_sync_{sparse}', log_file=str(log_file), log_level='INFO')
    state = make_state()
    for _ in range(2):
        synced = run_layer(build_layer(sparse, True, state), state['x'], state['grad_out'], True)
    # Against the float64 reference of SN/SSN on this process's batch (not the
    # package's fused path, which the plain layer would share).
    expected = _reference_step(sparse, state)
    for key, value in expected.items():
        torch.testing.assert_close(synced[key].double(), value, rtol=1e-4, atol=1e-5, msg=key)
    assert log_file.read_text().count('no initialised process group') == 1


def _reference_step(sparse: bool, state: dict, radius: float = 0.2, eps: float = 1e-6) -> dict:
    """float64 forward/backward of ``build_layer(sparse, ...)`` in training on the whole batch.

    Output and input/affine gradients by autograd through ``ref_switch_norm``;
    logit gradients by central differences of the same loss (the reference
    SparsestMax is a plain list function); running statistics by momentum 0.1
    with the unbiased batch variance.
    """
    x = state['x'].double().requires_grad_(True)
    weight = state['weight'].double().requires_grad_(True)
    bias = state['bias'].double().requires_grad_(True)

    def ratios(logits):
        if sparse:
            return torch.tensor(ref_sparsestmax(logits.tolist(), radius), dtype=torch.float64)
        return torch.softmax(logits, 0)

    def loss(mean_logits, var_logits):
        y = ref_switch_norm(x, ratios(mean_logits), ratios(var_logits), weight=weight, bias=bias)
        return y, (y * state['grad_out'].double()).sum()

    logits = {name: state[name].double() for name in ('mean_weight', 'var_weight')}
    y, total = loss(logits['mean_weight'], logits['var_weight'])
    total.backward()
    result = dict(y=y.detach(), x_grad=x.grad, weight_grad=weight.grad, bias_grad=bias.grad)
    with torch.no_grad():
        for name, value in logits.items():
            grad = torch.zeros_like(value)
            for i in range(len(value)):
                step = torch.zeros_like(value)
                step[i] = eps
                moved = [{**logits, name: value + sign * step} for sign in (1, -1)]
                plus, minus = (loss(m['mean_weight'], m['var_weight'])[1] for m in moved)
                grad[i] = (plus - minus) / (2 * eps)
            result[f'{name}_grad'] = grad
    values = state['x'].double().transpose(0, 1).reshape(C, -1)
    result['running_mean'] = 0.9 * state['running_mean'].double() + 0.1 * values.mean(1)
    result['running_var'] = 0.9 * state['running_var'].double() + 0.1 * values.var(1)
    return result


def test_batch_pool_is_global_only_with_several_processes(monkeypatch):
    group = object()  # stands for a ProcessGroup; the pool is only built here, never called
    layer = SyncSparseSwitchNorm(4)
    layer.process_group = group
    assert layer._batch_pool() is None  # one process: the plain layer's fused path
    monkeypatch.setattr(sync_module.SyncMixin, '_world_size', lambda self: 2)
    pool = layer._batch_pool()
    assert pool.func is sync_module.global_batch_moments and pool.keywords == dict(group=group)


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 1), SparseSwitchNorm2d(4, mode='official'),
                         nn.Sequential(SwitchNorm2d(4, normalizers=('in', 'bn')), nn.ReLU()),
                         SwitchNorm3d(4), SparseSwitchNorm1d(4))


def test_convert_and_revert_share_state_and_restore_classes():
    model = _model()
    model[1].set_radius(1.0)
    model[1].train()(torch.randn(2, 4, 3, 3))  # latch, so the choice must carry over
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    weight = model[1].weight

    synced = convert_sync_switchnorm(model)
    assert synced is model
    assert [type(m) for m in model.modules() if ssn_plugins.is_switch_norm(m)] == [
        SyncSparseSwitchNorm, SyncSwitchNorm, SyncSwitchNorm, SyncSparseSwitchNorm]
    assert model[1].weight is weight and model[1].mode == 'official' and model[1].latched
    assert model[2][0].normalizers == ('in', 'bn') and not model[1].training
    assert model.state_dict().keys() == before.keys()
    x = torch.randn(2, 4, 3, 3)
    assert model[1](x).shape == x.shape  # no process group: runs as SSN

    reverted = revert_sync_switchnorm(model)
    assert reverted is model and [type(m) for m in model.modules()] == classes
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)


def test_convert_a_bare_layer_and_reject_bad_group():
    layer = SwitchNorm2d(4)
    assert type(convert_sync_switchnorm(layer)) is SyncSwitchNorm
    assert type(revert_sync_switchnorm(SyncSparseSwitchNorm(4))) is SparseSwitchNorm2d
    with pytest.raises(TypeError, match='process_group'):
        SyncSwitchNorm(4, process_group='world')


def test_registered_for_configs():
    name, layer = build_norm_layer(dict(type='SyncSSN', requires_grad=False, eps=1e-3), 8)
    assert name == 'sn' and type(layer) is SyncSparseSwitchNorm and layer.eps == 1e-3
    assert not layer.weight.requires_grad
    assert MODELS.get('SyncSN') is SyncSwitchNorm
    assert isinstance(layer, SparseSwitchNorm2d) and not isinstance(layer, nn.SyncBatchNorm)
    with pytest.raises(TypeError):
        build_norm_layer(dict(type='SyncSN', process_grup=None), 8)
