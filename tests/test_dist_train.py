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
DET_SEG_SYNC_CONFIGS = [p for p in SYNC_CONFIGS if osp.basename(osp.dirname(p)) in ('mmdet', 'mmseg')]


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
    assert len(expected) == 14 and DET_SEG_SYNC_CONFIGS == expected


@pytest.mark.slow
@pytest.mark.parametrize('path', SYNC_CONFIGS, ids=osp.basename)
def test_syncssn_config_is_its_ssn_config_with_synced_layers(path):
    # the shared bases' named parts (ssn_d8_model, syncssn_norm_cfg, ...) are building
    # blocks, not settings: compare what they build
    helpers = ('ssn_norm_cfg', 'ssn_d8_model', 'syncssn_norm_cfg', 'syncssn_d8_model')
    sync = {k: v for k, v in Config.fromfile(path).to_dict().items() if k not in helpers}
    ssn = {k: v for k, v in Config.fromfile(path.replace('-syncssn', '-ssn')).to_dict().items() if k not in helpers}
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

from ssn_plugins.engine.hooks import sparse_switch_norms

# (mean_weight, var_weight) logits, order IN, LN, BN, given to the SSN layers in
# turn: a lead of 1 makes SparsestMax one-hot at radius 0, a small one only at
# radius sqrt(2/3) ~ 0.82.  So layers latch the mean first, the variance first,
# both at once, or both late, as a fine-tuned (pretrained SSN) model does.
LOGITS = [([2.0, 0.0, 0.0], [0.10, 0.00, 0.05]), ([0.00, 0.05, 0.10], [0.0, 0.0, 2.0]),
          ([0.0, 2.0, 0.0], [0.0, 2.0, 0.0]), ([0.05, 0.10, 0.00], [0.10, 0.05, 0.00])]


@HOOKS.register_module()
class VariedLogitsHook(Hook):
    """Give the SSN layers the initial logits above, the same on every rank."""

    def before_train(self, runner):
        for i, layer in enumerate(sparse_switch_norms(runner.model)):
            mean, var = LOGITS[i % len(LOGITS)]
            with torch.no_grad():
                layer.mean_weight.copy_(torch.tensor(mean))
                layer.var_weight.copy_(torch.tensor(var))


@HOOKS.register_module()
class RankStateDumpHook(Hook):
    """Every rank records its choices after each iteration and saves its final state
    (checkpoints come from rank 0 only)."""

    def before_train(self, runner):
        self.history = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.history.append([[int(layer.mean_choice), int(layer.var_choice)]
                             for layer in sparse_switch_norms(runner.model)])

    def after_run(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(dict(state=state, history=torch.tensor(self.history)),
                   os.path.join(runner.work_dir, f'rank{get_rank()}_state.pth'))
'''

# 12 iterations with the default schedule (radius = iteration / 12): the late
# layers latch at iteration 10 (radius 0.83), and iteration 11 runs fully latched.
ITERS = 12
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
train_cfg = dict(max_iters={iters})
default_hooks = dict(logger=dict(interval=1))
# The released radius schedule (0 to 1 over the run), under DDP without
# find_unused_parameters while the layers latch.
custom_hooks = [dict(type='SSNRadiusHook'), dict(type='VariedLogitsHook'),
                dict(type='RankStateDumpHook')]
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_dist_train_two_cpu_processes_end_identical(tmp_path):
    """tools/dist_train.sh CONFIG 2 on CPUs with the normal radius schedule: layers latch at
    different iterations (mean first, variance first, both) under DDP without
    find_unused_parameters, and both ranks end with the same weights, stats and choices."""
    from ssn_plugins.demo import make_demo_dataset
    data = tmp_path / 'data'
    make_demo_dataset(str(data), num_train=8, num_val=1, size=64)
    (tmp_path / 'rank_dump.py').write_text(_DUMP_HOOK)
    config = tmp_path / 'syncssn_demo.py'
    config.write_text(_CONFIG.format(
        base=osp.join(ROOT, 'configs', 'demo', 'mask-rcnn_r18-syncssn_fpn_demo.py'),
        data=str(data) + '/', iters=ITERS))
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()), OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT, os.environ.get('PYTHONPATH', '')]))
    work_dir = tmp_path / 'work'
    proc = subprocess.run(['bash', osp.join(ROOT, 'tools', 'dist_train.sh'), str(config), '2',
                           '--work-dir', str(work_dir)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    errors = [line for line in log.splitlines() if 'Error: ' in line][:4]  # torchrun's tail hides them
    assert proc.returncode == 0, '\n'.join(errors) + '\n' + proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'Distributed training: True' in log and f'Iter(train) [{ITERS}/{ITERS}]' in log
    rank0, rank1 = (torch.load(work_dir / f'rank{r}_state.pth', weights_only=True) for r in (0, 1))

    history = rank0['history']  # (iterations, layers, mean/var), -1 while free
    assert history.shape[0] == ITERS and history.shape[1] > 20
    assert torch.equal(rank1['history'], history)
    latched = history >= 0
    assert bool(latched[-1].all())
    # a latched choice stays latched and never changes
    assert bool((latched[1:] >= latched[:-1]).all())
    assert bool((history[latched] == history[-1].expand_as(history)[latched]).all())
    first = (~latched).sum(0)  # iteration at which each choice latched, (layers, 2)
    mean_at, var_at = first[:, 0], first[:, 1]
    assert bool((mean_at < var_at).any()) and bool((var_at < mean_at).any())  # half-latched layers
    assert bool((mean_at == var_at).any())
    assert 0 < int(first.max()) < ITERS - 1  # the last ones latch mid-run, not at the start or end

    state0, state1 = rank0['state'], rank1['state']
    assert state0.keys() == state1.keys()
    choices = [k for k in state0 if k.endswith(('.mean_choice', '.var_choice'))]
    assert len(choices) > 20 and all(int(state0[k]) >= 0 for k in choices)  # all latched
    for key in state0:  # weights, running statistics (not broadcast: synced) and choices
        torch.testing.assert_close(state1[key], state0[key], rtol=0, atol=0, msg=key)


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
