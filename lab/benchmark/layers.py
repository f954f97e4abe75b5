"""SN/SSN layers against BatchNorm2d: train time and memory, host reads, kernels,
graph breaks, and ``torch.compile``d layers."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from .. import profiling
from ssn_plugins.compat import recompile_limit_option
from ssn_plugins.norm import SparseSwitchNorm2d, SwitchNorm2d, update_choices
from .timing import saved_bytes, time_interleaved, to_ms

__all__ = ['RESNET50_NORM_SHAPES', 'latch_layer', 'layer_kinds', 'layer_benchmark',
           'count_benchmark', 'compile_benchmark']

#: (C, H) of every distinct norm input of ResNet-50 (pytorch style) at 224x224.
RESNET50_NORM_SHAPES = [(64, 112), (64, 56), (256, 56), (128, 56), (128, 28), (512, 28), (256, 28),
                        (256, 14), (1024, 14), (512, 14), (512, 7), (2048, 7)]


def latch_layer(layer: nn.Module, mean: Union[str, int], var: Union[str, int]) -> nn.Module:
    """Latch an SSN layer on (mean, var): names ``'in'``/``'ln'``/``'bn'`` or indices, -1 = free.

    Both latched: ``layer.latch(mean, var)``.  One side free (a half-latched
    layer, which ``latch`` does not express): the other side's buffer is
    written and :func:`~ssn_plugins.update_choices` tells the host, as
    ``SSNRadiusHook`` does after a training step.  Returns the layer.
    """
    if -1 not in (mean, var):
        layer.latch(mean, var)
        return layer
    for buffer, choice in ((layer.mean_choice, mean), (layer.var_choice, var)):
        buffer.fill_(layer.normalizers.index(choice) if isinstance(choice, str) else choice)
    update_choices(layer)
    return layer


def layer_kinds(c: int, latched: Sequence[str] = ('bn', 'in-bn')) -> dict[str, nn.Module]:
    """The layer kinds to compare: BN2d, SN, SSN free (dense ratios), SSN with only its
    mean latched (on BN) and SSN latched on each of ``latched`` ('bn' or 'MEAN-VAR')."""
    layers = {'bn': nn.BatchNorm2d(c), 'sn': SwitchNorm2d(c), 'ssn_dense': SparseSwitchNorm2d(c),
              'ssn_half': latch_layer(SparseSwitchNorm2d(c), 'bn', -1)}
    for name in ('ssn_dense', 'ssn_half'):
        layers[name].set_radius(0.1)  # sparsestmax of equal logits: dense ratios
    for choice in latched:
        mean, var = choice.split('-') if '-' in choice else (choice, choice)
        layers[f'ssn_latched_{choice}'] = latch_layer(SparseSwitchNorm2d(c), mean, var)
    return layers


def layer_benchmark(batches: Sequence[int] = (2, 8),
                    shapes: Sequence[tuple[int, int]] = tuple(RESNET50_NORM_SHAPES),
                    repeats: int = 10,
                    latched: Sequence[str] = ('bn', 'in-bn'),
                    log: Optional[Callable[[str], None]] = None,
                    clock: str = 'wall') -> list[dict]:
    """Train-mode forward+backward time and saved bytes of each layer kind per shape.

    Returns one record per (batch, shape) with ``time_ms`` and ``saved_bytes``
    per kind (``bn``, ``sn``, ``ssn_dense``, ``ssn_half``, ``ssn_latched_<choice>``).
    """
    records = []
    for n in batches:
        for c, h in shapes:
            x = torch.randn(n, c, h, h, requires_grad=True)
            grad = torch.randn(n, c, h, h)
            layers = layer_kinds(c, latched)
            for layer in layers.values():
                layer.train()

            def step(layer=None, x=x, grad=grad):
                x.grad = None
                layer(x).backward(grad)

            fns = {name: (lambda layer=layer: step(layer)) for name, layer in layers.items()}
            times = time_interleaved(fns, repeats, clock=clock)
            memory = {name: saved_bytes(lambda layer=layer: layer(x)) for name, layer in layers.items()}
            record = dict(shape=[n, c, h, h], time_ms=to_ms(times, 'min'),
                          median_ms=to_ms(times, 'median'), saved_bytes=memory)
            records.append(record)
            if log:
                log(f'{record["shape"]}: ' + ', '.join(f'{k} {v:.2f} ms' for k, v in
                                                        record['time_ms'].items()))
    return records


def count_benchmark(batch: int = 2, shape: tuple[int, int] = (256, 14),
                    latched: Sequence[str] = ('bn', 'in-bn'), graph_breaks: bool = True) -> dict:
    """Host reads, kernels and graph breaks of each layer kind (see :mod:`.profiling`).

    Returns ``dict(shape=[N, C, H, W], kinds={kind: counts})`` where counts
    holds ``train_reads``/``train_kernels`` (one steady-state train step,
    forward and backward), ``eval_reads``/``eval_kernels`` (one eval forward)
    and, with ``graph_breaks``, ``train_breaks``/``eval_breaks`` (dynamo's
    graph breaks of the forward, static shapes) and ``train_breaks_dynamic``/
    ``eval_breaks_dynamic`` (dynamic shapes).  Counts do not depend on the shape.
    """
    c, h = shape
    x = torch.randn(batch, c, h, h)
    kinds = {}
    for name, layer in layer_kinds(c, latched).items():
        train_reads, train_kernels = profiling.train_step_counts(layer, x)
        eval_reads, eval_kernels = profiling.eval_forward_counts(layer, x)
        counts = dict(train_reads=train_reads, train_kernels=train_kernels, eval_reads=eval_reads,
                      eval_kernels=eval_kernels)
        if graph_breaks:
            for suffix, dynamic in (('', False), ('_dynamic', True)):
                for mode, train in (('train', True), ('eval', False)):
                    counts[f'{mode}_breaks{suffix}'] = profiling.layer_graph_breaks(
                        layer, x, train, dynamic)
        kinds[name] = counts
    return dict(shape=[batch, c, h, h], kinds=kinds)


@contextlib.contextmanager
def _fresh_dynamo() -> Iterator[None]:
    """Empty dynamo's caches before and after, with room for every layer kind's recompiles."""
    import torch._dynamo
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(**{recompile_limit_option(): 64}):
            yield
    finally:
        torch._dynamo.reset()


def compile_benchmark(batches: Sequence[int] = (2, 8),
                      shapes: Sequence[tuple[int, int]] = tuple(RESNET50_NORM_SHAPES),
                      repeats: int = 10,
                      latched: Sequence[str] = ('bn', 'in-bn'),
                      backend: str = 'inductor',
                      log: Optional[Callable[[str], None]] = None,
                      clock: str = 'wall') -> list[dict]:
    """Train-mode forward+backward time of ``torch.compile``d layers against BatchNorm2d.

    Per (batch, shape), dynamo starts empty and every kind is compiled with
    ``dynamic=False`` (one static graph per shape, as a fixed-size network
    gets); compilation happens in the two warm-up calls, outside the timing.
    Returns one record per (batch, shape) with ``time_ms`` for ``bn`` (eager
    BatchNorm2d) and ``<kind>_compiled`` for every kind of :func:`layer_benchmark`.
    """
    records = []
    for n in batches:
        for c, h in shapes:
            x = torch.randn(n, c, h, h, requires_grad=True)
            grad = torch.randn(n, c, h, h)

            def step(layer, x=x, grad=grad):
                x.grad = None
                layer(x).backward(grad)

            with _fresh_dynamo():
                layers = {'bn': nn.BatchNorm2d(c).train()}
                for name, layer in layer_kinds(c, latched).items():
                    layers[f'{name}_compiled'] = torch.compile(layer.train(), backend=backend,
                                                               dynamic=False)
                fns = {name: (lambda layer=layer: step(layer)) for name, layer in layers.items()}
                times = time_interleaved(fns, repeats, warmup=2, clock=clock)
            record = dict(shape=[n, c, h, h], backend=backend, time_ms=to_ms(times, 'min'),
                          median_ms=to_ms(times, 'median'))
            records.append(record)
            if log:
                log(f'{record["shape"]} compiled: ' + ', '.join(
                    f'{k} {v:.2f} ms' for k, v in record['time_ms'].items()))
    return records
