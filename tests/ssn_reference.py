"""Slow, obviously-correct float64 references the fast code is compared against.

Written from the definitions (DESIGN.md, the papers), one vector or one
tensor at a time, with no shortcut shared with the package.
"""
from __future__ import annotations

import math

import torch


def ref_sparsemax(v: list[float]) -> list[float]:
    """Sort-based sparsemax of one vector (Martins & Astudillo, 2016)."""
    s = sorted(v, reverse=True)
    cumsum, tau = 0.0, 0.0
    for k, value in enumerate(s, start=1):
        cumsum += value
        if 1 + k * value > cumsum:
            tau = (cumsum - 1) / k
    return [max(x - tau, 0.0) for x in v]


def _dist(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y)**2 for x, y in zip(a, b)))


def ref_sparsestmax(v: list[float], r: float, mode: str = 'paper') -> list[float]:
    """SparsestMax of one vector, following DESIGN.md step by step.

    'paper': on each support face F push away from its centroid u_F to radius
    sqrt(r^2 - ||u_F - c||^2).  'official': the released code's recursion, the
    first push with the full r around the first face's centroid, then
    sqrt(rad_prev^2 - ||u_new - u_prev||^2).
    """
    k = len(v)
    centre = [1.0 / k] * k
    p = ref_sparsemax(v)
    prev_u, prev_rad = None, r
    while True:
        support = [i for i in range(k) if p[i] > 0]
        n = len(support)
        if n == 1:
            return p
        u = [1.0 / n if i in support else 0.0 for i in range(k)]
        if mode == 'paper':
            rad2 = r * r - _dist(u, centre)**2
        elif prev_u is None:
            rad2 = r * r
        else:
            rad2 = prev_rad**2 - _dist(u, prev_u)**2
        if rad2 <= 0:
            return p
        rad = math.sqrt(rad2)
        d = _dist(p, u)
        if d >= rad:
            return p
        if d < 1e-12:  # tie: towards the lowest-index vertex of the face
            direction = [(1.0 if i == support[0] else 0.0) - u[i] for i in range(k)]
            norm = math.sqrt(sum(x * x for x in direction))
            direction = [x / norm for x in direction]
        else:
            direction = [(p[i] - u[i]) / d for i in range(k)]
        q = [u[i] + rad * direction[i] for i in range(k)]
        if min(q) >= 0:
            return q
        p = ref_sparsemax(q)
        prev_u, prev_rad = u, rad


def ref_switch_norm(x, mean_ratios, var_ratios, normalizers=('in', 'ln', 'bn'), weight=None,
                    bias=None, running_mean=None, running_var=None, training=True, eps=1e-5):
    """y = weight * (x - sum_k p_k mu_k) / sqrt(sum_k q_k var_k + eps) + bias in float64.

    Each normalizer's moments are taken directly over its own dimensions of x
    (biased variance); in eval the BN branch uses the running statistics.
    """
    x = x.double()
    c = x.shape[1]
    dims = {'in': tuple(range(2, x.dim())), 'ln': tuple(range(1, x.dim())),
            'bn': (0,) + tuple(range(2, x.dim()))}
    shape = (1, c) + (1,) * (x.dim() - 2)
    mean = 0
    var = 0
    for k, name in enumerate(normalizers):
        if name == 'bn' and not training:
            mu, sigma2 = running_mean.double().view(shape), running_var.double().view(shape)
        elif x.dim() == 2 and name == 'in':
            mu, sigma2 = x, torch.zeros_like(x)
        else:
            mu = x.mean(dims[name], keepdim=True)
            sigma2 = ((x - mu)**2).mean(dims[name], keepdim=True)
        mean = mean + mean_ratios[k].double() * mu
        var = var + var_ratios[k].double() * sigma2
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.double().view(shape) + bias.double().view(shape)
    return y
