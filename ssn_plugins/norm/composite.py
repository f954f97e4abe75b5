"""The switch-norm forward as composite autograd ops.

Slower and hungrier than :mod:`.fused` (autograd keeps every intermediate),
but twice differentiable and open to any BN pooling: the synced layers pass
one that reduces across processes, and the fused path recomputes through it
when a backward runs with ``create_graph=True`` (gradient penalties).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .moments import (BatchPool, accumulation_dtype, branch_moments, local_batch_moments,
                      sample_moments, update_running_stats)

__all__ = ['composite_switch_norm']


def composite_switch_norm(x: Tensor,
                          ratios: Tensor,
                          normalizers: Sequence[str],
                          running_mean: Optional[Tensor],
                          running_var: Optional[Tensor],
                          weight: Optional[Tensor],
                          bias: Optional[Tensor],
                          training: bool,
                          factor: Union[float, Tensor],
                          eps: float,
                          batch_pool: Optional[BatchPool] = None,
                          update_stats: bool = True) -> Tensor:
    """Same contract as :func:`~ssn_plugins.norm.functional.switch_norm`, on autograd.

    ``batch_pool`` (default: this process's batch) gives the BN branch's
    batch moments; ``update_stats=False`` leaves the running buffers alone.
    """
    n, c = x.shape[:2]
    acc = accumulation_dtype(x)
    xa = x.to(acc)  # (N, C, *) in x's memory format: no layout copy, and so is y
    mean, var = sample_moments(xa)  # (N, C) each
    bn = None
    if 'bn' in normalizers:
        if training:
            pool = local_batch_moments if batch_pool is None else batch_pool
            bn_mean, bn_var, count = pool(mean, var, math.prod(x.shape[2:]))
            bn = (bn_mean, bn_var)
            if update_stats and running_mean is not None:
                update_running_stats(bn_mean.detach(), bn_var.detach(), count, running_mean,
                                     running_var, factor)
        else:
            bn = (running_mean.to(acc).view(1, c), running_var.to(acc).view(1, c))
    branches = branch_moments(mean, var, normalizers, bn)  # (2, K, N * C)
    shape = (2, n, c) + (1, ) * (x.dim() - 2)
    mixed = torch.bmm(ratios.to(acc).unsqueeze(1), branches).view(shape)
    scale = torch.rsqrt(mixed[1] + eps)
    if weight is not None:
        scale = scale * weight.to(acc).view(shape[2:])
    y = (xa - mixed[0]) * scale
    if bias is not None:
        y = y + bias.to(acc).view(shape[2:])
    return y.to(x.dtype)
