"""Files in and out: checkpoints read safely, files written whole or not at all.

Reading: every checkpoint goes through :func:`read_checkpoint`
(``torch.load(weights_only=True)``, never switched off) and
:func:`read_state_dict`, whose errors say what is wrong with the file: missing,
a folder, empty, truncated, holding a disallowed Python global (named; nothing
was loaded), entries that are not tensors, NaN or inf values (keys named).

Writing: :func:`replacing` hands out temporary paths beside the destinations
and renames them over the destinations only once every one was written, so a
failed write (a full disk, a killed process) leaves the old files as they were.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from typing import Any, Iterator, Union

import torch
from torch import Tensor

__all__ = ['format_keys', 'unsafe_global', 'explain_load_error', 'read_checkpoint',
           'read_state_dict', 'check_destination', 'check_distinct', 'replacing', 'torch_save',
           'save_checkpoint']

PathLike = Union[str, 'os.PathLike[str]']
# how torch words a refused global: two ways from 2.6 on (depending on how it was
# pickled), 'Unsupported class' on torch 2.1 to 2.5
_GLOBAL = re.compile(r'(?:Unsupported global: GLOBAL|Trying to load unsupported GLOBAL|'
                     r'Unsupported class) ([\w.]+)')


def format_keys(keys: Iterable[str], limit: int = 30) -> str:
    """``'a, b, c'`` (sorted), cut after ``limit`` with how many more there are."""
    keys = sorted(map(str, keys))
    shown = ', '.join(keys[:limit])
    return shown + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def unsafe_global(err: BaseException) -> str | None:
    """The Python global that ``torch.load(weights_only=True)`` refused, if ``err`` says one."""
    found = _GLOBAL.search(str(err))
    return found.group(1) if found else None


def explain_load_error(path: PathLike, err: BaseException) -> ValueError:
    """A ``ValueError`` that says why ``torch.load(path, weights_only=True)`` failed."""
    name = unsafe_global(err)
    if name is not None:
        return ValueError(
            f'{path} holds a disallowed Python global ({name}) that torch.load(weights_only=True) '
            f'refuses to unpickle; nothing was loaded or run. If you trust the file, re-save its '
            f'weights only: torch.save(torch.load(SRC, weights_only=False)["state_dict"], NEW)')
    lines = [line for line in str(err).splitlines()
             if line.strip() and not line.startswith('Check the documentation')]
    detail = f'{type(err).__name__}: {lines[-1][:200] if lines else "no detail"}'
    return ValueError(f'{path} is not a readable PyTorch checkpoint (corrupted or truncated?): {detail}')


def read_checkpoint(path: PathLike, map_location: Any = 'cpu') -> Any:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong with the file."""
    if os.path.isdir(path):
        raise ValueError(f'checkpoint {path} is a folder, not a file')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    if os.path.getsize(path) == 0:
        raise ValueError(f'checkpoint {path} is empty (0 bytes): was its write interrupted?')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError,
            IndexError, AttributeError) as err:
        raise explain_load_error(path, err) from err


def read_state_dict(checkpoint: Any, where: str = 'checkpoint') -> 'OrderedDict[str, Tensor]':
    """The weights of a checkpoint (a path or a loaded object), ``module.`` stripped.

    Takes ``checkpoint['state_dict']`` (mmengine runners, released SN/SSN
    files), ``checkpoint['model']`` (Detectron-style snapshots) or a bare dict
    of tensors.  Refuses entries that are not tensors and floating-point
    tensors holding NaN or inf, naming the keys.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        where, checkpoint = str(checkpoint), read_checkpoint(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f'{where} holds a {type(checkpoint).__name__}, expected a dict of tensors')
    sd = checkpoint.get('state_dict', checkpoint)
    if sd is checkpoint and not all(isinstance(v, Tensor) for v in sd.values()):
        # training snapshots name their weights 'state_dict' (released) or 'model' (Detectron)
        sd = checkpoint.get('model', checkpoint)
    if not isinstance(sd, Mapping) or not sd:
        raise ValueError(f'{where} has no state dict; top-level keys: {format_keys(checkpoint)}')
    not_tensors = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ValueError(f'{where}: state dict entries that are not tensors: {format_keys(not_tensors)}')
    not_finite = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if not_finite:
        raise ValueError(f'{where}: NaN or inf in {format_keys(not_finite)}; the weights are broken '
                         '(a diverged run?): use an earlier checkpoint')
    return OrderedDict((re.sub(r'^module\.', '', k), v) for k, v in sd.items())


def check_destination(path: PathLike) -> str:
    """The absolute path of a file to write; ``ValueError`` if it cannot be one.

    Refuses a folder, and a path under something that is a file; creates the
    missing parent folders.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise ValueError(f'cannot write {path}: it is a folder; give a file name inside it')
    parent = os.path.dirname(path)
    ancestor = parent
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f'cannot write {path}: {ancestor} is a file, not a folder')
    os.makedirs(parent, exist_ok=True)
    return path


def check_distinct(paths: Iterable[PathLike]) -> None:
    """``ValueError`` if two of ``paths`` name the same file (nothing is touched)."""
    absolute = [os.path.abspath(p) for p in paths]
    if len(set(absolute)) != len(absolute):
        raise ValueError(f'two outputs would be the same file: {format_keys(absolute)}')


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _mode_for(dst: str) -> int:
    """The permissions ``open(dst, 'w')`` would give: the old file's, else 0666 less the umask."""
    if os.path.exists(dst):
        return os.stat(dst).st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def replacing(*paths: PathLike) -> Iterator[tuple[str, ...]]:
    """Write files whole, or not at all: ``with replacing(a, b) as (tmp_a, tmp_b): ...``.

    Yields one temporary path in each destination's folder (so the rename is
    atomic).  If the block raises, the temporaries are removed and the
    destinations are untouched.  Otherwise they are renamed over the
    destinations one after another; if a rename fails, the destinations
    already replaced get their old files back.  What stays open is a crash (a
    kill or power loss) between two renames, a window of a few system calls:
    it leaves the first destinations new and the others old.
    """
    check_distinct(paths)
    dests = [check_destination(p) for p in paths]
    temps: list[str] = []
    backups: list[str] = []
    try:
        for dst in dests:
            # the destination's suffix last, for writers that choose the format by it
            fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(dst)}.',
                                       suffix='.tmp' + os.path.splitext(dst)[1],
                                       dir=os.path.dirname(dst))
            os.close(fd)
            temps.append(tmp)
            os.chmod(tmp, _mode_for(dst))  # mkstemp makes 0600 files
        try:
            yield tuple(temps)
        except OSError as err:  # a full disk, a file size limit, ...
            raise OSError(f'could not write {format_keys(dests)} ({err}); nothing was replaced') from err
        for tmp, dst in zip(temps, dests):
            backup = ''
            if len(dests) > 1 and os.path.isfile(dst):
                backup = f'{tmp}.old'
                try:
                    os.link(dst, backup)  # a second name for the old file, to restore it
                except OSError:  # file systems without hard links
                    shutil.copy2(dst, backup)
            backups.append(backup)
        replaced = []
        try:
            for tmp, dst in zip(temps, dests):
                os.replace(tmp, dst)
                replaced.append(dst)
        except OSError:
            for dst, backup in zip(replaced, backups):
                if backup:
                    os.replace(backup, dst)
                else:
                    _remove(dst)
            raise
    finally:
        for path in temps + backups:
            if path:
                _remove(path)


def torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save``, with a failed write raised as ``OSError`` (torch raises ``RuntimeError``)."""
    try:
        torch.save(obj, path)
    except RuntimeError as err:
        raise OSError(str(err).splitlines()[0] if str(err) else 'torch.save failed') from err


def save_checkpoint(obj: Any, path: PathLike) -> str:
    """``torch.save(obj, path)`` that leaves an existing ``path`` intact if it fails."""
    with replacing(path) as (tmp, ):
        torch_save(obj, tmp)
    return os.path.abspath(path)
