"""SSN layers under DistributedDataParallel with find_unused_parameters=False, latched or
latching (one process, and two real gloo processes whose layers latch in every order)."""
import pytest
import torch
import torch.distributed as dist
from ddp_workers import LATCH_ORDER_ITERS, LATCH_ORDER_LOGITS, latch_order_worker
from sync_workers import spawn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssn_plugins import SparseSwitchNorm2d


@pytest.fixture
def single_process_group(tmp_path):
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/rendezvous', rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_latched_layer_trains_under_ddp_without_unused_parameters(single_process_group):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SparseSwitchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1),
                          SparseSwitchNorm2d(2))
    for layer in (model[1], model[4]):
        layer.set_radius(1.0)
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for _ in range(3):  # the first forward latches; the next ones must still reduce every parameter
        optimizer.zero_grad()
        ddp(torch.randn(2, 3, 6, 6)).square().mean().backward()
        optimizer.step()
    assert model[1].latched and model[4].latched
    assert torch.equal(model[1].mean_weight.grad, torch.zeros(3))


def _latch_iteration(choices: torch.Tensor) -> int:
    """First iteration whose recorded choice is latched (>= 0); a latched choice never changes."""
    latched = (choices >= 0).nonzero()
    assert len(latched), 'never latched'
    first = int(latched[0])
    assert bool((choices[first:] == choices[first]).all()), f'choice changed after latching: {choices}'
    return first


@pytest.mark.slow
@pytest.mark.parametrize('synced', [False, True], ids=['SSN', 'SyncSSN'])
def test_two_processes_train_through_every_latching_order(tmp_path, synced):
    """DDP(find_unused_parameters=False) on 2 processes survives every order of latching.

    Four layers latch the mean first, the variance first, both in one step,
    and both only at a radius near 1, while the radius grows from 0 to 1 (a
    layer with one latched choice no longer uses that logit; DDP still needs
    its gradient).  Each rank trains on its own data; at the end both ranks
    hold identical weights, logits, running statistics and choices.
    """
    rank0, rank1 = spawn(latch_order_worker, tmp_path, synced, deadline=150)
    history, radii = rank0['history'], rank0['radii']
    assert history.shape == (LATCH_ORDER_ITERS, len(LATCH_ORDER_LOGITS), 2)
    assert torch.equal(rank1['history'], history)  # both ranks latched in the same step
    assert float(radii[0]) == 0.0 and float(radii[-1]) == 1.0
    at = {name: (_latch_iteration(history[:, i, 0]), _latch_iteration(history[:, i, 1]))
          for i, name in enumerate(LATCH_ORDER_LOGITS)}
    assert at['mean_first'][0] < at['mean_first'][1], at
    assert at['var_first'][1] < at['var_first'][0], at
    assert at['together'][0] == at['together'][1], at
    assert at['late'][0] == at['late'][1] and float(radii[at['late'][0]]) >= 0.8, at
    # A half-latched layer really trained on for several iterations, and the
    # model trained on with every layer latched.
    assert min(at['mean_first'][1] - at['mean_first'][0], at['var_first'][0] - at['var_first'][1]) >= 3
    assert max(max(pair) for pair in at.values()) < LATCH_ORDER_ITERS - 1

    state0, state1 = rank0['state'], rank1['state']
    assert state0.keys() == state1.keys()
    for key in state0:  # weights, logits, running statistics, radius and choices
        torch.testing.assert_close(state1[key], state0[key], rtol=0, atol=0, msg=key)
