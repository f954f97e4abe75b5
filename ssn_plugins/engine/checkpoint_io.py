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

import functools
import inspect
import logging
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer, print_log
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


def _torch_rng_state() -> dict:
    """This process's torch random state: CPU, and every CUDA device once CUDA is in use."""
    state = {'cpu': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _set_torch_rng_state(state: dict) -> None:
    torch.set_rng_state(state['cpu'])
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


def _rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gathering_rng_states(save_checkpoint: Callable) -> Callable:
    """Wrap ``Runner.save_checkpoint`` to first collect every rank's torch random state.

    mmengine calls ``save_checkpoint`` on every rank (it is ``master_only``) but
    ``before_save_checkpoint`` only on rank 0, so the collective runs here, on
    every rank; the states reach the hook in the ``meta`` argument, which the
    Runner keeps in the checkpoint.
    """
    signature = inspect.signature(save_checkpoint)

    @functools.wraps(save_checkpoint)
    def wrapper(*args, **kwargs):
        _, world_size = _rank_and_world_size()
        if world_size > 1:
            bound = signature.bind(*args, **kwargs)
            states = [None] * world_size
            dist.all_gather_object(states, _torch_rng_state())
            meta = bound.arguments.get('meta')
            if meta is None or isinstance(meta, dict):  # anything else: the Runner's TypeError
                bound.arguments['meta'] = {**(meta or {}), _RNG_KEY: {'ranks': states}}
            args, kwargs = bound.args, bound.kwargs
        return save_checkpoint(*args, **kwargs)

    wrapper.gathers_rng_states = True
    return wrapper


@HOOKS.register_module()
class SafeCheckpointHook(Hook):
    """Write Runner checkpoints that ``torch.load(weights_only=True)`` reads.

    It also stores torch's random state (CPU and CUDA) with each checkpoint
    and restores it at the first iteration after a resume. mmengine keeps only
    the seed, so a resumed Mask R-CNN would otherwise draw other RPN/RoI
    samples than the uninterrupted run. The data pipeline's numpy/random draws
    need nothing as long as the model draws only from torch: the resumed loop
    replays the skipped batches.

    In a multi-process run every rank's state is gathered to rank 0, which
    writes the checkpoint (``meta['ssn_plugins_torch_rng']['ranks']``), and
    each rank resumes with its own. The gathering wraps
    ``runner.save_checkpoint``, which mmengine calls on every rank; code that
    calls it on rank 0 alone would wait for the others until the timeout. A resume with another number of processes
    cannot be exact: it logs a warning and every rank takes rank 0's state.
    Rank 0's state also stays at the top level, where single-process
    checkpoints (and those of earlier versions) keep their only one.

    Lowest priority: it encodes after every other hook has added its entries.
    """

    priority = 'LOWEST'

    def __init__(self) -> None:
        self._rng_to_restore = None

    def before_run(self, runner) -> None:
        if _rank_and_world_size()[1] > 1 and not getattr(runner.save_checkpoint,
                                                          'gathers_rng_states', False):
            runner.save_checkpoint = _gathering_rng_states(runner.save_checkpoint)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.setdefault('meta', {})
        gathered = meta.pop(_RNG_KEY, None) or {}
        states = gathered.get('ranks') or [_torch_rng_state()]
        # the iteration a resumed run starts at (mmengine's own meta['iter'])
        rng = {'iter': meta.get('iter', runner.iter), **states[0]}
        if len(states) > 1:
            rng['ranks'] = states
        meta[_RNG_KEY] = rng
        encode_checkpoint(checkpoint)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        decode_checkpoint(checkpoint)
        self._rng_to_restore = checkpoint.get('meta', {}).pop(_RNG_KEY, None)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        rng, self._rng_to_restore = self._rng_to_restore, None
        if rng is None or rng['iter'] != runner.iter:
            return  # not a resume at the saved iteration (e.g. load_from for fine-tuning)
        states = rng.get('ranks') or [rng]
        rank, world_size = _rank_and_world_size()
        if len(states) != world_size:
            print_log(f'The checkpoint holds the torch random state of {len(states)} process(es) '
                      f'and this run has {world_size}: every process resumes with the state of '
                      'rank 0, so random draws (RPN/RoI sampling, dropout) will differ from an '
                      'uninterrupted run.', logger='current', level=logging.WARNING)
            rank = 0
        _set_torch_rng_state(states[rank])


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
