"""A latched SSN layer under DistributedDataParallel with find_unused_parameters=False."""
import pytest
import torch
import torch.distributed as dist
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
