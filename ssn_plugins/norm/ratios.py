"""Importance ratios of SN/SSN layers from their logits: one function for layers and analysis."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.constants import cached_constant
from ..ops.sparsestmax import SPARSESTMAX_MODES, sparsestmax_unchecked

__all__ = ['switch_ratios', 'latched_choices', 'one_hot_ratios', 'bn_in_use']


def switch_ratios(logits: Tensor,
                  radius: Optional[Tensor] = None,
                  choices: Optional[Tensor] = None,
                  mode: str = 'paper',
                  name: str = 'switch norm') -> Tensor:
    """The (mean, var) importance ratios from logits, order IN, LN, BN: (..., 2, K).

    Args:
        logits: (..., 2, K), the mean logits then the variance logits.
        radius: None for SN (softmax); for SSN the SparsestMax radius, a
            tensor broadcastable to ``logits[..., :1]``.
        choices: SSN only: (..., 2) latched indices, -1 while free.  A
            latched row is one-hot and ignores its logits (NaN included):
            SparsestMax of a one-hot row is that vertex, with zero gradient.
        mode: SparsestMax rule, ``'paper'`` or ``'official'``.
        name: names the layer in the error for non-finite logits.

    Runs on the logits' device with no host read: non-finite logits in a row
    that is not latched fail through ``torch._assert_async`` (at once on the
    CPU, at the next synchronisation on CUDA).
    """
    if radius is None:
        ratios = F.softmax(logits, -1)
    else:
        if mode not in SPARSESTMAX_MODES:
            raise ValueError(f'mode must be one of {SPARSESTMAX_MODES}, got {mode!r}')
        if choices is not None:  # a latched row's stand-in logits: SparsestMax gives its vertex
            vertex = _vertex_logits(logits.shape[-1], logits.dtype, logits.device)[choices]
            logits = torch.where((choices >= 0).unsqueeze(-1), vertex, logits)
        ratios = sparsestmax_unchecked(logits, radius, mode)
    # NaN or inf logits make NaN ratios; each row sums to 1 otherwise
    torch._assert_async(ratios.sum() > 0.5 * ratios[..., 0].numel(),
                        f'{name}: mean_weight/var_weight hold NaN or inf; the ratios need finite logits')
    return ratios


def one_hot_ratios(choices: Tensor, k: int) -> Tensor:
    """(..., 2, K) float32 one-hot ratios of latched (..., 2) choices."""
    return (choices.unsqueeze(-1) == _arange(k, choices.device)).float()


def latched_choices(ratios: Tensor) -> Tensor:
    """(..., 2) index of each one-hot row of ``ratios`` (..., 2, K), -1 elsewhere."""
    index = _arange(ratios.shape[-1], ratios.device).expand_as(ratios)
    return index.masked_fill(ratios.detach() != 1, -1).amax(-1)


def bn_in_use(choices: Tensor, k: int, bn_index: int) -> Tensor:
    """0-d float32, 1 where the BN branch can take part (a (2,) choice is free, -1, or ``bn_index``), else 0."""
    table = cached_constant(('bn in use', k, bn_index, choices.device), lambda: torch.tensor(
        [float(i == bn_index) for i in range(k)] + [1.0], device=choices.device))  # [-1]: free
    return table[choices].amax()


def _vertex_logits(k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Row i: logits whose SparsestMax is exactly vertex i at any radius (a gap of 2 > 1)."""
    return cached_constant(('vertex logits', k, dtype, device),
                           lambda: torch.eye(k, dtype=dtype, device=device) * 2)


def _arange(k: int, device: torch.device) -> Tensor:
    return cached_constant(('arange', k, device), lambda: torch.arange(k, device=device))
