"""The switchable-normalization forward as a pure function.

All statistics come from one pass over ``x`` viewed as ``(N, C, L)``: the
per-(n, c) mean and biased variance.  LN and BN moments are averages of those
(law of total variance, so no ``E[x^2] - E[x]^2`` cancellation), and the
output is ``x * scale + shift`` with per-(n, c) ``scale`` and ``shift``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

__all__ = ['NORMALIZERS', 'switch_norm', 'per_sample_moments', 'mix_moments', 'pool_batch']

#: ``bn_pool(mean, var) -> (mean (1, C), var (1, C), count)``: the BN branch's
#: batch moments from per-(n, c) moments, and how many values they cover per channel.
BatchPool = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, int]]

#: The normalizers a layer can switch between, in the order of its logits.
NORMALIZERS = ('in', 'ln', 'bn')


def per_sample_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) mean and biased variance of ``x`` (N, C, L), in float32 or float64."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    var, mean = torch.var_mean(x, dim=-1, correction=0)  # (N, C) each
    return mean, var


def _pool(mean: Tensor, var: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Moments of the union of groups with equal size: mean of means, total variance."""
    pooled_mean = mean.mean(dim, keepdim=True)
    pooled_var = var.mean(dim, keepdim=True) + (mean - pooled_mean).square().mean(dim, keepdim=True)
    return pooled_mean, pooled_var


def pool_batch(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor, int]:
    """BN moments of this process's batch (the default ``bn_pool``); ``count`` is N."""
    pooled_mean, pooled_var = _pool(mean, var, 0)
    return pooled_mean, pooled_var, mean.shape[0]


def mix_moments(mean: Tensor,
                var: Tensor,
                mean_ratios: Tensor,
                var_ratios: Tensor,
                normalizers: Sequence[str],
                bn_moments: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
    """Combine IN/LN/BN moments with the importance ratios.

    Args:
        mean, var: per-(n, c) moments, (N, C).
        mean_ratios, var_ratios: (K,), one entry per name in ``normalizers``.
        bn_moments: (mean, var) of shape (1, C) or (C,) for the BN branch
            (pooled batch moments in training, running statistics in eval).

    Returns:
        mean and variance, each (N, C).
    """
    moments = {}
    for name in normalizers:
        if name == 'in':
            moments[name] = (mean, var)
        elif name == 'ln':
            moments[name] = _pool(mean, var, 1)
        else:
            moments[name] = tuple(t.to(mean.dtype).view(1, -1) for t in bn_moments)
    mixed_mean = sum(mean_ratios[k] * moments[name][0] for k, name in enumerate(normalizers))
    mixed_var = sum(var_ratios[k] * moments[name][1] for k, name in enumerate(normalizers))
    return mixed_mean.expand_as(mean), mixed_var.expand_as(var)


def switch_norm(x: Tensor,
                mean_ratios: Tensor,
                var_ratios: Tensor,
                normalizers: Sequence[str] = NORMALIZERS,
                running_mean: Optional[Tensor] = None,
                running_var: Optional[Tensor] = None,
                weight: Optional[Tensor] = None,
                bias: Optional[Tensor] = None,
                training: bool = True,
                momentum: float = 0.1,
                eps: float = 1e-5,
                bn_pool: BatchPool = pool_batch,
                fused: bool = True) -> Tensor:
    """Switchable normalization of ``x`` (N, C, *).

    In training the BN branch uses the batch moments and, when running buffers
    are given, updates them in place:
    ``running = (1 - momentum) * running + momentum * batch`` with the
    unbiased batch variance for ``running_var`` (as ``torch.nn.BatchNorm2d``).
    In eval the BN branch uses the running buffers.  ``bn_pool`` computes the
    BN branch's batch moments (synced layers pass one that reduces across
    processes).

    With the default ``bn_pool`` and ``fused=True`` this runs the fused
    Function of :mod:`.fused` (closed-form backward, saves only ``x`` and
    per-(n, c) vectors); a custom ``bn_pool`` (synced layers) or
    ``fused=False`` takes the plain autograd path below.
    """
    if fused and bn_pool is pool_batch:
        from .fused import fused_switch_norm  # fused imports this module
        return fused_switch_norm(x, mean_ratios, var_ratios, normalizers, running_mean, running_var,
                                 weight, bias, training, momentum, eps)
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)  # (N, C, L)
    with torch.autocast(x.device.type, enabled=False):
        mean, var = per_sample_moments(x3)
        bn_moments = None
        if 'bn' in normalizers:
            if training:
                batch_mean, batch_var, count = bn_pool(mean, var)
                bn_moments = (batch_mean, batch_var)
                if running_mean is not None:
                    _update_running(batch_mean, batch_var, count * x3.shape[-1], running_mean,
                                    running_var, momentum)
            else:
                bn_moments = (running_mean, running_var)
        mixed_mean, mixed_var = mix_moments(mean, var, mean_ratios.to(mean.dtype),
                                            var_ratios.to(mean.dtype), normalizers, bn_moments)
        scale = torch.rsqrt(mixed_var + eps)
        if weight is not None:
            scale = scale * weight.to(scale.dtype)
        shift = -mixed_mean * scale
        if bias is not None:
            shift = shift + bias.to(shift.dtype)
        xs = x3 if x3.dtype == scale.dtype else x3.to(scale.dtype)
        y = torch.addcmul(shift.unsqueeze(-1), xs, scale.unsqueeze(-1))
    return y.to(x.dtype).reshape(x.shape)


@torch.no_grad()
def _update_running(batch_mean: Tensor, batch_var: Tensor, count: int, running_mean: Tensor,
                    running_var: Tensor, momentum: float) -> None:
    """``running = (1 - momentum) * running + momentum * batch``, unbiased variance."""
    unbiased = batch_var * (count / (count - 1) if count > 1 else 1.0)
    running_mean.lerp_(batch_mean.view(-1).to(running_mean.dtype), momentum)
    running_var.lerp_(unbiased.view(-1).to(running_var.dtype), momentum)
