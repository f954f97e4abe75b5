"""The switchable-normalization forward: one dispatcher over the fused and composite paths.

:func:`switch_norm` picks the path from an explicit argument: ``'fused'``
(:mod:`.fused`, this process's batch, closed-form backward) or
``'composite'`` (:mod:`.composite`, autograd, any BN pooling).
:func:`latched_norm` runs a layer latched on one normalizer on PyTorch's own
kernel, and :func:`keep_in_graph` keeps unused logits in the autograd graph.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .composite import composite_switch_norm
from .fused import fused_switch_norm
from .moments import NORMALIZERS, BatchPool

__all__ = ['PATHS', 'switch_norm', 'latched_norm', 'has_latched_kernel', 'keep_in_graph']

#: The implementations :func:`switch_norm` can run.
PATHS = ('fused', 'composite')


def switch_norm(x: Tensor,
                ratios: Tensor,
                normalizers: Sequence[str] = NORMALIZERS,
                running_mean: Optional[Tensor] = None,
                running_var: Optional[Tensor] = None,
                weight: Optional[Tensor] = None,
                bias: Optional[Tensor] = None,
                training: bool = True,
                momentum: Union[float, Tensor] = 0.1,
                eps: float = 1e-5,
                path: str = 'fused',
                batch_pool: Optional[BatchPool] = None) -> Tensor:
    """Switchable normalization of ``x`` (N, C, *).

    ``y = weight * (x - sum_k p_k mean_k) / sqrt(sum_k q_k var_k + eps) + bias``
    with ``ratios`` (2, K): row 0 the mean ratios ``p``, row 1 the variance
    ratios ``q``, one column per name in ``normalizers``.

    In training the BN branch uses the batch moments and, when running buffers
    are given, updates them in place:
    ``running = (1 - momentum) * running + momentum * batch`` with the
    unbiased batch variance (as ``torch.nn.BatchNorm2d``; ``momentum`` may be
    a 0-d tensor, e.g. ``1 / t`` for a cumulative average).  In eval the BN
    branch uses the running buffers.

    Args:
        path: ``'fused'`` (one autograd Function, this process's batch) or
            ``'composite'`` (autograd ops; twice differentiable, and the
            only path that takes a ``batch_pool``).
        batch_pool: the BN branch's batch moments from per-(n, c) moments,
            e.g. across processes (:data:`~ssn_plugins.norm.moments.BatchPool`).
    """
    if path not in PATHS:
        raise ValueError(f'path must be one of {PATHS}, got {path!r}')
    if 'bn' in normalizers and not training and running_mean is None:
        raise ValueError('switch_norm: eval mode with a BN branch needs running_mean/running_var')
    if path == 'fused':
        if batch_pool is not None:
            raise ValueError("switch_norm: path='fused' pools this process's batch; "
                             "pass path='composite' with a batch_pool")
        return fused_switch_norm(x, ratios, normalizers, running_mean, running_var, weight, bias,
                                 training, momentum, eps)
    with torch.autocast(x.device.type, enabled=False):
        return composite_switch_norm(x, ratios, normalizers, running_mean, running_var, weight,
                                     bias, training, momentum, eps, batch_pool)


def has_latched_kernel(choice: str, x: Tensor) -> bool:
    """Whether :func:`latched_norm` has PyTorch's kernel for ``choice`` on ``x``: every case but
    IN on 1x1 maps, which PyTorch's IN/GN kernels refuse (there :func:`switch_norm` with
    one-hot ratios is exact).  Reads shapes only."""
    return choice != 'in' or x.numel() != x.shape[0] * x.shape[1]


def latched_norm(x: Tensor,
                 choice: str,
                 running_mean: Optional[Tensor],
                 running_var: Optional[Tensor],
                 weight: Optional[Tensor],
                 bias: Optional[Tensor],
                 training: bool,
                 momentum: float,
                 eps: float) -> Tensor:
    """A layer latched on one normalizer for both mean and variance, on PyTorch's kernel.

    Ask :func:`has_latched_kernel` first: IN on 1x1 maps has no such kernel.

    ``'bn'`` is ``F.batch_norm`` (updates the running buffers in training);
    ``'in'`` is ``F.group_norm`` with C groups and ``'ln'`` with one group
    (neither touches running buffers, which such a layer never reads).
    """
    if choice == 'bn':
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    if choice == 'in':
        if not has_latched_kernel(choice, x):
            raise ValueError(f'latched_norm: IN on maps of one value {tuple(x.shape)} has no '
                             'PyTorch kernel; use switch_norm with one-hot ratios')
        return F.group_norm(x, x.shape[1], weight, bias, eps)
    if choice == 'ln':
        return F.group_norm(x, 1, weight, bias, eps)
    raise ValueError(f"latched_norm: choice must be 'in', 'ln' or 'bn', got {choice!r}")


class _KeepInGraph(torch.autograd.Function):
    """Identity on ``x`` that also takes ``anchors`` and gives them a zero gradient (private)."""

    @staticmethod
    def forward(ctx, x: Tensor, *anchors: Tensor) -> Tensor:
        # sizes as ints here: torch 2.1's dynamo cannot trace Size.numel() in the backward
        ctx.shapes = [a.shape for a in anchors]
        ctx.sizes = [a.numel() for a in anchors]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        zeros = grad.new_zeros(sum(ctx.sizes)).split(ctx.sizes)  # one kernel for every anchor
        return (grad, *(z.view(s) for z, s in zip(zeros, ctx.shapes)))


def keep_in_graph(x: Tensor, *anchors: Tensor) -> Tensor:
    """``x`` unchanged, with ``anchors`` in the autograd graph (zero gradient, values never read).

    A latched layer no longer uses its logits, but DDP with
    ``find_unused_parameters=False`` expects a gradient for every parameter
    in every iteration.  Reading no value keeps NaN logits from leaking into
    the output.
    """
    return _KeepInGraph.apply(x, *anchors)
