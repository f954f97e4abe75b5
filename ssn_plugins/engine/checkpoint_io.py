"""Runner checkpoints that load under ``torch.load(weights_only=True)``.

torch >= 2.6 defaults ``torch.load`` to ``weights_only=True``, and mmengine
0.10.7 never passes the argument, so the checkpoints its own Runner writes
(``message_hub`` holds ``HistoryBuffer`` objects, the meta holds numpy arrays
and scalars) no longer load for ``tools/test.py``, ``--resume`` or
``load_from``.  Instead of switching the protection off (which would let any
downloaded file run code), :class:`SafeCheckpointHook` writes those objects as
plain tagged containers (dicts, lists, tensors, strings, numbers) in
``before_save_checkpoint`` and rebuilds them in ``after_load_checkpoint``,
which the Runner calls before it reads ``meta`` or ``message_hub``.
Anything else that is not weights_only-safe raises ``TypeError`` naming its
key, so nothing is silently dropped.  The tools add the hook to every config
(:func:`add_safe_checkpoint_hook`).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.registry import HOOKS

__all__ = ['SafeCheckpointHook', 'encode_checkpoint', 'decode_checkpoint', 'add_safe_checkpoint_hook']

_TAG = '__ssn_plugins_type__'
_VERSION_KEY = 'ssn_plugins_safe_checkpoint'
_ATOMS = (str, bytes, int, float, bool, complex, type(None), torch.Tensor, torch.dtype,
          torch.device, torch.Size)


def _encode(obj: Any, path: str) -> Any:
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {_TAG: 'HistoryBuffer', 'log': _encode(log, path + '.log'),
                'count': _encode(count, path + '.count'), 'max_length': int(obj.max_length)}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in 'biufc':
            raise TypeError(f'checkpoint entry {path}: numpy array of dtype {obj.dtype} '
                            'cannot be stored weights_only-safe')
        return {_TAG: 'ndarray', 'dtype': obj.dtype.str, 'data': torch.from_numpy(obj.copy())}
    if isinstance(obj, np.generic):
        return {_TAG: 'npscalar', 'dtype': obj.dtype.str, 'value': obj.item()}
    if isinstance(obj, np.dtype):
        return {_TAG: 'npdtype', 'dtype': obj.str}
    if isinstance(obj, _ATOMS):
        return obj
    if isinstance(obj, dict):
        if _TAG in obj:
            raise TypeError(f'checkpoint entry {path} uses the reserved key {_TAG!r}')
        out = {k: _encode(v, f'{path}.{k}') for k, v in obj.items()}
        # plain dicts and OrderedDicts are weights_only-safe; other subclasses
        # (e.g. ConfigDict) are stored as plain dicts
        return OrderedDict(out) if type(obj) is OrderedDict else out
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f'{path}[{i}]') for i, v in enumerate(obj)]
        return tuple(items) if isinstance(obj, tuple) else items
    if isinstance(obj, (set, frozenset)):
        return {_TAG: 'set', 'items': [_encode(v, f'{path}{{}}') for v in sorted(obj, key=repr)]}
    raise TypeError(f'checkpoint entry {path} is a {type(obj).__qualname__}, which '
                    'torch.load(weights_only=True) cannot read; convert it to tensors, '
                    'numbers, strings, lists or dicts before saving')


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        tag = obj.get(_TAG)
        if tag == 'HistoryBuffer':
            return HistoryBuffer(_decode(obj['log']), _decode(obj['count']), obj['max_length'])
        if tag == 'ndarray':
            return obj['data'].numpy().astype(np.dtype(obj['dtype']), copy=False)
        if tag == 'npscalar':
            return np.dtype(obj['dtype']).type(obj['value'])
        if tag == 'npdtype':
            return np.dtype(obj['dtype'])
        if tag == 'set':
            return {_decode(v) for v in obj['items']}
        if tag is not None:
            raise ValueError(f'unknown tagged checkpoint entry {tag!r}')
        out = {k: _decode(v) for k, v in obj.items()}
        return OrderedDict(out) if type(obj) is OrderedDict else out
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_decode(v) for v in obj)
    return obj


def encode_checkpoint(checkpoint: dict) -> None:
    """Make every entry of a Runner checkpoint weights_only-safe, in place."""
    for key in list(checkpoint):
        if key == 'state_dict':
            continue  # tensors only; encoded as is
        checkpoint[key] = _encode(checkpoint[key], key)
    checkpoint.setdefault('meta', {})[_VERSION_KEY] = 1


def decode_checkpoint(checkpoint: dict) -> None:
    """Undo :func:`encode_checkpoint` in place (a no-op on other checkpoints)."""
    if not checkpoint.get('meta', {}).get(_VERSION_KEY):
        return
    for key in list(checkpoint):
        if key != 'state_dict':
            checkpoint[key] = _decode(checkpoint[key])
    del checkpoint['meta'][_VERSION_KEY]


_RNG_KEY = 'ssn_plugins_torch_rng'


@HOOKS.register_module()
class SafeCheckpointHook(Hook):
    """Write Runner checkpoints that ``torch.load(weights_only=True)`` reads.

    It also stores torch's random state (CPU and CUDA) with each checkpoint
    and restores it at the first iteration after a resume. mmengine keeps only
    the seed, so a resumed Mask R-CNN would otherwise draw other RPN/RoI
    samples than the uninterrupted run. The data pipeline's numpy/random draws
    need nothing as long as the model draws only from torch: the resumed loop
    replays the skipped batches. Only rank 0 writes checkpoints, so in
    multi-process runs every rank resumes with rank 0's torch state.

    Lowest priority: it encodes after every other hook has added its entries.
    """

    priority = 'LOWEST'

    def __init__(self) -> None:
        self._rng_to_restore = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.setdefault('meta', {})
        # the iteration a resumed run starts at (mmengine's own meta['iter'])
        rng = {'iter': meta.get('iter', runner.iter), 'cpu': torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng['cuda'] = torch.cuda.get_rng_state_all()
        meta[_RNG_KEY] = rng
        encode_checkpoint(checkpoint)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        decode_checkpoint(checkpoint)
        self._rng_to_restore = checkpoint.get('meta', {}).pop(_RNG_KEY, None)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        rng, self._rng_to_restore = self._rng_to_restore, None
        if rng is None or rng['iter'] != runner.iter:
            return  # not a resume at the saved iteration (e.g. load_from for fine-tuning)
        torch.set_rng_state(rng['cpu'])
        if 'cuda' in rng and torch.cuda.is_available() and len(rng['cuda']) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng['cuda'])


def add_safe_checkpoint_hook(cfg: Config) -> Config:
    """Append :class:`SafeCheckpointHook` to ``cfg.custom_hooks`` unless present."""
    hooks = list(cfg.get('custom_hooks', None) or [])

    def is_safe(hook) -> bool:
        if isinstance(hook, Hook):
            return isinstance(hook, SafeCheckpointHook)
        return hook.get('type') in ('SafeCheckpointHook', SafeCheckpointHook)

    if not any(is_safe(h) for h in hooks):
        hooks.append(dict(type='SafeCheckpointHook'))
    cfg.custom_hooks = hooks
    return cfg
