"""Speed and memory of SN/SSN against BatchNorm: per layer and in whole networks.

Everything is measured in one process on one machine, with the candidates
interleaved (round-robin, each repeat in a fresh random order) so that load
from other processes hits all of them alike; we report medians.  Memory is the
number of bytes autograd saves between forward and backward (summed with
``torch.autograd.graph.saved_tensors_hooks``): deterministic, and the term by
which a norm layer adds to a network's training peak.
"""
from __future__ import annotations

import copy
import random
import statistics
import time
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .deploy import collapse_norms, fold_conv_bn
from .norm.switch_norm import SparseSwitchNorm2d, SwitchNorm2d, _SparseSwitchNorm, _SwitchNormBase

__all__ = ['RESNET50_NORM_SHAPES', 'time_interleaved', 'saved_bytes', 'layer_benchmark',
           'network_benchmark', 'train_iteration_benchmark', 'format_tables']

#: (C, H) of every distinct norm input of ResNet-50 (pytorch style) at 224x224.
RESNET50_NORM_SHAPES = [(64, 112), (64, 56), (256, 56), (128, 56), (128, 28), (512, 28), (256, 28),
                        (256, 14), (1024, 14), (512, 14), (512, 7), (2048, 7)]
_SWITCH_TYPES = ('SN', 'SSN', 'SN1d', 'SN3d', 'SSN1d', 'SSN3d', 'SyncSN', 'SyncSSN')


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


def _ms(times: dict[str, list[float]], stat: str) -> dict[str, float]:
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


def _layers(c: int, latched: Sequence[str]) -> dict[str, nn.Module]:
    layers = {'bn': nn.BatchNorm2d(c), 'sn': SwitchNorm2d(c), 'ssn_dense': SparseSwitchNorm2d(c)}
    layers['ssn_dense'].set_radius(0.1)  # sparsestmax of equal logits: dense ratios
    for choice in latched:
        mean, var = choice.split('-') if '-' in choice else (choice, choice)
        layer = SparseSwitchNorm2d(c)
        layer.mean_choice.fill_(layer.normalizers.index(mean))
        layer.var_choice.fill_(layer.normalizers.index(var))
        layers[f'ssn_latched_{choice}'] = layer
    return layers


def layer_benchmark(batches: Sequence[int] = (2, 8),
                    shapes: Sequence[tuple[int, int]] = tuple(RESNET50_NORM_SHAPES),
                    repeats: int = 10,
                    latched: Sequence[str] = ('bn', ),
                    log: Optional[Callable[[str], None]] = None,
                    clock: str = 'wall') -> list[dict]:
    """Train-mode forward+backward time and saved bytes of each layer kind per shape.

    Returns one record per (batch, shape) with ``time_ms`` and ``saved_bytes``
    per kind (``bn``, ``sn``, ``ssn_dense``, ``ssn_latched_<choice>``).
    """
    records = []
    for n in batches:
        for c, h in shapes:
            x = torch.randn(n, c, h, h, requires_grad=True)
            grad = torch.randn(n, c, h, h)
            layers = _layers(c, latched)
            for layer in layers.values():
                layer.train()

            def step(layer=None, x=x, grad=grad):
                x.grad = None
                layer(x).backward(grad)

            fns = {name: (lambda layer=layer: step(layer)) for name, layer in layers.items()}
            times = time_interleaved(fns, repeats, clock=clock)
            memory = {name: saved_bytes(lambda layer=layer: layer(x)) for name, layer in layers.items()}
            record = dict(shape=[n, c, h, h], time_ms=_ms(times, 'min'),
                          median_ms=_ms(times, 'median'), saved_bytes=memory)
            records.append(record)
            if log:
                log(f'{record["shape"]}: ' + ', '.join(f'{k} {v:.2f} ms' for k, v in
                                                        record['time_ms'].items()))
    return records


def swap_norm(cfg, norm: Optional[dict]):
    """A copy of a model config with every SN/SSN ``norm_cfg`` replaced by ``norm``."""
    if isinstance(cfg, dict):
        if cfg.get('type') in _SWITCH_TYPES and norm is not None:
            return copy.deepcopy(norm)
        return type(cfg)({k: swap_norm(v, norm) for k, v in cfg.items()})
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(swap_norm(v, norm) for v in cfg)
    return cfg


def settle(model: nn.Module, choices: Sequence[tuple[str, str]]) -> nn.Module:
    """Latch every SSN layer of ``model``, cycling through ``choices`` (e.g. ``[('bn', 'bn')]``)."""
    k = 0
    for module in model.modules():
        if isinstance(module, _SparseSwitchNorm):
            mean, var = choices[k % len(choices)]
            module.mean_choice.fill_(module.normalizers.index(mean))
            module.var_choice.fill_(module.normalizers.index(var))
            k += 1
    return model


def build_model(config: str, scope: str, norm: Optional[dict] = None) -> nn.Module:
    """Build the model of ``config`` (no pretrained weights) with its SN/SSN swapped for ``norm``."""
    from mmengine.config import Config, ConfigDict
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(config)
    init_default_scope(scope)
    model_cfg = ConfigDict(swap_norm(cfg.model.to_dict(), norm))  # mmdet reads train_cfg.rpn
    model_cfg['backbone']['init_cfg'] = None
    model_cfg['backbone']['norm_eval'] = False
    if 'pretrained' in model_cfg:
        model_cfg['pretrained'] = None
    return MODELS.build(model_cfg)


def _forward_fn(model: nn.Module, size: int, scope: str) -> Callable[[], object]:
    if scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        data = model.data_preprocessor(demo_mm_inputs(1, (3, size, size)), False)
        return lambda: model.predict(data['inputs'], data['data_samples'])
    inputs = torch.randn(1, 3, size, size)
    metas = [dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size))]
    return lambda: model.encode_decode(inputs, metas)


def network_benchmark(config: str, scope: str, size: int = 256, repeats: int = 5,
                      mixed: Sequence[tuple[str, str]] = (('bn', 'bn'), ('in', 'in'), ('ln', 'ln'),
                                                          ('bn', 'in')),
                      clock: str = 'wall') -> dict:
    """Inference latency (ms) of an SSN network before/after collapse_norms vs BN fused.

    Variants: ``ssn_dense`` (not latched), ``ssn_latched_bn`` (every layer on
    (BN, BN)) before and after collapse, ``ssn_latched_mixed`` (cycling
    ``mixed``) after collapse, ``bn_fused`` (same network with BN, folded).
    """
    torch.manual_seed(0)
    variants = {}
    dense = build_model(config, scope).eval()
    for m in dense.modules():
        if isinstance(m, _SparseSwitchNorm):
            m.set_radius(0.1)
    variants['ssn_dense'] = dense
    latched = settle(build_model(config, scope), [('bn', 'bn')]).eval()
    variants['ssn_latched_bn'] = latched
    variants['ssn_latched_bn_collapsed'] = collapse_norms(copy.deepcopy(latched))
    mixed_model = settle(build_model(config, scope), list(mixed)).eval()
    variants['ssn_latched_mixed_collapsed'] = collapse_norms(mixed_model)
    bn = build_model(config, scope, dict(type='BN', requires_grad=True)).eval()
    fold_conv_bn(bn)
    variants['bn_fused'] = bn
    fns = {name: _forward_fn(model, size, scope) for name, model in variants.items()}
    with torch.no_grad():
        times = time_interleaved(fns, repeats, clock=clock)
    return dict(config=config, input=[1, 3, size, size], latency_ms=_ms(times, 'min'),
                median_ms=_ms(times, 'median'))


def train_iteration_benchmark(config: str, size: int = 256, batch: int = 2, repeats: int = 3,
                              clock: str = 'wall') -> dict:
    """One Mask R-CNN training iteration (loss, backward) with SSN, SN, BN and GN (ms)."""
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(0)
    norms = {'ssn': None, 'sn': dict(type='SN'), 'bn': dict(type='BN', requires_grad=True),
             'gn': dict(type='GN', num_groups=32, requires_grad=True)}
    models = {name: build_model(config, 'mmdet', norm).train() for name, norm in norms.items()}
    data = demo_mm_inputs(batch, (3, size, size), num_items=[3] * batch, num_classes=80,
                          with_mask=True)

    def step(model):
        batch_data = model.data_preprocessor(copy.deepcopy(data), True)
        losses = model.loss(batch_data['inputs'], batch_data['data_samples'])
        total = sum(v.sum() for k, v in losses.items() if 'loss' in k and torch.is_tensor(v))
        model.zero_grad(set_to_none=True)
        total.backward()

    fns = {name: (lambda model=model: step(model)) for name, model in models.items()}
    times = time_interleaved(fns, repeats, clock=clock)
    return dict(config=config, input=[batch, 3, size, size], iteration_ms=_ms(times, 'min'),
                median_ms=_ms(times, 'median'))


def _median_ratio(records: list[dict], key: str, kind: str) -> float:
    return statistics.median(r[key][kind] / r[key]['bn'] for r in records)


def format_tables(result: dict) -> str:
    """Markdown tables of a benchmark result (ratios are medians over shapes)."""
    lines = []
    layers = result.get('layers')
    if layers:
        kinds = [k for k in layers[0]['time_ms'] if k != 'bn']
        lines += ['| layer (train fwd+bwd) | time / BN2d (median) | time / BN2d (max) | '
                  'saved bytes / BN2d |', '|---|---|---|---|']
        for kind in kinds:
            worst = max(r['time_ms'][kind] / r['time_ms']['bn'] for r in layers)
            lines.append(f'| {kind} | {_median_ratio(layers, "time_ms", kind):.2f}x | '
                         f'{worst:.2f}x | {_median_ratio(layers, "saved_bytes", kind):.2f}x |')
        lines.append('')
        lines += ['| shape | ' + ' | '.join(['bn'] + kinds) + ' (ms) |',
                  '|---' * (len(kinds) + 2) + '|']
        for r in layers:
            lines.append(f'| {tuple(r["shape"])} | ' + ' | '.join(
                f'{r["time_ms"][k]:.2f}' for k in ['bn'] + kinds) + ' |')
        lines.append('')
    for net in result.get('networks', []):
        bn = net['latency_ms']['bn_fused']
        lines += [f'| {net["config"]} {tuple(net["input"])} inference | ms | / BN fused |',
                  '|---|---|---|']
        lines += [f'| {k} | {v:.1f} | {v / bn:.3f}x |' for k, v in net['latency_ms'].items()]
        lines.append('')
    train = result.get('train_iteration')
    if train:
        bn = train['iteration_ms']['bn']
        lines += [f'| {train["config"]} {tuple(train["input"])} train iteration | ms | / BN |',
                  '|---|---|---|']
        lines += [f'| {k} | {v:.0f} | {v / bn:.3f}x |' for k, v in train['iteration_ms'].items()]
    return '\n'.join(lines)
