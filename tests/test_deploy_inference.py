"""A deployed model (tools/deploy.py's OUT.py + OUT) works wherever the trained one did.

mmseg's ``init_model`` + ``inference_model`` and ``MMSegInferencer``, mmdet's
``init_detector`` + ``inference_detector`` and ``DetInferencer``, and the
upstream ``tools/test.py`` (``Runner.from_cfg`` + ``runner.test()``), each on
the shipped demo configs: the deployed model gives the trained model's
predictions (independent reference: the same API on the original config and
checkpoint), and its norms really are collapsed.
"""
import importlib.util
import json
import os
import os.path as osp
import runpy
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from torch import nn

import ssn_plugins
from ssn_plugins.builder import build_model
from ssn_plugins.deploy import InstanceNorm
from tiny_models import assert_same_detections
from tool_loader import load_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG = osp.join(ROOT, 'configs', 'demo', 'fcn_r18-ssn_demo.py')
DET = osp.join(ROOT, 'configs', 'demo', 'mask-rcnn_r18-ssn_fpn_demo.py')
# IN, LN, BN, and mixed choices: every kind of collapsed layer
CHOICES = [('in', 'in'), ('bn', 'bn'), ('ln', 'ln'), ('bn', 'in'), ('in', 'in'), ('ln', 'bn')]


def _trained(config, folder):
    """A checkpoint of ``config`` as training leaves it: every SSN layer latched, real statistics."""
    torch.manual_seed(0)
    cfg = Config.fromfile(config)
    model = build_model(cfg)
    for k, m in enumerate(m for m in model.modules() if ssn_plugins.is_switch_norm(m)):
        m.latch(*CHOICES[k % len(CHOICES)])
        with torch.no_grad():
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    metainfo = dict(cfg.test_dataloader.dataset.metainfo)
    checkpoint = str(folder / 'trained.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': metainfo}}, checkpoint)
    load_tool('deploy').main([config, checkpoint, str(folder / 'deployed.pth')])
    return config, checkpoint, str(folder / 'deployed.py'), str(folder / 'deployed.pth')


@pytest.fixture(scope='module')
def seg(tmp_path_factory):
    return _trained(SEG, tmp_path_factory.mktemp('seg'))


@pytest.fixture(scope='module')
def det(tmp_path_factory):
    return _trained(DET, tmp_path_factory.mktemp('det'))


def _image(seed=0, size=64):
    return np.random.RandomState(seed).randint(0, 256, (size, size, 3), np.uint8)


def _assert_collapsed(model):
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # folded into convs
    assert any(isinstance(m, InstanceNorm) for m in model.modules())
    assert all(m.latched for m in model.modules() if ssn_plugins.is_switch_norm(m))  # mixed choices


@pytest.mark.slow
def test_mmseg_init_model_and_inference_model(seg):
    from mmseg.apis import inference_model, init_model
    config, checkpoint, deployed_config, deployed = seg
    original = init_model(config, checkpoint, device='cpu')
    model = init_model(deployed_config, deployed, device='cpu')  # sets model.pretrained, train_cfg
    _assert_collapsed(model)
    assert model.dataset_meta == original.dataset_meta
    assert model.dataset_meta['classes'] == ('background', 'square', 'circle', 'triangle')
    with torch.no_grad():
        before, after = inference_model(original, _image()), inference_model(model, _image())
    assert (after.seg_logits.data - before.seg_logits.data).abs().max() <= 1e-4


def test_mmseg_inferencer(seg):
    from mmseg.apis import MMSegInferencer
    config, checkpoint, deployed_config, deployed = seg
    got = {}
    for name, (cfg, weights) in dict(before=(config, checkpoint), after=(deployed_config, deployed)).items():
        inferencer = MMSegInferencer(model=cfg, weights=weights, device='cpu')
        got[name] = inferencer(_image(1), return_datasamples=True)  # one image: its SegDataSample
    _assert_collapsed(inferencer.model)
    assert (got['after'].seg_logits.data - got['before'].seg_logits.data).abs().max() <= 1e-4


@pytest.mark.slow
def test_mmdet_init_detector_and_inference_detector(det):
    from mmdet.apis import inference_detector, init_detector
    config, checkpoint, deployed_config, deployed = det
    original = init_detector(config, checkpoint, device='cpu')
    model = init_detector(deployed_config, deployed, device='cpu')  # reads model.backbone
    _assert_collapsed(model)
    assert model.dataset_meta == original.dataset_meta
    assert model.dataset_meta['classes'] == ('square', 'circle', 'triangle')
    with torch.no_grad():
        before, after = inference_detector(original, _image()), inference_detector(model, _image())
    assert_same_detections(after.pred_instances, before.pred_instances)


def test_mmdet_inferencer(det):
    from mmdet.apis import DetInferencer
    config, checkpoint, deployed_config, deployed = det
    got = {}
    for name, (cfg, weights) in dict(before=(config, checkpoint), after=(deployed_config, deployed)).items():
        inferencer = DetInferencer(model=cfg, weights=weights, device='cpu', show_progress=False)
        got[name] = inferencer(_image(1), return_datasamples=True)['predictions'][0]
    _assert_collapsed(inferencer.model)
    assert_same_detections(got['after'].pred_instances, got['before'].pred_instances)


def test_inferencer_from_the_deployed_weights_alone(seg):
    """Like a Runner checkpoint, the deployed one carries its config (meta['cfg'])."""
    from mmseg.apis import MMSegInferencer
    _, _, deployed_config, deployed = seg
    meta = torch.load(deployed, weights_only=True)['meta']
    assert Config.fromstring(meta['cfg'], '.py').model.type == 'CollapsedNorms'
    inferencer = MMSegInferencer(model=None, weights=deployed, device='cpu')
    _assert_collapsed(inferencer.model)


def _upstream_test(toolkit):
    pkg = importlib.util.find_spec(toolkit).submodule_search_locations[0]
    return osp.join(pkg, '.mim', 'tools', 'test.py')


def _last_metrics(work_dir):
    logs = sorted(p for p in (osp.join(work_dir, d, f'{d}.json') for d in os.listdir(work_dir))
                  if osp.isfile(p))
    return json.loads(open(logs[-1]).read().splitlines()[-1])


TINY = ['test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
        'test_dataloader.batch_size=1']


@pytest.mark.slow
@pytest.mark.parametrize('toolkit', ['mmseg', 'mmdet'])
def test_upstream_and_our_test_py_give_the_original_metrics(toolkit, request, demo_dir, monkeypatch):
    config, checkpoint, deployed_config, deployed = request.getfixturevalue(
        'seg' if toolkit == 'mmseg' else 'det')
    keys = ['mIoU', 'aAcc'] if toolkit == 'mmseg' else ['coco/bbox_mAP', 'coco/segm_mAP']
    metrics = {}
    for name, (cfg, weights) in dict(before=(config, checkpoint), after=(deployed_config, deployed)).items():
        work_dir = str(demo_dir / f'upstream_{name}')
        monkeypatch.setattr(sys, 'argv', ['test.py', cfg, weights, '--work-dir', work_dir,
                                          '--cfg-options', *TINY])
        runpy.run_path(_upstream_test(toolkit), run_name='__main__')
        metrics[name] = _last_metrics(work_dir)
    out = str(demo_dir / 'ours.json')
    load_tool('test').main([deployed_config, deployed, '--work-dir', str(demo_dir / 'ours'),
                        '--out-metrics', out, '--cfg-options', *TINY])
    ours = json.load(open(out))
    for key in keys:
        assert metrics['after'][key] == pytest.approx(metrics['before'][key], abs=1e-6), key
        assert ours[key] == pytest.approx(metrics['before'][key], abs=1e-6), key


@pytest.mark.slow
def test_a_deployed_config_imports_ssn_plugins_itself(tmp_path):
    """A config without custom_imports (ssn_plugins imported by the user's script) still deploys to one
    that mmseg's init_model reads in a fresh process that never imports ssn_plugins."""
    import subprocess
    config = tmp_path / 'plain.py'
    config.write_text(
        "_base_ = 'mmseg::_base_/models/fcn_r50-d8.py'\n"
        "model = dict(pretrained=None, data_preprocessor=dict(type='SegDataPreProcessor', size=(32, 32)),\n"
        "             backbone=dict(depth=18, base_channels=8, norm_cfg=dict(type='SSN'), init_cfg=None),\n"
        "             decode_head=dict(in_channels=64, channels=8, num_convs=1, num_classes=3,\n"
        "                              norm_cfg=dict(type='SSN')),\n"
        "             auxiliary_head=None)\n")
    model = build_model(str(config), 'mmseg')
    for k, m in enumerate(m for m in model.modules() if ssn_plugins.is_switch_norm(m)):
        m.latch(*CHOICES[k % len(CHOICES)])
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, tmp_path / 'trained.pth')
    load_tool('deploy').main([str(config), str(tmp_path / 'trained.pth'), str(tmp_path / 'deployed.pth')])
    code = ("import sys; from mmseg.apis import init_model; "
            "m = init_model(sys.argv[1], sys.argv[2], device='cpu'); "
            "assert 'ssn_plugins' in sys.modules; print(type(m).__name__)")
    run = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'deployed.py'),
                          str(tmp_path / 'deployed.pth')], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == 'EncoderDecoder'


def test_configs_deployed_before_the_flat_layout_still_build(seg):
    """The earlier layout nested the trained model: model=dict(type='CollapsedNorms', model=..., plan=...)."""
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import load_checkpoint
    _, _, deployed_config, deployed = seg
    model = Config.fromfile(deployed_config).model.to_dict()
    collapsed = model.pop('collapsed')
    data_preprocessor = model.pop('data_preprocessor')
    old = dict(type='CollapsedNorms', model=dict(model, type=collapsed['model_type']),
               plan=collapsed['plan'], fuse_conv=collapsed['fuse_conv'])
    init_default_scope('mmseg')
    # as the Runner and init_model pass them
    built = MODELS.build(dict(old, data_preprocessor=data_preprocessor, pretrained=None, train_cfg=None))
    load_checkpoint(built, deployed, strict=True)
    _assert_collapsed(built)
