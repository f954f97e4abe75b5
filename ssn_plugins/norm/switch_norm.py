"""Switchable Normalization (SN) and Sparse Switchable Normalization (SSN) layers.

:class:`SwitchNormBase` holds the state and the one forward; SN turns its
logits into ratios with softmax, :class:`SparseSwitchNormBase` (SSN) with
SparsestMax at a scheduled radius and latches its choice once the ratios are
one-hot.  The 1d/2d/3d classes only differ in the input rank they accept, as
in ``torch.nn.BatchNorm*d``.

Nothing in a forward or backward reads a tensor on the host.  An SSN layer
records latching on the device (its ``mean_choice``/``var_choice``
buffers); the host learns the choices from :func:`update_choices`, one
batched read for a whole model, into the layer's :class:`Selection`, and only
then takes the shortcuts of a latched layer (PyTorch's BN/IN/LN kernels, no
SparsestMax).  SN has no latching: its forward mixes every normalizer.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..compat import custom_functions_traceable
from ..ops.sparsestmax import SPARSESTMAX_MODES
from .functional import has_latched_kernel, keep_in_graph, latched_norm, switch_norm
from .moments import NORMALIZERS, BatchPool
from .ratios import bn_in_use, latched_choices, one_hot_ratios, switch_ratios

__all__ = [
    'SwitchNormBase', 'SparseSwitchNormBase', 'SwitchNorm1d', 'SwitchNorm2d', 'SwitchNorm3d',
    'SparseSwitchNorm1d', 'SparseSwitchNorm2d', 'SparseSwitchNorm3d', 'is_switch_norm',
    'update_choices', 'radius_problem', 'Selection'
]


class Selection(NamedTuple):
    """What the host knows of an SSN layer's choice: an index into its normalizers, -1 while free.

    One of four states (:attr:`state`): ``'free'``, ``'mean latched'``,
    ``'variance latched'`` or ``'latched'`` (both).  The device may know more
    (the ``mean_choice``/``var_choice`` buffers) until :func:`update_choices`.
    """

    mean: int = -1
    var: int = -1

    @property
    def state(self) -> str:
        if self.mean >= 0 and self.var >= 0:
            return 'latched'
        if self.mean >= 0:
            return 'mean latched'
        return 'variance latched' if self.var >= 0 else 'free'

    def names(self, normalizers: Sequence[str]) -> Optional[tuple[str, str]]:
        """(mean, var) normalizer names when both are latched, else None."""
        if self.state != 'latched':
            return None
        return normalizers[self.mean], normalizers[self.var]


class SwitchNormBase(nn.Module):
    """Switchable Normalization of any input rank (use the 1d/2d/3d classes).

    Ratios are ``softmax(mean_weight)`` and ``softmax(var_weight)``.  Subclasses
    set ``_input_ranks``; SSN overrides :meth:`_normalize` (its selection) and
    synced layers :meth:`_batch_pool`.
    """

    _abbr_ = 'sn'  # mmcv names the layers sn1, sn2, ... like the released checkpoints
    _input_ranks: tuple[int, ...] = (2, 3, 4, 5)

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: Optional[float] = 0.1,
                 affine: bool = True,
                 normalizers: Sequence[str] = NORMALIZERS,
                 device=None,
                 dtype=None) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f'num_features must be a positive int, got {num_features!r}')
        if not eps > 0:
            raise ValueError(f'eps must be > 0, got {eps!r}')
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f'momentum must be in [0, 1] (PyTorch convention) or None '
                             f'(cumulative average), got {momentum!r}')
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
        if momentum is None and 'bn' in self.normalizers:  # cumulative average, as BatchNorm
            self.register_buffer('num_batches_tracked', torch.zeros((), dtype=torch.long, device=device))
        else:
            self.register_buffer('num_batches_tracked', None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.running_mean is not None:
            self.running_mean.zero_()
            self.running_var.fill_(1)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.zero_()

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

    def _logits(self) -> Tensor:
        return torch.stack([self.mean_weight, self.var_weight])  # (2, K)

    def _ratios(self) -> Tensor:
        """(2, K) ratios of the next forward (rows: mean, var), on the device: softmax of the logits."""
        return switch_ratios(self._logits(), name=type(self).__name__)

    def ratios(self) -> tuple[Tensor, Tensor]:
        """The (mean, var) importance ratios the next forward uses, each (K,), order IN, LN, BN."""
        with torch.no_grad():
            ratios = self._ratios()
        return ratios[0].clone(), ratios[1].clone()

    def _batch_pool(self) -> Optional[BatchPool]:
        """The BN branch's batch pooling: None for this process's batch (synced layers override)."""
        return None

    def _count_batch(self, bn_in_use: Optional[Tensor]) -> Union[float, Tensor]:
        """Count this training batch in ``num_batches_tracked``; return its running-average factor.

        The factor is ``momentum``, or ``1 / t`` for a cumulative average
        (``momentum=None``).  ``bn_in_use`` (0-d, 1 or 0 on the device, None
        where the host knows the BN branch takes part) scales the count and
        the factor, so a layer latched on the device on IN/LN leaves its
        statistics alone.
        """
        if self.num_batches_tracked is None:
            momentum = self.momentum if self.momentum is not None else 0.0
            return momentum if bn_in_use is None else bn_in_use * momentum
        self.num_batches_tracked.add_(1 if bn_in_use is None else bn_in_use.long())
        if bn_in_use is None:
            return self.num_batches_tracked.reciprocal()
        return bn_in_use / self.num_batches_tracked.clamp_min(1)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        batch_pool = self._batch_pool()
        if x.numel() == 0 and batch_pool is None:  # synced layers still join the collectives
            return self._empty_forward(x)
        return self._normalize(x, batch_pool)

    def _normalize(self, x: Tensor, batch_pool: Optional[BatchPool]) -> Tensor:
        """SN: every normalizer at its softmax ratio."""
        return self._mix(x, self._ratios(), batch_pool)

    def _mix(self,
             x: Tensor,
             ratios: Tensor,
             batch_pool: Optional[BatchPool],
             bn_in_use: Optional[Tensor] = None,
             bn_takes_part: bool = True) -> Tensor:
        """:func:`switch_norm` of ``x`` at ``ratios`` with this layer's state.

        In training the batch is counted and the running statistics are
        updated where the BN branch can take part: always unless
        ``bn_takes_part`` is False (the host knows the layer latched on
        IN/LN), scaled on the device by ``bn_in_use`` (see :meth:`_count_batch`).
        """
        running_mean, running_var, factor = self.running_mean, self.running_var, self.momentum
        if self.training and 'bn' in self.normalizers:
            if not bn_takes_part:  # the running statistics are never read, so never written
                running_mean = running_var = None
            else:
                if batch_pool is None and x.numel() == x.shape[1]:
                    # one value per channel: as BatchNorm, unless the device knows BN takes no part
                    message = (f'{type(self).__name__}: Expected more than 1 value per channel when '
                               f'training (the BN branch), got input size {tuple(x.shape)}')
                    if bn_in_use is None:
                        raise ValueError(message)
                    torch._assert_async(bn_in_use.logical_not(), message)
                factor = self._count_batch(bn_in_use)
        fused = batch_pool is None and custom_functions_traceable()
        return switch_norm(x, ratios, self.normalizers, running_mean, running_var,
                           self.weight, self.bias, self.training, factor, self.eps,
                           path='fused' if fused else 'composite', batch_pool=batch_pool)

    def _empty_forward(self, x: Tensor) -> Tensor:
        """As BatchNorm on an empty batch: an empty output, statistics untouched, parameters in the graph."""
        y = x.clone()
        if self.affine:
            y = y * self.weight[0] + self.bias[0]
        if self.training and torch.is_grad_enabled():
            y = keep_in_graph(y, self.mean_weight, self.var_weight)
        return y

    def __prepare_scriptable__(self):
        """``torch.jit.script`` calls this first (on every submodule): refuse in one clear line."""
        raise TypeError(f'{type(self).__name__}: TorchScript (torch.jit.script) is not supported by '
                        f'SN/SSN layers; use torch.compile, or collapse the latched layers into '
                        f'plain BatchNorm/InstanceNorm/GroupNorm with tools/deploy.py '
                        f'(ssn_plugins.collapse_norms) and script that model')

    def extra_repr(self) -> str:
        return ('{num_features}, eps={eps}, momentum={momentum}, affine={affine}, '
                'normalizers={normalizers}'.format(**self.__dict__))


class SparseSwitchNormBase(SwitchNormBase):
    """Sparse Switchable Normalization of any input rank (use the 1d/2d/3d classes).

    Ratios are SparsestMax of the logits at radius ``radius``, a buffer set
    from outside (``SSNRadiusHook``, or :meth:`set_radius`).  When, in
    training, the mean (or variance) ratios come out one-hot, the choice is
    latched in ``mean_choice`` (``var_choice``): the index of the selected
    normalizer, ``-1`` while free.  Latched ratios stay one-hot whatever the
    radius or logits do, and the logits stay in the graph with a zero
    gradient (DDP with ``find_unused_parameters=False``).

    Latching happens on the device, in the forward.  The host learns of it
    from :func:`update_choices` (``SSNRadiusHook`` calls it after every
    training step), :meth:`latch`, :meth:`unlatch` or ``load_state_dict``;
    until then the layer computes the same output on its general path.  In a
    plain PyTorch loop, call ``update_choices(model)`` after
    ``optimizer.step()`` now and then (it reads every layer in one copy).
    """

    def __init__(self,
                 num_features: int,
                 eps: float = 1e-5,
                 momentum: Optional[float] = 0.1,
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
        self._selection = Selection()  # what the host knows of the two buffers

    @property
    def selection(self) -> Selection:
        """What the host knows of the choices (see :func:`update_choices`); no device read."""
        return self._selection

    def _set_selection(self, mean: int, var: int) -> None:
        """Record what the host now knows of ``mean_choice``/``var_choice`` (indices, -1 free)."""
        self._selection = Selection(mean, var)

    def set_radius(self, radius: float) -> None:
        """Set the SparsestMax radius: a finite number >= 0 (>= sqrt((K-1)/K) makes every row one-hot)."""
        limit = torch.finfo(self.radius.dtype).max
        allowed = (f'{type(self).__name__}.set_radius: radius must be a finite number in '
                   f'[0, {limit:.4g}] (the {self.radius.dtype} radius buffer)')
        if isinstance(radius, bool) or not isinstance(radius, numbers.Real):
            raise TypeError(f'{allowed}, got {type(radius).__name__} {radius!r}')
        if not (math.isfinite(radius) and 0 <= radius <= limit):
            raise ValueError(f'{allowed}, got {radius!r}; any radius >= 1 already makes every '
                             f'row one-hot')
        self.radius.fill_(float(radius))

    def _index(self, choice: Union[int, str], which: str) -> int:
        k = len(self.normalizers)
        if isinstance(choice, str) and choice in self.normalizers:
            return self.normalizers.index(choice)
        if isinstance(choice, numbers.Integral) and not isinstance(choice, bool) and 0 <= choice < k:
            return int(choice)
        raise ValueError(f'{type(self).__name__}.latch: {which} must be one of {self.normalizers} '
                         f'or an index in 0..{k - 1}, got {choice!r}')

    def latch(self, mean: Union[int, str], var: Union[int, str]) -> None:
        """Fix the selection: ``mean``/``var`` are normalizer names (``'bn'``) or indices."""
        mean_index, var_index = self._index(mean, 'mean'), self._index(var, 'var')
        self.mean_choice.fill_(mean_index)
        self.var_choice.fill_(var_index)
        self._set_selection(mean_index, var_index)

    def unlatch(self) -> None:
        """Forget the latched choices so the layer learns its selection again."""
        self.mean_choice.fill_(-1)
        self.var_choice.fill_(-1)
        self._set_selection(-1, -1)

    @property
    def latched(self) -> bool:
        """True when both the mean and the variance choice are latched (reads the buffers)."""
        return bool((self.mean_choice >= 0) & (self.var_choice >= 0))

    def _device_choices(self) -> Tensor:
        return torch.stack([self.mean_choice, self.var_choice])  # (2,)

    def _ratios(self) -> Tensor:
        """(2, K) SparsestMax ratios at the radius; rows latched on the device are one-hot."""
        return switch_ratios(self._logits(), self.radius, self._device_choices(), self.mode,
                             type(self).__name__)

    def _normalize(self, x: Tensor, batch_pool: Optional[BatchPool]) -> Tensor:
        """SSN: the kernel the host-known :attr:`selection` allows.

        Latched on one normalizer for both rows: PyTorch's own kernel
        (:func:`latched_norm`).  Latched on two: one-hot ratios, no
        SparsestMax.  Otherwise SparsestMax, latching on the device the rows
        that come out one-hot in training.
        """
        anchored = self.training and torch.is_grad_enabled()  # logits keep a (zero) gradient
        mean, var = self._selection  # plain ints: no method calls for torch.compile to trace
        if mean >= 0 and var >= 0:
            latched = self.normalizers[mean], self.normalizers[var]
            if latched[0] == latched[1] and has_latched_kernel(latched[0], x) and (
                    latched[0] != 'bn' or (batch_pool is None and self.momentum is not None)):
                xin = keep_in_graph(x, self.mean_weight, self.var_weight) if anchored else x
                return latched_norm(xin, latched[0], self.running_mean, self.running_var, self.weight,
                                    self.bias, self.training, self.momentum, self.eps)
            if anchored:
                x = keep_in_graph(x, self.mean_weight, self.var_weight)
            ratios = one_hot_ratios(self._device_choices(), len(self.normalizers))
            return self._mix(x, ratios, batch_pool, bn_takes_part='bn' in latched)
        ratios = self._ratios()
        in_use = None
        if self.training:
            choices = self._latch_on_device(ratios)
            if 'bn' in self.normalizers:  # BN is last in the canonical order
                k = len(self.normalizers)
                in_use = bn_in_use(choices, k, k - 1)
        return self._mix(x, ratios, batch_pool, in_use)

    def _latch_on_device(self, ratios: Tensor) -> Tensor:
        """Latch the rows of ``ratios`` that came out one-hot, on the device; return the (2,) choices."""
        choices = latched_choices(ratios)
        torch._foreach_copy_([self.mean_choice, self.var_choice], list(choices.unbind()))
        return choices

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        k = len(self.normalizers)
        radius = state_dict.get(prefix + 'radius')
        if radius is not None:
            problem = radius_problem(radius)
            if problem:
                error_msgs.append(f'{prefix}radius: {problem}')
                return
        seen = list(self._selection)
        for slot, which in enumerate(('mean_choice', 'var_choice')):
            value = state_dict.get(prefix + which)
            if value is None:
                continue
            if not isinstance(value, Tensor) or value.numel() != 1 or value.is_floating_point():
                error_msgs.append(f'{prefix}{which}: expected an integer scalar (-1, or 0..{k - 1} '
                                  f'for {self.normalizers}), got {value!r}')
                return
            index = int(value)
            if not -1 <= index < k:
                error_msgs.append(f'{prefix}{which} = {index} is out of range: -1 (not latched) or '
                                  f'0..{k - 1} (an index into {self.normalizers})')
                return
            seen[slot] = index
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._set_selection(*seen)

    def extra_repr(self) -> str:
        text = super().extra_repr() + f", mode='{self.mode}'"
        if not self.radius.is_meta:
            text += f', radius={float(self.radius):.4g}'
        if self._selection.state != 'free':  # what the host knows: no device read
            text += ', choice=({}, {})'.format(*(self.normalizers[i] if i >= 0 else 'free'
                                                  for i in self._selection))
        return text


def radius_problem(radius) -> str:
    """Why a stored SSN ``radius`` is unusable ('' when it is fine): it must be finite and >= 0.

    Read on the host: for loading checkpoints, never in a forward.
    """
    if not isinstance(radius, Tensor) or not radius.is_floating_point() or radius.numel() == 0:
        return f'expected a floating-point scalar tensor, got {radius!r}'
    if radius.is_meta:
        return ''  # no values to check (a model built on the meta device)
    values = radius.detach().flatten().double()
    bad = values[~(values.isfinite() & (values >= 0))]
    if bad.numel():
        value = float(bad[0])
        return (f'{value} is not a valid SparsestMax radius: it must be finite and >= 0 '
                '(0 is sparsemax, >= 1 one-hot); fix or drop this entry of the checkpoint')
    return ''


@torch.no_grad()
def update_choices(model: nn.Module) -> int:
    """Tell every SSN layer of ``model`` its latched choices: one host read per device.

    Returns how many layers are fully latched.  ``SSNRadiusHook`` calls this
    after every training step; a plain PyTorch loop may call it after
    ``optimizer.step()`` so latched layers take their fast paths.
    """
    layers = [m for m in model.modules() if isinstance(m, SparseSwitchNormBase)]
    by_device: dict = {}
    for layer in layers:
        by_device.setdefault(layer.mean_choice.device, []).append(layer)
    latched = 0
    for group in by_device.values():
        values = torch.stack([b for m in group for b in (m.mean_choice, m.var_choice)]).tolist()
        for i, layer in enumerate(group):
            layer._set_selection(values[2 * i], values[2 * i + 1])
            latched += layer.selection.state == 'latched'
    return latched


class SwitchNorm1d(SwitchNormBase):
    """Switchable Normalization over (N, C) or (N, C, L) input.

    Shape:
        - Input: (N, C) or (N, C, L)
        - Output: same shape as the input

    Args: as :class:`SwitchNorm2d`.
    """

    _input_ranks = (2, 3)


class SwitchNorm2d(SwitchNormBase):
    """Switchable Normalization over (N, C, H, W) input.

    Shape:
        - Input: (N, C, H, W)
        - Output: same shape as the input

    Args:
        num_features: C, the number of channels.
        eps: added to the variance for stability.
        momentum: ``running = (1 - momentum) * running + momentum * batch``
            (PyTorch convention; the released code's 0.997 is 0.003 here);
            ``None`` for a cumulative average, as in BatchNorm.
        affine: learn a per-channel ``weight`` and ``bias``.
        normalizers: which of ``('in', 'ln', 'bn')`` take part, e.g.
            ``('in', 'ln')`` for one sample per GPU (no running statistics).

    Example:
        >>> norm = SwitchNorm2d(64)
        >>> y = norm(torch.randn(2, 64, 8, 8))
        >>> mean_ratios, var_ratios = norm.ratios()  # softmax of the logits
    """

    _input_ranks = (4, )


class SwitchNorm3d(SwitchNormBase):
    """Switchable Normalization over (N, C, D, H, W) input.

    Shape:
        - Input: (N, C, D, H, W)
        - Output: same shape as the input

    Args: as :class:`SwitchNorm2d`.
    """

    _input_ranks = (5, )


class SparseSwitchNorm1d(SparseSwitchNormBase):
    """Sparse Switchable Normalization over (N, C) or (N, C, L) input.

    Shape:
        - Input: (N, C) or (N, C, L)
        - Output: same shape as the input

    Args: as :class:`SparseSwitchNorm2d`.
    """

    _input_ranks = (2, 3)


class SparseSwitchNorm2d(SparseSwitchNormBase):
    """Sparse Switchable Normalization over (N, C, H, W) input.

    Shape:
        - Input: (N, C, H, W)
        - Output: same shape as the input

    Args:
        num_features: C, the number of channels.
        eps: added to the variance for stability.
        momentum: ``running = (1 - momentum) * running + momentum * batch``
            (PyTorch convention; the released code's 0.997 is 0.003 here);
            ``None`` for a cumulative average, as in BatchNorm.
        affine: learn a per-channel ``weight`` and ``bias``.
        normalizers: which of ``('in', 'ln', 'bn')`` take part.
        mode: SparsestMax rule, ``'paper'`` (default) or ``'official'``.

    Example:
        >>> norm = SparseSwitchNorm2d(64)
        >>> norm.set_radius(1.0)  # normally SSNRadiusHook's job
        >>> y = norm.train()(torch.randn(2, 64, 8, 8))
        >>> norm.latched
        True
    """

    _input_ranks = (4, )


class SparseSwitchNorm3d(SparseSwitchNormBase):
    """Sparse Switchable Normalization over (N, C, D, H, W) input.

    Shape:
        - Input: (N, C, D, H, W)
        - Output: same shape as the input

    Args: as :class:`SparseSwitchNorm2d`.
    """

    _input_ranks = (5, )


def is_switch_norm(module: nn.Module) -> bool:
    """True for SN and SSN layers of any rank (and their synced variants)."""
    return isinstance(module, SwitchNormBase)
