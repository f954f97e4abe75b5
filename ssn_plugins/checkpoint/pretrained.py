"""``SwitchNormPretrained``: mmengine's ``Pretrained`` initializer, strict and weights_only.

mmengine's ``Pretrained`` loads with ``strict=False`` and only warns about
missing, unexpected or size-mismatched keys, leaving those weights at their
random init.  This initializer loads with ``torch.load(weights_only=True)``,
refuses any mismatch with a list of the keys, says how to make a missing
file, checks the stem pool against the one the weights were trained with
and can free the latched selection of pretrained SSN layers.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Union

import torch
from mmengine.logging import print_log
from mmengine.model.weight_init import update_init_info
from mmengine.registry import WEIGHT_INITIALIZERS
from mmengine.runner import CheckpointLoader
from torch import nn

from ..fileio import key_mismatch, read_checkpoint, read_state_dict
from ..models.resnet_stem import stem_pool_of
from ..norm.switch_norm import SparseSwitchNormBase
from .mapping import map_plain_norms

__all__ = ['SwitchNormPretrained', 'check_state_dict', 'relearn_selection', 'SOFT_LOGIT']

# relearn_logits='soft': logits SOFT_LOGIT * one_hot(choice); sparsemax gives the old
# choice (1 + 2s)/3 and the others (1 - s)/3 each, a dense point with gradients
SOFT_LOGIT = 0.5
_RELEARN_LOGITS = ('soft', 'uniform', 'keep')


def check_state_dict(module: nn.Module, state_dict: dict, source: str = 'checkpoint') -> None:
    """Raise ``ValueError`` unless ``state_dict`` fills every parameter and buffer of ``module`` exactly.

    ``num_batches_tracked`` of plain BN layers is the only key allowed to be
    missing (as in mmengine).
    """
    expected = {k: v.shape for k, v in module.state_dict().items()}
    missing = [k for k in expected if k not in state_dict and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f'{k} {tuple(state_dict[k].shape)} vs model {tuple(s)}'
                  for k, s in expected.items() if k in state_dict and state_dict[k].shape != s]
    if not (missing or unexpected or mismatched):
        return
    lines = [f'{source} does not fit {type(module).__name__} exactly',
             *key_mismatch(missing, unexpected, mismatched, 'missing (left unloaded)')]
    if any(k.endswith(('.mean_fixed', '.var_fixed')) for k in state_dict) or any(
            k.endswith('.weight') and v.dim() == 4 and v.shape[0] == 1 and v.shape[2:] == (1, 1)
            for k, v in state_dict.items()):
        lines.append('this looks like an unconverted released SN/SSN file: '
                     'convert it first with python tools/convert_checkpoint.py SRC DST')
    elif any(k.endswith(('.radius', '.mean_choice')) for k in missing) and not any(
            k.endswith('.radius') for k in state_dict):
        lines.append('the file holds SN (or BN) layers and the model SSN ones: to start SSN from them, '
                     'convert the source with python tools/convert_checkpoint.py SRC DST --target ssn')
    raise ValueError('; '.join(lines))


def relearn_selection(module: nn.Module, logits: str = 'soft') -> int:
    """Free the selection of every SSN layer of ``module`` so fine-tuning can learn it again.

    A latched ImageNet choice is one-hot and SparsestMax has zero gradient at a
    vertex, so unlatching alone changes nothing: ``logits='soft'`` restarts
    from ``SOFT_LOGIT * one_hot(choice)`` (ratios 2/3 for the old choice, 1/6
    for the others), ``'uniform'`` from ones (a new layer), ``'keep'`` keeps
    the logits.  The radius restarts at 0 (``SSNRadiusHook`` grows it again).
    Returns the number of SSN layers changed.
    """
    if logits not in _RELEARN_LOGITS:
        raise ValueError(f'relearn_logits must be one of {_RELEARN_LOGITS}, got {logits!r}')
    count = 0
    with torch.no_grad():
        for layer in module.modules():
            if not isinstance(layer, SparseSwitchNormBase):
                continue
            for which in ('mean', 'var'):
                weight, choice = getattr(layer, f'{which}_weight'), getattr(layer, f'{which}_choice')
                if logits == 'uniform':
                    weight.fill_(1.0)
                elif logits == 'soft':
                    index = int(choice) if int(choice) >= 0 else int(weight.argmax())
                    weight.zero_()
                    weight[index] = SOFT_LOGIT
            layer.unlatch()
            layer.set_radius(0.0)
            count += 1
    return count


@WEIGHT_INITIALIZERS.register_module(name='SwitchNormPretrained')
class SwitchNormPretrained:
    """Load a converted SN/SSN (or any) checkpoint into a module, strictly.

    Args:
        checkpoint: local path of a file made by ``tools/convert_checkpoint.py``
            (or any state dict / ``{'state_dict': ...}`` file).
        prefix: load only the keys under this prefix (e.g. ``'backbone.'``),
            stripped, as mmengine's ``Pretrained``.
        map_location: as in ``torch.load``.
        relearn_selection: unlatch the loaded SSN layers so fine-tuning learns
            the selection again (see :func:`relearn_selection`).
        relearn_logits: ``'soft'``, ``'uniform'`` or ``'keep'``: where the
            logits restart when ``relearn_selection`` is set.
        check_stem: compare the module's stem max-pool with the one the
            weights were trained with (the file's ``meta['stem_pool']``) and
            raise when they differ; ``False`` fine-tunes with the module's pool.
        map_norms: the checkpoint is of the same network with BN/GN layers
            (a torchvision or mmcv ResNet, an upstream model): map their
            weights and statistics onto the SN/SSN layers (``bn1`` to
            ``sn1``), keep the layers' own logits, and refuse any key that
            does not fit (see :func:`~ssn_plugins.checkpoint.mapping.map_plain_norms`).
            ``checkpoint`` may then also be a ``torchvision://``,
            ``open-mmlab://`` or ``http(s)://`` address, read through
            mmengine's loaders with ``weights_only=True``.
            :func:`ssn_plugins.convert_config` sets this.
    """

    def __init__(self,
                 checkpoint: str,
                 prefix: Optional[str] = None,
                 map_location: Union[str, torch.device] = 'cpu',
                 relearn_selection: bool = False,
                 relearn_logits: str = 'soft',
                 check_stem: bool = True,
                 map_norms: bool = False) -> None:
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f'checkpoint must be a path, got {type(checkpoint).__name__}')
        if not isinstance(relearn_selection, bool):
            raise TypeError(f'relearn_selection must be a bool, got {relearn_selection!r}; choose the '
                            f'restart point with relearn_logits={_RELEARN_LOGITS}')
        if relearn_logits not in _RELEARN_LOGITS:
            raise ValueError(f'relearn_logits must be one of {_RELEARN_LOGITS}, got {relearn_logits!r}')
        self.checkpoint = os.fspath(checkpoint)
        self.prefix = prefix
        self.map_location = map_location
        self.relearn_selection = relearn_selection
        self.relearn_logits = relearn_logits
        self.check_stem = check_stem
        if not isinstance(map_norms, bool):
            raise TypeError(f'map_norms must be a bool, got {map_norms!r}')
        self.map_norms = map_norms

    def _load(self) -> tuple[dict, dict]:
        path = self.checkpoint
        if self.map_norms and re.match(r'^[a-z][a-z0-9+.-]*://', path):
            # mmengine's scheme loaders (torchvision://, open-mmlab://, http), made weights_only
            # at package import (ssn_plugins.engine.safe_load)
            ckpt = CheckpointLoader.load_checkpoint(path, map_location=self.map_location)
            return self._select(read_state_dict(ckpt, where=path)), {}
        if re.match(r'^[a-z][a-z0-9+.-]*://', path):
            raise ValueError(f'SwitchNormPretrained loads local files, got {path!r}: download it and '
                             f'convert it with python tools/convert_checkpoint.py SRC DST')
        if not os.path.isfile(os.path.expanduser(path)):
            kind = 'sn' if re.search(r'(?<![a-z])sn(?![a-z])', os.path.basename(path).lower()) else 'ssn'
            raise FileNotFoundError(
                f'pretrained checkpoint {path} not found. Make it from the released ImageNet '
                f'ResNet-50 v1 + {kind.upper()} file (or a BN ResNet-50) with:\n'
                f'    python tools/convert_checkpoint.py SRC {path}\n'
                f'(SRC: the downloaded .pth, e.g. from github.com/switchablenorms), or set the '
                f'backbone init_cfg=None to train from scratch')
        ckpt = read_checkpoint(os.path.expanduser(path), map_location=self.map_location)
        meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
        state_dict = self._select(read_state_dict(ckpt, where=path))
        return state_dict, meta if isinstance(meta, dict) else {}

    def _select(self, state_dict: dict) -> dict:
        """The entries under ``prefix`` (stripped), or all of them."""
        if self.prefix is None:
            return state_dict
        prefix = self.prefix if self.prefix.endswith('.') else self.prefix + '.'
        selected = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not selected:
            raise ValueError(f'{self.checkpoint} has no key starting with {prefix!r}')
        return selected

    def _check_stem(self, module: nn.Module, meta: dict) -> None:
        trained, built = meta.get('stem_pool'), stem_pool_of(module)
        if not self.check_stem or trained is None or built is None or trained == built:
            return
        released = trained.get('padding') == 0 and trained.get('ceil_mode')
        hint = ("build the backbone with type='ResNetReleasedStem' (same arguments as ResNet)"
                if released else "use mmdet/mmseg's plain type='ResNet'")
        raise ValueError(
            f'{self.checkpoint} was trained with stem max-pool {trained}, but {type(module).__name__}'
            f'.maxpool is {built}: the loaded weights would see shifted windows. To compute what the '
            f'pretrained network computed, {hint}; to fine-tune with this pool anyway, pass '
            f'check_stem=False in init_cfg')

    def __call__(self, module: nn.Module) -> None:
        state_dict, meta = self._load()
        if self.map_norms:
            state_dict, report = map_plain_norms(module, state_dict, source=self.checkpoint)
            print_log(f"load model from: {self.checkpoint} (BN/GN mapped onto {report['norm_layers']} "
                      f"SN/SSN layers, {report['tensors']} tensors, weights_only)", logger='current')
            if report['without_statistics']:
                print_log(f"{len(report['without_statistics'])} layers had no running statistics in "
                          f'the checkpoint (GroupNorm?): theirs start at 0/1', logger='current')
        else:
            check_state_dict(module, state_dict, source=self.checkpoint)
            print_log(f'load model from: {self.checkpoint} (strict, weights_only)', logger='current')
        self._check_stem(module, meta)
        result = module.load_state_dict(state_dict, strict=False)
        assert not result.unexpected_keys, result
        assert self.map_norms or all(k.endswith('num_batches_tracked') for k in result.missing_keys), result
        if self.relearn_selection:
            changed = relearn_selection(module, self.relearn_logits)
            if changed == 0:
                raise ValueError('relearn_selection=True but the module has no SSN layer to unlatch')
            print_log(f'relearn_selection: freed {changed} SSN layers (logits {self.relearn_logits!r})',
                      logger='current')
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())

    def _get_init_info(self) -> str:
        return f'{type(self).__name__}: load from {self.checkpoint}'
