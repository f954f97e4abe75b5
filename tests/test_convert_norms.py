"""convert_norms: any built model to SN/SSN, weights kept, nothing skipped silently."""
import warnings

import pytest
import torch
from torch import nn

import ssn_plugins
from ssn_plugins import convert_norms, plain_norms
from ssn_plugins.convert import LeftoverNormWarning
from ssn_plugins.norm import (SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d,
                              SwitchNorm2d, SyncSparseSwitchNorm, is_switch_norm)

torchvision = pytest.importorskip('torchvision')


def _settle_statistics(model: nn.Module, shape) -> None:
    """A few training forwards so the running statistics are not 0/1."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(shape, dtype=torch.float64))


def _latch_on(model: nn.Module, source: dict) -> None:
    for name, layer in model.named_modules():
        if is_switch_norm(layer):
            layer.latch(source[name], source[name])


def _sources(model: nn.Module) -> dict:
    """What each norm layer is, as the normalizer that reproduces it exactly."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            out[name] = 'bn'
        elif isinstance(m, nn.GroupNorm):
            out[name] = {1: 'ln', m.num_channels: 'in'}[m.num_groups]
    return out


def _perturb_affine(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


class _GNNet(nn.Module):
    """Convs with GroupNorm(1, C) (LN) and GroupNorm(C, C) (IN)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(1, 8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(16, 16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(1, 16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


def _mmpretrain_resnet50():
    pytest.importorskip('mmpretrain')
    from mmengine.registry import init_default_scope
    from mmpretrain.models import ImageClassifier
    init_default_scope('mmpretrain')
    return ImageClassifier(
        backbone=dict(type='ResNet', depth=50), neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=7, in_channels=2048))


@pytest.mark.parametrize('build, shape', [
    (lambda: torchvision.models.resnet18(num_classes=10), (2, 3, 64, 64)),
    (lambda: torchvision.models.mobilenet_v2(num_classes=10), (2, 3, 64, 64)),
    (_mmpretrain_resnet50, (2, 3, 64, 64)),
    (_GNNet, (2, 3, 16, 16)),
], ids=['torchvision-resnet18', 'torchvision-mobilenet_v2', 'mmpretrain-resnet50', 'groupnorm-ln-in'])
def test_latched_on_the_source_normalizer_gives_the_original_model(build, shape):
    """The invariant: convert, latch each layer on what it was, and eval outputs match within 1e-5."""
    model = build().double()
    _perturb_affine(model)
    _settle_statistics(model, shape)
    model.eval()
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
    sources = _sources(model)
    converted = convert_norms(model, 'SSN')
    assert plain_norms(converted) == {}
    assert sum(map(is_switch_norm, converted.modules())) == len(sources) > 0
    _latch_on(converted, sources)
    with torch.no_grad():
        got = converted(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_carries_weights_statistics_mode_requires_grad_and_dtype():
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(6, eps=1e-3, momentum=0.01).double()
    _perturb_affine(bn)
    bn.running_mean.uniform_()
    bn.running_var.uniform_(0.5, 2)
    bn.num_batches_tracked.fill_(7)
    bn.weight.requires_grad_(False)
    bn.bias.requires_grad_(False)
    bn.eval()
    layer = convert_norms(bn, 'SSN')
    assert type(layer) is SparseSwitchNorm2d and not layer.training
    assert layer.eps == 1e-3 and layer.momentum == 0.01 and layer.weight.dtype == torch.float64
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
        torch.testing.assert_close(getattr(layer, name), getattr(bn, name), rtol=0, atol=0)
    # a frozen layer stays frozen, its selection too; the logits start uniform
    assert not any(p.requires_grad for p in layer.parameters())
    assert layer.mean_weight.tolist() == [1.0, 1.0, 1.0] == layer.var_weight.tolist()


@pytest.mark.parametrize('source, norm, expected', [
    (nn.BatchNorm1d(4), 'SSN', SparseSwitchNorm1d),
    (nn.BatchNorm3d(4), 'SSN', SparseSwitchNorm3d),
    (nn.SyncBatchNorm(4), 'SN', SwitchNorm2d),
    (nn.GroupNorm(2, 4), 'SN', SwitchNorm2d),
    (nn.BatchNorm2d(4), 'SyncSSN', SyncSparseSwitchNorm),
])
def test_rank_and_family(source, norm, expected):
    assert type(convert_norms(source, norm)) is expected


def test_layer_options_override_the_source():
    layer = convert_norms(nn.BatchNorm2d(4), 'SSN', normalizers=('in', 'ln', 'bn'), mode='official',
                          momentum=0.003)
    assert layer.mode == 'official' and layer.momentum == 0.003


def test_what_it_cannot_convert_is_listed_by_name():
    frozen = torchvision.ops.FrozenBatchNorm2d(8)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), frozen, nn.LayerNorm(8),
                          nn.BatchNorm2d(8, track_running_stats=False), nn.InstanceNorm2d(8))
    with pytest.warns(LeftoverNormWarning) as record:
        convert_norms(model, 'SSN')
    message = str(record[0].message)
    assert message.startswith('convert_norms: 4 normalization layers left as they are')
    for name in ('2 (FrozenBatchNorm2d', '3 (LayerNorm', '4 (BatchNorm2d', '5 (InstanceNorm2d'):
        assert name in message
    assert type(model[1]) is SparseSwitchNorm2d
    assert set(plain_norms(model)) == {'2', '3', '4', '5'}


def test_strict_refuses_before_changing_anything():
    model = nn.Sequential(nn.BatchNorm2d(4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match=r'strict=True\): 1 normalization layers .* 1 \(LayerNorm'):
        convert_norms(model, 'SSN', strict=True)
    assert type(model[0]) is nn.BatchNorm2d


def test_nothing_to_skip_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        convert_norms(nn.Sequential(nn.BatchNorm2d(3), nn.GroupNorm(1, 3)), 'SN')


@pytest.mark.parametrize('norm, error', [('BN', ValueError), ('ssn', ValueError)])
def test_unknown_norm_is_named(norm, error):
    with pytest.raises(error, match=rf"norm must be one of .*got '{norm}'"):
        convert_norms(nn.BatchNorm2d(3), norm)


def test_converted_resnet_trains_and_latches():
    """The plain-PyTorch route: convert, grow the radius, update_choices, collapse."""
    torch.manual_seed(0)
    model = convert_norms(torchvision.models.resnet18(num_classes=4), 'SSN')
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for step in range(3):
        for layer in model.modules():
            if isinstance(layer, ssn_plugins.SparseSwitchNormBase):
                layer.set_radius(step / 2)  # up to 1.0: every layer ends one-hot
        loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ssn_plugins.update_choices(model)
    assert ssn_plugins.update_choices(model) == 20
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        collapsed = ssn_plugins.collapse_norms(model)
        torch.testing.assert_close(collapsed(x), expected, rtol=1e-4, atol=1e-4)
    # single-normalizer layers became plain ones; mixed choices (mean IN, var BN) stay latched SSN
    remaining = [m for m in collapsed.modules() if is_switch_norm(m)]
    assert len(remaining) < 20 and all(m.latched for m in remaining)
