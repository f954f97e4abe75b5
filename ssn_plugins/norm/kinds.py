"""Every SN/SSN layer class, under its registered name: the one table the registry, the synced
layers, the conversion API and deployment read, and the swaps between synced and plain layers.

The four kinds are ``'SN'``, ``'SSN'``, ``'SyncSN'`` and ``'SyncSSN'``.  The
plain kinds have a class per spatial rank, as ``torch.nn.BatchNorm{1,2,3}d``
(registered ``'SN1d'``, ``'SN'``, ``'SN3d'``, ...); the synced ones take any
rank, as ``torch.nn.SyncBatchNorm``.
"""
from __future__ import annotations

from typing import Optional

import torch.distributed as dist
from torch import nn

from .switch_norm import (SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d,
                          SparseSwitchNormBase, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d,
                          SwitchNormBase)
from .sync import SyncMixin, SyncSparseSwitchNorm, SyncSwitchNorm

__all__ = ['LAYERS', 'NORM_TYPES', 'BATCH_NORMS', 'layer_class', 'norm_type', 'spatial_rank',
           'convert_sync_switchnorm', 'revert_sync_switchnorm']

#: Registered name (in mmengine's root ``MODELS``) -> layer class.
LAYERS = {
    'SN': SwitchNorm2d, 'SSN': SparseSwitchNorm2d, 'SyncSN': SyncSwitchNorm, 'SyncSSN': SyncSparseSwitchNorm,
    'SN1d': SwitchNorm1d, 'SSN1d': SparseSwitchNorm1d, 'SN3d': SwitchNorm3d, 'SSN3d': SparseSwitchNorm3d,
}
#: The kinds of layer, as ``convert_norms``, ``convert_config`` and ``--norm`` take them.
NORM_TYPES = ('SN', 'SSN', 'SyncSN', 'SyncSSN')
#: torch's BatchNorm of each spatial rank (what a latched (BN, BN) layer becomes, and back).
BATCH_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def layer_class(norm: str, rank: Optional[int] = None) -> type:
    """The class of kind ``norm`` for spatial rank 1, 2 or 3; rank None (a source of any rank,
    such as SyncBatchNorm or GroupNorm) gives the 2d class.  Synced kinds take any rank."""
    if norm not in NORM_TYPES:
        raise ValueError(f'norm must be one of {NORM_TYPES}, got {norm!r}')
    if norm.startswith('Sync') or rank in (None, 2):
        return LAYERS[norm]
    return LAYERS[f'{norm}{rank}d']


def norm_type(layer: SwitchNormBase) -> str:
    """``'SN'``, ``'SSN'``, ``'SyncSN'`` or ``'SyncSSN'``."""
    kind = 'SSN' if isinstance(layer, SparseSwitchNormBase) else 'SN'
    return f'Sync{kind}' if isinstance(layer, SyncMixin) else kind


def spatial_rank(layer: SwitchNormBase) -> Optional[int]:
    """1, 2 or 3 like ``BatchNorm{1,2,3}d``; None for layers of any rank (the synced ones)."""
    if isinstance(layer, SyncMixin):
        return None
    return next((r for r in (1, 2, 3) if type(layer) is layer_class(norm_type(layer), r)), None)


def _swap(module: SwitchNormBase, cls: type, **extra) -> SwitchNormBase:
    """A layer of class ``cls`` sharing ``module``'s parameters, buffers and mode."""
    options = dict(eps=module.eps, momentum=module.momentum, affine=module.affine,
                   normalizers=module.normalizers, **extra)
    if isinstance(module, SparseSwitchNormBase):
        options['mode'] = module.mode
    new = cls(module.num_features, device='meta', **options)
    # Share the very tensors (as convert_sync_batchnorm does) so optimizers, requires_grad
    # flags, latched choices and the radius carry over untouched.
    for name, param in module._parameters.items():
        new._parameters[name] = param
    for name, buf in module._buffers.items():
        new._buffers[name] = buf
    if isinstance(module, SparseSwitchNormBase):
        new._set_selection(*module.selection)
    new.train(module.training)
    return new


def convert_sync_switchnorm(model: nn.Module,
                            process_group: Optional[dist.ProcessGroup] = None) -> nn.Module:
    """Replace every SN/SSN layer of ``model`` by its synced version; returns the model.

    Like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: parameters and
    buffers are shared, not copied, and a bare layer is returned converted.
    Already synced layers get ``process_group`` set.
    """
    if isinstance(model, SyncMixin):
        model._init_group(process_group)
        return model
    if isinstance(model, SwitchNormBase):
        rank = spatial_rank(model)
        if rank is None:
            raise TypeError(f'convert_sync_switchnorm: no synced version of {type(model).__name__}')
        new = _swap(model, layer_class('Sync' + norm_type(model)), process_group=process_group)
        new._plain_rank = rank  # for revert_sync_switchnorm
        return new
    for name, child in model.named_children():
        new = convert_sync_switchnorm(child, process_group)
        if new is not child:
            model.add_module(name, new)
    return model


def revert_sync_switchnorm(model: nn.Module) -> nn.Module:
    """Replace every SyncSN/SyncSSN layer by its plain version; returns the model.

    The inverse of :func:`convert_sync_switchnorm`: a converted layer gets its
    original class (1d, 2d or 3d) back; one built as ``SyncSN``/``SyncSSN``
    from a config becomes ``SwitchNorm2d``/``SparseSwitchNorm2d``.
    Parameters and buffers are shared.
    """
    if isinstance(model, SyncMixin):
        kind = norm_type(model)[len('Sync'):]
        return _swap(model, layer_class(kind, getattr(model, '_plain_rank', 2)))
    for name, child in model.named_children():
        new = revert_sync_switchnorm(child)
        if new is not child:
            model.add_module(name, new)
    return model
