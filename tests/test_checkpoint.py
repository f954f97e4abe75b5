"""Released SN/SSN and BN ResNet checkpoints: conversion and strict loading into mmdet/mmseg ResNet.

The released files cannot be downloaded here; ``released_layout`` writes files
with the same keys, shapes and dtypes (random values), and re-implements the
released network's forward in float64.
"""
import os
import runpy
import subprocess
import sys
from argparse import Namespace
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import ssn_plugins  # noqa: F401  (registers SN/SSN, SwitchNormPretrained, ResNetReleasedStem)
from released_layout import (released_forward, released_state_dict, save_released, v2_state_dict)
from ssn_plugins.checkpoint import ConversionError, convert_checkpoint, convert_state_dict
from ssn_plugins.models import stem_pool_of
from ssn_plugins.norm.switch_norm import SparseSwitchNormBase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MMDET_CFG = os.path.join(ROOT, 'configs', 'mmdet', 'mask-rcnn_r50-ssn_fpn_1x_coco.py')
MMSEG_CFG = os.path.join(ROOT, 'configs', 'mmseg', 'pspnet_r50-ssn-d8_4xb2-40k_cityscapes-512x1024.py')
MMDET_SN_CFG = os.path.join(ROOT, 'configs', 'mmdet', 'mask-rcnn_r50-sn_fpn_1x_coco.py')


def expected_tensors(released):
    """What every backbone tensor must hold after loading, written from the released layout."""
    out = {}
    for key, value in released.items():
        key = key[7:] if key.startswith('module.') else key
        module, name = key.rsplit('.', 1)
        if key.startswith('fc.'):
            continue
        if name in ('weight', 'bias') and value.dim() == 4 and value.shape[2:] == (1, 1) \
                and value.shape[0] == 1:
            out[key] = value.reshape(-1)
        elif name in ('running_mean', 'running_var'):
            out[key] = value.reshape(-1)
        elif name == 'radius':
            out[key] = value.reshape(())
        elif name in ('mean_fixed', 'var_fixed'):
            which = name[:-6]
            logits = released[key.replace(name, f'{which}_weight')]
            choice = int(logits.argmax()) if int(value) else -1
            out[f'{module}.{which}_choice'] = torch.tensor(choice)
        else:
            out[key] = value
    return out


def assert_loaded(module, released):
    expected = expected_tensors(released)
    state = module.state_dict()
    assert set(state) == set(expected), (sorted(set(state) ^ set(expected)))[:10]
    for key, value in expected.items():
        assert state[key].shape == value.shape, key
        assert torch.equal(state[key], value.to(state[key].dtype)), key


@pytest.fixture(scope='module')
def r50_ssn(tmp_path_factory):
    """Released SSN ResNet-50 (real shapes): latched layers with mixed choices, every 7th layer free."""
    folder = tmp_path_factory.mktemp('ssn')
    released = released_state_dict('ssn', 50, 64, seed=0, free_every=7, radius=0.3)
    src = save_released(released, str(folder / 'ssn_8x2_75.848.pth'))
    dst = str(folder / 'resnet50_v1_ssn.pth')
    meta = convert_checkpoint(src, dst)
    return released, dst, meta


@pytest.fixture(scope='module')
def r50_sn(tmp_path_factory):
    """Released SN ResNet-50: DataParallel 'module.' keys inside {'state_dict', 'optimizer', ...}."""
    folder = tmp_path_factory.mktemp('sn')
    released = released_state_dict('sn', 50, 64, seed=1)
    src = save_released(released, str(folder / 'ResNet50v1+SN(8,32)-77.49.pth'), module_prefix=True)
    dst = str(folder / 'resnet50_v1_sn.pth')
    convert_checkpoint(src, dst)
    return released, dst


def _build_from_config(path, checkpoint, **init):
    cfg = Config.fromfile(path)
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.init_cfg.update(checkpoint=checkpoint, **init)
    return MODELS.build(cfg.model)


def _backbone(checkpoint, kind='SSN', stem=True, width=64, **init):
    init_default_scope('mmdet')
    norm = dict(type=kind, mode='official') if kind == 'SSN' else dict(type=kind)
    return MODELS.build(dict(type='ResNetReleasedStem' if stem else 'ResNet', depth=50,
                             base_channels=width, norm_cfg=norm,
                             init_cfg=dict(type='SwitchNormPretrained', checkpoint=checkpoint, **init)))


# ---------------------------------------------------------------------------------------------
# conversion

@pytest.mark.slow
def test_converted_file_is_weights_only_and_says_what_was_done(r50_ssn):
    released, dst, meta = r50_ssn
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt['meta'] == meta
    assert meta['source_kind'] == 'ssn' and meta['target'] == 'ssn' and meta['arch'] == 'resnet50_v1'
    assert meta['num_norm_layers'] == 53 and meta['normalizers'] == ['in', 'ln', 'bn']
    fixed = sum(int(v) for k, v in released.items() if k.endswith('.mean_fixed'))
    assert meta['latched'] == dict(mean=fixed, var=fixed) and 0 < fixed < 53
    assert meta['momentum']['released'] == 0.997 and meta['momentum']['pytorch'] == 0.003
    assert meta['stem_pool'] == dict(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    assert meta['dropped_keys'] == ['fc.bias', 'fc.weight']
    sd = ckpt['state_dict']
    assert sd['layer3.2.sn2.weight'].shape == (256,) and sd['layer3.2.sn2.running_var'].shape == (256,)
    assert sd['sn1.radius'].shape == () and sd['sn1.mean_choice'].dtype == torch.long
    with pytest.raises(ValueError, match='already converted'):
        convert_checkpoint(dst, dst + '.again')


@pytest.mark.parametrize('wrap, module_prefix, legacy', [
    (True, False, False), (False, False, False), (True, True, False), (False, True, True),
    (True, False, True)])
def test_every_released_file_format_converts_the_same(tmp_path, wrap, module_prefix, legacy):
    released = released_state_dict('ssn', 50, 8, seed=3, free_every=5)
    reference, _ = convert_state_dict(released)
    src = save_released(released, str(tmp_path / 'src.pth'), wrap, module_prefix, legacy)
    convert_checkpoint(src, str(tmp_path / 'dst.pth'))
    got = torch.load(tmp_path / 'dst.pth', weights_only=True)['state_dict']
    assert list(got) == list(reference)
    assert all(torch.equal(got[k], reference[k]) for k in got)


def test_sn_checkpoint_initialises_ssn_logits(tmp_path):
    released = released_state_dict('sn', 50, 8, seed=4)
    sd, meta = convert_state_dict(released, target='ssn')
    assert meta['source_kind'] == 'sn' and meta['norm_type'] == 'SSN'
    assert torch.equal(sd['layer2.1.sn3.mean_weight'], released['layer2.1.sn3.mean_weight'])
    assert torch.equal(sd['layer2.1.sn3.var_weight'], released['layer2.1.sn3.var_weight'])
    choices = [v for k, v in sd.items() if k.endswith('_choice')]
    assert len(choices) == 2 * 53 and all(int(c) == -1 for c in choices)
    assert all(float(v) == 0 for k, v in sd.items() if k.endswith('.radius'))
    # and the free SSN model built from it trains its selection from the SN logits
    torch.save({'state_dict': sd, 'meta': meta}, tmp_path / 'sn2ssn.pth')
    model = _backbone(str(tmp_path / 'sn2ssn.pth'), 'SSN', stem=False, width=8)
    model.init_weights()
    assert torch.equal(model.layer2[1].sn3.mean_weight.detach(), released['layer2.1.sn3.mean_weight'])


def test_ssn_checkpoint_is_not_turned_into_sn():
    with pytest.raises(ConversionError, match='convert with target ssn'):
        convert_state_dict(released_state_dict('ssn', 50, 8), target='sn')


def test_sn_without_bn_branch_keeps_two_logits():
    sd, meta = convert_state_dict(released_state_dict('sn', 50, 8, k=2))
    assert meta['normalizers'] == ['in', 'ln'] and sd['sn1.mean_weight'].shape == (2,)
    assert not any(k.endswith('running_mean') for k in sd)


@pytest.mark.parametrize('style', ['torchvision', 'mmcls'])
def test_bn_resnet_starts_ssn_and_sn(tmp_path, style):
    released = released_state_dict('bn', 50, 8, seed=5)
    if style == 'mmcls':  # mmcls/mmpretrain: backbone.* and head.fc.*
        released = OrderedDict((f'backbone.{k}' if not k.startswith('fc.') else f'head.{k}', v)
                               for k, v in released.items())
    src = save_released(released, str(tmp_path / 'bn.pth'), wrap=style == 'mmcls')
    for target, kind in (('ssn', 'SSN'), ('sn', 'SN')):
        meta = convert_checkpoint(src, str(tmp_path / f'{target}.pth'), target)
        assert meta['source_kind'] == 'bn' and meta['stem_pool']['padding'] == 1
        model = _backbone(str(tmp_path / f'{target}.pth'), kind, stem=False, width=8)
        model.init_weights()
        prefix = 'backbone.' if style == 'mmcls' else ''
        assert torch.equal(model.layer3[1].sn2.weight.detach(), released[f'{prefix}layer3.1.bn2.weight'])
        assert torch.equal(model.layer4[0].downsample[1].running_var,
                           released[f'{prefix}layer4.0.downsample.1.running_var'])
        assert torch.equal(model.sn1.running_mean, released[f'{prefix}bn1.running_mean'])
        assert torch.equal(model.layer1[0].sn1.mean_weight.detach(), torch.ones(3))  # uniform start


def test_preactivation_v2_is_refused_listing_keys():
    with pytest.raises(ConversionError) as err:
        convert_state_dict(v2_state_dict())
    msg = str(err.value)
    assert 'pre-activation' in msg and 'sn_out.weight' in msg and 'layer1.0.downsample.weight' in msg


def test_incomplete_or_extra_keys_are_refused_listing_them():
    released = released_state_dict('ssn', 50, 8)
    del released['layer2.1.sn2.running_var']
    released['layer3.0.attention.weight'] = torch.zeros(1)
    with pytest.raises(ConversionError) as err:
        convert_state_dict(released)
    assert 'missing keys: layer2.1.sn2.running_var' in str(err.value)
    assert 'layer3.0.attention.weight' in str(err.value)


def test_wrong_shapes_are_refused():
    released = released_state_dict('ssn', 50, 8)
    released['layer1.0.sn2.weight'] = torch.ones(1, 9, 1, 1)
    with pytest.raises(ConversionError, match=r'layer1\.0\.sn2\.weight \(1, 9, 1, 1\)'):
        convert_state_dict(released)


def test_corrupted_and_unsafe_files_fail_clearly(tmp_path, r50_ssn):
    good = save_released(released_state_dict('ssn', 50, 8), str(tmp_path / 'good.pth'))
    data = open(good, 'rb').read()
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(data[:len(data) // 2])
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint at all' * 10)
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match='corrupted or truncated'):
            convert_checkpoint(str(path), str(tmp_path / 'out.pth'))
        model = _backbone(str(path), width=8)
        with pytest.raises(ValueError, match='corrupted or truncated'):
            model.init_weights()
    unsafe = tmp_path / 'unsafe.pth'
    torch.save({'state_dict': {}, 'args': Namespace(lr=0.1)}, unsafe)
    with pytest.raises(ValueError, match=r'argparse.Namespace\) that torch.load\(weights_only=True\)'):
        convert_checkpoint(str(unsafe), str(tmp_path / 'out.pth'))


@pytest.mark.slow
def test_cli(tmp_path, monkeypatch):
    src = save_released(released_state_dict('sn', 50, 8), str(tmp_path / 'sn.pth'), module_prefix=True)
    tool = os.path.join(ROOT, 'tools', 'convert_checkpoint.py')
    run = subprocess.run([sys.executable, tool, src, str(tmp_path / 'out' / 'sn.pth')],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert 'resnet50_v1 SN -> SN, 53 norm layers' in run.stdout
    assert torch.load(tmp_path / 'out' / 'sn.pth', weights_only=True)['meta']['source_kind'] == 'sn'
    torch.save(v2_state_dict(), tmp_path / 'v2.pth')
    monkeypatch.setattr(sys, 'argv', [tool, str(tmp_path / 'v2.pth'), str(tmp_path / 'x.pth')])
    with pytest.raises(SystemExit) as err:
        runpy.run_path(tool, run_name='__main__')
    assert 'pre-activation' in str(err.value.code)
    assert not (tmp_path / 'x.pth').exists()


# ---------------------------------------------------------------------------------------------
# loading into the shipped configs and what the loaded network computes

@pytest.mark.slow
def test_mask_rcnn_config_loads_every_backbone_tensor(r50_ssn):
    released, dst, _ = r50_ssn
    # the stem pool is checked on its own below: here only the tensors
    model = _build_from_config(MMDET_CFG, dst, check_stem=False)
    model.init_weights()
    assert_loaded(model.backbone, released)
    latched = [m for m in model.backbone.modules() if isinstance(m, SparseSwitchNormBase) and m.latched]
    assert len(latched) == released_fixed_layers(released)


@pytest.mark.slow
def test_pspnet_config_loads_every_backbone_tensor(r50_ssn):
    released, dst, _ = r50_ssn
    model = _build_from_config(MMSEG_CFG, dst, check_stem=False)
    model.init_weights()
    assert_loaded(model.backbone, released)


@pytest.mark.slow
def test_sn_mask_rcnn_config_loads_every_backbone_tensor(r50_sn):
    released, dst = r50_sn
    model = _build_from_config(MMDET_SN_CFG, dst)  # released SN stem = mmdet's: checked too
    model.init_weights()
    assert_loaded(model.backbone, released)


@pytest.mark.slow
@pytest.mark.parametrize('path', [MMDET_CFG, MMSEG_CFG], ids=os.path.basename)
def test_shipped_ssn_configs_pool_the_stem_like_the_released_network(r50_ssn, path):
    """The released SSN models pool with padding 0 and ceil_mode; the config must build that pool."""
    _, dst, _ = r50_ssn
    model = _build_from_config(path, dst)
    model.init_weights()  # SwitchNormPretrained refuses a stem pool other than the file's
    assert stem_pool_of(model.backbone) == dict(kernel_size=3, stride=2, padding=0, ceil_mode=True)


def released_fixed_layers(released):
    return sum(int(v) for k, v in released.items() if k.endswith('.mean_fixed'))


def test_missing_checkpoint_in_shipped_config_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(MMDET_CFG)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    with pytest.raises(FileNotFoundError) as err:
        model.init_weights()
    msg = str(err.value)
    assert 'checkpoints/resnet50_v1_ssn.pth' in msg
    assert 'python tools/convert_checkpoint.py SRC checkpoints/resnet50_v1_ssn.pth' in msg


@pytest.mark.parametrize('kind', ['SSN', 'SN'])
def test_eval_output_equals_float64_released_network(tmp_path, kind):
    """Mixed latched choices, free layers at radius 0.3, odd input (the stem pools differ in size)."""
    released = released_state_dict(kind.lower(), 50, 16, seed=6, free_every=4, radius=0.3)
    src = save_released(released, str(tmp_path / 'src.pth'))
    convert_checkpoint(src, str(tmp_path / 'dst.pth'))
    # released SSN models pool the stem with padding 0 and ceil_mode, SN ones with padding 1
    model = _backbone(str(tmp_path / 'dst.pth'), kind, stem=kind == 'SSN', width=16)
    model.init_weights()
    model.eval()
    x = torch.randn(2, 3, 70, 70)
    with torch.no_grad():
        outs = model(x)
    refs = released_forward(released, x, released_stem=kind == 'SSN', mode='official')
    assert outs[0].shape[-1] == (17 if kind == 'SSN' else 18)  # 70 -> conv 35 -> pool
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape
        err = (out.double() - ref).abs().max() / ref.abs().max()
        assert err < 1e-5, float(err)


def test_stem_mismatch_is_refused_unless_allowed(r50_ssn):
    _, dst, _ = r50_ssn
    plain = _backbone(dst, stem=False)
    with pytest.raises(ValueError, match="type='ResNetReleasedStem'"):
        plain.init_weights()
    allowed = _backbone(dst, stem=False, check_stem=False)
    allowed.init_weights()
    assert allowed.maxpool.padding == 1 and int(allowed.sn1.mean_choice) >= -1


def test_latched_layers_stay_latched_in_fine_tuning(tmp_path):
    released = released_state_dict('ssn', 50, 8, seed=7)  # every layer latched
    src = save_released(released, str(tmp_path / 'src.pth'))
    convert_checkpoint(src, str(tmp_path / 'dst.pth'))
    model = _backbone(str(tmp_path / 'dst.pth'), width=8)
    model.init_weights()
    layers = [m for m in model.modules() if isinstance(m, SparseSwitchNormBase)]
    before = [(int(m.mean_choice), int(m.var_choice)) for m in layers]
    assert all(c >= 0 for pair in before for c in pair)
    model.train()
    for m in layers:
        m.set_radius(0.0)  # a fresh radius schedule must not free them
    sum(o.sum() for o in model(torch.randn(2, 3, 40, 40))).backward()
    assert [(int(m.mean_choice), int(m.var_choice)) for m in layers] == before
    for m, (mc, vc) in zip(layers, before):
        mean_ratios, var_ratios = m.ratios()
        assert torch.equal(mean_ratios, F.one_hot(torch.tensor(mc), 3).float())
        assert torch.equal(var_ratios, F.one_hot(torch.tensor(vc), 3).float())
        assert m.mean_weight.grad is None or not m.mean_weight.grad.any()


@pytest.mark.parametrize('logits', ['soft', 'uniform'])
def test_relearn_selection_frees_latched_layers(tmp_path, logits):
    released = released_state_dict('ssn', 50, 8, seed=8)
    src = save_released(released, str(tmp_path / 'src.pth'))
    convert_checkpoint(src, str(tmp_path / 'dst.pth'))
    model = _backbone(str(tmp_path / 'dst.pth'), width=8, relearn_selection=True, relearn_logits=logits)
    model.init_weights()
    layers = [m for m in model.modules() if isinstance(m, SparseSwitchNormBase)]
    assert all(not m.latched and float(m.radius) == 0 for m in layers)
    layer, choice = model.layer2[0].sn2, int(released['layer2.0.sn2.mean_weight'].argmax())
    mean_ratios, _ = layer.ratios()
    expected = torch.full((3,), 1 / 6) if logits == 'soft' else torch.full((3,), 1 / 3)
    if logits == 'soft':
        expected[choice] = 2 / 3  # the ImageNet choice is favoured, not imposed
    torch.testing.assert_close(mean_ratios, expected)
    model.train()
    sum((o**2).mean() for o in model(torch.randn(2, 3, 40, 40))).backward()
    assert layer.mean_weight.grad is not None and layer.mean_weight.grad.abs().sum() > 0


def test_relearn_selection_without_ssn_layers_is_an_error(r50_sn):
    _, dst = r50_sn
    model = _backbone(dst, 'SN', stem=False, relearn_selection=True)
    with pytest.raises(ValueError, match='no SSN layer'):
        model.init_weights()


def test_mismatched_files_fail_listing_keys(tmp_path, r50_ssn):
    _, dst, _ = r50_ssn
    narrow = _backbone(dst, width=8)  # the file is width 64
    with pytest.raises(ValueError, match=r'size mismatch: conv1\.weight \(64, 3, 7, 7\) vs model'):
        narrow.init_weights()
    two = tmp_path / 'sn_k2.pth'
    sd, meta = convert_state_dict(released_state_dict('sn', 50, 8, k=2))
    torch.save({'state_dict': sd, 'meta': meta}, two)
    with pytest.raises(ValueError) as err:
        _backbone(str(two), 'SN', stem=False, width=8).init_weights()
    assert 'sn1.mean_weight (2,) vs model (3,)' in str(err.value)
    assert 'missing (left unloaded): ' in str(err.value) and 'sn1.running_mean' in str(err.value)
    sn_file = tmp_path / 'sn.pth'
    sd, meta = convert_state_dict(released_state_dict('sn', 50, 8))
    torch.save({'state_dict': sd, 'meta': meta}, sn_file)
    with pytest.raises(ValueError, match='--target ssn'):
        _backbone(str(sn_file), 'SSN', stem=False, width=8).init_weights()
    raw = save_released(released_state_dict('ssn', 50, 8), str(tmp_path / 'raw.pth'))
    with pytest.raises(ValueError, match='unconverted released SN/SSN file'):
        _backbone(raw, width=8).init_weights()


def test_prefix_loads_a_backbone_out_of_a_detector_checkpoint(tmp_path):
    sd, meta = convert_state_dict(released_state_dict('ssn', 50, 8, seed=9))
    detector = {f'backbone.{k}': v for k, v in sd.items()}
    detector['neck.lateral_convs.0.conv.weight'] = torch.zeros(1)
    torch.save({'state_dict': detector, 'meta': meta}, tmp_path / 'det.pth')
    model = _backbone(str(tmp_path / 'det.pth'), width=8, prefix='backbone.')
    model.init_weights()
    assert torch.equal(model.layer4[2].sn3.bias.detach(), sd['layer4.2.sn3.bias'])
    with pytest.raises(ValueError, match="no key starting with 'head.'"):
        _backbone(str(tmp_path / 'det.pth'), width=8, prefix='head').init_weights()


def test_untrained_running_var_zero_is_kept():
    """The released layers start running_var at 0; the stored value is what the network used."""
    released = released_state_dict('ssn', 50, 8, seed=10)
    released['layer1.1.sn2.running_var'].zero_()
    sd, _ = convert_state_dict(released)
    assert torch.equal(sd['layer1.1.sn2.running_var'], torch.zeros(8))


def test_mmengine_pretrained_loads_the_converted_file_completely(r50_sn):
    """The converted file also fits mmengine's own (lenient) Pretrained: nothing left to warn about."""
    released, dst = r50_sn
    init_default_scope('mmdet')
    model = MODELS.build(dict(type='ResNet', depth=50, norm_cfg=dict(type='SN'),
                              init_cfg=dict(type='Pretrained', checkpoint=dst)))
    model.init_weights()
    assert_loaded(model, released)
