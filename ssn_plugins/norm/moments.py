"""Statistics of switchable normalization: per-(n, c) moments, their pooling, running buffers.

Every normalizer's moments come from one pass over ``x`` viewed as
``(N, C, L)``: the per-(n, c) mean and biased variance (two-pass accurate,
one ATen kernel on every device).  LN and BN moments are averages of those
(law of total variance, so no ``E[x^2] - E[x]^2`` cancellation).  The bottom
of the ``norm`` package: it imports nothing from it.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..compat import is_compiling

__all__ = ['NORMALIZERS', 'BatchPool', 'channel_moments', 'row_moments', 'sample_moments', 'pool_moments', 'local_batch_moments',
           'branch_moments', 'update_running_stats', 'accumulation_dtype']

#: The normalizers a layer can switch between, in the order of its logits.
NORMALIZERS = ('in', 'ln', 'bn')

#: ``batch_pool(mean, var, length) -> (mean (1, C), var (1, C), count)``: the BN
#: branch's batch moments from per-(n, c) moments of ``length`` values each, and
#: how many values per channel they cover (an int, or a 0-d tensor when it is
#: only known on the device, as for synced layers).
BatchPool = Callable[[Tensor, Tensor, int], Tuple[Tensor, Tensor, Union[int, Tensor]]]


def accumulation_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 input, else float32 (statistics never in half precision)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def channel_moments(input: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance per channel (dim 1) of ``input`` (N, C, *), over all other dims.

    One reduction on every device; only the ATen kernel differs.  Eager runs
    ``batch_norm_update_stats`` (two-pass accurate on the CPU, several times
    faster there than ``var_mean``'s Welford; Welford on CUDA).  Under
    ``torch.compile`` it is ``var_mean``, which inductor lowers to a Welford
    reduction fused with its neighbours; ``batch_norm_update_stats`` has no
    lowering and would stay an opaque call that reads the input once more.
    """
    if is_compiling():
        dims = [0, *range(2, input.dim())]
        var, mean = torch.var_mean(input, dims, correction=0)
        return mean, var
    return torch.batch_norm_update_stats(input, None, None, 0.0)


def row_moments(rows: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of each row of ``rows`` (1, R, L): two (R,) tensors."""
    return channel_moments(rows)


def sample_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance per (n, c) of ``x`` (N, C, *) in any memory format: two (N, C).

    Reduces in place of a layout copy (channels_last has no (1, N*C, L) view);
    differentiable.  2-D input has one value per (n, c): itself, variance 0.
    """
    if x.dim() == 2:
        return x, torch.zeros_like(x)
    var, mean = torch.var_mean(x, tuple(range(2, x.dim())), correction=0)
    return mean, var


def _batch_norm_update_stats_meta(input: Tensor, running_mean: Optional[Tensor],
                                  running_var: Optional[Tensor], momentum: float) -> tuple[Tensor, Tensor]:
    channels = input.shape[1]
    dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    return input.new_empty(channels, dtype=dtype), input.new_empty(channels, dtype=dtype)


# torch 2.1 to 2.13 give this op no Meta kernel, so tracing the eager kernel choice with fake
# tensors and dynamic shapes (make_fx, or torch.compile where is_compiling() is not set)
# would fail at it; add the shape rule, only where torch has none.
if not torch._C._dispatch_has_kernel_for_dispatch_key('aten::batch_norm_update_stats', 'Meta'):
    _ATEN_META = torch.library.Library('aten', 'IMPL', 'Meta')
    _ATEN_META.impl('batch_norm_update_stats', _batch_norm_update_stats_meta)


def pool_moments(mean: Tensor, var: Tensor, dim: int,
                 differentiable: bool = True) -> tuple[Tensor, Tensor]:
    """Moments of the union of equal-size groups along ``dim`` of (N, C): mean of means, total variance.

    ``differentiable=False`` (the fused Function, which has its own backward)
    takes the spread of the means from :func:`channel_moments`, about 5-25x
    faster in eager on the CPU than ``var_mean`` for these (N, C) shapes.
    """
    if differentiable:
        spread, pooled_mean = torch.var_mean(mean, dim, correction=0, keepdim=True)
    else:  # (N, C) is a batch of N for dim 0; (1, N, C) one sample of N channels for dim 1
        groups = mean if dim == 0 else mean.unsqueeze(0)
        pooled_mean, spread = channel_moments(groups)
        shape = (1, -1) if dim == 0 else (-1, 1)
        pooled_mean, spread = pooled_mean.view(shape), spread.view(shape)
    return pooled_mean, var.mean(dim, keepdim=True) + spread


def local_batch_moments(mean: Tensor, var: Tensor, length: int,
                        differentiable: bool = True) -> tuple[Tensor, Tensor, int]:
    """BN moments of this process's batch; ``count`` is ``N * length`` values per channel."""
    pooled_mean, pooled_var = pool_moments(mean, var, 0, differentiable)
    return pooled_mean, pooled_var, mean.shape[0] * length


def branch_moments(mean: Tensor, var: Tensor, normalizers: Sequence[str],
                   bn_moments: Optional[tuple[Tensor, Tensor]],
                   differentiable: bool = True) -> Tensor:
    """Every normalizer's (mean, var) broadcast to (N, C), stacked as (2, K, N * C).

    Args:
        mean, var: per-(n, c) moments, (N, C).
        bn_moments: the BN branch's (mean, var), each (1, C): batch moments in
            training, running statistics in eval.
    """
    n, c = mean.shape
    means, variances = [], []
    for name in normalizers:
        if name == 'in':
            branch = (mean, var)
        elif name == 'ln':
            branch = pool_moments(mean, var, 1, differentiable)
        else:
            branch = bn_moments
        means.append(branch[0].expand(n, c))
        variances.append(branch[1].expand(n, c))
    return torch.stack(means + variances).view(2, len(normalizers), n * c)


@torch.no_grad()
def update_running_stats(batch_mean: Tensor, batch_var: Tensor, count: Union[int, Tensor],
                         running_mean: Tensor, running_var: Tensor,
                         factor: Union[float, Tensor]) -> None:
    """``running = (1 - factor) * running + factor * batch`` with the unbiased batch variance.

    As ``torch.nn.BatchNorm2d``: ``factor`` is the momentum, or ``1 / t`` for a
    cumulative average (``momentum=None``); ``count`` values per channel give
    the ``count / (count - 1)`` correction (none for a single value).
    """
    if isinstance(count, Tensor):
        correction = count / (count - 1).clamp_min(1)
    else:
        correction = count / (count - 1) if count > 1 else 1.0
    unbiased = batch_var.view(-1) * correction
    running = [running_mean, running_var]
    batch = [batch_mean.view(-1).to(running_mean.dtype), unbiased.to(running_var.dtype)]
    if isinstance(factor, Tensor):
        # one lerp_ each: torch 2.1 has no Meta kernel for _foreach_lerp_ with tensor weights
        # (torch.compile), nor a float32 weight for float64 buffers
        factor = factor.to(running_mean.dtype)
        for buffer, value in zip(running, batch):
            buffer.lerp_(value, factor)
    else:
        torch._foreach_lerp_(running, batch, factor)
