"""Interrupted and resumed Runner runs of the FCN demo, for tests/test_resume.py.

The config builder and the interrupting hook serve the one-process tests and
the 2-process worker alike; the worker lives outside the test module for the
reason :mod:`sync_workers` gives (spawned workers are pickled by module name).
"""
import os
import os.path as osp

import torch
from mmengine.hooks import Hook
from sync_workers import _finish, _init

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# FCN demo config: no dropout and no random augmentation, so a run is a
# deterministic function of the seed and the (seeded, resumable) data order.
SEG_CFG = osp.join(REPO, 'configs', 'demo', 'fcn_r18-ssn_demo.py')
ITERS, STOP = 6, 3
# For 2 processes: randomness drawn from torch's RNG, different on every rank
# (dropout in both heads, a seed per rank: mmengine seeds every rank alike by
# default), and SyncSSN, whose running statistics are the same on every rank:
# rank 0's checkpoint then holds every rank's state but the RNG's.
TWO_PROCESS_OPTIONS = {
    'model.decode_head.dropout_ratio': 0.1, 'model.auxiliary_head.dropout_ratio': 0.1,
    'randomness': dict(seed=0, diff_rank_seed=True),
    'model.data_preprocessor.size': (64, 64),  # the demo images' size: no padding to 192
    'model.backbone.norm_cfg': dict(type='SyncSSN'),
    'model.decode_head.norm_cfg': dict(type='SyncSSN'),
    'model.auxiliary_head.norm_cfg': dict(type='SyncSSN'),
}


class Interrupt(Exception):
    pass


class InterruptHook(Hook):
    """Kill the run after iteration ``stop`` (after its checkpoint was written)."""

    def __init__(self, stop: int) -> None:
        self.stop = stop

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.stop:
            raise Interrupt


def fcn_resume_cfg(work_dir: str, launcher: str = 'none', **options):
    """The FCN demo for ``ITERS`` iterations with a checkpoint after ``STOP``; ``options`` override."""
    from ssn_plugins.engine import launch
    defaults = {
        'train_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_cfg.max_iters': ITERS, 'train_cfg.val_interval': 1000,
        'default_hooks.checkpoint.interval': STOP, 'default_hooks.checkpoint.max_keep_ckpts': -1,
        'default_hooks.logger.interval': 1,
        # the radius reaches 1 at iteration 4, so layers latch during the run
        'custom_hooks': [dict(type='SSNRadiusHook', end=4), dict(type='SafeCheckpointHook')],
    }
    return launch.load_config(SEG_CFG, {**defaults, **options}, work_dir, launcher=launcher)


def resume_worker(rank: int, out_dir: str) -> None:
    """One rank of 2 (gloo, CPU): a full run, then an interrupted run and its resume.

    The demo data must be under ``out_dir/data/ssn_demo``.  Saves this rank's
    final state dicts of the full and the resumed run.
    """
    # What torchrun sets and setup_cpu_distributed checks; the group itself
    # comes from _init (file rendezvous, collective timeout).
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2',
                      MASTER_ADDR='127.0.0.1', MASTER_PORT='29400')
    _init(rank, 2, osp.join(out_dir, 'rendezvous'))
    os.chdir(out_dir)
    from mmengine.model import is_model_wrapper

    from ssn_plugins.engine import launch

    def state_of(runner) -> dict:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def cfg(name: str, **options):
        return fcn_resume_cfg(osp.join(out_dir, name), 'pytorch', **TWO_PROCESS_OPTIONS, **options)

    # the uninterrupted run writes no checkpoint (saving must not change a run)
    full = launch.train(cfg('full', **{'default_hooks.checkpoint.interval': 10 * ITERS,
                                       'default_hooks.checkpoint.save_last': False}))
    interrupted = launch.build_runner(cfg('split'))
    interrupted.register_hook(InterruptHook(STOP), priority='LOWEST')
    try:
        interrupted.train()
        raise AssertionError('the run was not interrupted')
    except Interrupt:
        pass
    resumed = launch.build_runner(launch.set_resume(cfg('split'), 'auto'))
    resumed.train()
    torch.save(dict(full=state_of(full), resumed=state_of(resumed), resumed_iter=resumed.iter),
               osp.join(out_dir, f'rank{rank}.pt'))
    _finish()
