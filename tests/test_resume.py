"""Interrupting a run and resuming it (--resume) ends exactly where the uninterrupted run ends:
same weights, running stats, SSN radius and latched selections (CPU, seeded), for FCN and
for Mask R-CNN, whose samplers draw from torch's RNG."""
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook

from ssn_plugins.demo import make_demo_dataset
from ssn_plugins.engine import launch
from ssn_plugins.engine.hooks import sparse_switch_norms

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# FCN demo config: no dropout and no random augmentation, so a run is a
# deterministic function of the seed and the (seeded, resumable) data order.
SEG_CFG = osp.join(REPO, 'configs', 'demo', 'fcn_r18-ssn_demo.py')
ITERS, STOP = 6, 3


class _Interrupt(Exception):
    pass


class _InterruptHook(Hook):
    """Kill the run after iteration ``STOP`` (after its checkpoint was written)."""

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == STOP:
            raise _Interrupt


def _cfg(work_dir):
    options = {
        'train_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_cfg.max_iters': ITERS, 'train_cfg.val_interval': 1000,
        'default_hooks.checkpoint.interval': STOP, 'default_hooks.checkpoint.max_keep_ckpts': -1,
        'default_hooks.logger.interval': 1,
        # the radius reaches 1 at iteration 4, so layers latch during the run
        'custom_hooks': [dict(type='SSNRadiusHook', end=4), dict(type='SafeCheckpointHook')],
    }
    return launch.load_config(SEG_CFG, options, work_dir)


def test_interrupt_and_resume_is_exact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_demo_dataset(str(tmp_path / 'data' / 'ssn_demo'), num_train=4, num_val=1, size=64, seed=1)

    full = launch.train(_cfg(str(tmp_path / 'full'))).model

    interrupted = launch.build_runner(_cfg(str(tmp_path / 'split')))
    interrupted.register_hook(_InterruptHook(), priority='LOWEST')
    with pytest.raises(_Interrupt):
        interrupted.train()
    assert interrupted.iter + 1 == STOP
    assert osp.isfile(tmp_path / 'split' / f'iter_{STOP}.pth')

    resumed_runner = launch.build_runner(launch.set_resume(_cfg(str(tmp_path / 'split')), 'auto'))
    resumed_runner.train()
    assert resumed_runner.iter == ITERS
    resumed = resumed_runner.model

    full_state, resumed_state = full.state_dict(), resumed.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for key, value in full_state.items():
        torch.testing.assert_close(resumed_state[key], value, rtol=0, atol=1e-6, msg=key)

    layers = list(zip(sparse_switch_norms(full), sparse_switch_norms(resumed)))
    assert layers
    for a, b in layers:
        assert float(a.radius) == float(b.radius) == 1.0
        assert a.latched and b.latched
        assert int(a.mean_choice) == int(b.mean_choice) and int(a.var_choice) == int(b.var_choice)


DET_CFG = osp.join(REPO, 'configs', 'demo', 'mask-rcnn_r18-ssn_fpn_demo.py')
DET_ITERS, DET_STOP = 4, 2


class _InterruptDetHook(Hook):

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == DET_STOP:
            raise _Interrupt


def _det_cfg(work_dir, data_root):
    options = {
        'train_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_dataloader.dataset.data_root': data_root,
        'train_cfg.max_iters': DET_ITERS, 'train_cfg.val_interval': 1000,
        'default_hooks.checkpoint.interval': DET_STOP, 'default_hooks.checkpoint.max_keep_ckpts': -1,
        'val_cfg': None, 'val_dataloader': None, 'val_evaluator': None,
        'custom_hooks': [dict(type='SSNRadiusHook', end=3), dict(type='SafeCheckpointHook')],
    }
    return launch.load_config(DET_CFG, options, work_dir)


def test_mask_rcnn_resume_is_exact_despite_random_sampling(tmp_path, monkeypatch):
    """RPN/RoI sampling draws from torch's RNG: SafeCheckpointHook restores it on resume."""
    monkeypatch.chdir(tmp_path)
    data_root = str(tmp_path / 'data') + '/'
    make_demo_dataset(data_root, num_train=4, num_val=1, size=64, seed=2)

    full = launch.train(_det_cfg(str(tmp_path / 'full'), data_root)).model
    interrupted = launch.build_runner(_det_cfg(str(tmp_path / 'split'), data_root))
    interrupted.register_hook(_InterruptDetHook(), priority='LOWEST')
    with pytest.raises(_Interrupt):
        interrupted.train()
    resumed = launch.build_runner(launch.set_resume(_det_cfg(str(tmp_path / 'split'), data_root), 'auto'))
    resumed.train()
    assert resumed.iter == DET_ITERS

    full_state, resumed_state = full.state_dict(), resumed.model.state_dict()
    for key, value in full_state.items():
        torch.testing.assert_close(resumed_state[key], value, rtol=0, atol=1e-6, msg=key)
    assert all(layer.latched for layer in sparse_switch_norms(resumed.model))
