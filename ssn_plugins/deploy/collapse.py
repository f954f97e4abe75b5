"""Collapse: replace settled SN/SSN layers by the plain PyTorch norm they equal.

Once an SSN layer has latched (or an SN layer's ratios are exactly one-hot),
it *is* a BatchNorm, an InstanceNorm (GroupNorm(C, C), see :class:`InstanceNorm`) or a LayerNorm over
(C, H, W) (GroupNorm(1, C)).
:func:`collapse_norms` swaps in that module (same parameters and running
statistics), so inference runs PyTorch's kernels and every tool that knows
those layers (``fuse_conv_bn``, FLOP counters, ONNX export) sees them.  Mixed
choices (e.g. BN mean with IN variance) become a latched SSN layer, whose
forward computes only the statistics it needs.  Layers that have not settled
are left alone, with a log line saying why.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from mmengine.logging import print_log
from mmengine.model.utils import _BatchNormXd
from torch import nn

from ..norm.kinds import BATCH_NORMS, layer_class, spatial_rank
from ..norm.switch_norm import SparseSwitchNormBase, SwitchNormBase
from .fold import fold_conv_bn

__all__ = ['InstanceNorm', 'collapse_norms', 'collapse_plan', 'plain_norm']


class InstanceNorm(nn.GroupNorm):
    """Instance norm with affine for any input (N, C, *): ``GroupNorm(C, C)`` that takes 1x1 maps.

    ``nn.InstanceNorm*d`` and ``GroupNorm`` refuse maps with one value per
    (n, c) (PSPNet's and ASPP's pooling branches); there the result is ``bias``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_features, num_features, eps=eps, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() != x.shape[0] * x.shape[1]:
            return super().forward(x)
        y = torch.zeros_like(x)  # (x - mean) is 0 when the map has one value
        if self.bias is not None:
            y = y + self.bias.view((1, -1) + (1, ) * (x.dim() - 2))
        return y


def _choices(layer: SwitchNormBase) -> Optional[tuple[int, int]]:
    """Indices of the (mean, var) normalizers if the layer has settled on one each, else None."""
    if isinstance(layer, SparseSwitchNormBase) and layer.latched:
        return int(layer.mean_choice), int(layer.var_choice)
    mean_ratios, var_ratios = layer.ratios()
    if bool((mean_ratios == 1).any()) and bool((var_ratios == 1).any()):
        return int(mean_ratios.argmax()), int(var_ratios.argmax())
    return None


def collapse_plan(model: nn.Module) -> dict[str, list[int]]:
    """``{layer name: [mean index, var index]}`` for every settled SN/SSN layer of ``model``."""
    plan = {}
    for name, module in model.named_modules():
        if isinstance(module, SwitchNormBase):
            choices = _choices(module)
            if choices is not None:
                plan[name] = list(choices)
    return plan


def _copy_affine(src: SwitchNormBase, dst: nn.Module) -> nn.Module:
    if src.affine:
        dst.weight.data.copy_(src.weight.detach())
        dst.bias.data.copy_(src.bias.detach())
    return dst.to(device=src.mean_weight.device, dtype=src.mean_weight.dtype).train(src.training)


def plain_norm(layer: SwitchNormBase,
               choices: Optional[Sequence[int]] = None) -> Optional[nn.Module]:
    """The plain module equal to a settled SN/SSN ``layer``, or None if it has not settled.

    ``choices`` (mean index, var index) overrides what the layer says it settled on.
    """
    choices = _choices(layer) if choices is None else tuple(choices)
    if choices is None:
        return None
    mean_name, var_name = (layer.normalizers[i] for i in choices)
    c, rank = layer.num_features, spatial_rank(layer)
    if mean_name == var_name == 'bn':
        bn = BATCH_NORMS.get(rank, _BatchNormXd)(c, eps=layer.eps, momentum=layer.momentum, affine=layer.affine)
        bn.running_mean.copy_(layer.running_mean)
        bn.running_var.copy_(layer.running_var)
        return _copy_affine(layer, bn)
    if mean_name == var_name == 'in':
        return _copy_affine(layer, InstanceNorm(c, eps=layer.eps, affine=layer.affine))
    if mean_name == var_name == 'ln':
        return _copy_affine(layer, nn.GroupNorm(1, c, eps=layer.eps, affine=layer.affine))
    if isinstance(layer, SparseSwitchNormBase) or rank is None:
        # Latched SSN (or a synced SN): its forward already computes just what it needs.
        if isinstance(layer, SparseSwitchNormBase):
            layer.latch(*choices)
        return layer
    # An SN layer with one-hot mixed ratios: the compact equivalent is a latched SSN layer.
    compact = layer_class('SSN', rank)(c, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                                       normalizers=layer.normalizers)
    compact.load_state_dict(layer.state_dict(), strict=False)
    compact.latch(*choices)
    return compact.to(device=layer.mean_weight.device).train(layer.training)


def collapse_norms(model: nn.Module,
                   fuse_conv: bool = True,
                   plan: Optional[dict[str, Sequence[int]]] = None) -> nn.Module:
    """Replace settled SN/SSN layers of ``model`` by plain norms (in place) and return it.

    Args:
        model: any module; its SN/SSN layers are found by type.
        fuse_conv: then fold each BatchNorm (collapsed or original) into the
            convolution right before it.  Needs ``model.eval()`` first, since
            folding freezes the running statistics.
        plan: collapse exactly these layers (see :func:`collapse_plan`) and
            no others; used to rebuild a deployed model's structure before
            loading its weights (:func:`build_collapsed`).

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
            if not isinstance(child, SwitchNormBase):
                continue
            full_name = f'{parent_name}.{name}' if parent_name else name
            if plan is not None and full_name not in plan:
                replacement = None
            else:
                replacement = plain_norm(child, None if plan is None else plan[full_name])
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
