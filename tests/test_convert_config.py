"""convert_config: upstream mmdet/mmseg/mmpretrain configs to SN/SSN, nothing left behind."""
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

import ssn_plugins  # noqa: F401  (registers the layers, hooks and initializers)
from ssn_plugins import check_leftover_norms, convert_config, plain_norms
from ssn_plugins.builder import build_model
from ssn_plugins.norm import SparseSwitchNormBase, is_switch_norm

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
pytest.importorskip('mmpretrain')

PANEL = {
    'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py': 20,
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py': 20,
    'mmdet::gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py': 36,
    'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py': 28,
    'mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py': 28,
    'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024.py': 37,
    'mmseg::fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py': 26,
    'mmpretrain::resnet/resnet50_8xb32_in1k.py': 20,
}
SIZE = 64


def _norm_classes(model):
    names = {'BatchNorm1d', 'BatchNorm2d', 'BatchNorm3d', 'SyncBatchNorm', 'GroupNorm'}
    return [n for n, m in model.named_modules() if type(m).__name__ in names]


def _batch(toolkit: str, num_classes: int):
    """Two tiny images with the annotations each toolkit's loss needs."""
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, 256, (3, SIZE, SIZE), generator=g, dtype=torch.uint8) for _ in range(2)]
    samples = []
    for _ in inputs:
        if toolkit == 'mmdet':
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData
            sample = DetDataSample(metainfo=dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE),
                                                 pad_shape=(SIZE, SIZE), scale_factor=(1.0, 1.0)))
            masks = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
            masks[:, 8:40, 10:50] = 1
            sample.gt_instances = InstanceData(
                bboxes=torch.tensor([[10.0, 8.0, 50.0, 40.0]]), labels=torch.tensor([1]),
                masks=BitmapMasks(masks.numpy(), SIZE, SIZE))
        elif toolkit == 'mmseg':
            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample
            sample = SegDataSample(metainfo=dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE),
                                                 pad_shape=(SIZE, SIZE)))
            sample.gt_sem_seg = PixelData(
                data=torch.randint(0, num_classes, (1, SIZE, SIZE), generator=g))
        else:
            from mmpretrain.structures import DataSample
            sample = DataSample().set_gt_label(torch.tensor([1]))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _tiny(cfg: Config, toolkit: str) -> Config:
    cfg.model.backbone.depth = 18
    if toolkit == 'mmdet':
        cfg.model.neck.in_channels = [64, 128, 256, 512]
    if toolkit == 'mmseg':
        cfg.model.data_preprocessor.size = (SIZE, SIZE)
        cfg.model.decode_head.in_channels = 512
        cfg.model.decode_head.channels = 32
        if cfg.model.decode_head.get('c1_in_channels'):
            cfg.model.decode_head.c1_in_channels = 64
        cfg.model.auxiliary_head.in_channels = 256
        cfg.model.auxiliary_head.channels = 16
    if toolkit == 'mmpretrain':
        cfg.model.head.in_channels = 512
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize('upstream', sorted(PANEL))
def test_upstream_config_converts_builds_and_trains_one_step(upstream):
    toolkit = upstream.split('::')[0]
    notes = []
    cfg = _tiny(convert_config(upstream, 'SSN', notes), toolkit)
    model = build_model(cfg, from_scratch=True)
    assert _norm_classes(model) == [] and plain_norms(model) == {}
    count = sum(isinstance(m, SparseSwitchNormBase) for m in model.modules())
    assert count == PANEL[upstream], notes
    # the runtime: hooks, logits recipe, import
    hooks = [h['type'] for h in cfg.custom_hooks]
    for hook in ('SSNRadiusHook', 'SwitchNormLogitClipHook', 'SwitchNormEvalHook',
                 'SafeCheckpointHook', 'LeftoverNormHook'):
        assert hook in hooks
    assert 'ssn_plugins' in cfg.custom_imports['imports']
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['mean_weight'] == dict(lr_mult=0.1, decay_mult=0.0)
    # one training step on two tiny images
    model.train()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    num_classes = cfg.model.get('decode_head', {}).get('num_classes', 2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith('mean_weight')}
    losses = model.train_step(_batch(toolkit, num_classes), wrapper)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in losses.values())
    moved = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert moved, 'no SSN logit was updated'


def test_foreign_keys_are_dropped_not_merged_and_changes_are_noted():
    notes = []
    cfg = convert_config('mmdet::gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py', 'SSN', notes)
    for node in (cfg.model.backbone, cfg.model.neck, cfg.model.roi_head.bbox_head,
                 cfg.model.roi_head.mask_head):
        assert node.norm_cfg == dict(type='SSN', requires_grad=True)
    assert cfg.model.backbone.norm_eval is False
    assert any("GN options ['num_groups'] dropped" in n for n in notes)
    assert any('norm_eval=True -> False' in n for n in notes)


def test_class_defaults_are_converted_too():
    """FCOSHead defaults to GN without a norm_cfg in the config; mmpretrain's ResNet to BN."""
    cfg = convert_config('mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', 'SN')
    assert cfg.model.bbox_head.norm_cfg == dict(type='SN', requires_grad=True)
    cfg = convert_config('mmpretrain::resnet/resnet50_8xb32_in1k.py', 'SyncSSN')
    assert cfg.model.backbone.norm_cfg == dict(type='SyncSSN', requires_grad=True)


def test_mmseg_top_level_norm_cfg_and_pretrained():
    cfg = convert_config('mmseg::fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py', 'SSN')
    assert cfg.norm_cfg == dict(type='SSN', requires_grad=True)
    assert cfg.model.pretrained is None
    assert cfg.model.backbone.init_cfg == dict(type='SwitchNormPretrained', map_norms=True,
                                               checkpoint='open-mmlab://resnet50_v1c')


def test_the_input_config_is_left_as_it_was():
    cfg = Config.fromfile(ssn_plugins.convert.upstream_config_path(
        'mmseg::fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py'))
    before = cfg.to_dict()
    convert_config(cfg, 'SSN')
    assert cfg.to_dict() == before


@pytest.mark.parametrize('change, error', [
    (dict(load_from='detector.pth'), r"load_from='detector.pth' is a whole-model checkpoint"),
    (dict(model=dict(type='ImageClassifier', backbone=dict(type='X'))), 'has no norm_cfg anywhere'),
])
def test_refused_with_the_fix(change, error):
    cfg = Config(dict(default_scope='mmpretrain', model=dict(
        type='ImageClassifier', backbone=dict(type='ResNet', depth=18, norm_cfg=dict(type='BN')))))
    cfg.merge_from_dict(change)
    if 'model' in change:
        cfg.model = change['model']
    with pytest.raises(ValueError, match=error):
        convert_config(cfg, 'SSN')


def test_unknown_norm_is_named():
    with pytest.raises(ValueError, match=r"norm must be one of \('SN', 'SSN', 'SyncSN', 'SyncSSN'\), got 'GN'"):
        convert_config('mmpretrain::resnet/resnet50_8xb32_in1k.py', 'GN')


def _torchvision_resnet18_file(path):
    torchvision = pytest.importorskip('torchvision')
    torch.manual_seed(3)
    model = torchvision.models.resnet18()
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))  # running statistics that are not 0/1
    torch.save(model.state_dict(), path)
    return model.state_dict()


def test_torchvision_bn_checkpoint_fills_every_backbone_tensor(tmp_path):
    path = str(tmp_path / 'resnet18_torchvision.pth')
    source = _torchvision_resnet18_file(path)
    cfg = convert_config('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', 'SSN')
    cfg.model.backbone.depth = 18
    cfg.model.backbone.init_cfg.checkpoint = path
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    model = build_model(cfg)
    model.backbone.init_weights()
    state = model.backbone.state_dict()
    taken = 0
    for key, value in source.items():
        if key.startswith('fc.') or key.endswith('num_batches_tracked'):
            continue
        target = key.replace('bn1.', 'sn1.').replace('bn2.', 'sn2.').replace('bn3.', 'sn3.')
        torch.testing.assert_close(state[target], value, rtol=0, atol=0)
        taken += 1
    # conv weights and every BN tensor (weight, bias, running mean and var) of 20 layers
    assert taken == 20 * 4 + 20 == len([k for k in state if not k.endswith(
        ('mean_weight', 'var_weight', 'radius', 'mean_choice', 'var_choice', 'num_batches_tracked'))])
    layers = [m for m in model.backbone.modules() if is_switch_norm(m)]
    assert all(m.mean_weight.tolist() == [1.0, 1.0, 1.0] for m in layers)  # uniform logits


def test_checkpoint_that_does_not_fit_names_file_and_keys(tmp_path):
    path = str(tmp_path / 'resnet18_torchvision.pth')
    _torchvision_resnet18_file(path)
    cfg = convert_config('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', 'SSN')  # depth 50
    cfg.model.backbone.init_cfg.checkpoint = path
    model = build_model(cfg)
    with pytest.raises(ValueError, match=rf'{path} does not fit ResNet .*missing: .*layer1\.0\.conv3'):
        model.backbone.init_weights()


def test_partial_conversion_names_the_layers_left(monkeypatch):
    logged = []
    monkeypatch.setattr('ssn_plugins.convert.check.print_log', lambda msg, **kw: logged.append(msg))
    cfg = convert_config('mmdet::gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py', 'SSN')
    cfg.model.roi_head.mask_head.norm_cfg = dict(type='GN', num_groups=32)  # forgotten on purpose
    cfg.model.backbone.depth = 18
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    model = build_model(cfg, from_scratch=True)
    left = check_leftover_norms(model)
    assert sorted(left) == [f'roi_head.mask_head.convs.{i}.gn' for i in range(4)]
    assert len(logged) == 1 and 'roi_head.mask_head.convs.0.gn (GroupNorm)' in logged[0]
    with pytest.raises(ValueError, match=r'4 normalization layers are not SN/SSN.*convs\.3\.gn'):
        check_leftover_norms(model, strict=True)
    plain = build_model(Config.fromfile(ssn_plugins.convert.upstream_config_path(
        'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')), from_scratch=True)
    assert check_leftover_norms(plain) == {}  # a BN model that never asked for SN/SSN


def test_written_config_reads_back_the_same(tmp_path):
    cfg = convert_config('mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py', 'SSN')
    path = str(tmp_path / 'psp_ssn.py')
    cfg.dump(path)
    back = Config.fromfile(path)
    assert back.model.to_dict() == cfg.model.to_dict() and os.path.getsize(path) > 0


def test_the_readme_short_form_config(tmp_path):
    """The README's few-line child of an upstream config: SSN in the backbone, our runtime base."""
    path = tmp_path / 'mask-rcnn_r50-ssn.py'
    path.write_text(
        "_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', 'ssn_plugins::_base_/ssn_runtime.py']\n"
        "model = dict(backbone=dict(norm_cfg=dict(type='SSN'), norm_eval=False, init_cfg=dict(\n"
        "    type='SwitchNormPretrained', checkpoint='torchvision://resnet50', map_norms=True)))\n"
        "optim_wrapper = _base_.switch_norm_optim_wrapper\n")
    cfg = Config.fromfile(str(path))
    assert cfg.optim_wrapper.optimizer.type == 'SGD'  # merged into the upstream one, not replaced
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['var_weight'] == dict(lr_mult=0.1, decay_mult=0.0)
    assert 'SSNRadiusHook' in [h['type'] for h in cfg.custom_hooks]
    model = build_model(cfg, from_scratch=True)
    assert plain_norms(model) == {} and sum(map(is_switch_norm, model.modules())) == 53


def test_norm_decay_mult_reaches_switch_norm_layers_as_batchnorm():
    """mmengine recognises norms by torch class; our constructor gives SN/SSN the same rule."""
    from torch import nn

    from ssn_plugins.norm import SparseSwitchNorm2d
    wrapper_cfg = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4),
                       constructor='SummaryOptimWrapperConstructor',
                       paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={
                           'mean_weight': dict(lr_mult=0.1, decay_mult=0.5)}))

    def decays(norm):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), norm)
        groups = build_optim_wrapper(model, wrapper_cfg).optimizer.param_groups
        names = {id(p): n for n, p in model.named_parameters()}
        return {names[id(g['params'][0])]: (g['lr'], g['weight_decay']) for g in groups}

    ssn, bn = decays(SparseSwitchNorm2d(4)), decays(nn.BatchNorm2d(4))
    for name in ('0.weight', '0.bias', '1.weight', '1.bias'):
        assert ssn[name] == bn[name], name
    assert ssn['1.weight'] == (0.1, 0.0) and ssn['0.weight'] == (0.1, 1e-4)
    assert ssn['1.mean_weight'] == pytest.approx((0.01, 0.5e-4))  # the custom key wins
    assert ssn['1.var_weight'] == (0.1, 0.0)
