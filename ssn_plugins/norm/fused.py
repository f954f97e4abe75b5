"""Switchable normalization as one autograd Function with a closed-form backward.

Why: autograd through :mod:`.composite` keeps every intermediate and runs
dozens of small kernels.  Here the forward reads ``x`` once for the per-row
moments (``batch_norm_update_stats`` on the ``(1, N*C, L)`` view) and once to
write ``y`` (eval-mode ``batch_norm`` with the mixed moments as its "running"
statistics); in between, the (N, C) moments of every normalizer are stacked
and mixed by one batched matmul with the (2, K) ratios.  The backward reads
``x`` and ``dy`` once for two per-row sums (``native_batch_norm_backward``)
and once more to write ``dx``.  Only ``x`` and per-row vectors are saved, as
BatchNorm saves ``x`` and per-channel ones.  No value is read on the host.

Input in another memory format (channels_last, which has no (1, N*C, L)
view) takes reductions over the spatial dims and one elementwise kernel
instead, so the output keeps that format with no layout copy.  The output
is never a view: an in-place op after a checkpointed block (mmcv's ResNet
with ``with_cp=True``) refuses a view made in a custom Function.

Statistics are float32 (float64 for float64 input) also under autocast; the
output has the input dtype.  A backward with ``create_graph=True`` recomputes
through :func:`~ssn_plugins.norm.composite.composite_switch_norm`, so double
backward (gradient penalties) is exact.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ..ops.constants import cached_constant
from .composite import composite_switch_norm
from .moments import (accumulation_dtype, branch_moments, local_batch_moments, row_moments,
                      sample_moments, update_running_stats)

__all__ = ['fused_switch_norm']


class _FusedSwitchNorm(torch.autograd.Function):
    """Forward/backward of SN with batch moments from this process (private)."""

    @staticmethod
    def forward(ctx, x: Tensor, ratios: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                running_mean: Optional[Tensor], running_var: Optional[Tensor],
                factor: Union[float, Tensor], normalizers: tuple[str, ...], training: bool,
                eps: float) -> Tensor:
        acc = accumulation_dtype(x)
        n, c = x.shape[:2]
        rows = _rows(x)  # (1, N*C, L) view of x, or None for another layout (channels_last)
        if rows is not None:
            rows = rows.to(acc)
            mean, var = row_moments(rows)
            mean, var = mean.view(n, c), var.view(n, c)
            length = rows.shape[-1]
        else:
            mean, var = sample_moments(x.to(acc))
            length = math.prod(x.shape[2:])
        batch = training and 'bn' in normalizers
        bn = None
        if batch:
            bn_mean, bn_var, count = local_batch_moments(mean, var, length, differentiable=False)
            bn = (bn_mean, bn_var)
            if running_mean is not None:
                update_running_stats(bn_mean, bn_var, count, running_mean, running_var, factor)
        elif 'bn' in normalizers:
            bn = (running_mean.to(acc).view(1, c), running_var.to(acc).view(1, c))
        branches = branch_moments(mean, var, normalizers, bn, differentiable=False)  # (2, K, N*C)
        mixed = torch.bmm(ratios.to(acc).unsqueeze(1), branches).view(2, n * c)
        row_weight = None if weight is None else weight.to(acc).repeat(n)
        row_bias = None if bias is None else bias.to(acc).repeat(n)
        if rows is not None:
            y = torch.batch_norm(rows, row_weight, row_bias, mixed[0], mixed[1], False, 0.0, eps, False)
            # x's shape, not a view: an in-place op after a checkpointed block needs a plain tensor
            y = torch.ops.aten._unsafe_view(y.to(x.dtype), x.shape)
        else:  # any other layout: one elementwise kernel, which keeps x's memory format
            scale = torch.rsqrt(mixed[1] + eps)
            if row_weight is not None:
                scale = scale * row_weight
            shift = -mixed[0] * scale if row_bias is None else torch.addcmul(row_bias, mixed[0], scale, value=-1)
            shape = _channel_shape(x)
            y = torch.addcmul(shift.view(shape), x.to(acc), scale.view(shape)).to(x.dtype)

        # The running buffers only for an eval double backward: training updates them in place.
        running = (None, None) if batch else (running_mean, running_var)
        ctx.save_for_backward(x, ratios, weight, bias, *running, mean, mixed, branches)
        ctx.options = (tuple(normalizers), training, eps)  # no tensors on ctx
        return y  # x's shape and memory format

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        if torch.is_grad_enabled():  # create_graph=True: differentiate the composite path
            return _double_differentiable_backward(ctx, grad_y)
        x, ratios, weight, bias, _, _, mean, mixed, branches = ctx.saved_tensors
        normalizers, training, eps = ctx.options
        need_x, need_ratios, need_w, need_b = ctx.needs_input_grad[:4]
        acc = mixed.dtype
        n, c = mean.shape
        rstd = torch.rsqrt(mixed[1] + eps)  # (N*C,)
        rows = _rows(x)
        flat = rows is not None
        if flat:
            rows = rows.to(acc)
            grad_rows = grad_y.reshape(1, n * c, -1).to(acc)
            length = rows.shape[-1]
            # per row: sum dy * (x - mean) * rstd and sum dy, two-pass accurate
            _, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
                grad_rows, rows, None, None, None, mixed[0], rstd, True, eps, [False, True, True])
        else:  # any other layout: reductions over the spatial dims, no layout copy
            shape = _channel_shape(x)
            rows, grad_rows = x.to(acc), grad_y.to(acc)
            length = math.prod(x.shape[2:])
            dims = tuple(range(2, x.dim()))
            sum_dy = _sum_rows(grad_rows, dims)
            centred = rows - mixed[0].view(shape)
            sum_dy_xhat = _sum_rows(centred.mul_(grad_rows), dims).mul_(rstd)
        grad_x = grad_ratios = grad_w = grad_b = None
        sums = torch.stack([sum_dy, sum_dy_xhat])  # (2, N*C)
        if need_w or need_b:
            grad_b, grad_w = sums.view(2, n, c).sum(1)
            grad_w = grad_w.to(weight.dtype) if need_w else None
            grad_b = grad_b.to(bias.dtype) if need_b else None
        if need_x or need_ratios:
            gain = rstd if weight is None else (rstd.view(n, c) * weight.to(acc)).view(-1)
            # dL/d mixed mean = -gain sum dy; dL/d mixed var = -gain rstd sum dy xhat / 2
            grad_mixed = sums.mul(gain).mul_(_neg_halves(acc, x.device))
            grad_mixed[1].mul_(rstd)
            if need_ratios:
                grad_ratios = torch.bmm(branches, grad_mixed.unsqueeze(-1)).view_as(ratios)
                grad_ratios = grad_ratios.to(ratios.dtype)
            if need_x:
                const, coef = _grad_moments(grad_mixed, ratios.to(acc), mean, branches, normalizers,
                                            training, length)
                grad_x = _grad_input(x, rows, grad_rows, gain, const, coef, mean, flat)
        return grad_x, grad_ratios, grad_w, grad_b, None, None, None, None, None, None


def _grad_moments(grad_mixed: Tensor, ratios: Tensor, mean: Tensor, branches: Tensor,
                  normalizers: Sequence[str], training: bool, length: int) -> tuple[Tensor, Tensor]:
    """dL/dx = gain dy + const + coef (x - row mean): (const, coef), each (N*C,), from dL/d(mixed moments)."""
    n, c = mean.shape
    grads = grad_mixed.view(2, n, c)
    # dL/d(row mean, row var) from each branch that reads them: IN directly, LN and
    # BN through their averages; BN in eval reads the running buffers instead.
    parts, pooled = [], []
    for k, name in enumerate(normalizers):
        if name == 'in':
            parts.append(grads)
        elif name == 'ln' or training:
            parts.append(grads.mean(2 if name == 'ln' else 1, keepdim=True).expand(2, n, c))
            pooled.append(k)
    used = len(parts)  # every branch but an eval BN, which is last in the canonical order
    # scaled by (1/L, 2/L): d mean / dx = 1/L and d var / dx = 2 (x - mean) / L
    through = torch.stack(parts, 1).view(2, used, n * c) * _inv_lengths(length, grads)
    grad_moments = torch.bmm(ratios[:, :used].unsqueeze(1), through).view(2, n * c)
    const, coef = grad_moments[0], grad_moments[1]
    if pooled:
        # a pooled variance also depends on the row means: d var_pool / d mean = 2 (mean - mean_pool) / size
        first, last = pooled[0], pooled[-1] + 1
        deviation = mean.view(1, -1) - branches[0, first:last]  # (pooled, N*C)
        pooled_grad_var = through[1, used - len(pooled):]  # the pooled parts come last
        const = torch.addmm(const.unsqueeze(0), ratios[1:, first:last], deviation * pooled_grad_var)
    return const.view(-1), coef


def _grad_input(x: Tensor, rows: Tensor, grad_rows: Tensor, gain: Tensor, const: Tensor, coef: Tensor,
                mean: Tensor, flat: bool) -> Tensor:
    """dL/dx = gain dy + const + coef (x - mean), in x's dtype, shape and memory format.

    ``rows``/``grad_rows`` are x and dy as (1, N*C, L) rows when ``flat``, else in x's shape.
    """
    if flat:
        # rows (1, N*C, L): an eval batch norm of x (running_var 0, eps 1), plus gain dy
        grad_x = torch.batch_norm(rows, coef, const, mean.view(-1), torch.zeros_like(coef), False,
                                  0.0, 1.0, False)
        grad_x = grad_x.addcmul_(grad_rows, gain.view(1, -1, 1))
        return torch.ops.aten._unsafe_view(grad_x.to(x.dtype), x.shape)
    shape = _channel_shape(x)
    shift = torch.addcmul(const, mean.view(-1), coef, value=-1)
    grad_x = torch.addcmul(shift.view(shape), rows, coef.view(shape))
    return grad_x.addcmul_(grad_rows, gain.view(shape)).to(x.dtype)


def _rows(x: Tensor) -> Optional[Tensor]:
    """``x`` (N, C, *) as (1, N*C, L) rows without a copy, or None where its layout has no such view."""
    if not x.is_contiguous():
        return None
    return x.view(1, x.shape[0] * x.shape[1], -1)


def _channel_shape(x: Tensor) -> tuple[int, ...]:
    """(N, C, 1, ...): an (N, C) vector broadcast over x's other dims."""
    return (x.shape[0], x.shape[1]) + (1, ) * (x.dim() - 2)


def _sum_rows(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Sum of ``t`` (N, C, *) over ``dims`` as an (N*C,) vector (no reduction for 2-D ``t``)."""
    return (t.sum(dims) if dims else t).reshape(-1)


def _inv_lengths(length: int, like: Tensor) -> Tensor:
    return _constant(((1.0 / length, ), (2.0 / length, )), like.dtype, like.device).unsqueeze(-1)


def _double_differentiable_backward(ctx, grad_y: Tensor):
    """Backward for ``create_graph=True``: recompute on autograd and differentiate that."""
    x, ratios, weight, bias, running_mean, running_var, _, _, _ = ctx.saved_tensors
    normalizers, training, eps = ctx.options
    inputs = (x, ratios, weight, bias)
    wanted = [t for t, need in zip(inputs, ctx.needs_input_grad[:4]) if need]
    y = composite_switch_norm(x, ratios, normalizers, running_mean, running_var, weight, bias,
                              training, 0.0, eps, update_stats=False)
    grads = iter(torch.autograd.grad(y, wanted, grad_y, create_graph=True,
                                     allow_unused=True))
    out = [next(grads) if need else None for need in ctx.needs_input_grad[:4]]
    return (*out, None, None, None, None, None, None)


def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant tensor, copied to the device once (no host-to-device copy per call)."""
    return cached_constant((values, dtype, device),
                           lambda: torch.tensor(values, dtype=dtype).to(device))


def _neg_halves(dtype: torch.dtype, device: torch.device) -> Tensor:
    """(-1, -1/2) as a (2, 1) column."""
    return _constant(((-1.0, ), (-0.5, )), dtype, device)


def fused_switch_norm(x: Tensor,
                      ratios: Tensor,
                      normalizers: Sequence[str],
                      running_mean: Optional[Tensor],
                      running_var: Optional[Tensor],
                      weight: Optional[Tensor],
                      bias: Optional[Tensor],
                      training: bool,
                      factor: Union[float, Tensor],
                      eps: float) -> Tensor:
    """Same contract as :func:`~ssn_plugins.norm.functional.switch_norm` with this process's batch."""
    with torch.autocast(x.device.type, enabled=False):
        return _FusedSwitchNorm.apply(x, ratios, weight, bias, running_mean, running_var, factor,
                                      tuple(normalizers), training, eps)
