"""Sparsemax and SparsestMax: projections onto the probability simplex.

Both are pure, batched over every dimension but ``dim`` and differentiable
(the supports and face centroids are piecewise constant, so the gradient is
the chain of the per-stage Jacobians, as in the paper).

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

Two implementations, equal to each other and to the float64 reference:

- K <= 3 (every SN/SSN layer: IN, LN, BN): a closed form in sorted
  coordinates, a fixed handful of tensor ops with no data-dependent branch,
  so it runs on the device without host reads and traces under
  ``torch.compile``.
- any K: the stage-by-stage loop, K - 1 rounds of masked tensor ops.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from ..compat import custom_functions_traceable
from .constants import cached_constant

__all__ = ['sparsemax', 'sparsestmax', 'SPARSESTMAX_MODES']

SPARSESTMAX_MODES = ('paper', 'official')

#: Inputs with at most this many choices take the closed form.
CLOSED_FORM_MAX_K = 3


def _check_logits(logits: Tensor, dim: int) -> None:
    """Validate public-API input (reads the logits on the host once)."""
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


#: Logits this far or further below a row's maximum get 0 from sparsemax and every SparsestMax
#: stage (anything >= 1 would do), so they are clipped to it: the results stay the same, and
#: finite logits as far apart as float32 allows (+-3e38) never overflow to inf or NaN.
_FAR_BELOW = 2.0


def _shifted(z: Tensor, top: Optional[Tensor] = None) -> Tensor:
    """``z - max(z)`` along the last dim, clipped to ``[-_FAR_BELOW, 0]`` (never inf: a difference
    that overflows is clipped like any other far one).  ``top``: the row maximum, if known."""
    top = z.amax(-1, keepdim=True) if top is None else top
    return (z - top).clamp_min_(-_FAR_BELOW)


def _sparsemax_last(z: Tensor) -> Tensor:
    """Sparsemax over the last dimension (no checks)."""
    z = _shifted(z)  # shift invariance; keeps cumsum small and finite
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
    """The radius as a tensor on ``like``'s device (validated on the host: public API)."""
    if isinstance(radius, Tensor):
        if not bool(torch.isfinite(radius).all()):
            raise ValueError(f'radius must be finite, got {radius}')
        if bool((radius < 0).any()):
            raise ValueError(f'radius must be >= 0, got {radius}')
        return radius.detach().to(device=like.device, dtype=like.dtype)
    if isinstance(radius, bool) or not isinstance(radius, (int, float)):
        raise TypeError(f'radius must be a number or a tensor, got {type(radius).__name__}')
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f'radius must be a finite number >= 0, got {radius}')
    return torch.tensor(float(radius), device=like.device, dtype=like.dtype)


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
    _check_logits(logits, dim)
    z = logits.movedim(dim, -1)
    r = _as_radius(radius, z)
    if r.dim() > 0:
        r = r.unsqueeze(-1)
    return sparsestmax_unchecked(z, r, mode).movedim(-1, dim)


def sparsestmax_unchecked(z: Tensor, r: Tensor, mode: str = 'paper') -> Tensor:
    """SparsestMax over the last dim of ``z`` with ``r`` a tensor broadcastable to ``z[..., :1]``.

    No validation and no host read: for the layers, which check their logits
    on the device.  Finite ``z`` and ``r >= 0`` give a simplex point.
    """
    if z.shape[-1] <= CLOSED_FORM_MAX_K and custom_functions_traceable():
        return _closed_form(z, r, mode == 'paper')
    return _sparsestmax_loop(z, r, mode)


def _closed_form(z: Tensor, r: Tensor, paper: bool) -> Tensor:
    """SparsestMax for K = 2 or 3 (see :class:`_ClosedForm`), differentiable."""
    r = r.to(z.dtype).expand_as(z[..., :1])
    return _ClosedForm.apply(z, r, paper)


class _ClosedForm(torch.autograd.Function):
    """SparsestMax for K = 2 or 3 in the coordinates of the logits sorted descending.

    Sorting keeps every support a prefix (sparsemax and radial pushes keep the
    order), so a point is either inside the triangle (K = 3 only) or on the
    edge of the two largest logits, ``(1/2 + t, 1/2 - t, 0)`` with
    ``0 <= t <= 1/2`` (``t = 1/2``: the vertex).  With ``w = z - mean z``:

    - Inside: sparsemax is dense (``w2 > -1/3``) and the point
      ``c + max(||w||, r) w / ||w||`` has no negative entry: sparsemax itself,
      or its push to radius ``r``.
    - On the edge: ``t = min(max(t_in, R_e / sqrt 2), 1/2)``, the edge push to
      the face radius ``R_e = sqrt(r^2 - (1/2 - 1/ref))``, from sparsemax's
      own edge point ``t_in = (w0 - w1) / 2`` or, after a push from the dense
      start that left the triangle, ``t_in = r (w0 - w1) / (2 ||w||)``.
      ``ref`` is K, or 2 for 'official' from a sparse start.

    Ties push towards the lowest index: the sort is stable, and ``w = 0``
    takes the direction of the first vertex.

    Backward: where the output moves with ``z`` it is ``c_F + s P_F u`` for a
    unit vector ``u = P_G z / ||P_G z||`` of the last pushed face ``G``
    (``s = r / ||P_G z||``), or sparsemax (``s = 1``, no ``u``), so
    ``dp/dz = s P_F (I - u u^T)`` in sorted coordinates; a pushed edge point,
    a vertex and a tie do not move (zero Jacobian).
    """

    @staticmethod
    def forward(ctx, z: Tensor, r: Tensor, paper: bool) -> Tensor:
        k = z.shape[-1]
        basis = _basis(k, z.dtype, z.device)
        zs, order = torch.sort(z, dim=-1, descending=True, stable=True)  # (..., K)
        zs = _shifted(zs, zs[..., :1])  # the output is the same; the moments below stay finite
        w = zs - zs.mean(-1, keepdim=True)  # exact zeros between tied logits
        edge_r = _edge_radius(r, basis, paper)  # R_e / sqrt 2 from a dense start, (..., 1)
        if k == 2:
            t_in = w @ basis.half_gap  # (..., 1)
            t = torch.clamp(torch.maximum(t_in, edge_r), max=0.5)
            out = torch.addcmul(basis.half, t, basis.sign)
            jac = basis.edge * ((t == t_in) & (t < 0.5)).unsqueeze(-1)
        else:
            dense = w[..., 2:] > -1 / 3
            norm = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
            tie = norm <= 16 * torch.finfo(z.dtype).eps
            inv_norm = norm.reciprocal().masked_fill_(tie, 0.0)
            unit = torch.where(tie, basis.first_vertex, w * inv_norm)
            rho = torch.maximum(norm, r)
            inner = torch.addcmul(basis.third, unit, rho)  # sparsemax, or pushed to radius r
            inside = dense & (inner[..., 2:] >= 0)
            scale = torch.where(dense, rho, norm)  # on the edge: r after a push, else ||w||
            t_in = scale * (unit @ basis.half_gap)
            if not paper:  # a sparse start pushes along its edge with the full radius
                edge_r = torch.where(dense, edge_r, r * math.sqrt(0.5))
            t = torch.clamp(torch.maximum(t_in, edge_r), max=0.5)
            out = torch.where(inside, inner, torch.addcmul(basis.half, t, basis.sign))
            # Jacobian in sorted coordinates, (..., K, K): s P_F (I - u u^T); an edge point
            # moves unless pushed along the edge or at the vertex; a pushed tie never moves
            moves = inside | (t_in.clamp(edge_r, basis.below_half) == t_in)
            pushed = scale > norm  # a push from the dense start
            gain = torch.where(pushed, r * inv_norm, moves) * moves
            unit = unit * pushed
            face = torch.where(inside.unsqueeze(-1), basis.full, basis.edge)  # P_F
            jac = torch.addcmul(face, face @ unit.unsqueeze(-1), unit.unsqueeze(-2), value=-1)
            jac = jac * gain.unsqueeze(-1)
        ctx.save_for_backward(order, jac)
        return torch.empty_like(out).scatter_(-1, order, out)

    @staticmethod
    def backward(ctx, grad: Tensor):
        order, jac = ctx.saved_tensors
        grad_sorted = (grad.gather(-1, order).unsqueeze(-2) @ jac).squeeze(-2)
        return torch.empty_like(grad).scatter_(-1, order, grad_sorted), None, None


def _edge_radius(r: Tensor, basis: '_Basis', paper: bool) -> Tensor:
    """``sqrt(r^2 - (1/2 - 1/K)) / sqrt 2``: the edge-push coordinate ``t`` (K = 2: ``r / sqrt 2``)."""
    return torch.addcmul(basis.edge_offset, r, r, value=0.5).clamp_min_(0).sqrt_()


class _Basis:
    """Constant vectors and matrices of the closed form, made once per (K, dtype, device)."""

    def __init__(self, k: int, dtype: torch.dtype, device: torch.device) -> None:
        eye = torch.eye(k, dtype=torch.float64)
        sign = eye[0] - eye[1]
        half = (eye[0] + eye[1]) * 0.5
        values = dict(
            sign=sign, half=half, half_gap=(sign * 0.5).unsqueeze(-1),
            third=torch.full((k, ), 1 / k, dtype=torch.float64),
            edge_offset=torch.tensor(-0.5 * (0.5 - 1 / k), dtype=torch.float64),
            first_vertex=(eye[0] - 1 / k) / math.sqrt((k - 1) / k),
            full=eye - 1 / k,  # P for the whole simplex
            edge=torch.outer(sign, sign) * 0.5,  # P for the first edge
            below_half=torch.tensor(0.5 - torch.finfo(dtype).eps, dtype=torch.float64))
        for name, value in values.items():
            setattr(self, name, value.to(device=device, dtype=dtype))


def _basis(k: int, dtype: torch.dtype, device: torch.device) -> _Basis:
    return cached_constant(('sparsestmax', k, dtype, device), lambda: _Basis(k, dtype, device))


def _sparsestmax_loop(z: Tensor, r: Tensor, mode: str) -> Tensor:
    """Any K: K - 1 rounds of push-and-project, masked per row (no host read)."""
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
