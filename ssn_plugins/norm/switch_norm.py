"""Switchable Normalization (SN) and Sparse Switchable Normalization (SSN) layers.

One implementation, :class:`_SwitchNormBase`, holds the state; SN turns its
logits into ratios with softmax, SSN with SparsestMax at a scheduled radius
and latches its choice once the ratios are one-hot.  The 1d/2d/3d classes
only differ in the input rank they accept, as in ``torch.nn.BatchNorm*d``.
"""
from __future__ import annotations

import logging
import weakref
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.sparsestmax import SPARSESTMAX_MODES, sparsestmax
from .functional import NORMALIZERS, pool_batch, switch_norm
from .fused import latched_norm

__all__ = [
    'SwitchNorm1d', 'SwitchNorm2d', 'SwitchNorm3d', 'SparseSwitchNorm1d',
    'SparseSwitchNorm2d', 'SparseSwitchNorm3d', 'is_switch_norm'
]

logger = logging.getLogger(__name__)


class _SwitchNormBase(nn.Module):
    """State and forward shared by SN and SSN (not registered, not for direct use)."""

    _abbr_ = 'sn'  # mmcv names the layers sn1, sn2, ... like the released checkpoints
    _input_ranks: tuple[int, ...] = ()

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: float = 0.1,
                 affine: bool = True,
                 normalizers: Sequence[str] = NORMALIZERS,
                 device=None,
                 dtype=None) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f'num_features must be a positive int, got {num_features!r}')
        if not eps > 0:
            raise ValueError(f'eps must be > 0, got {eps!r}')
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f'momentum must be in [0, 1] (PyTorch convention), got {momentum!r}')
        normalizers = tuple(normalizers)
        unknown = [n for n in normalizers if n not in NORMALIZERS]
        if unknown or len(set(normalizers)) != len(normalizers):
            raise ValueError(f'normalizers must be distinct names from {NORMALIZERS}, got {normalizers}')
        if len(normalizers) < 2:
            raise ValueError(f'normalizers needs at least two of {NORMALIZERS} to switch between, '
                             f'got {normalizers}; use the plain layer instead')
        # Keep the canonical order IN, LN, BN so logits line up with released checkpoints.
        self.normalizers = tuple(n for n in NORMALIZERS if n in normalizers)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        factory = dict(device=device, dtype=dtype)
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter('weight', None)
            self.register_parameter('bias', None)
        k = len(self.normalizers)
        self.mean_weight = nn.Parameter(torch.empty(k, **factory))
        self.var_weight = nn.Parameter(torch.empty(k, **factory))
        if 'bn' in self.normalizers:
            self.register_buffer('running_mean', torch.empty(num_features, **factory))
            self.register_buffer('running_var', torch.empty(num_features, **factory))
        else:
            self.register_buffer('running_mean', None)
            self.register_buffer('running_var', None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.running_mean is not None:
            self.running_mean.zero_()
            self.running_var.fill_(1)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)
        nn.init.ones_(self.mean_weight)
        nn.init.ones_(self.var_weight)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in self._input_ranks:
            ranks = ' or '.join(f'{r}D' for r in self._input_ranks)
            raise ValueError(f'{type(self).__name__} expects {ranks} input, got {x.dim()}D '
                             f'of shape {tuple(x.shape)}')
        if x.shape[1] != self.num_features:
            raise ValueError(f'{type(self).__name__} expects {self.num_features} channels '
                             f'(dim 1), got input of shape {tuple(x.shape)}')

    def _ratios(self, latch: bool = False) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def ratios(self) -> tuple[Tensor, Tensor]:
        """The (mean, var) importance ratios the next forward uses, each (K,), order IN, LN, BN."""
        with torch.no_grad():
            mean_ratios, var_ratios = self._ratios()
        return mean_ratios.detach().clone(), var_ratios.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        default_pool = self._has_default_bn_pool()
        choices = self._latched_choices()
        mean_ratios, var_ratios = (None, None) if choices else self._ratios(latch=self.training)
        bias = self.bias
        anchor = None
        if choices is not None and self.training and torch.is_grad_enabled():
            # Keep the logits in the graph (zero gradient) so DDP with
            # find_unused_parameters=False does not fail once a layer latches.
            anchor = 0 * (self.mean_weight.sum() + self.var_weight.sum())
            bias = anchor if bias is None else bias + anchor
        if choices and choices[0] == choices[1] and (default_pool or choices[0] != 'bn'):
            # Latched (BN, BN), (IN, IN) or (LN, LN): PyTorch's own kernel.
            affine_bias = bias if self.bias is not None else None
            y = latched_norm(x, choices[0], self.running_mean, self.running_var, self.weight,
                             affine_bias, self.training, self.momentum, self.eps)
            if y is not None:
                return y if anchor is None or affine_bias is not None else y + anchor
        if mean_ratios is None:
            mean_ratios, var_ratios = self._ratios(latch=self.training)
        return switch_norm(x, mean_ratios, var_ratios, self.normalizers,
                           self.running_mean, self.running_var, self.weight, bias,
                           self.training, self.momentum, self.eps,
                           pool_batch if default_pool else self._bn_pool)

    def _bn_pool(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor, int]:
        """The BN branch's batch moments; synced layers reduce across processes."""
        return pool_batch(mean, var)

    def _has_default_bn_pool(self) -> bool:
        """True unless a subclass (synced layers) replaced ``_bn_pool``: then no fast path."""
        return (type(self)._bn_pool is _SwitchNormBase._bn_pool
                and '_bn_pool' not in self.__dict__)

    def _latched_choices(self) -> Optional[tuple[str, str]]:
        """(mean, var) normalizer names once the selection is latched, else None."""
        return None

    def extra_repr(self) -> str:
        return ('{num_features}, eps={eps}, momentum={momentum}, affine={affine}, '
                'normalizers={normalizers}'.format(**self.__dict__))


class _SwitchNorm(_SwitchNormBase):
    """SN: ratios are ``softmax(mean_weight)`` and ``softmax(var_weight)``."""

    def _ratios(self, latch: bool = False) -> tuple[Tensor, Tensor]:
        for name in ('mean_weight', 'var_weight'):
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise ValueError(f'{type(self).__name__}.{name} holds NaN or inf: {getattr(self, name).data}')
        return F.softmax(self.mean_weight, 0), F.softmax(self.var_weight, 0)


class _SparseSwitchNorm(_SwitchNormBase):
    """SSN: ratios are SparsestMax of the logits at radius ``radius``.

    The radius is a buffer set from outside (``SSNRadiusHook``).  When, in
    training, the mean (or variance) ratios become one-hot, the choice is
    latched in ``mean_choice`` (``var_choice``): the index of the selected
    normalizer, ``-1`` while not latched.  Latched ratios no longer run
    SparsestMax and stay one-hot whatever the radius or logits do.
    """

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: float = 0.1,
                 affine: bool = True,
                 normalizers: Sequence[str] = NORMALIZERS,
                 mode: str = 'paper',
                 device=None,
                 dtype=None) -> None:
        if mode not in SPARSESTMAX_MODES:
            raise ValueError(f'mode must be one of {SPARSESTMAX_MODES}, got {mode!r}')
        self.mode = mode
        super().__init__(num_features, eps, momentum, affine, normalizers, device, dtype)
        self.register_buffer('radius', torch.zeros((), device=device))
        self.register_buffer('mean_choice', torch.full((), -1, dtype=torch.long, device=device))
        self.register_buffer('var_choice', torch.full((), -1, dtype=torch.long, device=device))

    def set_radius(self, radius: float) -> None:
        if not radius >= 0:
            raise ValueError(f'radius must be >= 0, got {radius!r}')
        self.radius.fill_(radius)

    def _choice_indices(self) -> tuple[int, int]:
        """(mean, var) latched indices as Python ints, -1 while free.

        Read from the buffers only when they changed (another tensor after
        ``.to()``, or an in-place write such as ``load_state_dict``, which
        bumps the tensor's version): this runs every forward, and reading a
        buffer costs a tensor op (a device sync on CUDA).
        """
        buffers = (self.mean_choice, self.var_choice)
        cached = self.__dict__.get('_choice_cache')
        try:
            versions = tuple(b._version for b in buffers)
        except RuntimeError:  # inference tensors track no version: read them every time
            return int(buffers[0]), int(buffers[1])
        if (cached is None or cached[2] != versions
                or any(ref() is not b for ref, b in zip(cached[1], buffers))):
            cached = ((int(buffers[0]), int(buffers[1])), tuple(weakref.ref(b) for b in buffers),
                      versions)
            self.__dict__['_choice_cache'] = cached
        return cached[0]

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop('_choice_cache', None)  # weak references do not pickle
        return state

    @property
    def latched(self) -> bool:
        """True when both the mean and the variance choice are latched."""
        mean_index, var_index = self._choice_indices()
        return mean_index >= 0 and var_index >= 0

    def unlatch(self) -> None:
        """Forget the latched choices so the layer learns its selection again."""
        self.mean_choice.fill_(-1)
        self.var_choice.fill_(-1)

    def _latched_choices(self) -> Optional[tuple[str, str]]:
        mean_index, var_index = self._choice_indices()
        if mean_index < 0 or var_index < 0:
            return None
        return self.normalizers[mean_index], self.normalizers[var_index]

    def _sparsestmax(self, logits: Tensor, choices: tuple[Tensor, ...], latch: bool) -> Tensor:
        """SparsestMax of each row of ``logits``; latch the rows that come out one-hot."""
        try:
            ratios = sparsestmax(logits, self.radius, mode=self.mode)
        except ValueError as err:
            raise ValueError(f'{type(self).__name__}: {err}') from None
        if latch:
            for row, choice in zip(ratios.detach().view(len(choices), -1), choices):
                one_hot = (row == 1).nonzero()
                if one_hot.numel():
                    choice.fill_(int(one_hot[0, 0]))
        return ratios

    def _one_ratio(self, logits: Tensor, choice: Tensor, index: int, latch: bool) -> Tensor:
        if index >= 0:
            return F.one_hot(choice, logits.numel()).to(logits.dtype)
        return self._sparsestmax(logits, (choice, ), latch)

    def _ratios(self, latch: bool = False) -> tuple[Tensor, Tensor]:
        mean_index, var_index = self._choice_indices()
        if mean_index < 0 and var_index < 0:
            # One batched SparsestMax for both logits: its cost is per-op overhead, not size.
            both = self._sparsestmax(torch.stack([self.mean_weight, self.var_weight]),
                                     (self.mean_choice, self.var_choice), latch)
            return both[0], both[1]
        return (self._one_ratio(self.mean_weight, self.mean_choice, mean_index, latch),
                self._one_ratio(self.var_weight, self.var_choice, var_index, latch))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode='{self.mode}'"


class _Input1d:
    _input_ranks = (2, 3)


class _Input2d:
    _input_ranks = (4,)


class _Input3d:
    _input_ranks = (5,)


_SHAPE_DOC = """

    Shape:
        - Input: {shape}
        - Output: same shape as the input

    Args:
        num_features: C, the number of channels.
        eps: added to the variance for stability.
        momentum: ``running = (1 - momentum) * running + momentum * batch``
            (PyTorch convention; the released code's 0.997 is 0.003 here).
        affine: learn a per-channel ``weight`` and ``bias``.
        normalizers: which of ``('in', 'ln', 'bn')`` take part, e.g.
            ``('in', 'ln')`` for one sample per GPU (no running statistics).
"""


class SwitchNorm1d(_Input1d, _SwitchNorm):
    __doc__ = 'Switchable Normalization over (N, C) or (N, C, L) input.' + _SHAPE_DOC.format(
        shape='(N, C) or (N, C, L)')


class SwitchNorm2d(_Input2d, _SwitchNorm):
    __doc__ = 'Switchable Normalization over (N, C, H, W) input.' + _SHAPE_DOC.format(
        shape='(N, C, H, W)') + """
    Example:
        >>> norm = SwitchNorm2d(64)
        >>> y = norm(torch.randn(2, 64, 8, 8))
        >>> mean_ratios, var_ratios = norm.ratios()  # softmax of the logits
"""


class SwitchNorm3d(_Input3d, _SwitchNorm):
    __doc__ = 'Switchable Normalization over (N, C, D, H, W) input.' + _SHAPE_DOC.format(
        shape='(N, C, D, H, W)')


_SSN_DOC = """        mode: SparsestMax rule, ``'paper'`` (default) or ``'official'``.
"""


class SparseSwitchNorm1d(_Input1d, _SparseSwitchNorm):
    __doc__ = 'Sparse Switchable Normalization over (N, C) or (N, C, L) input.' + _SHAPE_DOC.format(
        shape='(N, C) or (N, C, L)') + _SSN_DOC


class SparseSwitchNorm2d(_Input2d, _SparseSwitchNorm):
    __doc__ = 'Sparse Switchable Normalization over (N, C, H, W) input.' + _SHAPE_DOC.format(
        shape='(N, C, H, W)') + _SSN_DOC + """
    Example:
        >>> norm = SparseSwitchNorm2d(64)
        >>> norm.set_radius(1.0)  # normally SSNRadiusHook's job
        >>> y = norm.train()(torch.randn(2, 64, 8, 8))
        >>> norm.latched
        True
"""


class SparseSwitchNorm3d(_Input3d, _SparseSwitchNorm):
    __doc__ = 'Sparse Switchable Normalization over (N, C, D, H, W) input.' + _SHAPE_DOC.format(
        shape='(N, C, D, H, W)') + _SSN_DOC


def is_switch_norm(module: nn.Module) -> bool:
    """True for SN and SSN layers of any rank (and their synced variants)."""
    return isinstance(module, _SwitchNormBase)
