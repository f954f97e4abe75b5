"""collapse_norms: settled SN/SSN layers become plain modules, outputs unchanged."""
import os
import re
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import load_checkpoint
from torch import nn

import ssn_plugins.deploy as deploy
import ssn_plugins.deploy.collapse as collapse
from ssn_plugins import compat
from ssn_plugins import (SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d, SwitchNorm2d,
                         collapse_norms, is_switch_norm)
from tiny_models import assert_same_detections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHOICES = [('bn', 'bn'), ('in', 'in'), ('ln', 'ln'), ('bn', 'in'), ('ln', 'bn')]


def _settle(model, choices=CHOICES):
    """Latch every SSN layer (cycling through ``choices``) with non-trivial statistics."""
    k = 0
    for module in model.modules():
        if is_switch_norm(module):
            mean, var = choices[k % len(choices)]
            k += 1
            module.mean_choice.fill_(module.normalizers.index(mean))
            module.var_choice.fill_(module.normalizers.index(var))
            with torch.no_grad():
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize('choice,expected', [(('bn', 'bn'), nn.BatchNorm2d),
                                             (('in', 'in'), deploy.InstanceNorm),
                                             (('ln', 'ln'), nn.GroupNorm),
                                             (('in', 'bn'), SparseSwitchNorm2d)])
def test_each_choice_becomes_the_plain_module(choice, expected):
    model = _settle(nn.Sequential(SparseSwitchNorm2d(6)), [choice]).eval()
    x = torch.randn(3, 6, 5, 5)
    y = model(x)
    collapse_norms(model, fuse_conv=False)
    assert type(model[0]) is expected
    torch.testing.assert_close(model(x), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('cls,shape', [(SparseSwitchNorm1d, (4, 6)), (SparseSwitchNorm1d, (4, 6, 3)),
                                       (SparseSwitchNorm3d, (2, 6, 3, 3, 3))])
@pytest.mark.parametrize('choice', CHOICES)
def test_other_ranks(cls, shape, choice):
    model = _settle(nn.Sequential(cls(6)), [choice]).eval()
    x = torch.randn(shape)
    y = model(x)
    collapse_norms(model, fuse_conv=False)
    # (N, C) input with IN: var = 0, and the dense path's x * rsqrt(eps) + shift loses ~1e-4
    torch.testing.assert_close(model(x), y, atol=5e-4 if len(shape) == 2 else 1e-5, rtol=1e-5)


def test_one_hot_sn_collapses_and_soft_sn_is_left_with_a_log_line(monkeypatch):
    messages = []
    monkeypatch.setattr(collapse, 'print_log', lambda msg, **kw: messages.append(msg))
    model = nn.Sequential(SwitchNorm2d(4), SwitchNorm2d(4), SparseSwitchNorm2d(4)).eval()
    with torch.no_grad():
        model[0].mean_weight.copy_(torch.tensor([0.0, 0.0, 200.0]))  # softmax exactly one-hot
        model[0].var_weight.copy_(torch.tensor([200.0, 0.0, 0.0]))
    x = torch.randn(2, 4, 3, 3)
    y = model(x)
    collapse_norms(model, fuse_conv=False)
    assert type(model[0]) is SparseSwitchNorm2d and model[0].latched  # (BN, IN): compact layer
    assert type(model[1]) is SwitchNorm2d and type(model[2]) is SparseSwitchNorm2d
    assert not model[2].latched
    torch.testing.assert_close(model(x), y, atol=1e-5, rtol=1e-5)
    left = [m for m in messages if 'left' in m]
    assert len(left) == 2 and "left 1 (SwitchNorm2d)" in left[0] and 'not one-hot' in left[0]


def test_fuse_conv_requires_eval():
    with pytest.raises(ValueError, match='eval'):
        collapse_norms(nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)))


def test_fold_conv_bn_pairs_only_adjacent_conv_bn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1),
                          nn.ReLU(), nn.BatchNorm2d(4), nn.Conv1d(4, 4, 1),
                          nn.BatchNorm1d(4, affine=False))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    head, tail = model[:6], model[6:]
    y_head, y_tail = head(x), tail(torch.randn(2, 4, 5))
    assert deploy.fold_conv_bn(head) == 1  # conv, ReLU, BN is not folded
    assert isinstance(head[1], nn.Identity) and isinstance(head[5], nn.BatchNorm2d)
    torch.testing.assert_close(head(x), y_head, atol=1e-5, rtol=1e-5)
    assert deploy.fold_conv_bn(tail) == 1  # Conv1d + BN without affine


def test_fold_skips_norm_before_conv_in_convmodule():
    from mmcv.cnn import ConvModule
    module = ConvModule(4, 4, 1, norm_cfg=dict(type='BN'), order=('norm', 'conv', 'act')).eval()
    assert deploy.fold_conv_bn(module) == 0


MASK_RCNN = """
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['ssn_plugins'], allow_failed_imports=False)
ssn = dict(type='SSN')
model = dict(
    backbone=dict(depth=18, norm_cfg=ssn, norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=32, norm_cfg=ssn),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=32),
                  bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=3),
                  mask_roi_extractor=dict(out_channels=32),
                  mask_head=dict(in_channels=32, conv_out_channels=32, num_classes=3,
                                 norm_cfg=ssn)))
"""
PSPNET = """
_base_ = 'mmseg::_base_/models/pspnet_r50-d8.py'
custom_imports = dict(imports=['ssn_plugins'], allow_failed_imports=False)
ssn = dict(type='SSN')
data_preprocessor = dict(type='SegDataPreProcessor', size=(96, 96))
model = dict(
    pretrained=None, data_preprocessor=data_preprocessor,
    backbone=dict(depth=18, norm_cfg=ssn, init_cfg=None),
    decode_head=dict(in_channels=512, channels=32, num_classes=4, norm_cfg=ssn),
    auxiliary_head=dict(in_channels=256, channels=16, num_classes=4, norm_cfg=ssn))
"""


def _config(tmp_path, text):
    path = tmp_path / 'model_config.py'
    path.write_text(text)
    return str(path)


def _build(config, scope):
    cfg = Config.fromfile(config)
    init_default_scope(scope)
    return cfg, MODELS.build(cfg.model)


def test_mask_rcnn_collapsed_outputs_equal(tmp_path):
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(0)
    _, model = _build(_config(tmp_path, MASK_RCNN), 'mmdet')
    model = _settle(model).eval()
    data = model.data_preprocessor(demo_mm_inputs(1, (3, 128, 160), with_mask=True), False)
    with torch.no_grad():
        feats = model.extract_feat(data['inputs'])
        rpn_logits = model.rpn_head(feats)[0]
        before = model.predict(data['inputs'], data['data_samples'])[0].pred_instances
        collapse_norms(model)
        assert not any(is_switch_norm(m) and not m.latched for m in model.modules())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # all folded
        feats_after = model.extract_feat(data['inputs'])
        for a, b in zip(list(feats_after) + list(model.rpn_head(feats_after)[0]),
                        list(feats) + list(rpn_logits)):
            assert (a - b).abs().max() <= 1e-4
        after = model.predict(data['inputs'], data['data_samples'])[0].pred_instances
    assert_same_detections(after, before)


def _seg_inputs(model):
    from mmseg.structures import SegDataSample
    sample = SegDataSample(metainfo=dict(img_shape=(96, 96), ori_shape=(96, 96), pad_shape=(96, 96)))
    data = dict(inputs=[torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8)],
                data_samples=[sample])
    return model.data_preprocessor(data, False)


@pytest.mark.slow
def test_pspnet_deploy_tool_round_trip(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import deploy as deploy_tool  # tools/deploy.py
    sys.path.pop(0)
    torch.manual_seed(0)
    config = _config(tmp_path, PSPNET)
    _, model = _build(config, 'mmseg')
    model = _settle(model).eval()
    checkpoint = str(tmp_path / 'trained.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': {'classes': ['a']}}},
               checkpoint)
    data = _seg_inputs(model)
    with torch.no_grad():
        before = model.predict(data['inputs'], data['data_samples'])[0].seg_logits.data

    deploy_tool.main([config, checkpoint, str(tmp_path / 'deployed.pth')])
    cfg = Config.fromfile(str(tmp_path / 'deployed.py'))
    init_default_scope('mmseg')
    deployed = MODELS.build(dict(cfg.model, data_preprocessor=cfg.get('data_preprocessor')))
    saved = torch.load(tmp_path / 'deployed.pth', weights_only=True)
    assert saved['meta']['dataset_meta'] == {'classes': ['a']}
    load_checkpoint(deployed, str(tmp_path / 'deployed.pth'), strict=True)
    deployed.eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    assert any(isinstance(m, deploy.InstanceNorm) for m in deployed.modules())
    with torch.no_grad():
        after = deployed.predict(data['inputs'], data['data_samples'])[0].seg_logits.data
    assert (after - before).abs().max() <= 1e-4


@pytest.mark.parametrize('choice', CHOICES)
def test_collapsed_layers_take_one_by_one_maps(choice):
    model = _settle(nn.Sequential(SparseSwitchNorm2d(6)), [choice]).eval()
    x = torch.randn(1, 6, 1, 1)
    y = model(x)
    collapse_norms(model, fuse_conv=False)
    # the dense path's y = x * rsqrt(eps) + shift loses ~1e-4 in float32 when var = 0
    torch.testing.assert_close(model(x), y, atol=5e-4, rtol=0)


SEG_DEMO = os.path.join(ROOT, 'configs', 'demo', 'fcn_r18-ssn_demo.py')
needs_onnx_torch = pytest.mark.skipif(
    compat.TORCH_VERSION < compat.ONNX_DYNAMO_MIN_TORCH,
    reason=f'torch.onnx.export(dynamo=True) needs torch >= 2.5, this is {torch.__version__}; '
           'test_onnx_on_an_older_torch_says_which_torch_it_needs covers this torch')


@pytest.mark.slow
@needs_onnx_torch
def test_onnx_export_of_the_segmentation_demo_matches_mmseg(tmp_path):
    """Image to logits in onnxruntime equals mmseg's own preprocessing and predict, to 1e-4."""
    import onnx
    import onnxruntime
    from mmseg.structures import SegDataSample
    torch.manual_seed(0)
    _, model = _build(SEG_DEMO, 'mmseg')
    # IN (GroupNorm(C, C)), LN, BN and a mixed choice; each mixed layer costs export time
    model = _settle(model, [('in', 'in'), ('ln', 'ln'), ('bn', 'bn'), ('in', 'in'), ('bn', 'in')]).eval()
    checkpoint = str(tmp_path / 'trained.pth')
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    size = 64
    done = deploy.deploy_checkpoint(SEG_DEMO, checkpoint, str(tmp_path / 'deployed.pth'),
                                    onnx=str(tmp_path / 'deployed.onnx'), onnx_shape=(size, size))
    assert done.onnx_report['max_abs_diff'] <= 1e-4 and done.onnx_report['kind'] == 'segmentor'

    graph = onnx.load(done.onnx).graph
    assert {n.domain for n in graph.node} <= {'', 'ai.onnx'}
    assert 'InstanceNormalization' in {n.op_type for n in graph.node}  # GroupNorm(C, C) and (1, C)
    cfg = Config.fromfile(done.config)
    init_default_scope('mmseg')
    deployed = MODELS.build(dict(cfg.model, data_preprocessor=cfg.get('data_preprocessor'))).eval()
    load_checkpoint(deployed, done.checkpoint, strict=True)
    assert any(isinstance(m, deploy.InstanceNorm) for m in deployed.modules())  # GroupNorm(C, C)
    # reference: a fresh image through mmseg's data preprocessor (BGR -> RGB, normalise) and predict
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size)))
    data = deployed.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
    with torch.no_grad():
        expected = deployed.predict(data['inputs'], data['data_samples'])[0].seg_logits.data
    session = onnxruntime.InferenceSession(done.onnx, providers=['CPUExecutionProvider'])
    (got, ) = session.run(None, {'image': image[None].float().numpy()})
    assert got.shape == (1, 4, size, size)
    assert (torch.from_numpy(got[0]) - expected).abs().max() <= 1e-4


@pytest.mark.slow
@needs_onnx_torch
def test_onnx_export_of_a_detector_covers_backbone_neck_and_rpn(tmp_path):
    from ssn_plugins.deploy.onnx import export_onnx
    torch.manual_seed(0)
    import copy

    import onnxruntime
    from mmdet.structures import DetDataSample
    cfg, model = _build(_config(tmp_path, MASK_RCNN), 'mmdet')
    model = _settle(model, [('in', 'in'), ('bn', 'bn'), ('ln', 'ln')]).eval()
    reference = copy.deepcopy(model)  # the SN/SSN layers as trained, not collapsed
    report = export_onnx(collapse_norms(model), cfg, str(tmp_path / 'det.onnx'), shape=(64, 64))
    # 5 FPN levels, then RPN scores and box deltas per level
    assert report['kind'] == 'detector' and report['outputs'] == 15
    # recomputed here: a fresh image through mmdet's own data preprocessor, the
    # uncollapsed model's features and RPN head, against onnxruntime
    size = 64
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size)))
    data = reference.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
    with torch.no_grad():
        feats = reference.extract_feat(data['inputs'])
        scores, deltas = reference.rpn_head(feats)
    expected = [*feats, *scores, *deltas]
    session = onnxruntime.InferenceSession(report['path'], providers=['CPUExecutionProvider'])
    got = session.run(None, {session.get_inputs()[0].name: image[None].float().numpy()})
    assert len(got) == len(expected) == 15
    for g, e in zip(got, expected):
        assert g.shape == tuple(e.shape)
        assert float((torch.from_numpy(g) - e).abs().max()) <= 1e-4


def test_custom_onnx_operators_are_named():
    from onnx import helper
    from ssn_plugins.deploy.onnx import check_standard_ops
    node = helper.make_node('FusedConv', ['x'], ['y'], domain='com.microsoft')
    graph = helper.make_graph([node], 'g', [helper.make_tensor_value_info('x', 1, [1])],
                              [helper.make_tensor_value_info('y', 1, [1])])
    with pytest.raises(ValueError, match='com.microsoft::FusedConv'):
        check_standard_ops(helper.make_model(graph))
    check_standard_ops(helper.make_model(helper.make_graph(
        [helper.make_node('Relu', ['x'], ['y'])], 'g', graph.input, graph.output)))


def test_onnx_without_onnxruntime_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'onnxruntime' else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"needs onnxruntime, which is not installed: pip install 'ssn_plugins\[onnx\]'"):
        deploy.deploy_checkpoint(SEG_DEMO, str(tmp_path / 'missing.pth'), str(tmp_path / 'd.pth'),
                                 onnx=str(tmp_path / 'd.onnx'))


def test_onnx_on_an_older_torch_says_which_torch_it_needs(tmp_path, monkeypatch):
    """Before reading anything: the torch that torch.onnx.export(dynamo=True) needs."""
    import ssn_plugins.deploy.onnx as onnx_export
    monkeypatch.setattr(onnx_export, 'TORCH_VERSION', (2, 4))
    with pytest.raises(ImportError, match=r'needs torch >= 2\.5; this is torch '):
        deploy.deploy_checkpoint(SEG_DEMO, str(tmp_path / 'missing.pth'), str(tmp_path / 'd.pth'),
                                 onnx=str(tmp_path / 'd.onnx'))


@pytest.mark.slow
@needs_onnx_torch
def test_onnx_exports_layers_that_have_not_latched_with_their_eval_ratios(tmp_path, capsys):
    """Unlatched SSN layers: fixed mixtures in ONNX, equal to mmseg's predict; still SSN in the checkpoint.

    Before, torch.onnx failed after the whole build with ``No ONNX function found for aten.sort.stable``.
    """
    import onnxruntime
    from mmseg.structures import SegDataSample
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import deploy as deploy_tool  # tools/deploy.py
    sys.path.pop(0)
    torch.manual_seed(0)
    _, model = _build(SEG_DEMO, 'mmseg')
    model = _settle(model, [('bn', 'bn')]).eval()  # folded: cheap to export
    layers = dict((n, m) for n, m in model.named_modules() if is_switch_norm(m))
    free = ['backbone.layer1.0.sn1', 'backbone.layer3.1.sn2', 'decode_head.convs.0.sn']
    logits = [[0.2, 0.5, 0.1], [0.4, 0.1, 0.35], [1.0, 0.9, 0.2]]  # dense, dense, 2-sparse at r = 0.3
    with torch.no_grad():
        for k, name in enumerate(free):
            layers[name].unlatch()
            layers[name].set_radius(0.3)
            layers[name].mean_weight.copy_(torch.tensor(logits[k]))
            layers[name].var_weight.copy_(torch.tensor(logits[-1 - k]))
        layers['backbone.layer2.0.sn1'].var_choice.fill_(-1)  # half-latched: the variance is free
    mean_ratios, var_ratios = layers['backbone.layer1.0.sn1'].ratios()
    assert (mean_ratios > 0).all() and (var_ratios > 0).sum() == 2  # real mixtures
    checkpoint = str(tmp_path / 'trained.pth')
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    size = 64
    out, onnx_path = str(tmp_path / 'deployed.pth'), str(tmp_path / 'deployed.onnx')
    deploy_tool.main([SEG_DEMO, checkpoint, out, '--onnx', onnx_path, '--onnx-shape', str(size), str(size)])
    printed = capsys.readouterr().out
    assert ('ONNX: 4 SN/SSN layers have not latched; they are exported with their eval-mode ratios '
            'as constants') in printed

    # the deployed checkpoint keeps them as they were: SSN layers with their logits and radius
    saved = torch.load(out, weights_only=True)['state_dict']
    for name in free:
        torch.testing.assert_close(saved[f'{name}.mean_weight'], layers[name].mean_weight.detach())
        assert saved[f'{name}.mean_choice'] == -1 and saved[f'{name}.radius'] == 0.3
    cfg = Config.fromfile(str(tmp_path / 'deployed.py'))
    init_default_scope('mmseg')
    deployed = MODELS.build(cfg.model).eval()
    load_checkpoint(deployed, out, strict=True)
    # reference: the deployed model's own SSN layers (SparsestMax in eval) through mmseg's predict
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size)))
    data = deployed.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
    with torch.no_grad():
        expected = deployed.predict(data['inputs'], data['data_samples'])[0].seg_logits.data
    session = onnxruntime.InferenceSession(onnx_path, providers=['CPUExecutionProvider'])
    (got, ) = session.run(None, {'image': image[None].float().numpy()})
    assert (torch.from_numpy(got[0]) - expected).abs().max() <= 1e-4
    # and the deployed model keeps them as trainable SSN layers (plus the half-latched one)
    assert sum(isinstance(m, SparseSwitchNorm2d) and not m.latched for m in deployed.modules()) == 4


@pytest.mark.parametrize('text,message', [
    ("model = dict(type='EncoderDecoder'\nx = (\n",
     r'deploy: config {} is not valid Python: .* \(line \d\); fix the config'),
    ('x = 1\n', r'deploy: config {} has no model \(a dict, e\.g\. model = dict\(type=\.\.\.\)\): give the '
                r'config the checkpoint was trained with'),
    ('model = dict(backbone=dict(depth=18))\n', r"deploy: config {}: its model has no 'type'"),
    ('model = dict(type=undefined_name)\n',
     r"deploy: config {} could not be read: NameError: name 'undefined_name' is not defined"),
])
def test_deploy_names_a_config_it_cannot_use_before_any_work(tmp_path, text, message):
    """One line naming the config, before the (here missing) checkpoint is read."""
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import deploy as deploy_tool  # tools/deploy.py
    sys.path.pop(0)
    config = tmp_path / 'broken.py'
    config.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        deploy_tool.main([str(config), str(tmp_path / 'missing.pth'), str(tmp_path / 'out.pth')])
    assert '\n' not in str(exit_info.value.code)
    assert re.match(message.format(re.escape(str(config))), str(exit_info.value.code))
    assert os.listdir(tmp_path) == ['broken.py']


@pytest.mark.parametrize('latch_mean', [False, True])
def test_fixed_ratios_stand_in_computes_the_eval_layer_and_is_put_back(latch_mean):
    """The ONNX stand-in (constant ratios, composite path) against the layer's own eval forward."""
    from ssn_plugins.deploy.onnx import FixedRatioNorm, fixed_ratios
    model = nn.Sequential(SparseSwitchNorm2d(5), SwitchNorm2d(5), _settle(nn.Sequential(SparseSwitchNorm2d(5))))
    with torch.no_grad():
        for layer in (model[0], model[1]):
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
            layer.mean_weight.copy_(torch.tensor([0.4, 0.1, 0.35]))
            layer.var_weight.copy_(torch.tensor([1.0, 0.9, 0.2]))
        model[0].set_radius(0.3)
        if latch_mean:
            model[0].mean_choice.fill_(2)
    model.eval()
    x = torch.randn(2, 5, 4, 4)
    expected = model(x)
    originals = list(model.modules())
    with fixed_ratios(model) as count:
        assert count == 2 and isinstance(model[0], FixedRatioNorm) and isinstance(model[1], FixedRatioNorm)
        assert isinstance(model[2][0], SparseSwitchNorm2d)  # latched: exported as it is
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert list(model.modules()) == originals
