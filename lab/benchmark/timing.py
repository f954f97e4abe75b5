"""Timing and memory measures shared by the benchmarks."""
from __future__ import annotations

import random
import statistics
import time
from typing import Callable

import torch

__all__ = ['CLOCKS', 'time_interleaved', 'to_ms', 'saved_bytes']

#: ``'wall'``: elapsed time; ``'cpu'``: CPU time of this process (all threads), which time
#: slices lost to other processes do not inflate: with one thread, the robust measure on a
#: shared machine.
CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                     seed: int = 0, clock: str = 'wall') -> dict[str, list[float]]:
    """Seconds of each call of each function, calls interleaved in a fresh random order."""
    if clock not in CLOCKS:
        raise ValueError(f'clock must be one of {sorted(CLOCKS)}, got {clock!r}')
    clock = CLOCKS[clock]
    rng = random.Random(seed)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            start = clock()
            fns[name]()
            times[name].append(clock() - start)
    return times


def to_ms(times: dict[str, list[float]], stat: str) -> dict[str, float]:
    """Milliseconds per function: ``'min'`` (on a shared machine the noise is additive, time
    slices lost to other processes, so the minimum estimates the cost itself) or ``'median'``."""
    reduce = {'min': min, 'median': statistics.median}[stat]
    return {name: reduce(ts) * 1e3 for name, ts in times.items()}


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs."""
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return total[0]
