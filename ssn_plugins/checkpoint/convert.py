"""Convert released SN/SSN, BN and our own (mmpretrain) ResNet v1 checkpoints for mmdet/mmseg ResNet.

The released SN/SSN layers store ``weight``/``bias`` as (1, C, 1, 1) and running
statistics as (1, C, 1), and SSN marks a latched selection with
``mean_fixed``/``var_fixed`` flags next to one-hot logits.  The layers here use
(C,) tensors, a scalar ``radius`` and ``mean_choice``/``var_choice`` indices
(-1 = free).  The converted file is ``{'meta': ..., 'state_dict': ...}`` with
plain tensors only, so it loads with ``torch.load(weights_only=True)`` and
through ``init_cfg=dict(type='SwitchNormPretrained' or 'Pretrained', checkpoint=DST)``.
Files trained with this package's layers (an mmpretrain ``ImageClassifier``
from ``configs/mmpretrain``: ``backbone.`` prefix, ``head`` classifier) are
already in this layout; their backbone is kept as it is, and the stem pool is
read from the training config stored in the file.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Optional

import torch
from torch import Tensor

from ..fileio import check_destination, read_checkpoint, read_state_dict, save_checkpoint
from ..models.resnet_stem import RELEASED_SSN_STEM, TORCHVISION_STEM
from .layout import ConversionError, ResNetLayout, parse_resnet_v1
from .training_config import training_facts

__all__ = ['convert_state_dict', 'convert_checkpoint']

CONVERTER = 'ssn_plugins.checkpoint.convert_checkpoint'

# classifier heads: torchvision/released `fc`, mmcls/mmpretrain `head`
_CLASSIFIER = re.compile(r'^(fc|head|classifier)\.')
_MOMENTUM_NOTE = {
    'ssn': dict(released=0.997, pytorch=0.003,
                note='the released SSN2d keeps 0.997 of the running statistics per step, i.e. '
                     'PyTorch momentum 0.003; set norm_cfg=dict(type=..., momentum=0.003) to update them '
                     'at the released rate (this package defaults to 0.1)'),
    'sn': dict(released='0.997 (2018 code) or 0.9 (2019 devkit)', pytorch='0.003 or 0.1',
               note='the released SwitchNorm2d keeps `momentum` of the running statistics per step; '
                    'PyTorch momentum is 1 - that; this package defaults to 0.1'),
    'bn': dict(released=0.1, pytorch=0.1, note='BatchNorm sources already use the PyTorch convention'),
    'native': dict(released='n/a', pytorch="the training config's norm_cfg momentum",
                   note='trained with ssn_plugins layers, which use the PyTorch convention'),
}


def _strip_backbone(sd: 'OrderedDict[str, Tensor]') -> tuple['OrderedDict[str, Tensor]', list[str]]:
    """Drop the classifier; mmcls/mmpretrain files keep the ResNet under ``backbone.``."""
    sd = OrderedDict((k[len('backbone.'):] if k.startswith('backbone.') else k, v) for k, v in sd.items())
    dropped = [k for k in sd if _CLASSIFIER.match(k) or k.endswith('.num_batches_tracked')]
    for k in dropped:
        del sd[k]
    return sd, dropped


def _norm_tensors(sd: Mapping[str, Tensor], src: str, layout: ResNetLayout, target: str,
                  bn_logits: Tensor, stats: dict) -> 'OrderedDict[str, Tensor]':
    """The converted entries of the norm layer ``src`` (released name), in this package's layout."""
    c = sd[f'{src}.weight'].numel()
    out = OrderedDict()
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
        if f'{src}.{name}' in sd:
            # released (1, C, 1, 1) / (1, C, 1) -> (C,); untrained running_var 0 is kept as stored
            out[name] = sd[f'{src}.{name}'].detach().reshape(c).clone()
    if layout.kind == 'bn':
        out['mean_weight'] = bn_logits.clone()
        out['var_weight'] = bn_logits.clone()
    else:
        out['mean_weight'] = sd[f'{src}.mean_weight'].detach().reshape(-1).clone()
        out['var_weight'] = sd[f'{src}.var_weight'].detach().reshape(-1).clone()
    if target == 'ssn':
        if layout.kind == 'ssn':
            out['radius'] = sd[f'{src}.radius'].detach().reshape(()).float().clone()
        else:
            out['radius'] = torch.zeros(())
        for which in ('mean', 'var'):
            choice = -1
            if layout.native:
                # this package's layer: the latched choice is stored as an index
                choice = int(sd[f'{src}.{which}_choice'].reshape(()))
                if not -1 <= choice < layout.num_logits:
                    raise ConversionError(f'{src}.{which}_choice is {choice}; expected -1 (free) '
                                          f'or a normalizer index 0..{layout.num_logits - 1}')
                stats[f'{which}_latched'] += choice >= 0
            elif layout.kind == 'ssn' and int(sd[f'{src}.{which}_fixed'].reshape(())) != 0:
                # the released layer overwrote its logits with the one-hot choice
                choice = int(out[f'{which}_weight'].argmax())
                stats[f'{which}_latched'] += 1
            out[f'{which}_choice'] = torch.tensor(choice, dtype=torch.long)
    return out


def convert_state_dict(state_dict: Mapping[str, Tensor], target: Optional[str] = None
                       ) -> tuple['OrderedDict[str, Tensor]', dict]:
    """Map a released SN/SSN or a BN ResNet v1 state dict onto mmdet/mmseg ResNet with SN/SSN.

    Args:
        state_dict: the source weights (``module.``/``backbone.`` prefixes and the
            classifier are dropped here).
        target: ``'ssn'`` or ``'sn'``: the layer type the model is built with.
            Default: the source's own kind (``'ssn'`` for BN sources).  SN -> SSN
            copies the logits, frees the selection (choice -1) and sets radius 0.

    Returns:
        The converted state dict and the ``meta`` dict saying what was done.
    """
    sd = OrderedDict((re.sub(r'^module\.', '', k), v) for k, v in state_dict.items())
    sd, dropped = _strip_backbone(sd)
    layout = parse_resnet_v1(sd)
    target = target or ('sn' if layout.kind == 'sn' else 'ssn')
    if target not in ('ssn', 'sn'):
        raise ValueError(f"target must be 'ssn' or 'sn', got {target!r}")
    if layout.kind == 'ssn' and target == 'sn':
        raise ConversionError('an SSN checkpoint holds SparsestMax logits (one-hot once latched); '
                              'softmax of them is not what the network learned: convert with target ssn')
    bn_logits = torch.ones(3)
    stats = dict(mean_latched=0, var_latched=0)
    out = OrderedDict()
    for conv in layout.convs:
        out[f'{conv}.weight'] = sd[f'{conv}.weight'].detach().clone()
    for src in layout.norms:
        dst = re.sub(r'(^|\.)bn(\d)$', r'\1sn\2', src)
        for name, value in _norm_tensors(sd, src, layout, target, bn_logits, stats).items():
            out[f'{dst}.{name}'] = value
    normalizers = ['in', 'ln', 'bn'] if layout.num_logits != 2 else ['in', 'ln']
    logits = {
        'ssn': 'copied; latched choices from mean_fixed/var_fixed = argmax of the one-hot logits',
        'sn': 'copied (softmax logits)' + (', used by SparsestMax from radius 0, selection free'
                                           if target == 'ssn' else ''),
        'bn': 'uniform (ones, as a new layer): the selection is learned; a BN one-hot start would '
              'sit on a simplex vertex where SparsestMax has zero gradient',
    }[layout.kind]
    if layout.native:
        logits = 'copied with the radius and the latched choices (mean_choice/var_choice)'
    meta = dict(
        converter=CONVERTER,
        source_kind=layout.kind,
        target=target,
        norm_type='SSN' if target == 'ssn' else 'SN',
        arch=layout.arch,
        depth=layout.depth,
        normalizers=normalizers,
        num_norm_layers=len(layout.norms),
        latched=dict(mean=stats['mean_latched'], var=stats['var_latched']),
        logits=logits,
        # a file of ours without its training config: the pool of mmdet/mmseg/mmpretrain ResNet
        stem_pool=dict(RELEASED_SSN_STEM if layout.kind == 'ssn' and not layout.native else TORCHVISION_STEM),
        momentum=_MOMENTUM_NOTE['native' if layout.native else layout.kind],
        sparsestmax_mode=("the training config's norm_cfg mode; it only matters for layers that are "
                          'not latched' if layout.native else
                          "norm_cfg mode='official' is the released rule; it only matters for layers "
                          'that are not latched' if layout.kind == 'ssn' else 'n/a'),
        dropped_keys=sorted(dropped),
        reshaped=('weight/bias (1,C,1,1) and running stats (1,C,1) to (C,)'
                  if layout.kind != 'bn' and not layout.native else 'none'),
    )
    return out, meta


def _record_training(meta: dict, checkpoint) -> None:
    """Add what a Runner checkpoint's config says: toolkit, model, backbone and so the stem pool."""
    facts = training_facts(checkpoint)
    if facts is None:
        return
    meta['training'] = facts
    if facts['backbone'] is not None:
        # ResNetReleasedStem swaps in the released pool; every ResNet of mmdet/mmseg/mmpretrain pads by 1
        released = facts['backbone'].rsplit('.', 1)[-1] == 'ResNetReleasedStem'
        meta['stem_pool'] = dict(RELEASED_SSN_STEM if released else TORCHVISION_STEM)
        meta['stem_pool_from'] = f"the training config in the file (backbone type {facts['backbone']!r})"


def convert_checkpoint(src: str, dst: str, target: Optional[str] = None) -> dict:
    """Convert the file ``src`` and write ``{'meta', 'state_dict'}`` to ``dst``; returns the meta.

    ``dst`` is written whole or not at all (a failed write leaves an old
    ``dst`` as it was) and read back with ``weights_only=True`` before returning.
    A ``dst`` that is ``src`` (by real path, links included) is refused before anything is read.
    """
    check_destination(dst, {src: 'the input checkpoint'})
    checkpoint = read_checkpoint(src)
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get('meta'), Mapping) \
            and checkpoint['meta'].get('converter') == CONVERTER:
        raise ValueError(f'{src} is already converted (meta.converter = {CONVERTER}): load it with '
                         f"init_cfg=dict(type='SwitchNormPretrained', checkpoint='{src}')")
    state_dict = read_state_dict(checkpoint, where=src)
    converted, meta = convert_state_dict(state_dict, target)
    _record_training(meta, checkpoint)
    meta['source'] = os.path.basename(src)
    save_checkpoint({'meta': meta, 'state_dict': converted}, dst)
    reread = read_checkpoint(dst)
    assert set(reread['state_dict']) == set(converted), 'converted file did not round-trip'
    return meta
