"""Every shipped mmdet/mmseg config builds, trains one step and predicts on CPU.

Each config is shrunk (ResNet-18, narrow heads, tiny images) but keeps its
structure: the same model types, norms, hooks and optimizer settings.  The
pretrained backbone is switched off (``init_cfg=None``); loading it is the
business of ``SwitchNormPretrained``.
"""
import glob
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import HOOKS, MODELS, init_default_scope
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import ssn_plugins
from ssn_plugins.norm.switch_norm import SparseSwitchNormBase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'mmdet', '*.py')))
SEG_CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'mmseg', '*.py')))
ALL_CONFIGS = DET_CONFIGS + SEG_CONFIGS
R18_CHANNELS = [64, 128, 256, 512]


def _id(path):
    return os.path.basename(path)[:-3]


def _expected_norm(path):
    name = os.path.basename(path)
    family = 'SyncSSN' if '-syncssn' in name else 'SyncSN' if '-syncsn' in name else \
        'SSN' if '-ssn' in name else 'SN'
    return family


def _load(path):
    cfg = Config.fromfile(path)
    init_default_scope(cfg.default_scope)
    return cfg


def _check_all_norms(model, cfg_path):
    """No BN left, and every norm layer is an SN/SSN of the config's family."""
    family = _expected_norm(cfg_path)
    switch = [m for m in model.modules() if ssn_plugins.is_switch_norm(m)]
    assert switch, 'no SN/SSN layer in the model'
    offenders = [name for name, m in model.named_modules()
                 if isinstance(m, (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm))]
    assert not offenders, f'plain norm layers left: {offenders[:5]}'
    sparse = family.endswith('SSN')
    assert all(isinstance(m, SparseSwitchNormBase) == sparse for m in switch)
    if family.startswith('Sync'):
        assert all(type(m).__name__.startswith('Sync') for m in switch)
    return switch


def test_configs_are_shipped():
    names = {os.path.basename(p) for p in ALL_CONFIGS}
    expected = {f'mask-rcnn_r50-{n}_fpn_{s}_coco.py' for n in ('ssn', 'sn') for s in ('1x', '2x')}
    for model in ('pspnet', 'deeplabv3', 'deeplabv3plus'):
        expected |= {f'{model}_r50-ssn-d8_4xb2-{s}_cityscapes-512x1024.py' for s in ('40k', '80k')}
        expected |= {f'{model}_r50-ssn-d8_4xb4-{s}_ade20k-512x512.py' for s in ('80k', '160k')}
    assert expected <= names, sorted(expected - names)


@pytest.mark.slow
@pytest.mark.parametrize('path', ALL_CONFIGS, ids=_id)
def test_config_contents(path):
    """What a user relies on beyond the model: plugin import, hooks, optimizer, pretrained file."""
    cfg = _load(path)
    sparse = _expected_norm(path).endswith('SSN')
    assert cfg.custom_imports == dict(imports=['ssn_plugins'], allow_failed_imports=False)
    hooks = [h['type'] for h in cfg.custom_hooks]
    for hook in hooks:
        assert HOOKS.get(hook) is not None, hook
    assert 'SwitchNormMonitorHook' in hooks and 'SwitchNormEvalHook' in hooks
    assert 'SafeCheckpointHook' in hooks  # weights_only-loadable checkpoints with upstream tools too
    if sparse:
        radius = [h for h in cfg.custom_hooks if h['type'] == 'SSNRadiusHook']
        assert radius and radius[0].get('max_radius', 1.0) == 1.0
        clip = [h for h in cfg.custom_hooks if h['type'] == 'SwitchNormLogitClipHook']
        assert clip and clip[0].get('max_norm', 1.0) == 1.0  # the released recipe
    # the runtime base's recipe merged into the schedule's optimizer, which stays as it was
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    for name in ('mean_weight', 'var_weight'):
        assert keys[name] == dict(lr_mult=0.1, decay_mult=0.0)
    assert cfg.optim_wrapper.constructor == 'SummaryOptimWrapperConstructor'
    assert cfg.optim_wrapper.type == 'OptimWrapper' and cfg.optim_wrapper.optimizer.type == 'SGD'
    assert cfg.optim_wrapper.optimizer.lr == (0.02 if path in DET_CONFIGS else 0.01)
    backbone = cfg.model.backbone
    # SSN: the released stem pool the ImageNet SSN weights were trained with
    assert backbone.type == ('ResNetReleasedStem' if sparse else 'ResNet') and backbone.depth == 50
    assert backbone.norm_eval is False
    ckpt = 'resnet50_v1_ssn.pth' if 'ssn' in _expected_norm(path).lower() else 'resnet50_v1_sn.pth'
    assert backbone.init_cfg == dict(type='SwitchNormPretrained', checkpoint=f'checkpoints/{ckpt}')
    if path in DET_CONFIGS:
        assert backbone.frozen_stages == 1
        assert cfg.model.roi_head.bbox_head.type == 'Shared4Conv1FCBBoxHead'
        assert cfg.auto_scale_lr.base_batch_size == 16
    else:
        assert cfg.model.pretrained is None
        assert tuple(backbone.dilations) == (1, 1, 2, 4) and tuple(backbone.strides) == (1, 2, 1, 1)


def _check_optimizer_groups(model, cfg):
    """The released recipe: every logit at lr x 0.1 without weight decay, every other
    parameter at the schedule's lr and weight decay (the groups these configs built
    when each leaf still spelt out its own paramwise_cfg)."""
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    base_lr = cfg.optim_wrapper.optimizer.lr
    base_wd = cfg.optim_wrapper.optimizer.weight_decay
    names = {id(p): n for n, p in model.named_parameters()}
    logits = 0
    for group in optim.optimizer.param_groups:
        for p in group['params']:
            logit = names[id(p)].endswith(('mean_weight', 'var_weight'))
            logits += logit
            assert group['lr'] == pytest.approx(base_lr * (0.1 if logit else 1.0)), names[id(p)]
            assert group['weight_decay'] == pytest.approx(0.0 if logit else base_wd), names[id(p)]
    trainable = [n for n, p in model.named_parameters()
                 if p.requires_grad and n.endswith(('mean_weight', 'var_weight'))]
    assert logits == len(trainable) > 0  # frozen stages are left out, by the default constructor


def _check_finite_grads(model):
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f'NaN/inf gradients: {bad[:5]}'


def _shrink_det(cfg):
    model = cfg.model
    model.backbone.update(depth=18, init_cfg=None)
    model.neck.update(in_channels=R18_CHANNELS, out_channels=32)
    model.rpn_head.update(in_channels=32, feat_channels=32)
    model.roi_head.bbox_roi_extractor.out_channels = 32
    model.roi_head.mask_roi_extractor.out_channels = 32
    model.roi_head.bbox_head.update(in_channels=32, conv_out_channels=32, fc_out_channels=64)
    model.roi_head.mask_head.update(in_channels=32, conv_out_channels=32)
    for stage in ('rpn', 'rcnn'):
        sampler = model.train_cfg[stage].sampler
        sampler.num = 32
    model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=50)
    model.test_cfg.rpn.update(nms_pre=200, max_per_img=50)
    return model


@pytest.mark.slow
@pytest.mark.parametrize('path', DET_CONFIGS, ids=_id)
def test_det_config_trains_and_predicts(path):
    from mmdet.testing import demo_mm_inputs

    cfg = _load(path)
    model = MODELS.build(_shrink_det(cfg))
    model.init_weights()
    _check_all_norms(model, path)
    _check_optimizer_groups(model, cfg)
    model.train()
    # frozen_stages=1: stem and layer1 stay in eval mode with frozen parameters
    assert not model.backbone.layer1.training and model.backbone.layer2.training
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    data = model.data_preprocessor(
        demo_mm_inputs(2, [[3, 96, 96], [3, 80, 112]], num_items=[2, 3], with_mask=True), True)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [m.mean_weight.grad for m in model.roi_head.mask_head.modules()
             if ssn_plugins.is_switch_norm(m)]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    _check_finite_grads(model)

    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(demo_mm_inputs(1, [[3, 96, 96]], with_mask=True), False)
        results = model(**data, mode='predict')
    assert len(results) == 1
    assert torch.isfinite(results[0].pred_instances.bboxes).all()


def _shrink_seg(cfg):
    model = cfg.model
    model.backbone.update(depth=18, init_cfg=None)
    head = model.decode_head
    head.update(in_channels=512, channels=16)
    if head.type == 'DepthwiseSeparableASPPHead':
        head.update(c1_in_channels=64, c1_channels=8)
    model.auxiliary_head.update(in_channels=256, channels=8)
    model.data_preprocessor.size = (32, 32)
    return model


def _seg_inputs(batch, size, num_classes):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             pad_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, size, size)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.slow
@pytest.mark.parametrize('path', SEG_CONFIGS, ids=_id)
def test_seg_config_trains_and_predicts(path):
    cfg = _load(path)
    model = MODELS.build(_shrink_seg(cfg))
    model.init_weights()
    _check_all_norms(model, path)
    _check_optimizer_groups(model, cfg)
    num_classes = cfg.model.decode_head.num_classes
    model.train()
    # 32x32 inputs: D8 features are 4x4, so PSP / ASPP pooling branches see 1x1 maps
    data = model.data_preprocessor(_seg_inputs(2, 32, num_classes), True)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [m.var_weight.grad for m in model.decode_head.modules() if ssn_plugins.is_switch_norm(m)]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    _check_finite_grads(model)

    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(_seg_inputs(1, 32, num_classes), False)
        results = model(**data, mode='predict')
    assert results[0].seg_logits.data.shape == (num_classes, 32, 32)
    assert torch.isfinite(results[0].seg_logits.data).all()


def _released_layout(backbone):
    """The backbone's tensors in the layout of the released ImageNet SN/SSN files."""
    state = {}
    for key, value in backbone.state_dict().items():
        prefix, name = key.rsplit('.', 1)
        if name in ('weight', 'bias') and value.dim() == 1:
            value = value.view(1, -1, 1, 1)
        elif name in ('running_mean', 'running_var'):
            value = value.view(1, -1, 1)
        elif name in ('mean_choice', 'var_choice'):
            which = name.split('_')[0]
            choice = int(torch.randint(0, 3, ()))
            state[f'{prefix}.{which}_weight'] = torch.nn.functional.one_hot(torch.tensor(choice), 3).float()
            state[f'{prefix}.{which}_fixed'] = torch.ones(1, dtype=torch.long)
            continue
        elif name == 'radius':
            value = torch.ones(1)
        elif name == 'num_batches_tracked':
            continue
        if name in ('mean_weight', 'var_weight') and f'{prefix}.{name}' in state:
            continue
        state[key] = value.clone() if name != 'weight' or value.dim() != 4 else torch.randn_like(value)
    state['fc.weight'], state['fc.bias'] = torch.randn(1000, 2048), torch.zeros(1000)
    return {'state_dict': {f'module.{k}': v for k, v in state.items()}}


@pytest.mark.slow
@pytest.mark.parametrize('path', [DET_CONFIGS[0], SEG_CONFIGS[0],
                                  next(p for p in DET_CONFIGS if '-sn_' in p)], ids=_id)
def test_pretrained_backbone_comes_from_the_converted_file(path, tmp_path, monkeypatch):
    """Released file -> tools/convert_checkpoint.py -> the config's init_cfg fills the backbone."""
    from ssn_plugins.checkpoint import convert_checkpoint

    cfg = _load(path)
    sparse = _expected_norm(path).endswith('SSN')
    released = MODELS.build(dict(cfg.model.backbone, init_cfg=None))
    src = str(tmp_path / 'released.pth')
    torch.save(_released_layout(released), src)
    convert_checkpoint(src, str(tmp_path / cfg.model.backbone.init_cfg.checkpoint))

    monkeypatch.chdir(tmp_path)  # the configs name checkpoints/ relative to the working dir
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    source = {k[len('module.'):]: v for k, v in torch.load(src, weights_only=True)['state_dict'].items()}
    state = backbone.state_dict()
    assert torch.equal(state['conv1.weight'], source['conv1.weight'])
    assert torch.equal(state['layer4.2.sn3.weight'], source['layer4.2.sn3.weight'].flatten())
    assert torch.equal(state['layer2.0.downsample.1.running_var'],
                       source['layer2.0.downsample.1.running_var'].flatten())
    if sparse:
        for name, layer in backbone.named_modules():
            if ssn_plugins.is_switch_norm(layer):
                assert layer.latched
                assert int(layer.mean_choice) == int(source[f'{name}.mean_weight'].argmax())


@pytest.mark.slow
@pytest.mark.parametrize('path', [DET_CONFIGS[0], SEG_CONFIGS[0]], ids=_id)
def test_missing_pretrained_file_says_how_to_make_it(path, tmp_path, monkeypatch):
    cfg = _load(path)
    monkeypatch.chdir(tmp_path)
    backbone = MODELS.build(dict(cfg.model.backbone, depth=18))
    with pytest.raises(FileNotFoundError, match='tools/convert_checkpoint.py'):
        backbone.init_weights()


def _synchronized(value, counts):
    """``value`` with every ``norm_cfg`` of type SSN turned into SyncSSN (``counts`` counts them)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == 'norm_cfg' and isinstance(item, dict) and item.get('type') == 'SSN':
                item = dict(item, type='SyncSSN')
                counts.append(1)
            out[key] = _synchronized(item, counts)
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(_synchronized(v, counts) for v in value)
    return value


@pytest.mark.slow
@pytest.mark.parametrize('path', [p for p in ALL_CONFIGS if '-syncssn' in os.path.basename(p)], ids=_id)
def test_a_syncssn_config_is_its_ssn_config_with_every_layer_synchronized(path):
    """Nothing else differs: data, schedule, hooks, optimizer and the rest of the model."""
    sync = Config.fromfile(path).to_dict()
    ssn = Config.fromfile(path.replace('-syncssn', '-ssn')).to_dict()
    counts = []
    expected = _synchronized(ssn['model'], counts)
    assert len(counts) >= 2  # the backbone and the heads
    assert sync['model'] == expected
    named_apart = {k for k in sync if k.startswith('syncssn_')}  # the shared base's values
    assert {k: v for k, v in sync.items() if k not in named_apart | {'model', 'norm_cfg'}} == \
        {k: v for k, v in ssn.items() if k not in {'model', 'norm_cfg'}}
    assert sync.get('norm_cfg', {}).get('type', 'SyncSSN') == 'SyncSSN'
