"""mmengine's checkpoint loaders under ``torch.load(weights_only=True)``, on every torch.

mmengine 0.10's ``CheckpointLoader`` (behind ``load_from``, ``resume``,
``Runner.load_checkpoint``, ``Pretrained`` init and the upstream
``tools/test.py``) calls ``torch.load`` without ``weights_only``.  torch 2.1
to 2.5 then unpickle anything, and on torch >= 2.6 the environment variable
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` switches the default off.  Importing
``ssn_plugins`` wraps every scheme's loader (local files, http, torchvision://,
open-mmlab://, ...) so that its ``torch.load`` runs with ``weights_only=True``
passed explicitly, which neither the torch version nor the environment changes.
The wrapping happens where ``CheckpointLoader`` looks a loader up, so a scheme
registered later (``register_scheme``, ``force=True`` included) is wrapped too.
The Runner's own checkpoints load because
:class:`~ssn_plugins.engine.checkpoint_io.SafeCheckpointHook` wrote them as
plain containers.
"""
from __future__ import annotations

import functools
import pickle
import threading
from typing import Callable

import torch
from mmengine.runner import CheckpointLoader

from ..fileio import explain_load_error

__all__ = ['weights_only_loader', 'make_checkpoint_loaders_safe']

_LOCK = threading.RLock()


def _explained(message: str) -> pickle.UnpicklingError:
    err = pickle.UnpicklingError(message)
    err.explained = True  # names the file already: launch keeps it as it is
    return err


def _weights_only(load: Callable) -> Callable:
    @functools.wraps(load)
    def safe_load(*args, **kwargs):
        if kwargs.get('weights_only') is False:
            raise _explained('a checkpoint loader asked torch.load for weights_only=False, which '
                             'ssn_plugins refuses (it would let the file run code); nothing was loaded')
        kwargs['weights_only'] = True
        return load(*args, **kwargs)

    return safe_load


def weights_only_loader(loader: Callable) -> Callable:
    """``loader`` with every ``torch.load`` inside it run as ``torch.load(..., weights_only=True)``."""
    if getattr(loader, 'weights_only', False):
        return loader

    @functools.wraps(loader)
    def safe_loader(*args, **kwargs):
        with _LOCK:
            load = torch.load
            torch.load = _weights_only(load)
            try:
                return loader(*args, **kwargs)
            except pickle.UnpicklingError as err:  # named as convert and deploy name it
                if getattr(err, 'explained', False):
                    raise
                source = args[0] if args else kwargs.get('filename', 'the checkpoint')
                raise _explained(str(explain_load_error(source, err))) from err
            finally:
                torch.load = load

    safe_loader.weights_only = True
    return safe_loader


def make_checkpoint_loaders_safe() -> None:
    """Wrap every loader mmengine's ``CheckpointLoader`` hands out, now and later (idempotent)."""
    schemes = CheckpointLoader._schemes
    for prefix, loader in list(schemes.items()):
        schemes[prefix] = weights_only_loader(loader)
    lookup = CheckpointLoader.__dict__['_get_checkpoint_loader'].__func__
    if getattr(lookup, 'weights_only', False):
        return

    @functools.wraps(lookup)
    def _get_checkpoint_loader(cls, path):
        return weights_only_loader(lookup(cls, path))

    _get_checkpoint_loader.weights_only = True
    CheckpointLoader._get_checkpoint_loader = classmethod(_get_checkpoint_loader)
