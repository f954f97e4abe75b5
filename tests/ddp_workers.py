"""Worker functions for the 2-process (gloo, CPU) DistributedDataParallel tests.

They live outside the test modules for the reason :mod:`sync_workers` gives
(``torch.multiprocessing.spawn`` pickles them by module name), and share its
process-group set-up (a collective timeout, so a failing rank cannot leave the
other one waiting) and exit.  Each worker saves ``out_dir/rank{r}.pt``.
"""
import os

import torch
from sync_workers import _finish, _init
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# Initial (mean_weight, var_weight) logits, order IN, LN, BN, of the four SSN
# layers of the latching-order model.  SparsestMax is one-hot at radius 0 when
# the largest logit leads by at least 1 (sparsemax is already one-hot); a
# margin well below 1 stays free until the radius reaches sqrt(2/3) ~ 0.82.
LATCH_ORDER_LOGITS = {
    'mean_first': ([2.0, 0.0, 0.0], [0.10, 0.00, 0.05]),
    'var_first': ([0.00, 0.05, 0.10], [0.0, 2.0, 0.0]),
    'together': ([0.0, 0.0, 2.0], [0.0, 0.0, 2.0]),
    'late': ([0.05, 0.10, 0.00], [0.10, 0.05, 0.00]),
}
LATCH_ORDER_ITERS = 12
LATCH_ORDER_RADIUS_END = 10  # the radius grows from 0 to 1 over iterations 0..10


def latch_order_worker(rank: int, out_dir: str, synced: bool) -> None:
    """Train conv + SSN layers under DDP(find_unused_parameters=False) while the radius grows.

    Saves the per-iteration choices (``history``: (iterations, layers, 2),
    -1 while free), the radii and the final state dict.  Plain SSN runs with
    PyTorch's default ``broadcast_buffers=True`` and ends with an evaluation
    forward, whose buffer broadcast gives every rank rank 0's running stats;
    SyncSSN runs as mmengine wraps models (``broadcast_buffers=False``), so
    equal running stats show its synchronised statistics.
    """
    _init(rank, 2, os.path.join(out_dir, 'rendezvous'))
    from ssn_plugins import SparseSwitchNorm2d, SyncSparseSwitchNorm
    from ssn_plugins.engine.hooks import radius_at
    norm_cls = SyncSparseSwitchNorm if synced else SparseSwitchNorm2d

    torch.manual_seed(0)
    width = 6
    layers, norms = [nn.Conv2d(3, width, 3, padding=1)], []
    for mean_logits, var_logits in LATCH_ORDER_LOGITS.values():
        norm = norm_cls(width)
        norm.mean_weight.data = torch.tensor(mean_logits)
        norm.var_weight.data = torch.tensor(var_logits)
        norms.append(norm)
        layers += [norm, nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)]
    layers[-1] = nn.Conv2d(width, 1, 1)
    net = nn.Sequential(*layers)
    model = DistributedDataParallel(net, broadcast_buffers=not synced, find_unused_parameters=False)
    logits = [p for n in norms for p in (n.mean_weight, n.var_weight)]
    others = [p for p in net.parameters() if all(p is not q for q in logits)]
    # Logits at a tenth of the learning rate, as in the released recipe.
    optimizer = torch.optim.SGD([dict(params=others), dict(params=logits, lr=0.005)], lr=0.05,
                                momentum=0.9)

    gen = torch.Generator().manual_seed(100 + rank)  # different data on every rank
    history = torch.full((LATCH_ORDER_ITERS, len(norms), 2), -2, dtype=torch.long)
    radii = []
    for i in range(LATCH_ORDER_ITERS):
        radius = radius_at(i, 1.0, 0, LATCH_ORDER_RADIUS_END)  # what SSNRadiusHook sets
        for norm in norms:
            norm.set_radius(radius)
        x, target = torch.randn(2, 3, 6, 6, generator=gen), torch.randn(2, 1, 6, 6, generator=gen)
        loss = (model(x) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        radii.append(radius)
        history[i] = torch.tensor([[int(n.mean_choice), int(n.var_choice)] for n in norms])
    net.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 6, 6, generator=gen))
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    torch.save(dict(history=history, radii=torch.tensor(radii), state=state),
               os.path.join(out_dir, f'rank{rank}.pt'))
    _finish()
