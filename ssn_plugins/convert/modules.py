"""Any model to SN/SSN: replace BatchNorm and GroupNorm layers, weights and statistics kept.

:func:`convert_norms` is ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``'s
idiom for SN/SSN: it walks a module, swaps every convertible normalization
layer in place and returns the module (a bare layer comes back converted).
Its inverse is :func:`ssn_plugins.collapse_norms`.  :func:`plain_norms`
lists the normalization layers a model still holds, which both this module
and the config check (:mod:`.check`) report by name.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from ..norm import BATCH_NORMS, NORM_TYPES, SwitchNormBase, layer_class

__all__ = ['NORM_TYPES', 'convert_norms', 'plain_norms', 'LeftoverNormWarning']



class LeftoverNormWarning(UserWarning):
    """A model that asks for SN/SSN still holds other normalization layers."""


def _is_batch_norm(module: nn.Module) -> bool:
    """torch's BatchNorm*d/SyncBatchNorm (and mmengine's), or mmcv's ``MMSyncBN``."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    try:
        from mmcv.ops import SyncBatchNorm as MMSyncBatchNorm
    except ImportError:  # mmcv built without its ops
        return False
    return isinstance(module, MMSyncBatchNorm)


def _is_norm(module: nn.Module) -> bool:
    """Any normalization layer other than ours (named by class, so torchvision's
    ``FrozenBatchNorm2d`` and other libraries' norms count too)."""
    if isinstance(module, SwitchNormBase):
        return False
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
                           nn.LocalResponseNorm)) or _is_batch_norm(module):
        return True
    name = type(module).__name__
    return name.endswith(('Norm', 'Norm1d', 'Norm2d', 'Norm3d')) and not list(module.children())


def plain_norms(model: nn.Module) -> dict[str, str]:
    """``{module name: class name}`` of every normalization layer of ``model`` that is not SN/SSN."""
    return {name or '(the module itself)': type(m).__name__
            for name, m in model.named_modules() if _is_norm(m)}


def _why_not(module: nn.Module) -> Optional[str]:
    """None if :func:`convert_norms` converts ``module``, else why it does not."""
    if _is_batch_norm(module):
        if not module.track_running_stats:
            return ('track_running_stats=False (it normalizes with batch statistics in eval too); '
                    "SN/SSN's BN branch uses running statistics in eval")
        return None
    if isinstance(module, nn.GroupNorm):
        return None
    if 'Frozen' in type(module).__name__:
        return 'frozen BatchNorm (buffers only): convert the unfrozen model, or freeze after converting'
    if isinstance(module, nn.LayerNorm):
        return 'LayerNorm over the trailing dims (as in transformers) has no channel-wise counterpart'
    return f'{type(module).__name__} has no SN/SSN counterpart'


def _source_state(module: nn.Module) -> tuple[int, Optional[int], dict]:
    """(num_features, rank, layer options) of a convertible source layer."""
    if isinstance(module, nn.GroupNorm):
        return module.num_channels, None, dict(eps=module.eps, affine=module.affine)
    # a source of any rank (SyncBatchNorm, mmengine's _BatchNormXd) has rank None: the 2d class
    rank = next((r for r, cls in BATCH_NORMS.items() if type(module) is cls), None)
    return module.num_features, rank, dict(eps=module.eps, momentum=module.momentum,
                                           affine=module.affine)


def _reference_tensor(module: nn.Module) -> Optional[torch.Tensor]:
    return next(iter(module.parameters()), None) if module.affine else getattr(module, 'running_mean', None)


@torch.no_grad()
def _convert_layer(module: nn.Module, norm: str, options: dict) -> SwitchNormBase:
    num_features, rank, source_options = _source_state(module)
    like = _reference_tensor(module)
    factory = {} if like is None else dict(device=like.device, dtype=like.dtype)
    layer = layer_class(norm, rank)(num_features, **{**source_options, **options}, **factory)
    if layer.affine and module.affine:
        layer.weight.copy_(module.weight)
        layer.bias.copy_(module.bias)
        for name in ('weight', 'bias'):
            getattr(layer, name).requires_grad_(getattr(module, name).requires_grad)
        # a frozen layer (frozen stages, requires_grad=False) stays frozen, logits included
        frozen = not (module.weight.requires_grad or module.bias.requires_grad)
        layer.mean_weight.requires_grad_(not frozen)
        layer.var_weight.requires_grad_(not frozen)
    if _is_batch_norm(module) and layer.running_mean is not None:
        layer.running_mean.copy_(module.running_mean)
        layer.running_var.copy_(module.running_var)
        if layer.num_batches_tracked is not None and module.num_batches_tracked is not None:
            layer.num_batches_tracked.copy_(module.num_batches_tracked)
    if isinstance(module, nn.SyncBatchNorm) and hasattr(layer, '_init_group'):
        layer._init_group(module.process_group)
    return layer.train(module.training)


def convert_norms(module: nn.Module, norm: str = 'SSN', strict: bool = False,
                  **layer_options) -> nn.Module:
    """Replace the BatchNorm and GroupNorm layers of ``module`` by SN/SSN layers; returns it.

    Converted: ``BatchNorm1d/2d/3d`` (to the layer of the same rank),
    ``SyncBatchNorm`` and mmcv's ``MMSyncBN``, and ``GroupNorm`` with any
    number of groups (sources of any rank become the 2d class; with
    ``norm='SyncSN'``/``'SyncSSN'`` every layer becomes the synced one, of any
    rank).  Each new layer takes the source's ``eps``, ``momentum``,
    ``affine``, ``weight``, ``bias``, running statistics, ``requires_grad``
    (a frozen source freezes the logits too), device, dtype and train/eval
    mode; ``layer_options`` (e.g. ``momentum``, ``normalizers``, ``mode``)
    override them for every layer.

    The logits start uniform (ones), as a new layer and as
    ``tools/convert_checkpoint.py`` does for BN sources: the selection is
    learned.  To get the source network back exactly, latch each SSN layer on
    the source normalizer: ``latch('bn', 'bn')`` for BatchNorm,
    ``latch('ln', 'ln')`` for ``GroupNorm(1, C)``, ``latch('in', 'in')`` for
    ``GroupNorm(C, C)``.  GroupNorm with 1 < G < C groups has no counterpart:
    its layer starts from GN's affine parameters, running statistics 0/1 and
    uniform logits.

    Anything else that normalizes (``LayerNorm``, ``InstanceNorm``,
    torchvision's ``FrozenBatchNorm2d``, BN with ``track_running_stats=False``)
    is left as it is and listed in one :class:`LeftoverNormWarning`, or, with
    ``strict=True``, in a ``ValueError`` before anything is replaced.

    Example:
        >>> model = torchvision.models.resnet18(weights='DEFAULT')
        >>> model = ssn_plugins.convert_norms(model, 'SSN')  # then train; SSNRadiusHook or set_radius
    """
    if norm not in NORM_TYPES:
        raise ValueError(f'convert_norms: norm must be one of {NORM_TYPES}, got {norm!r}')
    if not isinstance(module, nn.Module):
        raise TypeError(f'convert_norms: expected an nn.Module, got {type(module).__name__}')
    skipped = {name or '(the module itself)': f'{type(m).__name__}: {_why_not(m)}'
               for name, m in module.named_modules() if _is_norm(m) and _why_not(m) is not None}
    if skipped and strict:
        raise ValueError(f'convert_norms(strict=True): {len(skipped)} normalization layers have no '
                         f'{norm} counterpart: ' + '; '.join(f'{k} ({v})' for k, v in skipped.items()))
    converted = _convert_tree(module, norm, layer_options)
    if skipped:
        warnings.warn(f'convert_norms: {len(skipped)} normalization layers left as they are: '
                      + '; '.join(f'{k} ({v})' for k, v in skipped.items()),
                      LeftoverNormWarning, stacklevel=2)
    return converted


def _convert_tree(module: nn.Module, norm: str, options: dict) -> nn.Module:
    if _is_norm(module) and _why_not(module) is None:
        return _convert_layer(module, norm, options)
    for name, child in module.named_children():
        new = _convert_tree(child, norm, options)
        if new is not child:
            module.add_module(name, new)
    return module
