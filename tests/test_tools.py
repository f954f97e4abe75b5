"""tools/train.py and tools/test.py end to end on tiny demo data (mmdet and mmseg),
and the weights_only-safe Runner checkpoints behind them."""
import json
import math
import os
import os.path as osp
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader

from ssn_plugins.engine import launch
from ssn_plugins.engine.checkpoint_io import decode_checkpoint, encode_checkpoint
from tool_loader import load_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_CFG = osp.join(REPO, 'configs', 'demo', 'mask-rcnn_r18-ssn_fpn_demo.py')
SEG_CFG = osp.join(REPO, 'configs', 'demo', 'fcn_r18-ssn_demo.py')
TINY = ['train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False', 'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False', 'default_hooks.logger.interval=1']


def _schedule(iters, val_interval=100):
    return [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={val_interval}',
            f'default_hooks.checkpoint.interval={iters}']


@pytest.mark.slow
def test_mmdet_train_resume_test(demo_dir):
    train, test = load_tool('train'), load_tool('test')
    work = str(demo_dir / 'work')
    train.main([DET_CFG, '--work-dir', work, '--cfg-options', *TINY, *_schedule(2)])
    ckpt = osp.join(work, 'iter_2.pth')
    # written weights_only-safe: torch 2.13's default load reads it
    raw = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert raw['meta']['iter'] == 2

    # --resume (no path: the work dir's last checkpoint) continues to iteration 3
    train.main([DET_CFG, '--work-dir', work, '--resume', '--cfg-options', *TINY, *_schedule(3)])
    resumed = torch.load(osp.join(work, 'iter_3.pth'), map_location='cpu', weights_only=True)
    decode_checkpoint(resumed)
    assert resumed['meta']['iter'] == 3
    loss = resumed['message_hub']['log_scalars']['train/loss']
    assert isinstance(loss, HistoryBuffer) and len(loss.data[0]) == 3  # history kept across resume

    out = str(demo_dir / 'metrics.json')
    test.main([DET_CFG, osp.join(work, 'iter_3.pth'), '--work-dir', work, '--out-metrics', out,
               '--cfg-options', *TINY])
    metrics = json.load(open(out))
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key


@pytest.mark.slow
def test_mmseg_train_and_test(demo_dir):
    train, test = load_tool('train'), load_tool('test')
    work = str(demo_dir / 'work')
    seg_tiny = TINY + ['val_dataloader.batch_size=1']
    train.main([SEG_CFG, '--work-dir', work, '--cfg-options', *seg_tiny, *_schedule(2, 2)])
    out = str(demo_dir / 'metrics.json')
    test.main([SEG_CFG, osp.join(work, 'iter_2.pth'), '--work-dir', work, '--out-metrics', out,
               '--cfg-options', *seg_tiny])
    metrics = json.load(open(out))
    assert 0.0 <= metrics['mIoU'] <= 100.0


def test_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='config file not found'):
        launch.load_config(str(tmp_path / 'nope.py'))
    plain = tmp_path / 'plain.py'
    plain.write_text("model = dict(type='X')\n")
    with pytest.raises(ValueError, match='default_scope'):
        launch.load_config(str(plain))
    cfg = launch.load_config(DET_CFG, work_dir=str(tmp_path))
    assert [h['type'] for h in cfg.custom_hooks].count('SafeCheckpointHook') == 1
    with pytest.raises(FileNotFoundError, match='--resume'):
        launch.set_resume(cfg, str(tmp_path / 'missing.pth'))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA'):
            launch.enable_amp(cfg)


def test_safe_checkpoint_round_trip(tmp_path):
    buf = HistoryBuffer([1.0, 2.5], [1, 2], max_length=7)
    ckpt = {'meta': {'iter': 4, 'seed': np.int64(3), 'arr': np.arange(3, dtype=np.float32),
                     'dt': np.dtype('float64'), 'names': ('a', 'b'), 'tags': {'x'}},
            'state_dict': {'w': torch.ones(2)},
            'message_hub': {'log_scalars': {'train/loss': buf}, 'runtime_info': {'iter': 4}}}
    encode_checkpoint(ckpt)
    path = str(tmp_path / 'c.pth')
    torch.save(ckpt, path)
    back = torch.load(path, weights_only=True)
    decode_checkpoint(back)
    assert back['meta']['seed'] == 3 and type(back['meta']['seed']) is np.int64
    assert back['meta']['arr'].dtype == np.float32 and back['meta']['arr'].tolist() == [0, 1, 2]
    assert back['meta']['dt'] == np.float64 and back['meta']['names'] == ('a', 'b')
    assert back['meta']['tags'] == {'x'} and 'ssn_plugins_safe_checkpoint' not in back['meta']
    got = back['message_hub']['log_scalars']['train/loss']
    assert got.max_length == 7 and got.data[0].tolist() == [1.0, 2.5] and got.data[1].tolist() == [1, 2]

    class Opaque:
        pass

    with pytest.raises(TypeError, match=r'meta\.thing'):
        encode_checkpoint({'meta': {'thing': Opaque()}})


def _payload(path):
    open(path, 'w').write('pwned')


class _Malicious:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _payload, (self.marker,)


@pytest.mark.slow
@pytest.mark.parametrize('force_unsafe', [False, True], ids=['default', 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'])
def test_malicious_pickle_still_refused(demo_dir, monkeypatch, force_unsafe):
    """mmengine's loaders (the Runner's load_from, resume, test) never unpickle code: not on
    torch 2.1 (whose default is weights_only=False), not with the variable that turns it off."""
    if force_unsafe:
        monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    tmp_path = demo_dir
    marker = str(tmp_path / 'marker')
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {}, 'meta': {'x': _Malicious(marker)}}, path)
    with pytest.raises(pickle.UnpicklingError):
        CheckpointLoader.load_checkpoint(path, map_location='cpu')
    with pytest.raises(pickle.UnpicklingError, match='not written by these tools'):
        load_tool('test').main([DET_CFG, path, '--work-dir', str(tmp_path / 'w')])
    assert not os.path.exists(marker)


# -- with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, no Runner load runs a pickle's code ---------------

_EVIL = """
import sys, torch
class Evil:
    def __reduce__(self):
        return exec, (f"open({sys.argv[2]!r}, 'w').write('pwned')", )
torch.save({'state_dict': {}, 'meta': {'x': Evil()}}, sys.argv[1])
"""


def _evil_checkpoint(folder):
    """A checkpoint whose unpickling writes folder/marker (with weights_only=False)."""
    path, marker = str(folder / 'evil.pth'), str(folder / 'marker')
    subprocess.run([sys.executable, '-c', _EVIL, path, marker], check=True)
    return path, marker


def _run_unsafe_env(args, cwd):
    """A tool in its own process with the variable that switches torch.load's default off."""
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize('how', ['test', 'resume', 'load_from', 'init_cfg_pretrained'])
def test_runner_loads_never_run_a_pickle_even_with_the_variable_set(demo_dir, how):
    """tools/test.py CFG evil.pth, train --resume evil.pth, load_from and init_cfg Pretrained, each
    run as a real process with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1: refused, the file named, no code run."""
    evil, marker = _evil_checkpoint(demo_dir)
    work = str(demo_dir / 'w')
    seg_tiny = TINY + ['val_dataloader.batch_size=1', *_schedule(1, 1)]
    config = SEG_CFG
    if how == 'init_cfg_pretrained':
        config = str(demo_dir / 'pretrained.py')
        with open(config, 'w') as f:
            f.write(f"_base_ = {SEG_CFG!r}\nmodel = dict(backbone=dict(init_cfg=dict(_delete_=True, "
                    f"type='Pretrained', checkpoint={evil!r})))\n")
    args = {'test': [osp.join(REPO, 'tools', 'test.py'), config, evil, '--work-dir', work,
                     '--cfg-options', *seg_tiny],
            'resume': [osp.join(REPO, 'tools', 'train.py'), config, '--work-dir', work, '--resume', evil,
                       '--cfg-options', *seg_tiny],
            'load_from': [osp.join(REPO, 'tools', 'train.py'), config, '--work-dir', work,
                          '--cfg-options', f'load_from={evil}', *seg_tiny],
            'init_cfg_pretrained': [osp.join(REPO, 'tools', 'train.py'), config, '--work-dir', work,
                                    '--cfg-options', *seg_tiny]}[how]
    done = _run_unsafe_env(args, demo_dir)
    assert not os.path.exists(marker), 'the payload ran'
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert re.search(rf'^(train|test): {re.escape(evil)} holds a disallowed Python global '
                     r'\(((__builtin__|builtins)\.)?exec\) that torch\.load\(weights_only=True\) refuses to '
                     r'unpickle: it was not written by these tools and may run code when loaded; nothing was '
                     r'loaded or run\.', last), last


_LATE_SCHEME = """
import sys, torch
import ssn_plugins  # wraps mmengine's loaders
from mmengine.runner import CheckpointLoader

def load_from_mine(filename, map_location):  # registered after the import, as a plugin would
    return torch.load(filename[len('mine://'):], map_location=map_location)

CheckpointLoader.register_scheme('mine://', load_from_mine)
def load_local(filename, map_location):
    return torch.load(filename, map_location=map_location)

CheckpointLoader.register_scheme('', load_local, force=True)  # and over the local files' loader
for path in ('mine://' + sys.argv[1], sys.argv[1]):
    try:
        CheckpointLoader.load_checkpoint(path, map_location='cpu')
        print('loaded')
    except Exception as err:
        print(type(err).__name__, str(err).splitlines()[0][:200])
"""


@pytest.mark.slow
def test_a_scheme_registered_after_import_is_weights_only_too(tmp_path):
    evil, marker = _evil_checkpoint(tmp_path)
    done = _run_unsafe_env(['-c', _LATE_SCHEME, evil], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not os.path.exists(marker), 'the payload ran'
    lines = [line for line in done.stdout.splitlines() if ' - mmengine - ' not in line]
    assert [line.split(' holds ')[0] for line in lines] == [f'UnpicklingError mine://{evil}',
                                                            f'UnpicklingError {evil}'], lines
    assert all('disallowed Python global' in line for line in lines), lines
