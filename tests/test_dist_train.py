"""Distributed launches: the SyncSSN configs, and tools/dist_train.sh with 2 CPU processes (gloo)."""
import glob
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SYNC_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', 'mm*', '*syncssn*.py')))


def _norm_types(obj, path=''):
    """(path, type) of every dict whose type is a switchable norm, anywhere in a config."""
    if isinstance(obj, dict):
        if obj.get('type') in ('SSN', 'SyncSSN', 'SN', 'SyncSN'):
            yield path, obj['type']
        for key, value in obj.items():
            yield from _norm_types(value, f'{path}.{key}')
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _norm_types(value, f'{path}[{i}]')


def test_every_ssn_detection_and_segmentation_config_has_a_syncssn_variant():
    ssn = glob.glob(osp.join(ROOT, 'configs', 'mmdet', 'mask-rcnn_r50-ssn_*.py'))
    ssn += glob.glob(osp.join(ROOT, 'configs', 'mmseg', '*_r50-ssn-d8_*.py'))
    expected = sorted(p.replace('-ssn_', '-syncssn_').replace('-ssn-', '-syncssn-') for p in ssn)
    assert len(expected) == 14 and SYNC_CONFIGS == expected


@pytest.mark.parametrize('path', SYNC_CONFIGS, ids=osp.basename)
def test_syncssn_config_is_its_ssn_config_with_synced_layers(path):
    sync = Config.fromfile(path).to_dict()
    ssn = Config.fromfile(path.replace('-syncssn', '-ssn')).to_dict()
    sync_norms = list(_norm_types(sync))
    assert sync_norms and all(t == 'SyncSSN' for _, t in sync_norms), sync_norms
    assert sync_norms == [(p, 'SyncSSN') for p, _ in _norm_types(ssn)]

    def rename(obj):  # the SSN config with every SSN layer made SyncSSN
        if isinstance(obj, dict):
            return {k: ('SyncSSN' if k == 'type' and v == 'SSN' else rename(v)) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(rename(v) for v in obj)
        return obj

    assert sync == rename(ssn)


_DUMP_HOOK = '''
import os
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankStateDumpHook(Hook):
    """Every rank saves its own weights and buffers (checkpoints come from rank 0 only)."""

    def after_run(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(state, os.path.join(runner.work_dir, f'rank{get_rank()}_state.pth'))
'''

_CONFIG = '''
_base_ = {base!r}
custom_imports = dict(imports=['ssn_plugins', 'rank_dump'], allow_failed_imports=False)
data_root = {data!r}
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
train_cfg = dict(max_iters=3)
default_hooks = dict(logger=dict(interval=1))
# The radius reaches 1 at iteration 1: every layer latches, the last iteration
# runs latched under DDP without find_unused_parameters.
custom_hooks = [dict(type='SSNRadiusHook', end=1), dict(type='RankStateDumpHook')]
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_dist_train_two_cpu_processes_end_identical(tmp_path):
    """tools/dist_train.sh CONFIG 2 on CPUs: both ranks end with the same weights, stats and choices."""
    from ssn_plugins.demo import make_demo_dataset
    data = tmp_path / 'data'
    make_demo_dataset(str(data), num_train=8, num_val=1, size=64)
    (tmp_path / 'rank_dump.py').write_text(_DUMP_HOOK)
    config = tmp_path / 'syncssn_demo.py'
    config.write_text(_CONFIG.format(
        base=osp.join(ROOT, 'configs', 'demo', 'mask-rcnn_r18-syncssn_fpn_demo.py'),
        data=str(data) + '/'))
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()), OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT, os.environ.get('PYTHONPATH', '')]))
    work_dir = tmp_path / 'work'
    proc = subprocess.run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), str(config), '2',
                           '--work-dir', str(work_dir)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert 'Distributed training: True' in log and 'Iter(train) [3/3]' in log
    rank0, rank1 = (torch.load(work_dir / f'rank{r}_state.pth', weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    choices = [k for k in rank0 if k.endswith(('.mean_choice', '.var_choice'))]
    assert len(choices) > 20 and all(int(rank0[k]) >= 0 for k in choices)  # all latched
    for key in rank0:  # weights, running statistics (not broadcast: synced) and choices
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, msg=key)


def test_slurm_train_passes_the_job_to_srun(tmp_path):
    """tools/slurm_train.sh: one srun task per GPU running tools/train.py with the slurm launcher."""
    stub = tmp_path / 'srun'
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$SRUN_LOG"\n')
    stub.chmod(0o755)
    env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}', SRUN_LOG=str(tmp_path / 'argv'),
               GPUS='16', PORT='29123')
    subprocess.run(['bash', osp.join(ROOT, 'tools', 'slurm_train.sh'), 'gpu', 'ssn', 'cfg.py',
                    '--work-dir', 'wd'], env=env, check=True, timeout=30)
    argv = (tmp_path / 'argv').read_text().split('\n')[:-1]
    assert argv[:2] == ['-p', 'gpu'] and '--ntasks=16' in argv and '--gres=gpu:8' in argv
    train = argv.index(osp.join(ROOT, 'tools', 'train.py'))
    assert argv[train + 1:] == ['cfg.py', '--launcher', 'slurm', '--work-dir', 'wd']


def test_cpu_distributed_setup_needs_torchrun(monkeypatch):
    from ssn_plugins.engine import setup_cpu_distributed
    cfg = Config(dict(launcher='none'))
    assert setup_cpu_distributed(cfg) is cfg and 'model_wrapper_cfg' not in cfg
    if torch.cuda.is_available():
        pytest.skip('with CUDA the GPU path of mmengine is used')
    with pytest.raises(ValueError, match='--launcher pytorch'):
        setup_cpu_distributed(Config(dict(launcher='slurm')))
    monkeypatch.delenv('MASTER_ADDR', raising=False)
    with pytest.raises(ValueError, match='MASTER_ADDR'):
        setup_cpu_distributed(Config(dict(launcher='pytorch')))
