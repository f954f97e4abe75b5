"""Worker functions for the 2-process (gloo, CPU) tests of SyncSN/SyncSSN.

They live outside the test modules because ``torch.multiprocessing.spawn``
pickles them by module name, and pytest's importlib mode names test modules
``tests.test_*``, which in a child process would resolve to the ``tests``
package the mmseg wheel installs.  Each worker saves its results to
``out_dir/rank{r}.pt``; the test compares them with one process.
:func:`spawn` starts workers (of this or another worker module) with a deadline.
"""
import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
from torch import multiprocessing as mp
from torch import nn

C = 3


def spawn(fn, tmp_path, *args, nprocs: int = 2, deadline: float = 180) -> list:
    """Run ``fn(rank, str(tmp_path), *args)`` in ``nprocs`` processes; their ``rank{r}.pt`` results.

    Fails (never hangs) if the workers are not done within ``deadline`` seconds;
    a worker that raises fails the test with its traceback.
    """
    context = mp.start_processes(fn, args=(str(tmp_path), *args), nprocs=nprocs, join=False,
                                 start_method='spawn')
    start = time.monotonic()
    while not context.join(timeout=1):  # raises if a worker failed
        if time.monotonic() - start > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f'{fn.__name__}: workers still running after {deadline} s')
    return [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(nprocs)]


def make_state(seed: int = 0) -> dict:
    """A random layer state and a 4-sample batch, identical on every process."""
    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(4, C, 5, 6, generator=gen) * 2 + 3,
        grad_out=torch.randn(4, C, 5, 6, generator=gen),
        weight=torch.rand(C, generator=gen) + 0.5,
        bias=torch.randn(C, generator=gen),
        mean_weight=torch.tensor([0.3, 0.1, 0.5]),
        var_weight=torch.tensor([0.2, 0.6, 0.4]),
        running_mean=torch.randn(C, generator=gen),
        running_var=torch.rand(C, generator=gen) + 0.5,
    )


def run_layer(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, training: bool) -> dict:
    """One forward/backward of ``layer`` on ``x``; outputs, gradients and buffers after it."""
    layer.train(training)
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (y * grad_out).sum().backward()
    result = dict(y=y.detach(), x_grad=x.grad)
    for name in ('weight', 'bias', 'mean_weight', 'var_weight'):
        result[f'{name}_grad'] = getattr(layer, name).grad.clone()
    result['running_mean'] = layer.running_mean.clone()
    result['running_var'] = layer.running_var.clone()
    return result


def build_layer(sparse: bool, synced: bool, state: dict, radius: float = 0.2) -> nn.Module:
    from ssn_plugins import (SparseSwitchNorm2d, SwitchNorm2d, SyncSparseSwitchNorm,
                             SyncSwitchNorm)
    cls = {(False, False): SwitchNorm2d, (False, True): SyncSwitchNorm,
           (True, False): SparseSwitchNorm2d, (True, True): SyncSparseSwitchNorm}[sparse, synced]
    layer = cls(C)
    layer.load_state_dict({k: v for k, v in state.items() if k in layer.state_dict()}, strict=False)
    if sparse:
        layer.set_radius(radius)
    return layer


def _init(rank: int, world_size: int, init_file: str) -> None:
    torch.set_num_threads(1)
    # A timeout, so a rank that fails makes the other one fail too instead of waiting forever.
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=60))


def _finish() -> None:
    """Leave once every rank has written its results.

    ``destroy_process_group`` on gloo hung now and then (a futex wait in one
    rank after the other had left), so the workers exit without tearing the
    group down: the results are on disk, and the process is gone either way.
    """
    dist.barrier()
    os._exit(0)


def global_moments_gradcheck(rank: int, world_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Directional derivatives of the global moments on the real process group, (analytic, numeric).

    float64 central differences of the whole ``world_size``-rank function: every
    rank holds its own rows (a different number per rank) and weighs the global
    outputs with its own ``grad_output``, so a rank's input gradient is right
    only with the other ranks' ``grad_output`` (the backward's all-reduce).  The
    directions move the inputs of every rank, then of each rank alone (the
    cross-rank term alone, for the ranks that stay put).  Collective: every rank
    calls it at the same point.
    """
    from ssn_plugins.norm.sync import _GlobalMoments
    gen = torch.Generator().manual_seed(10 + rank)
    rows = 2 + rank
    mean = torch.randn(rows, C, dtype=torch.float64, generator=gen)
    var = torch.rand(rows, C, dtype=torch.float64, generator=gen) + 0.1
    weight_mean, weight_var = torch.randn(2, C, dtype=torch.float64, generator=gen)

    def total_loss(m, v):  # sum over ranks of each rank's weighted outputs
        global_mean, global_var, _ = _GlobalMoments.apply(m, v, 5, None)
        local = (global_mean * weight_mean).sum() + (global_var * weight_var).sum()
        return local, _all_sum(local.detach())

    m, v = mean.clone().requires_grad_(True), var.clone().requires_grad_(True)
    total_loss(m, v)[0].backward()
    pairs = []
    for moved in [None] + list(range(world_size)):  # None: every rank moves
        d_mean = torch.randn(rows, C, dtype=torch.float64, generator=gen)
        d_var = torch.randn(rows, C, dtype=torch.float64, generator=gen)
        if moved is not None and moved != rank:
            d_mean.zero_()
            d_var.zero_()
        analytic = _all_sum((m.grad * d_mean).sum() + (v.grad * d_var).sum())
        with torch.no_grad():
            plus = total_loss(mean + eps * d_mean, var + eps * d_var)[1]
            minus = total_loss(mean - eps * d_mean, var - eps * d_var)[1]
        pairs.append(torch.stack([analytic, (plus - minus) / (2 * eps)]))
    return torch.stack(pairs)


def _all_sum(value: torch.Tensor) -> torch.Tensor:
    value = value.clone()
    dist.all_reduce(value)
    return value


def equivalence_worker(rank: int, out_dir: str, splits: list) -> None:
    """SyncSN/SyncSSN on this rank's share of the 4 samples (``splits`` = sizes per rank)."""
    _init(rank, len(splits), os.path.join(out_dir, 'rendezvous'))
    state = make_state()
    start = sum(splits[:rank])
    part = slice(start, start + splits[rank])
    results = {}
    for sparse in (False, True):
        for training in (True, False):
            layer = build_layer(sparse, True, state)
            results[sparse, training] = run_layer(layer, state['x'][part], state['grad_out'][part],
                                                  training)
    # Different image sizes per rank (mmdet pads each batch on its own): a BN-only
    # layer must equal BatchNorm over the union of all values.
    gen = torch.Generator().manual_seed(1)
    sizes = [(2, C, 4, 4), (3, C, 2, 5)]
    xs = [torch.randn(s, generator=gen) * 3 + 1 for s in sizes]
    bn_only = build_layer(True, True, state)
    bn_only.latch('bn', 'bn')
    results['bn_only'] = bn_only.train()(xs[rank]).detach()
    results['bn_only_running_var'] = bn_only.running_var.clone()
    results['gradcheck'] = global_moments_gradcheck(rank, len(splits))
    torch.save(results, os.path.join(out_dir, f'rank{rank}.pt'))
    _finish()


def ddp_latch_worker(rank: int, out_dir: str) -> None:
    """A conv + SyncSSN model under MMDistributedDataParallel that latches in step 1."""
    from mmengine.model import BaseModel, MMDistributedDataParallel

    from ssn_plugins import SyncSparseSwitchNorm

    class Net(BaseModel):

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.norm = SyncSparseSwitchNorm(4)
            self.head = nn.Conv2d(4, 1, 1)

        def forward(self, inputs, mode='loss'):
            return dict(loss=self.head(self.norm(self.conv(inputs))).square().mean())

    _init(rank, 2, os.path.join(out_dir, 'rendezvous'))
    torch.manual_seed(0)
    net = Net()
    net.norm.set_radius(1.0)  # one-hot at once: latched from the first forward on
    # As mmengine's Runner: buffers are not broadcast, so equal running stats show the sync.
    model = MMDistributedDataParallel(net, broadcast_buffers=False, find_unused_parameters=False)
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(10 + rank)  # different data per rank
    for _ in range(3):
        loss = model(torch.randn(2, 3, 6, 6, generator=gen))['loss']
        optim.zero_grad()
        loss.backward()
        optim.step()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save(state, os.path.join(out_dir, f'rank{rank}.pt'))
    _finish()
