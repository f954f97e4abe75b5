"""Whole networks with SN/SSN against BN: inference latency, a Mask R-CNN training iteration."""
from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ssn_plugins.builder import build_model as build_config_model
from ssn_plugins.builder import read_config
from ssn_plugins.deploy import collapse_norms, fold_conv_bn
from ssn_plugins.norm import SparseSwitchNormBase
from .layers import latch_layer
from .timing import time_interleaved, to_ms

__all__ = ['swap_norm', 'settle', 'build_model', 'network_benchmark', 'det_inputs', 'det_batch',
           'det_loss', 'train_iteration_benchmark']

_SWITCH_TYPES = ('SN', 'SSN', 'SN1d', 'SN3d', 'SSN1d', 'SSN3d', 'SyncSN', 'SyncSSN')


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
        if isinstance(module, SparseSwitchNormBase):
            latch_layer(module, *choices[k % len(choices)])
            k += 1
    return model


def build_model(config: str, scope: str, norm: Optional[dict] = None) -> nn.Module:
    """Build the model of ``config`` (no pretrained weights) with its SN/SSN swapped for ``norm``."""
    from mmengine.config import ConfigDict
    cfg = read_config(config)
    cfg.model = ConfigDict(swap_norm(cfg.model.to_dict(), norm))  # mmdet reads train_cfg.rpn
    cfg.model['backbone']['norm_eval'] = False
    return build_config_model(cfg, scope, from_scratch=True)


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
        if isinstance(m, SparseSwitchNormBase):
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
    return dict(config=config, input=[1, 3, size, size], latency_ms=to_ms(times, 'min'),
                median_ms=to_ms(times, 'median'))


def det_inputs(batch: int, size: int, num_classes: int = 80) -> dict:
    """A synthetic mmdet batch: ``batch`` square images, 3 boxes with masks each."""
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(batch, (3, size, size), num_items=[3] * batch, num_classes=num_classes,
                          with_mask=True)


def det_batch(model: nn.Module, data: dict) -> dict:
    """``data`` (from :func:`det_inputs`) through the model's data preprocessor, on its device."""
    return model.data_preprocessor(copy.deepcopy(data), True)


def det_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The total training loss of an mmdet model on a preprocessed ``batch``, summed as
    ``train_step`` sums it (the data samples are copied: heads may edit them)."""
    losses = model.loss(batch['inputs'], copy.deepcopy(batch['data_samples']))
    return model.parse_losses(losses)[0]


def train_iteration_benchmark(config: str, size: int = 256, batch: int = 2, repeats: int = 3,
                              clock: str = 'wall') -> dict:
    """One Mask R-CNN training iteration (loss, backward) with SSN, SN, BN and GN (ms)."""
    torch.manual_seed(0)
    norms = {'ssn': None, 'sn': dict(type='SN'), 'bn': dict(type='BN', requires_grad=True),
             'gn': dict(type='GN', num_groups=32, requires_grad=True)}
    models = {name: build_model(config, 'mmdet', norm).train() for name, norm in norms.items()}
    data = det_inputs(batch, size)

    def step(model):
        total = det_loss(model, det_batch(model, data))
        model.zero_grad(set_to_none=True)
        total.backward()

    fns = {name: (lambda model=model: step(model)) for name, model in models.items()}
    times = time_interleaved(fns, repeats, clock=clock)
    return dict(config=config, input=[batch, 3, size, size], iteration_ms=to_ms(times, 'min'),
                median_ms=to_ms(times, 'median'))
