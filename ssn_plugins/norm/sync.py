"""Synchronized SN/SSN: the BN branch sees the global batch of all processes.

Segmentation trains with 2 images per GPU, where per-GPU BN moments are
noisy; ``SyncBN`` fixes that for BN and these layers do the same for the BN
branch of SN/SSN.  Only the BN branch's batch moments are synchronized
(one all-gather of ``2C + 1`` numbers per process forward, one all-reduce of
``2C`` backward, as ``SyncBatchNorm`` does); IN and LN stay per sample, and eval uses the running statistics, so
eval needs no collectives.  Without an initialised process group (or with
one process) the layers are exactly SN/SSN.

:func:`~ssn_plugins.norm.kinds.convert_sync_switchnorm` swaps the layers of a
built model for these, as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``
does for BatchNorm (which does not know them).
"""
from __future__ import annotations

import functools
import logging
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from mmengine.logging import print_log
from torch import Tensor

from .moments import NORMALIZERS, BatchPool
from .switch_norm import SparseSwitchNorm2d, SwitchNorm2d

__all__ = ['SyncSwitchNorm', 'SyncSparseSwitchNorm', 'SyncMixin']

_logged_local = False


class _GlobalMoments(torch.autograd.Function):
    """BN moments of the values of every process: one all-gather forward, one all-reduce backward.

    Each process gathers every process's (mean, variance, number of values)
    per channel and combines them by the law of total variance (exact, no
    ``E[x^2] - E[x]^2`` cancellation).  Backward: the global moments feed the
    loss on every process, so their gradients are summed over the group;
    then ``d gmean / d mean_nc = L / T`` and ``d gvar / d var_nc = L / T``,
    ``d gvar / d mean_nc = 2 L (mean_nc - gmean) / T`` (the path through
    ``gmean`` vanishes: deviations from the global mean sum to zero).
    """

    @staticmethod
    def forward(ctx, mean: Tensor, var: Tensor, length: int, group) -> tuple[Tensor, Tensor, Tensor]:
        n = mean.shape[0]
        if n:
            local_mean = mean.mean(0)
            local_var = var.mean(0) + (mean - local_mean).square().mean(0)
        else:  # contributes no values
            local_mean = local_var = mean.new_zeros(mean.shape[1])
        local = torch.cat([local_mean, local_var, mean.new_full((1, ), n * length)])  # (2C + 1,)
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, local, group=group)
        stats = torch.stack(gathered)  # (world, 2C + 1)
        c = mean.shape[1]
        counts = stats[:, -1:]  # (world, 1)
        total = counts.sum()
        means, vars_ = stats[:, :c], stats[:, c:2 * c]
        global_mean = (counts * means).sum(0) / total
        global_var = (counts * (vars_ + (means - global_mean).square())).sum(0) / total
        ctx.save_for_backward(mean, global_mean, total)
        ctx.length, ctx.group = length, group
        ctx.mark_non_differentiable(total)
        return global_mean, global_var, total

    @staticmethod
    def backward(ctx, grad_mean: Tensor, grad_var: Tensor, _grad_total):
        mean, global_mean, total = ctx.saved_tensors
        grads = torch.cat([grad_mean, grad_var])  # (2C,)
        dist.all_reduce(grads, group=ctx.group)
        grad_mean, grad_var = grads.view(2, -1) * (ctx.length / total)
        d_mean = d_var = None
        if ctx.needs_input_grad[0]:
            d_mean = grad_mean + 2 * (mean - global_mean) * grad_var  # (N, C)
        if ctx.needs_input_grad[1]:
            d_var = grad_var.expand_as(mean)
        return d_mean, d_var, None, None


def _log_local_once() -> None:
    global _logged_local
    if not _logged_local:
        _logged_local = True
        # mmengine's current logger: the Runner's log file when there is a Runner.
        print_log('SyncSN/SyncSSN: no initialised process group with more than one process; '
                  'the BN branch uses this process\'s batch only (same as SN/SSN).',
                  logger='current', level=logging.INFO)


def global_batch_moments(mean: Tensor, var: Tensor, length: int,
                         group=None) -> tuple[Tensor, Tensor, Tensor]:
    """BN moments of every value of every process in ``group`` (a ``BatchPool``).

    With ``n_r`` samples of ``L_r`` values on process ``r`` (ranks may hold
    images of different sizes), the global mean is
    ``sum_r L_r sum_n mean_nc / sum_r n_r L_r`` and the variance follows the
    law of total variance.  ``count``, the number of values per channel, is a
    0-d tensor: it is only known on the device.
    """
    global_mean, global_var, total = _GlobalMoments.apply(mean, var, length, group)
    return global_mean.unsqueeze(0), global_var.unsqueeze(0), total


class SyncMixin:
    """Replaces the BN branch's batch pooling by one over the process group."""

    _input_ranks = (2, 3, 4, 5)  # any rank, like torch.nn.SyncBatchNorm

    def _init_group(self, process_group) -> None:
        if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
            raise TypeError(f'process_group must be a torch.distributed.ProcessGroup or None, '
                            f'got {type(process_group).__name__}')
        self.process_group = process_group

    def _world_size(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    def _batch_pool(self) -> Optional[BatchPool]:
        """Global BN moments with more than one process; with one, the plain layer's (exact)."""
        if self._world_size() > 1:
            return functools.partial(global_batch_moments, group=self.process_group)
        _log_local_once()
        return None

    def extra_repr(self) -> str:
        group = '' if self.process_group is None else ', process_group=custom'
        return super().extra_repr() + group


class SyncSwitchNorm(SyncMixin, SwitchNorm2d):
    """Switchable Normalization whose BN branch uses the batch of all processes.

    Registered as ``SyncSN``.  Same state and state-dict keys as
    :class:`SwitchNorm2d`; accepts (N, C), (N, C, L), (N, C, H, W) or
    (N, C, D, H, W) input like ``torch.nn.SyncBatchNorm``.

    Args:
        process_group: the group to reduce over, ``None`` for the default
            (world) group; outside distributed runs the layer is plain SN.

    Example:
        >>> norm = SyncSwitchNorm(64)  # norm_cfg=dict(type='SyncSN') in a config
        >>> y = norm(torch.randn(2, 64, 8, 8))  # as SwitchNorm2d without a process group
    """

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: float = 0.1,
                 affine: bool = True,
                 normalizers: Sequence[str] = NORMALIZERS,
                 process_group: Optional[dist.ProcessGroup] = None,
                 device=None,
                 dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, normalizers, device, dtype)
        self._init_group(process_group)


class SyncSparseSwitchNorm(SyncMixin, SparseSwitchNorm2d):
    """Sparse Switchable Normalization whose BN branch uses the batch of all processes.

    Registered as ``SyncSSN``.  Same state and state-dict keys as
    :class:`SparseSwitchNorm2d` (radius and latched choices included);
    accepts 2D to 5D input like ``torch.nn.SyncBatchNorm``.  Every process
    computes the same ratios from the same logits and radius, so all ranks
    latch the same choice in the same iteration.

    Args:
        process_group: the group to reduce over, ``None`` for the default
            (world) group; outside distributed runs the layer is plain SSN.
    """

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: float = 0.1,
                 affine: bool = True,
                 normalizers: Sequence[str] = NORMALIZERS,
                 mode: str = 'paper',
                 process_group: Optional[dist.ProcessGroup] = None,
                 device=None,
                 dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, normalizers, mode, device, dtype)
        self._init_group(process_group)
