"""Sparsemax and SparsestMax: projections onto the probability simplex.

Both are pure, batched over every dimension but ``dim`` and differentiable
through autograd (the supports and face centroids are piecewise constant, so
the gradient is the chain of the per-stage Jacobians, as in the paper).

SparsestMax (Shao et al., SSN, CVPR 2019) projects logits ``z`` onto the
simplex with the extra constraint ``||p - c|| >= r`` (``c = 1/K``, the simplex
centre).  It starts from sparsemax and, on the current support face ``F`` with
centroid ``u_F``, pushes the point radially away from ``u_F`` until it leaves
the ball (restricted to ``F`` the ball has radius
``sqrt(r^2 - ||u_F - ref||^2)``); if the push leaves the simplex it projects
again (sparsemax) onto a smaller face and repeats.  Two rules pick ``ref``:

- ``'paper'``: ``ref = c`` for every face, the exact constraint of the paper;
- ``'official'``: ``ref`` is the centroid of the *first* sparsemax support, as
  the released code computes it (its first push uses the full ``r`` around
  that centroid).

Both agree whenever sparsemax's output is dense.  Because each face's
centroid is the orthogonal projection of every larger face's centroid onto
it, ``||u_F - u_G||^2 = 1/|F| - 1/|G|`` for ``F`` inside ``G``; this gives
both radii in closed form.
"""
from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor

__all__ = ['sparsemax', 'sparsestmax', 'SPARSESTMAX_MODES']

SPARSESTMAX_MODES = ('paper', 'official')


def _check_logits(logits: Tensor, dim: int) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f'logits must be a torch.Tensor, got {type(logits).__name__}')
    if not logits.is_floating_point():
        raise TypeError(f'logits must be floating point, got {logits.dtype}')
    if logits.dim() == 0:
        raise ValueError('logits must have at least one dimension')
    if logits.shape[dim] < 2:
        raise ValueError(f'logits need at least 2 entries along dim={dim}, got {logits.shape[dim]}')
    if not bool(torch.isfinite(logits).all()):
        raise ValueError('logits contain NaN or inf; sparsemax/sparsestmax need finite logits')


def _sparsemax_last(z: Tensor) -> Tensor:
    """Sparsemax over the last dimension (no checks)."""
    z = z - z.amax(-1, keepdim=True)  # shift invariance; keeps cumsum small
    z_sorted, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cumsum = z_sorted.cumsum(-1)
    in_support = 1 + k * z_sorted > cumsum  # (..., K), True for a prefix
    support_size = in_support.sum(-1, keepdim=True)  # >= 1 always
    tau = (cumsum.gather(-1, support_size - 1) - 1) / support_size.to(z.dtype)
    return torch.clamp(z - tau, min=0)


def sparsemax(logits: Tensor, dim: int = -1) -> Tensor:
    """Euclidean projection of ``logits`` onto the probability simplex along ``dim``.

    Martins & Astudillo (2016).  Batched over every other dimension.

    Example:
        >>> sparsemax(torch.tensor([0.8, 0.2, -1.0]))
        tensor([0.8000, 0.2000, 0.0000])
    """
    _check_logits(logits, dim)
    return _sparsemax_last(logits.movedim(dim, -1)).movedim(-1, dim)


def _as_radius(radius: Union[float, Tensor], like: Tensor) -> Tensor:
    if isinstance(radius, Tensor):
        if not bool(torch.isfinite(radius).all()):
            raise ValueError(f'radius must be finite, got {radius}')
        if bool((radius < 0).any()):
            raise ValueError(f'radius must be >= 0, got {radius}')
        return radius.detach().to(device=like.device, dtype=like.dtype)
    radius = float(radius)
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f'radius must be a finite number >= 0, got {radius}')
    return torch.tensor(radius, device=like.device, dtype=like.dtype)


def sparsestmax(logits: Tensor,
                radius: Union[float, Tensor],
                dim: int = -1,
                mode: str = 'paper') -> Tensor:
    """Project ``logits`` onto the simplex outside the ball ``||p - 1/K|| < radius``.

    Args:
        logits: any shape; the simplex is along ``dim``.
        radius: a number or a tensor broadcastable to ``logits`` without ``dim``.
            ``0`` gives sparsemax, ``>= sqrt((K-1)/K)`` gives the one-hot argmax.
        dim: the dimension of the K choices.
        mode: ``'paper'`` (default) or ``'official'`` (the released code's rule).

    Ties (e.g. all-equal logits with ``radius > 0``) are pushed towards the
    vertex of the lowest tied index: deterministic and never NaN.

    Example:
        >>> sparsestmax(torch.tensor([0.8, 0.2, -1.0]), 0.72)
        tensor([0.9190, 0.0810, 0.0000])
    """
    if mode not in SPARSESTMAX_MODES:
        raise ValueError(f"mode must be one of {SPARSESTMAX_MODES}, got {mode!r}")
    if _use_small_path(logits, radius):
        return _small_sparsestmax(logits.movedim(dim, -1), radius, mode).movedim(-1, dim)
    _check_logits(logits, dim)
    z = logits.movedim(dim, -1)
    r = _as_radius(radius, z)
    if r.dim() > 0:
        r = r.unsqueeze(-1)
    out = _sparsestmax_last(z, r, mode)
    return out.movedim(-1, dim)


def _sparsestmax_last(z: Tensor, r: Tensor, mode: str) -> Tensor:
    num_classes = z.shape[-1]
    tiny = torch.finfo(z.dtype).eps
    p = _sparsemax_last(z)  # (..., K)
    support = p > 0
    ref_size = (torch.full_like(p[..., :1], num_classes) if mode == 'paper'
                else support.sum(-1, keepdim=True).to(z.dtype))
    # Every round either stops or moves to a strictly smaller face.
    for _ in range(num_classes - 1):
        support = p > 0
        size = support.sum(-1, keepdim=True).to(z.dtype)  # (..., 1)
        centroid = support.to(z.dtype) / size
        # Radius of the ball restricted to the face, around its centroid.
        face_r2 = r * r - (1 / size - 1 / ref_size)
        face_r = torch.sqrt(torch.clamp(face_r2, min=0))
        offset = p - centroid
        dist = torch.sqrt((offset * offset).sum(-1, keepdim=True).clamp_min(tiny * tiny))
        inside = (dist < face_r) & (size > 1)
        if not bool(inside.any()):
            break
        # Direction of the push: radial, or towards the lowest-index vertex of
        # the face when the point sits on the centroid (a tie).
        tie = dist <= 16 * tiny
        first = support.to(torch.uint8).argmax(-1, keepdim=True)
        vertex = torch.zeros_like(p).scatter_(-1, first, 1.0)
        tie_dir = vertex - centroid
        tie_dir = tie_dir / torch.linalg.vector_norm(tie_dir, dim=-1, keepdim=True).clamp_min(tiny)
        direction = torch.where(tie, tie_dir, offset / dist)
        pushed = centroid + face_r * direction
        # Off the simplex: project back onto a smaller face and go on.
        pushed = torch.where((pushed < 0).any(-1, keepdim=True), _sparsemax_last(pushed), pushed)
        p = torch.where(inside, pushed, p)
    p = p.clamp_min(0)
    return p / p.sum(-1, keepdim=True)


# ---------------------------------------------------------------------------
# The same algorithm for a few rows on the CPU (an SSN layer's two logit
# vectors): Python floats with the Jacobian chained stage by stage, instead of
# about a hundred tiny tensor ops.  Tested equal to the tensor path.

#: Inputs with at most this many elements on the CPU take the small path.
SMALL_PATH_MAX_NUMEL = 64


def _use_small_path(logits: Tensor, radius: Union[float, Tensor]) -> bool:
    return (isinstance(logits, Tensor) and logits.device.type == 'cpu' and logits.dim() > 0
            and 0 < logits.numel() <= SMALL_PATH_MAX_NUMEL and logits.is_floating_point()
            and (not isinstance(radius, Tensor) or radius.numel() == 1))


def _row_sparsemax(z: list[float]) -> tuple[list[float], list[bool]]:
    top = max(z)
    shifted = [v - top for v in z]
    cumsum, tau = 0.0, 0.0
    for k, value in enumerate(sorted(shifted, reverse=True), start=1):
        cumsum += value
        if 1 + k * value > cumsum:
            tau = (cumsum - 1) / k
    p = [max(v - tau, 0.0) for v in shifted]
    return p, [v > 0 for v in p]


def _sparsemax_jacobian(support: list[bool]) -> list[list[float]]:
    size = sum(support)
    return [[(float(i == j) - 1 / size) if support[i] and support[j] else 0.0
             for j in range(len(support))] for i in range(len(support))]


def _matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    cols = list(zip(*b))
    return [[sum(x * y for x, y in zip(row, col)) for col in cols] for row in a]


def _row_sparsestmax(z: list[float], r: float, mode: str,
                     tiny: float) -> tuple[list[float], list[list[float]]]:
    """One row of :func:`_sparsestmax_last` and its Jacobian d p / d z."""
    k = len(z)
    p, support = _row_sparsemax(z)
    jac = _sparsemax_jacobian(support)
    ref_size = k if mode == 'paper' else sum(support)
    for _ in range(k - 1):
        support = [v > 0 for v in p]
        size = sum(support)
        centroid = [1 / size if s else 0.0 for s in support]
        face_r = math.sqrt(max(r * r - (1 / size - 1 / ref_size), 0.0))
        offset = [a - b for a, b in zip(p, centroid)]
        dist = math.sqrt(max(sum(v * v for v in offset), tiny * tiny))
        if not (dist < face_r and size > 1):
            break
        if dist <= 16 * tiny:  # a tie: towards the lowest-index vertex, a constant
            first = support.index(True)
            tie_dir = [float(i == first) - centroid[i] for i in range(k)]
            norm = max(math.sqrt(sum(v * v for v in tie_dir)), tiny)
            pushed = [c + face_r * v / norm for c, v in zip(centroid, tie_dir)]
            push_jac = [[0.0] * k for _ in range(k)]
        else:
            unit = [v / dist for v in offset]
            pushed = [c + face_r * v for c, v in zip(centroid, unit)]
            gain = face_r / dist
            push_jac = [[gain * (float(i == j) - unit[i] * unit[j]) for j in range(k)] for i in range(k)]
        jac = _matmul(push_jac, jac)
        if min(pushed) < 0:
            pushed, pushed_support = _row_sparsemax(pushed)
            jac = _matmul(_sparsemax_jacobian(pushed_support), jac)
        p = pushed
    p = [max(v, 0.0) for v in p]
    total = sum(p)
    return [v / total for v in p], jac


class _SmallSparsestMax(torch.autograd.Function):
    """SparsestMax of a few CPU rows (private); backward is ``J^T grad``."""

    @staticmethod
    def forward(ctx, z: Tensor, radii: list[float], mode: str) -> Tensor:
        tiny = torch.finfo(z.dtype).eps
        rows = z.detach().reshape(-1, z.shape[-1]).tolist()
        outs, jacs = [], []
        for row, r in zip(rows, radii if len(radii) > 1 else radii * len(rows)):
            if not all(math.isfinite(v) for v in row):
                raise ValueError('logits contain NaN or inf; sparsemax/sparsestmax need finite logits')
            out, jac = _row_sparsestmax(row, r, mode, tiny)
            outs.append(out)
            jacs.append(jac)
        ctx.save_for_backward(torch.tensor(jacs, dtype=z.dtype))
        return torch.tensor(outs, dtype=z.dtype).view(z.shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (jac, ) = ctx.saved_tensors  # (B, K, K)
        k = grad.shape[-1]
        grad_z = torch.bmm(grad.reshape(-1, 1, k), jac).view(grad.shape)
        return grad_z, None, None


def _small_sparsestmax(z: Tensor, radius: Union[float, Tensor], mode: str) -> Tensor:
    if not z.is_floating_point():
        raise TypeError(f'logits must be floating point, got {z.dtype}')
    if z.shape[-1] < 2:
        raise ValueError(f'logits need at least 2 entries along dim, got {z.shape[-1]}')
    r = float(radius.detach().reshape(())) if isinstance(radius, Tensor) else float(radius)
    if not math.isfinite(r) or r < 0:
        raise ValueError(f'radius must be a finite number >= 0, got {radius}')
    return _SmallSparsestMax.apply(z, [r], mode)
