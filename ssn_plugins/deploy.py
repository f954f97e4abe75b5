"""Deployment: replace settled SN/SSN layers by plain PyTorch norms, then fold BN into convs.

Once an SSN layer has latched (or an SN layer's ratios are exactly one-hot),
it *is* a BatchNorm, an InstanceNorm or a GroupNorm(1, C).
:func:`collapse_norms` swaps in that module (same parameters and running
statistics), so inference runs PyTorch's kernels and every tool that knows
those layers (``fuse_conv_bn``, FLOP counters, ONNX export) sees them.  Mixed
choices (e.g. BN mean with IN variance) become a latched SSN layer, whose
forward computes only the statistics it needs.  Layers that have not settled
are left alone, with a log line saying why.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from mmengine.logging import print_log
from mmengine.model.utils import _BatchNormXd
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .norm.switch_norm import (SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d,
                               _SparseSwitchNorm, _SwitchNormBase)

__all__ = ['collapse_norms', 'plain_norm', 'fold_conv_bn']

_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_IN = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}  # InstanceNorm1d takes (N, C) as unbatched
_SSN = {1: SparseSwitchNorm1d, 2: SparseSwitchNorm2d, 3: SparseSwitchNorm3d}
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RANKS = {(2, 3): 1, (4,): 2, (5,): 3}


def _rank(layer: _SwitchNormBase) -> Optional[int]:
    """1, 2 or 3 like ``BatchNorm{1,2,3}d``; None for layers of any rank (synced ones)."""
    return _RANKS.get(tuple(layer._input_ranks))


def _choices(layer: _SwitchNormBase) -> Optional[tuple[int, int]]:
    """Indices of the (mean, var) normalizers if the layer has settled on one each, else None."""
    if isinstance(layer, _SparseSwitchNorm) and layer.latched:
        return int(layer.mean_choice), int(layer.var_choice)
    mean_ratios, var_ratios = layer.ratios()
    if bool((mean_ratios == 1).any()) and bool((var_ratios == 1).any()):
        return int(mean_ratios.argmax()), int(var_ratios.argmax())
    return None


def _copy_affine(src: _SwitchNormBase, dst: nn.Module) -> nn.Module:
    if src.affine:
        dst.weight.data.copy_(src.weight.detach())
        dst.bias.data.copy_(src.bias.detach())
    return dst.to(device=src.mean_weight.device, dtype=src.mean_weight.dtype).train(src.training)


def plain_norm(layer: _SwitchNormBase) -> Optional[nn.Module]:
    """The plain module equal to a settled SN/SSN ``layer``, or None if it has not settled."""
    choices = _choices(layer)
    if choices is None:
        return None
    mean_name, var_name = (layer.normalizers[i] for i in choices)
    c, rank = layer.num_features, _rank(layer)
    if mean_name == var_name == 'bn':
        bn = _BN.get(rank, _BatchNormXd)(c, eps=layer.eps, momentum=layer.momentum, affine=layer.affine)
        bn.running_mean.copy_(layer.running_mean)
        bn.running_var.copy_(layer.running_var)
        return _copy_affine(layer, bn)
    if mean_name == var_name == 'in' and rank in _IN:
        return _copy_affine(layer, _IN[rank](c, eps=layer.eps, affine=layer.affine))
    if mean_name == var_name == 'ln':
        return _copy_affine(layer, nn.GroupNorm(1, c, eps=layer.eps, affine=layer.affine))
    if isinstance(layer, _SparseSwitchNorm) or rank is None:
        return layer  # latched (or synced SN): its forward already gives the plain result: its forward computes just the two statistics
    # An SN layer with one-hot mixed ratios: the compact equivalent is a latched SSN layer.
    compact = _SSN[rank](c, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                         normalizers=layer.normalizers)
    compact.load_state_dict(layer.state_dict(), strict=False)
    compact.mean_choice.fill_(choices[0])
    compact.var_choice.fill_(choices[1])
    return compact.to(device=layer.mean_weight.device).train(layer.training)


def fold_conv_bn(module: nn.Module) -> int:
    """Fold every eval-mode BN into the conv registered right before it; returns how many.

    Like mmcv's ``fuse_conv_bn`` (the BN becomes ``nn.Identity``), but it also
    takes Conv1d/Conv3d and BN without affine (torch's ``fuse_conv_bn_eval``),
    only pairs *adjacent* children with matching channels, and skips a
    ``ConvModule`` whose norm runs before its conv (``order=('norm', 'conv', ...)``).
    """
    folded = 0
    previous_name, previous = None, None
    order = getattr(module, 'order', None)
    norm_first = isinstance(order, tuple) and 'norm' in order and 'conv' in order and \
        order.index('norm') < order.index('conv')
    for name, child in list(module.named_children()):
        if (isinstance(child, nn.modules.batchnorm._BatchNorm) and isinstance(previous, _CONV)
                and not norm_first and child.track_running_stats and child.running_mean is not None
                and previous.out_channels == child.num_features and not child.training
                and not previous.training):
            module._modules[previous_name] = fuse_conv_bn_eval(previous, child)
            module._modules[name] = nn.Identity()
            folded += 1
            previous_name, previous = None, None
            continue
        folded += fold_conv_bn(child)
        previous_name, previous = name, child
    return folded


def collapse_norms(model: nn.Module, fuse_conv: bool = True) -> nn.Module:
    """Replace settled SN/SSN layers of ``model`` by plain norms (in place) and return it.

    Args:
        model: any module; its SN/SSN layers are found by type.
        fuse_conv: then fold each BatchNorm (collapsed or original) into the
            convolution right before it.  Needs ``model.eval()`` first, since
            folding freezes the running statistics.

    Example:
        >>> model = collapse_norms(model.eval())  # after training with SSNRadiusHook
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'collapse_norms expects an nn.Module, got {type(model).__name__}')
    if fuse_conv and model.training:
        raise ValueError('collapse_norms(fuse_conv=True) folds running statistics into convs: '
                         'call model.eval() first (or pass fuse_conv=False)')
    counts: dict[str, int] = {}
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, _SwitchNormBase):
                continue
            full_name = f'{parent_name}.{name}' if parent_name else name
            replacement = plain_norm(child)
            if replacement is None:
                mean_ratios, var_ratios = child.ratios()
                print_log(f'collapse_norms: left {full_name} ({type(child).__name__}) as is: its '
                          f'ratios are not one-hot (mean {mean_ratios.tolist()}, var '
                          f'{var_ratios.tolist()}); train it further or raise the radius',
                          logger='current', level=logging.WARNING)
                counts['kept'] = counts.get('kept', 0) + 1
                continue
            parent._modules[name] = replacement
            kind = type(replacement).__name__
            counts[kind] = counts.get(kind, 0) + 1
    folded = fold_conv_bn(model) if fuse_conv else 0
    summary = ', '.join(f'{k}: {v}' for k, v in sorted(counts.items())) or 'no SN/SSN layers'
    print_log(f'collapse_norms: {summary}; {folded} BatchNorm folded into convs', logger='current')
    return model
