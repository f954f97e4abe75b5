"""Interrupting a run and resuming it (--resume) ends exactly where the uninterrupted run ends:
same weights, running stats, SSN radius and latched selections (CPU, seeded), for FCN and
for Mask R-CNN, whose samplers draw from torch's RNG, in one process and in two."""
import os.path as osp
import types

import pytest
import torch
from resume_workers import (ITERS, REPO, STOP, Interrupt, InterruptHook, fcn_resume_cfg,
                            resume_worker)
from sync_workers import spawn

from ssn_plugins.demo import make_demo_dataset
from ssn_plugins.engine import checkpoint_io, launch
from ssn_plugins.engine.hooks import sparse_switch_norms


@pytest.mark.slow
def test_interrupt_and_resume_is_exact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_demo_dataset(str(tmp_path / 'data' / 'ssn_demo'), num_train=4, num_val=1, size=64, seed=1)

    full = launch.train(fcn_resume_cfg(str(tmp_path / 'full'))).model

    interrupted = launch.build_runner(fcn_resume_cfg(str(tmp_path / 'split')))
    interrupted.register_hook(InterruptHook(STOP), priority='LOWEST')
    with pytest.raises(Interrupt):
        interrupted.train()
    assert interrupted.iter + 1 == STOP
    assert osp.isfile(tmp_path / 'split' / f'iter_{STOP}.pth')

    resumed_runner = launch.build_runner(launch.set_resume(fcn_resume_cfg(str(tmp_path / 'split')), 'auto'))
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


@pytest.mark.slow
def test_mask_rcnn_resume_is_exact_despite_random_sampling(tmp_path, monkeypatch):
    """RPN/RoI sampling draws from torch's RNG: SafeCheckpointHook restores it on resume."""
    monkeypatch.chdir(tmp_path)
    data_root = str(tmp_path / 'data') + '/'
    make_demo_dataset(data_root, num_train=4, num_val=1, size=64, seed=2)

    full = launch.train(_det_cfg(str(tmp_path / 'full'), data_root)).model
    interrupted = launch.build_runner(_det_cfg(str(tmp_path / 'split'), data_root))
    interrupted.register_hook(InterruptHook(DET_STOP), priority='LOWEST')
    with pytest.raises(Interrupt):
        interrupted.train()
    resumed = launch.build_runner(launch.set_resume(_det_cfg(str(tmp_path / 'split'), data_root), 'auto'))
    resumed.train()
    assert resumed.iter == DET_ITERS

    full_state, resumed_state = full.state_dict(), resumed.model.state_dict()
    for key, value in full_state.items():
        torch.testing.assert_close(resumed_state[key], value, rtol=0, atol=1e-6, msg=key)
    assert all(layer.latched for layer in sparse_switch_norms(resumed.model))


@pytest.mark.slow
def test_two_process_resume_gives_every_rank_its_own_rng(tmp_path):
    """2 processes (gloo, CPU), dropout drawn from a different torch RNG stream on each rank:
    the resumed run ends, on every rank, exactly where the uninterrupted run ends.

    Rank 0 writes the checkpoint; restoring its torch state on both ranks would
    give rank 1 other dropout masks after the resume (a different run)."""
    make_demo_dataset(str(tmp_path / 'data' / 'ssn_demo'), num_train=4, num_val=1, size=64, seed=1)
    ranks = spawn(resume_worker, tmp_path, deadline=400)

    checkpoint = torch.load(tmp_path / 'split' / f'iter_{STOP}.pth', weights_only=True)
    rng = checkpoint['meta']['ssn_plugins_torch_rng']
    assert rng['iter'] == STOP and len(rng['ranks']) == 2
    assert torch.equal(rng['cpu'], rng['ranks'][0]['cpu'])  # rank 0's at the top, as before
    assert not torch.equal(rng['ranks'][0]['cpu'], rng['ranks'][1]['cpu'])

    for rank, result in enumerate(ranks):
        assert result['resumed_iter'] == ITERS
        full, resumed = result['full'], result['resumed']
        assert full.keys() == resumed.keys()
        for key, value in full.items():  # weights, running stats, radius, choices
            torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6,
                                       msg=lambda m, where=f'rank {rank}: {key}': f'{where}: {m}')
        choices = [k for k in full if k.endswith(('.mean_choice', '.var_choice'))]
        assert choices and all(int(full[k]) >= 0 for k in choices)
        assert all(float(full[k]) == 1.0 for k in full if k.endswith('.radius'))


def _rng_states(*seeds):
    states = []
    for seed in seeds:
        torch.manual_seed(seed)
        states.append(torch.get_rng_state())
    return states


def _resume_hook(rng: dict, iteration: int = STOP):
    """A SafeCheckpointHook that has just loaded a checkpoint whose RNG entry is ``rng``."""
    hook = checkpoint_io.SafeCheckpointHook()
    hook.after_load_checkpoint(None, {'meta': {checkpoint_io._RNG_KEY: rng}})
    runner = types.SimpleNamespace(iter=iteration)
    return hook, runner


def test_one_process_checkpoint_keeps_its_single_rng_state_format():
    """One process: the RNG entry is {'iter', 'cpu'} as before, and resuming restores it."""
    hook = checkpoint_io.SafeCheckpointHook()
    checkpoint = {'meta': {'iter': STOP}}
    expected = _rng_states(3)[0]
    hook.before_save_checkpoint(types.SimpleNamespace(iter=STOP - 1), checkpoint)
    rng = checkpoint['meta'][checkpoint_io._RNG_KEY]
    assert set(rng) - {'cuda'} == {'iter', 'cpu'} and rng['iter'] == STOP  # 'cuda' with a GPU
    torch.testing.assert_close(rng['cpu'], expected, rtol=0, atol=0)
    torch.manual_seed(99)
    hook, runner = _resume_hook(rng)
    hook.before_train_iter(runner, 0)
    torch.testing.assert_close(torch.get_rng_state(), expected, rtol=0, atol=0)


def test_resume_with_another_number_of_processes_warns_and_uses_rank0(monkeypatch):
    """A 2-process checkpoint resumed in one process: a warning, rank 0's state, no crash."""
    logged = []
    monkeypatch.setattr(checkpoint_io, 'print_log', lambda msg, **kwargs: logged.append((msg, kwargs)))
    rank0, rank1 = _rng_states(1, 2)
    hook, runner = _resume_hook({'iter': STOP, 'cpu': rank0, 'ranks': [{'cpu': rank0}, {'cpu': rank1}]})
    torch.manual_seed(99)
    hook.before_train_iter(runner, 0)
    torch.testing.assert_close(torch.get_rng_state(), rank0, rtol=0, atol=0)
    assert len(logged) == 1 and 'random state of 2 process(es)' in logged[0][0]
    assert logged[0][1]['level'] == 30  # logging.WARNING

    logged.clear()  # a single-state checkpoint (one process, or an older version): silent
    hook, runner = _resume_hook({'iter': STOP, 'cpu': rank1})
    hook.before_train_iter(runner, 0)
    torch.testing.assert_close(torch.get_rng_state(), rank1, rtol=0, atol=0)
    assert not logged
