"""mmdet's and mmseg's own tools/train.py and tools/test.py (the ones ``mim train mmdet``
runs, shipped in the wheels under ``<pkg>/.mim/tools``) on the shipped demo configs.

Each toolkit: train 2 iterations, resume to 3, test, all with the upstream
scripts. Our ``tools/train.py`` resumed from the same iteration-2 checkpoint
must reach the same weights, and our ``tools/test.py`` the same metrics.
"""
import glob
import importlib.util
import json
import os.path as osp
import runpy
import sys

import pytest
import torch

from ssn_plugins.engine.checkpoint_io import decode_checkpoint

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = ['train_dataloader.batch_size=1', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False', 'val_dataloader.batch_size=1',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
        'default_hooks.logger.interval=1']
CASES = {
    'mmdet': ('mask-rcnn_r18-ssn_fpn_demo.py', ['coco/bbox_mAP', 'coco/segm_mAP']),
    'mmseg': ('fcn_r18-ssn_demo.py', ['mIoU', 'aAcc']),
}


def _upstream(toolkit, name):
    pkg = importlib.util.find_spec(toolkit).submodule_search_locations[0]
    path = osp.join(pkg, '.mim', 'tools', f'{name}.py')
    assert osp.isfile(path), f'{toolkit} wheel without .mim/tools/{name}.py'
    return path


def _run(script, argv, monkeypatch):
    monkeypatch.setattr(sys, 'argv', [script, *argv])
    runpy.run_path(script, run_name='__main__')


def _schedule(iters):
    # no validation during training: the test step evaluates
    return [f'train_cfg.max_iters={iters}', 'train_cfg.val_interval=100',
            'default_hooks.checkpoint.interval=1']


def _test_metrics(work_dir):
    """The metrics line of the last run's json log (written by mmengine's LoggerHook)."""
    logs = sorted(glob.glob(osp.join(work_dir, '*', '*.json')))
    lines = [json.loads(line) for line in open(logs[-1])]
    return lines[-1]


def _weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


@pytest.mark.slow
@pytest.mark.parametrize('toolkit', CASES)
def test_upstream_tools_train_resume_and_test_the_demo(toolkit, demo_dir, monkeypatch):
    tmp_path = demo_dir  # the cwd, where the demo configs read data/ssn_demo
    config, metric_keys = CASES[toolkit]
    config = osp.join(REPO, 'configs', 'demo', config)
    up = str(tmp_path / 'upstream')
    train, test = _upstream(toolkit, 'train'), _upstream(toolkit, 'test')

    _run(train, [config, '--work-dir', up, '--cfg-options', *TINY, *_schedule(2)], monkeypatch)
    resume = ['--resume'] if toolkit == 'mmseg' else ['--resume', 'auto']
    _run(train, [config, '--work-dir', up, *resume, '--cfg-options', *TINY, *_schedule(3)], monkeypatch)
    ckpt = osp.join(up, 'iter_3.pth')
    # torch's default weights_only load reads it (SafeCheckpointHook is in the config), and
    # the run went on from iteration 2 rather than starting again
    resumed = torch.load(ckpt, map_location='cpu', weights_only=True)
    decode_checkpoint(resumed)
    assert resumed['meta']['iter'] == 3
    assert len(resumed['message_hub']['log_scalars']['train/loss'].data[0]) == 3

    ours = str(tmp_path / 'ours')
    _run(osp.join(REPO, 'tools', 'train.py'),
         [config, '--work-dir', ours, '--resume', osp.join(up, 'iter_2.pth'), '--cfg-options', *TINY,
          *_schedule(3)], monkeypatch)
    mine, theirs = _weights(osp.join(ours, 'iter_3.pth')), _weights(ckpt)
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key

    _run(test, [config, ckpt, '--work-dir', up, '--cfg-options', *TINY], monkeypatch)
    upstream_metrics = _test_metrics(up)
    out = str(tmp_path / 'metrics.json')
    _run(osp.join(REPO, 'tools', 'test.py'),
         [config, ckpt, '--work-dir', ours, '--out-metrics', out, '--cfg-options', *TINY], monkeypatch)
    our_metrics = json.load(open(out))
    for key in metric_keys:
        assert upstream_metrics[key] == pytest.approx(our_metrics[key], abs=1e-6), key
