"""mmpretrain: our names in its scope, the ImageNet configs, and the way from a
classifier to a detector (shapes demo: classify -> convert -> Mask R-CNN)."""
import glob
import json
import os.path as osp
import runpy
import sys

import pytest
import torch
from mmcv.cnn import build_norm_layer
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope, init_default_scope
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import mmpretrain
import mmpretrain.models  # noqa: F401  (imports torchvision: the build that matches torch)
from mmpretrain import registry as pretrain_registry

import ssn_plugins
from ssn_plugins.models import RELEASED_SSN_STEM, TORCHVISION_STEM
from ssn_plugins.engine import launch
from ssn_plugins.norm.switch_norm import SparseSwitchNormBase
from tool_loader import load_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PRETRAIN_CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', 'mmpretrain', '*.py')))
CLS_DEMO = osp.join(REPO, 'configs', 'demo', 'resnet18-ssn_shapes-cls_demo.py')
DET_PRETRAINED = osp.join(REPO, 'configs', 'demo', 'mask-rcnn_r18-ssn_fpn_cls-pretrained_demo.py')
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
TINY = [f'{loader}.{key}' for loader in LOADERS for key in ('num_workers=0', 'persistent_workers=False')] + [
    'train_dataloader.batch_size=4', 'default_hooks.logger.interval=1']


def init_cfg_options(options):
    return dict(option.split('=', 1) for option in options)


def _schedule(iters):
    return [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            f'default_hooks.checkpoint.interval={iters}']


def test_our_names_resolve_in_mmpretrain_scope():
    """A config with default_scope='mmpretrain' finds the layers, hooks and the initializer."""
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        for name, cls in (('SN', ssn_plugins.SwitchNorm2d), ('SSN', ssn_plugins.SparseSwitchNorm2d),
                          ('SN1d', ssn_plugins.SwitchNorm1d), ('SSN3d', ssn_plugins.SparseSwitchNorm3d),
                          ('SyncSN', ssn_plugins.SyncSwitchNorm), ('SyncSSN', ssn_plugins.SyncSparseSwitchNorm)):
            assert pretrain_registry.MODELS.get(name) is cls, name
        for name in ('SSNRadiusHook', 'SSNLogitClipHook', 'SwitchNormEvalHook', 'SwitchNormMonitorHook',
                     'SafeCheckpointHook'):
            assert pretrain_registry.HOOKS.get(name) is not None, name
        assert pretrain_registry.WEIGHT_INITIALIZERS.get('SwitchNormPretrained') is ssn_plugins.SwitchNormPretrained
        assert build_norm_layer(dict(type='SSN'), 8, postfix=2)[0] == 'sn2'
        backbone = pretrain_registry.MODELS.build(
            dict(type='ResNet', depth=18, norm_cfg=dict(type='SSN'), init_cfg=None))
    assert type(backbone).__module__.startswith('mmpretrain')
    assert isinstance(backbone.sn1, ssn_plugins.SparseSwitchNorm2d)
    assert isinstance(backbone.layer2[0].downsample[1], ssn_plugins.SparseSwitchNorm2d)


def _norm_family(path):
    name = osp.basename(path)
    return 'SyncSSN' if '-syncssn' in name else 'SSN' if '-ssn' in name else 'SN'


def test_imagenet_configs_are_shipped():
    names = {osp.basename(p) for p in PRETRAIN_CONFIGS}
    assert {'resnet50-ssn_8xb32_in1k.py', 'resnet101-ssn_8xb32_in1k.py', 'resnet50-ssn_8xb2_in1k.py',
            'resnet50-sn_8xb32_in1k.py', 'resnet50-syncssn_8xb32_in1k.py',
            'resnet50-syncssn_8xb2_in1k.py'} <= names


@pytest.mark.slow
@pytest.mark.parametrize('path', PRETRAIN_CONFIGS, ids=lambda p: osp.basename(p)[:-3])
def test_imagenet_config_follows_the_released_recipe(path):
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmpretrain'
    family = _norm_family(path)
    sparse = family.endswith('SSN')
    per_gpu = cfg.train_dataloader.batch_size
    assert per_gpu == int(osp.basename(path).split('_')[1].split('xb')[1])
    # SGD, lr 0.1 per 256 images (linear in the batch of 8 GPUs), momentum 0.9, wd 1e-4
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer.type == 'SGD' and optimizer.momentum == 0.9 and optimizer.weight_decay == 1e-4
    assert optimizer.lr == pytest.approx(0.1 * 8 * per_gpu / 256)
    # 100 epochs, x0.1 at 30/60/90, no warm-up, no label smoothing
    assert cfg.train_cfg.max_epochs == 100
    schedulers = cfg.param_scheduler if isinstance(cfg.param_scheduler, list) else [cfg.param_scheduler]
    assert [s.type for s in schedulers] == ['MultiStepLR']
    assert schedulers[0].milestones == [30, 60, 90] and schedulers[0].gamma == 0.1
    assert cfg.model.head.loss == dict(type='CrossEntropyLoss', loss_weight=1.0)
    hooks = {h['type']: h for h in cfg.custom_hooks}
    assert 'SwitchNormEvalHook' in hooks and 'SafeCheckpointHook' in hooks
    if sparse:
        assert hooks['SSNRadiusHook'].get('max_radius', 1.0) == 1.0 and hooks['SSNRadiusHook'].get('end') is None
        clip = [h for name, h in hooks.items() if name in ('SSNLogitClipHook', 'SwitchNormLogitClipHook')]
        assert len(clip) == 1 and clip[0].get('max_norm', 1.0) == 1.0
        assert hooks['SwitchRecipeHook']['schedule'][0]['action_epoch'] == 96  # last 5 of 100 epochs
    else:
        assert 'SSNRadiusHook' not in hooks
    backbone = cfg.model.backbone
    assert backbone.depth == (101 if 'resnet101' in path else 50) and backbone.zero_init_residual
    assert backbone.type == ('ResNetReleasedStem' if sparse else 'ResNet')
    assert backbone.norm_cfg == (dict(type=family, momentum=0.003) if sparse else dict(type='SN'))


@pytest.mark.parametrize('path', PRETRAIN_CONFIGS, ids=lambda p: osp.basename(p)[:-3])
def test_imagenet_config_builds_with_its_optimizer_groups(path):
    cfg = Config.fromfile(path)
    init_default_scope('mmpretrain')
    family = _norm_family(path)
    sparse = family.endswith('SSN')
    optimizer = cfg.optim_wrapper.optimizer
    model = pretrain_registry.MODELS.build(cfg.model)
    backbone = model.backbone
    assert backbone.depth == (101 if 'resnet101' in path else 50)
    switch = [m for m in model.modules() if ssn_plugins.is_switch_norm(m)]
    assert len(switch) == (104 if backbone.depth == 101 else 53)  # 1 + 3 per block + 4 shortcuts
    assert not [n for n, m in model.named_modules() if isinstance(m, (_BatchNorm, nn.GroupNorm))]
    assert all(isinstance(m, SparseSwitchNormBase) == sparse for m in switch)
    assert all(type(m).__name__.startswith('Sync') == family.startswith('Sync') for m in switch)
    # the released momentum convention: SSN keeps 0.997 per step (PyTorch 0.003)
    assert {m.momentum for m in switch} == {0.003 if sparse else 0.1}
    # the released stem pool: SSN padding 0 + ceil_mode, SN the torchvision pool
    assert ssn_plugins.models.stem_pool_of(backbone) == (RELEASED_SSN_STEM if sparse else TORCHVISION_STEM)

    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    names = {id(p): n for n, p in model.named_parameters()}
    seen_logits = 0
    for group in optim.optimizer.param_groups:
        for p in group['params']:
            name = names[id(p)]
            logit = name.endswith(('mean_weight', 'var_weight'))
            seen_logits += logit
            # SSN: logits at lr x0.1 without decay; SN: trained like every weight (released SN)
            lr_mult, decay = (0.1, 0.0) if logit and sparse else (1.0, optimizer.weight_decay)
            assert group['lr'] == pytest.approx(optimizer.lr * lr_mult), name
            assert group['weight_decay'] == pytest.approx(decay), name
    assert seen_logits == 2 * len(switch)


def _backbone_state(path):
    state = torch.load(path, map_location='cpu', weights_only=True)['state_dict']
    return {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}


@pytest.mark.slow
def test_classifier_backbone_carries_over_to_the_detector(demo_dir):
    """The issue-13 path on the demo: classify, convert, load strictly into Mask R-CNN, train a step."""
    work = demo_dir / 'cls'
    # 1. the classification demo trains (our tools/train.py, mmpretrain's Runner and datasets)
    load_tool('train').main([CLS_DEMO, '--work-dir', str(work), '--cfg-options', *TINY, *_schedule(3)])
    ckpt = str(work / 'iter_3.pth')
    trained = _backbone_state(ckpt)
    assert int(trained['sn1.mean_choice']) == -1 and float(trained['sn1.radius']) > 0  # radius grew
    # analyze_ratios reads the mmpretrain checkpoint, alone and with its config
    for args, out in (([ckpt], 'alone'), ([CLS_DEMO, ckpt], 'with_config')):
        load_tool('analyze_ratios').main([*args, '--out', str(demo_dir / out)])
        records = json.load(open(demo_dir / out / 'ratios.json'))
        assert len(records) == 20 and all(r['name'].startswith('backbone.') for r in records)
        assert all(r['type'] == 'SSN' and abs(sum(r['mean']) - 1) < 1e-6 for r in records)

    # 2. convert_checkpoint turns the ImageClassifier state into a backbone file
    dst = str(demo_dir / 'r18_half_ssn.pth')
    load_tool('convert_checkpoint').main([ckpt, dst])
    converted = torch.load(dst, map_location='cpu', weights_only=True)
    meta = converted['meta']
    assert meta['source_kind'] == 'ssn' and meta['depth'] == 18
    assert meta['training'] == dict(default_scope='mmpretrain', model='ImageClassifier', backbone='ResNet')
    assert meta['stem_pool'] == TORCHVISION_STEM  # mmpretrain's ResNet pools with padding 1
    assert meta['dropped_keys'] == ['head.fc.bias', 'head.fc.weight']
    assert set(converted['state_dict']) == set(trained)
    for key, value in trained.items():
        assert torch.equal(converted['state_dict'][key], value), key

    # 3. the Mask R-CNN demo loads it with SwitchNormPretrained, strictly, every tensor
    init = [f'model.backbone.init_cfg.checkpoint={dst}']
    cfg = launch.load_config(DET_PRETRAINED, init_cfg_options(init), work_dir=str(demo_dir / 'det'))
    assert cfg.model.backbone.init_cfg == dict(type='SwitchNormPretrained', checkpoint=dst)
    init_default_scope(cfg.default_scope)
    from mmdet.registry import MODELS as DET_MODELS
    detector = DET_MODELS.build(cfg.model)
    detector.init_weights()
    loaded = detector.backbone.state_dict()
    assert set(loaded) == set(trained)
    for key, value in trained.items():
        assert torch.equal(loaded[key], value), key

    # 4. one training step of the detector from that backbone (tools/train.py)
    load_tool('train').main([DET_PRETRAINED, '--work-dir', str(demo_dir / 'det'), '--cfg-options', *TINY,
                         *_schedule(1), *init])
    step = torch.load(str(demo_dir / 'det' / 'iter_1.pth'), map_location='cpu', weights_only=True)
    assert step['meta']['iter'] == 1
    after = _backbone_state(str(demo_dir / 'det' / 'iter_1.pth'))
    assert torch.isfinite(after['layer4.1.conv2.weight']).all()
    assert not torch.equal(after['layer4.1.conv2.weight'], trained['layer4.1.conv2.weight'])  # it trained


def _classifier_state(kind, backbone_type):
    """The state dict of an mmpretrain ImageClassifier with an SN/SSN ResNet-18 (quarter width)."""
    norm = dict(type=kind)
    model_cfg = dict(type='ImageClassifier',
                     backbone=dict(type=backbone_type, depth=18, stem_channels=16, base_channels=16,
                                   norm_cfg=norm, out_indices=(3, )),
                     neck=dict(type='GlobalAveragePooling'),
                     head=dict(type='LinearClsHead', num_classes=5, in_channels=128))
    init_default_scope('mmpretrain')
    model = pretrain_registry.MODELS.build(model_cfg)
    backbone = model.backbone
    if kind == 'SSN':
        backbone.sn1.latch('bn', 'in')
        backbone.layer3[1].sn2.latch(1, 2)
        for i, layer in enumerate(m for m in backbone.modules() if isinstance(m, SparseSwitchNormBase)):
            layer.set_radius(0.01 * i)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    text = Config(dict(default_scope='mmpretrain', model=model_cfg)).pretty_text
    return model.state_dict(), text


@pytest.mark.parametrize('kind, backbone_type', [('SSN', 'ResNetReleasedStem'), ('SN', 'ResNet')])
def test_mmpretrain_checkpoint_converts_for_mmdet_resnet(tmp_path, kind, backbone_type):
    """An ImageClassifier file (backbone., head., the training config as text) loads strictly into mmdet's ResNet."""
    state, text = _classifier_state(kind, backbone_type)
    src = str(tmp_path / 'epoch_100.pth')
    torch.save({'meta': {'cfg': text, 'epoch': 100}, 'state_dict': state,
                'optimizer': {'state': {}, 'param_groups': []}}, src)
    dst = str(tmp_path / 'backbone.pth')
    meta = ssn_plugins.convert_checkpoint(src, dst)
    assert meta['norm_type'] == kind and meta['depth'] == 18
    assert meta['training'] == dict(default_scope='mmpretrain', model='ImageClassifier', backbone=backbone_type)
    assert meta['stem_pool'] == (RELEASED_SSN_STEM if backbone_type == 'ResNetReleasedStem' else TORCHVISION_STEM)
    assert meta['dropped_keys'] == ['head.fc.bias', 'head.fc.weight']
    if kind == 'SSN':
        assert meta['latched'] == dict(mean=2, var=2)

    init_default_scope('mmdet')
    from mmdet.registry import MODELS as DET_MODELS
    backbone = DET_MODELS.build(dict(type=backbone_type, depth=18, base_channels=16, norm_cfg=dict(type=kind),
                                     init_cfg=dict(type='SwitchNormPretrained', checkpoint=dst)))
    backbone.init_weights()
    expected = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    loaded = backbone.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    if kind == 'SSN':
        assert backbone.sn1.latched and tuple(backbone.sn1.ratios()[0].tolist()) == (0.0, 0.0, 1.0)
        assert int(backbone.layer3[1].sn2.var_choice) == 2


def test_without_its_config_our_checkpoint_gets_the_plain_stem(tmp_path):
    """A bare state dict of our layers says nothing of the pool: the one of mmdet/mmseg/mmpretrain ResNet."""
    state, _ = _classifier_state('SSN', 'ResNetReleasedStem')
    _, meta = ssn_plugins.checkpoint.convert_state_dict(state)
    assert meta['stem_pool'] == TORCHVISION_STEM and 'training' not in meta
    # a config that is not Python is ignored, never run
    src = str(tmp_path / 'ckpt.pth')
    torch.save({'meta': {'cfg': 'import os; os.remove(1) +'}, 'state_dict': state}, src)
    assert 'training' not in ssn_plugins.convert_checkpoint(src, str(tmp_path / 'out.pth'))


def test_bad_choice_in_our_layout_is_refused():
    state, _ = _classifier_state('SSN', 'ResNet')
    state['backbone.layer2.0.sn1.mean_choice'] = torch.tensor(3)
    with pytest.raises(ssn_plugins.checkpoint.ConversionError, match=r'layer2\.0\.sn1\.mean_choice is 3'):
        ssn_plugins.checkpoint.convert_state_dict(state)


@pytest.mark.slow
def test_mmpretrain_own_train_tool_trains_the_demo(demo_dir, monkeypatch):
    """mmpretrain's tools/train.py (shipped in the wheel) runs the classification demo config."""
    tool = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'tools', 'train.py')
    assert osp.isfile(tool)
    work = str(demo_dir / 'upstream')
    monkeypatch.setattr(sys, 'argv', [tool, CLS_DEMO, '--work-dir', work, '--cfg-options', *TINY, *_schedule(2)])
    runpy.run_path(tool, run_name='__main__')
    state = torch.load(osp.join(work, 'iter_2.pth'), map_location='cpu', weights_only=True)
    assert state['meta']['iter'] == 2 and 'backbone.sn1.mean_weight' in state['state_dict']


def test_analyze_ratios_reads_a_classifier_checkpoint(tmp_path):
    """tools/analyze_ratios.py on an ImageClassifier file: backbone. layers, latched choices as stored."""
    state, text = _classifier_state('SSN', 'ResNet')
    src = str(tmp_path / 'epoch_1.pth')
    torch.save({'meta': {'cfg': text}, 'state_dict': state}, src)
    load_tool('analyze_ratios').main([src, '--out', str(tmp_path / 'ratios')])
    records = {r['name']: r for r in json.load(open(tmp_path / 'ratios' / 'ratios.json'))}
    assert len(records) == 20 and all(name.startswith('backbone.') for name in records)
    stem = records['backbone.sn1']
    assert stem['latched'] and stem['mean'] == [0.0, 0.0, 1.0] and stem['var'] == [1.0, 0.0, 0.0]
    assert not records['backbone.layer1.0.sn1']['latched']
