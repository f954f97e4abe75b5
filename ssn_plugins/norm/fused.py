"""Fused switchable normalization: one autograd Function with a closed-form backward.

Why: the autograd path of :func:`~ssn_plugins.norm.functional.switch_norm`
runs a Welford ``var_mean`` (slow on CPU), several broadcast ops and saves
their intermediates.  Here the forward reads ``x`` once for per-(n, c) sums
(``sum`` and ``vector_norm``, both fast reductions) and once to apply
``y = x * scale + shift`` (ATen's eval-mode batch-norm kernel on an
``(1, N*C, L)`` view); the backward reads ``x`` and ``dy`` for two
per-(n, c) reductions and once more to write ``dx``.  Only ``x`` and
per-(n, c) vectors are saved, as BatchNorm saves ``x`` and per-channel ones.

Float32 cancellation of ``E[x^2] - E[x]^2``: rows (n, c) whose mean is large
against their spread (``mean^2 > 64 var``) are recomputed two-pass, in the
forward (moments) and in the backward (``sum dy * (x - mean)``).  On CUDA
the moments come from ``torch.var_mean`` directly (one Welford kernel, no
host sync).  Statistics are float32 (float64 for float64 input) also under
autocast; the output has the input dtype.  The backward is not itself
differentiable (``once_differentiable``): double backward needs
``switch_norm(..., fused=False)``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .functional import _pool, _update_running

__all__ = ['fused_switch_norm', 'latched_norm']

#: Rows with ``mean^2 > _ILL_CONDITIONED * var`` are recomputed two-pass.
_ILL_CONDITIONED = 64.0


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _ill_conditioned(mean: Tensor, var: Union[Tensor, float]) -> Optional[Tensor]:
    """Flat indices of the (n, c) rows where one-pass moments lose precision, or None."""
    bad = mean.square() > _ILL_CONDITIONED * var
    if not bool(bad.any()):
        return None
    return bad.view(-1).nonzero().view(-1)


def _moments(x3: Tensor) -> tuple[Tensor, Tensor]:
    """Per-(n, c) mean and biased variance of ``x3`` (N, C, L) in its own (float) dtype."""
    if x3.is_cuda:
        var, mean = torch.var_mean(x3, dim=-1, correction=0)
        return mean, var
    length = x3.shape[-1]
    mean = x3.sum(-1).div_(length)  # (N, C)
    var = torch.linalg.vector_norm(x3, dim=-1).square_().div_(length).sub_(mean.square())
    var.clamp_(min=0)
    rows = _ill_conditioned(mean, var)
    if rows is not None:
        row_var, row_mean = torch.var_mean(x3.reshape(-1, length)[rows], dim=-1, correction=0)
        mean.view(-1)[rows] = row_mean
        var.view(-1)[rows] = row_var
    return mean, var


def _sum_dy_xhat(g3: Tensor, x3: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    """Per-(n, c) ``sum_l dy * (x - mean) * rstd``, guarded like :func:`_moments`."""
    if x3.is_cuda:
        return torch.linalg.vecdot(g3, x3 - mean.unsqueeze(-1), dim=-1) * rstd
    total = torch.linalg.vecdot(g3, x3, dim=-1).sub_(mean * g3.sum(-1))
    rows = _ill_conditioned(mean * rstd, 1.0)
    if rows is not None:
        length = x3.shape[-1]
        centred = x3.reshape(-1, length)[rows] - mean.view(-1)[rows].unsqueeze(-1)
        total.view(-1)[rows] = torch.linalg.vecdot(g3.reshape(-1, length)[rows], centred, dim=-1)
    return total.mul_(rstd)


def _affine_rows(x3: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x3 * scale + shift`` with per-(n, c) ``scale``/``shift`` (N, C), one pass.

    ATen's eval-mode batch norm on an (1, N*C, L) view is a single fused,
    vectorised kernel (faster than a broadcast ``addcmul`` on CPU).  Returns
    that (1, N*C, L) tensor itself, not a view of it: the Function's output
    must not be a view, or in-place ops after it (ReLU(inplace=True) in
    every ResNet) are refused by autograd.
    """
    n, c, length = x3.shape
    ones = torch.ones(n * c, dtype=x3.dtype, device=x3.device)
    zeros = torch.zeros(n * c, dtype=x3.dtype, device=x3.device)
    y = torch.batch_norm(x3.reshape(1, n * c, length), scale.reshape(-1), shift.reshape(-1), zeros,
                         ones, False, 0.0, 0.0, False)
    return y


def _scalars(ratios: Tensor, dtype: torch.dtype) -> list:
    """Ratios as Python floats on CPU (no per-element tensor ops), 0-d tensors on CUDA (no sync)."""
    if ratios.is_cuda:
        return list(ratios.to(dtype).unbind())
    return ratios.tolist()


def _branches(mean_in: Tensor, var_in: Tensor, normalizers: Sequence[str],
              bn_moments: Optional[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """(mean, var) of each normalizer, broadcastable to (N, C), from per-(n, c) moments."""
    moments = []
    for name in normalizers:
        if name == 'in':
            moments.append((mean_in, var_in))
        elif name == 'ln':
            moments.append(_pool(mean_in, var_in, 1))
        else:
            moments.append(bn_moments)
    return moments


def _mix(terms) -> Tensor:
    """``sum_k ratio_k * tensor_k``, skipping exact zeros (sparse SSN ratios)."""
    total = None
    for ratio, tensor in terms:
        if isinstance(ratio, float) and ratio == 0.0:
            continue
        total = tensor * ratio if total is None else total + tensor * ratio
    return total


class _FusedSwitchNorm(torch.autograd.Function):
    """Forward/backward of SN with batch moments from this process (private)."""

    @staticmethod
    def forward(ctx, x: Tensor, mean_ratios: Tensor, var_ratios: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], running_mean: Optional[Tensor], running_var: Optional[Tensor],
                normalizers: tuple[str, ...], training: bool, momentum: float,
                eps: float) -> Tensor:
        acc = _acc_dtype(x)
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)  # (N, C, L)
        xa = x3 if x3.dtype == acc else x3.to(acc)
        mean_in, var_in = _moments(xa)  # (N, C) each
        batch_stats = 'bn' in normalizers and training
        bn_moments = None
        if batch_stats:
            bn_moments = _pool(mean_in, var_in, 0)
            if running_mean is not None:
                _update_running(bn_moments[0], bn_moments[1], n * x3.shape[-1], running_mean,
                                running_var, momentum)
        elif 'bn' in normalizers:
            bn_moments = (running_mean.to(acc).view(1, c), running_var.to(acc).view(1, c))
        moments = _branches(mean_in, var_in, normalizers, bn_moments)
        p, q = _scalars(mean_ratios, acc), _scalars(var_ratios, acc)
        mean = _mix((p[k], m) for k, (m, _) in enumerate(moments))
        var = _mix((q[k], v) for k, (_, v) in enumerate(moments))
        # a one-hot LN/BN choice leaves (N, 1) or (1, C): the per-(n, c) rows need (N, C)
        mean, var = mean.expand(n, c), var.expand(n, c)
        rstd = (var + eps).rsqrt_()  # (N, C)
        weight_a = None if weight is None else weight.to(acc)
        scale = rstd if weight_a is None else rstd * weight_a
        if bias is None:
            shift = (mean * scale).neg_()
        else:
            shift = torch.addcmul(bias.to(acc), mean, scale, value=-1)
        y = _affine_rows(xa, scale, shift)

        ctx.save_for_backward(x, weight_a, mean_in, var_in, mean, rstd)
        ctx.ratios = (p, q)
        ctx.normalizers = normalizers
        ctx.batch_stats = batch_stats
        ctx.moments = moments  # small (N, C) / (N, 1) / (1, C) intermediates, reused by backward
        ctx.dtypes = (mean_ratios.dtype, var_ratios.dtype, None if weight is None else weight.dtype,
                      None if bias is None else bias.dtype)
        return y.to(x.dtype)  # (1, N*C, L); reshaped outside the Function

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        x, weight, mean_in, var_in, mean, rstd = ctx.saved_tensors
        need_x, need_p, need_q, need_w, need_b = ctx.needs_input_grad[:5]
        p, q = ctx.ratios
        acc = mean.dtype
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)
        xa = x3 if x3.dtype == acc else x3.to(acc)
        g3 = grad_y.reshape(n, c, -1)
        g3 = g3 if g3.dtype == acc else g3.to(acc)
        length = x3.shape[-1]

        sum_g = g3.sum(-1)  # (N, C): sum_l dy
        sum_gx = None  # (N, C): sum_l dy * x_hat
        if need_x or need_p or need_q or need_w:
            sum_gx = _sum_dy_xhat(g3, xa, mean, rstd)

        grad_x = grad_p = grad_q = grad_w = grad_b = None
        if need_b:
            grad_b = sum_g.sum(0).to(ctx.dtypes[3])
        if need_w:
            grad_w = sum_gx.sum(0).to(ctx.dtypes[2])
        if not (need_x or need_p or need_q):
            return grad_x, grad_p, grad_q, grad_w, grad_b, None, None, None, None, None, None

        gain = rstd if weight is None else rstd * weight  # (N, C): dy/dx at fixed moments
        grad_mean = -gain * sum_g  # dL/d mean (mixed), (N, C)
        grad_var = gain.mul(rstd).mul_(sum_gx).mul_(-0.5)  # dL/d var (mixed), (N, C)
        moments = ctx.moments
        if need_p:
            grad_p = torch.stack([(grad_mean * m).sum() for m, _ in moments]).to(ctx.dtypes[0])
        if need_q:
            grad_q = torch.stack([(grad_var * v).sum() for _, v in moments]).to(ctx.dtypes[1])
        if need_x:
            # dL/d mean_in and dL/d var_in through every branch that pools them.
            grad_m, grad_v = [], []
            for k, name in enumerate(ctx.normalizers):
                if name == 'in':
                    grad_m.append((p[k], grad_mean))
                    grad_v.append((q[k], grad_var))
                elif name == 'ln' or ctx.batch_stats:
                    dim = 1 if name == 'ln' else 0
                    grad_m.append((p[k], grad_mean.mean(dim, keepdim=True)))
                    if not (isinstance(q[k], float) and q[k] == 0.0):
                        pooled = grad_var.mean(dim, keepdim=True)
                        grad_m.append((2 * q[k], pooled * (mean_in - moments[k][0])))
                        grad_v.append((q[k], pooled))
            grad_m = _mix(grad_m)
            grad_v = _mix(grad_v)
            grad_m = torch.zeros_like(mean) if grad_m is None else grad_m.expand(n, c)
            grad_v = torch.zeros_like(mean) if grad_v is None else grad_v.expand(n, c)
            # dx = gain * dy + grad_m / L + grad_v * 2 (x - mean_in) / L
            coef_x = grad_v * (2.0 / length)
            const = torch.addcmul(grad_m / length, coef_x, mean_in, value=-1)
            grad_x = _affine_rows(xa, coef_x, const).view(n, c, -1).addcmul_(g3, gain.unsqueeze(-1))
            grad_x = grad_x.to(x.dtype).view(x.shape)
        return grad_x, grad_p, grad_q, grad_w, grad_b, None, None, None, None, None, None


def fused_switch_norm(x: Tensor,
                      mean_ratios: Tensor,
                      var_ratios: Tensor,
                      normalizers: Sequence[str],
                      running_mean: Optional[Tensor] = None,
                      running_var: Optional[Tensor] = None,
                      weight: Optional[Tensor] = None,
                      bias: Optional[Tensor] = None,
                      training: bool = True,
                      momentum: float = 0.1,
                      eps: float = 1e-5) -> Tensor:
    """Same contract as :func:`switch_norm` with the default ``bn_pool`` (this process's batch)."""
    if 'bn' in normalizers and not training and running_mean is None:
        raise ValueError('fused_switch_norm: eval mode with a BN branch needs running_mean/running_var')
    with torch.autocast(x.device.type, enabled=False):
        y = _FusedSwitchNorm.apply(x, mean_ratios, var_ratios, weight, bias, running_mean, running_var,
                                   tuple(normalizers), training, momentum, eps)
    return y.view(x.shape)


def latched_norm(x: Tensor,
                 choice: str,
                 running_mean: Optional[Tensor],
                 running_var: Optional[Tensor],
                 weight: Optional[Tensor],
                 bias: Optional[Tensor],
                 training: bool,
                 momentum: float,
                 eps: float) -> Optional[Tensor]:
    """A layer latched on one normalizer for both mean and variance, on PyTorch's kernel.

    Returns None where no such kernel applies (IN on 1x1 maps).

    ``'bn'`` is ``F.batch_norm`` (updates the running buffers in training, as
    the dense path does); ``'in'`` is ``F.group_norm`` with C groups and
    ``'ln'`` with one group (neither touches running buffers, which such a
    layer never reads).
    """
    if choice == 'bn':
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    if choice == 'in':
        if x.numel() == x.shape[0] * x.shape[1]:
            return None  # 1x1 maps: PyTorch's IN/GN kernels refuse them, the dense path is exact
        return F.group_norm(x, x.shape[1], weight, bias, eps)  # IN with affine
    if choice == 'ln':
        return F.group_norm(x, 1, weight, bias, eps)
    raise ValueError(f"latched_norm: choice must be 'in', 'ln' or 'bn', got {choice!r}")
