"""Gradient checkpointing (``with_cp=True``) in the upstream ResNets (issue 19, item 1).

mmdet, mmseg and mmpretrain checkpoint each residual block with
``torch.utils.checkpoint`` (reentrant by default) and apply an in-place ReLU
to the checkpointed output, so the layer's output must not be a view.
Checkpointing recomputes every block's forward in the backward: BatchNorm2d
then updates its running statistics a second time (reentrant and
non-reentrant alike), and so do SN/SSN.  The tests take BatchNorm2d's count
from the same ResNet and check outputs, gradients, choices, radius and
running statistics against the run without checkpointing.
"""
import functools
import importlib
import types

import pytest
import torch
import torch.utils.checkpoint

import ssn_plugins  # noqa: F401  (registers SN/SSN)
from ssn_plugins import SparseSwitchNormBase, SwitchNormBase

BACKBONES = {
    'mmdet': 'mmdet.models.backbones.resnet',
    'mmseg': 'mmseg.models.backbones.resnet',
    'mmpretrain': 'mmpretrain.models.backbones.resnet',
}


def _resnet(lib: str, norm_cfg: dict, with_cp: bool, reentrant: bool, monkeypatch):
    module = importlib.import_module(BACKBONES[lib])
    checkpoint = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=reentrant)
    monkeypatch.setattr(module, 'cp', types.SimpleNamespace(checkpoint=checkpoint))
    torch.manual_seed(0)
    kwargs = dict(out_indices=(3, )) if lib == 'mmpretrain' else {}
    kwargs.update(norm_eval=False, base_channels=16)  # mmdet's default norm_eval freezes every norm
    model = module.ResNet(depth=18, norm_cfg=norm_cfg, with_cp=with_cp, **kwargs)
    model.train()  # the upstream train() returns None
    return model


def _norms(model):
    return [m for m in model.modules() if isinstance(m, (SwitchNormBase, torch.nn.BatchNorm2d))]


def _step(model, radius=None):
    if radius is not None:
        for m in model.modules():
            if isinstance(m, SparseSwitchNormBase):
                m.set_radius(radius)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = model(x)
    loss = sum((o * o).mean() for o in out)
    loss.backward()
    return [o.detach() for o in out]


def _updates_per_layer(lib, monkeypatch, reentrant):
    """How often each BatchNorm2d of the checkpointed ResNet updated its running statistics."""
    model = _resnet(lib, dict(type='BN'), True, reentrant, monkeypatch)
    _step(model)
    return [int(m.num_batches_tracked) for m in _norms(model)]


@pytest.mark.parametrize('reentrant', [True, False])
@pytest.mark.parametrize('norm', ['SN', 'SSN'])
@pytest.mark.parametrize('lib', list(BACKBONES))
def test_trains_with_cp_as_without(lib, norm, reentrant, monkeypatch):
    pytest.importorskip(BACKBONES[lib])
    bn_updates = _updates_per_layer(lib, monkeypatch, reentrant)
    assert 2 in bn_updates and 1 in bn_updates  # blocks recomputed, the stem not
    # momentum=None: a cumulative average, so num_batches_tracked counts the updates and the
    # values of one batch seen twice equal those of one batch seen once
    cfg = dict(type=norm, momentum=None)
    radius = 0.5 if norm == 'SSN' else None
    plain = _resnet(lib, cfg, False, reentrant, monkeypatch)
    with torch.no_grad():  # distinct logits: at r = 0.5 some layers latch, others stay free
        for m in _norms(plain):
            m.mean_weight.normal_(0, 2), m.var_weight.normal_(0, 2)
    cp = _resnet(lib, cfg, True, reentrant, monkeypatch)
    cp.load_state_dict(plain.state_dict())
    out_plain, out_cp = _step(plain, radius), _step(cp, radius)
    for a, b in zip(out_plain, out_cp):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for name, p in cp.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-5 * float(grads[name].abs().max()), msg=name)
    # as BatchNorm2d: once per forward, recomputation included (none for a layer latched on IN/LN)
    once = [int(m.num_batches_tracked) for m in _norms(plain)]
    assert set(once) <= {0, 1} and 1 in once
    assert [int(m.num_batches_tracked) for m in _norms(cp)] == [a * b for a, b in zip(once, bn_updates)]
    state = plain.state_dict()
    for key, value in cp.state_dict().items():
        if key.endswith(('running_mean', 'running_var', 'radius', 'mean_choice', 'var_choice')):
            torch.testing.assert_close(value, state[key], rtol=1e-5, atol=1e-6, msg=key)
    if norm == 'SSN':
        choices = [int(m.mean_choice) for m in _norms(cp)]
        assert min(choices) == -1 and max(choices) >= 0  # some layers latched at r = 0.5, some free


@pytest.mark.parametrize('reentrant', [True, False])
def test_running_stats_with_momentum_update_twice_as_batchnorm(reentrant, monkeypatch):
    """momentum=0.1: a recomputed layer's buffers equal a second update with the same batch."""
    pytest.importorskip(BACKBONES['mmdet'])
    bn_updates = _updates_per_layer('mmdet', monkeypatch, reentrant)
    plain = _resnet('mmdet', dict(type='SSN'), False, reentrant, monkeypatch)
    cp = _resnet('mmdet', dict(type='SSN'), True, reentrant, monkeypatch)
    cp.load_state_dict(plain.state_dict())
    _step(plain), _step(cp)
    for once, layer, updates in zip(_norms(plain), _norms(cp), bn_updates):
        m = layer.momentum
        batch_mean = once.running_mean / m  # from zeros: (1 - m) 0 + m batch
        batch_var = (once.running_var - (1 - m)) / m  # from ones
        expected_mean, expected_var = torch.zeros_like(batch_mean), torch.ones_like(batch_var)
        for _ in range(updates):
            expected_mean = expected_mean + m * (batch_mean - expected_mean)
            expected_var = expected_var + m * (batch_var - expected_var)
        torch.testing.assert_close(layer.running_mean, expected_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.running_var, expected_var, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('norm', ['SyncSN', 'SyncSSN'])
def test_synced_layers_train_with_reentrant_cp(norm, monkeypatch):
    """Synced layers (one process here: this batch) run the composite path: no view either."""
    pytest.importorskip(BACKBONES['mmdet'])
    plain = _resnet('mmdet', dict(type=norm), False, True, monkeypatch)
    cp = _resnet('mmdet', dict(type=norm), True, True, monkeypatch)
    cp.load_state_dict(plain.state_dict())
    for a, b in zip(_step(plain), _step(cp)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_output_is_not_a_view():
    """An in-place op on the output of a checkpointed block needs a tensor that is not a view."""
    from ssn_plugins import SparseSwitchNorm2d, SwitchNorm2d, SyncSparseSwitchNorm, SyncSwitchNorm
    for layer in (SwitchNorm2d(4), SparseSwitchNorm2d(4), SyncSwitchNorm(4), SyncSparseSwitchNorm(4)):
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                assert not layer.train()(torch.randn(2, 4, 3, 3))._is_view()
