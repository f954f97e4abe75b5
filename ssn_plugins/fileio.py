"""Files in and out: checkpoints read safely, files written whole or not at all.

Reading: every checkpoint goes through :func:`read_checkpoint`
(``torch.load(weights_only=True)``, never switched off) and
:func:`read_state_dict`, whose errors say what is wrong with the file: missing,
a folder, empty, truncated, holding a disallowed Python global (named; nothing
was loaded), entries that are not tensors, NaN or inf values (keys named).

Writing: :func:`replacing` hands out temporary paths beside the destinations
and renames them over the destinations only once every one was written, so a
failed write (a full disk, a killed process) leaves the old files as they were.
Its temporaries carry the writing process's id: SIGTERM removes them before the
process ends, and those of a process killed outright (``kill -9``) are removed
by the next write into that folder.  :func:`check_destination` refuses, before
any work, an output that is one of the inputs (by real path: links included).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import signal
import socket
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Union

import torch
from torch import Tensor

__all__ = ['format_keys', 'key_mismatch', 'unsafe_global', 'explain_load_error', 'read_checkpoint',
           'read_state_dict', 'same_file', 'check_destination', 'check_distinct', 'replacing',
           'temporary_folder', 'torch_save', 'save_checkpoint']

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


def key_mismatch(missing: Iterable[str], unexpected: Iterable[str], mismatched: Iterable[str],
                 missing_label: str = 'missing') -> list[str]:
    """The lines that name a checkpoint's missing, unexpected and wrongly sized keys (none: [])."""
    named = ((missing_label, missing), ('unexpected', unexpected), ('size mismatch', mismatched))
    return [f'{label}: {format_keys(keys)}' for label, keys in named if keys]


def unsafe_global(err: BaseException) -> str | None:
    """The Python global that ``torch.load(weights_only=True)`` refused, if ``err`` says one."""
    found = _GLOBAL.search(str(err))
    return found.group(1) if found else None


def _is_pickle(path: PathLike) -> bool:
    """Whether the file starts as a pickle of protocol 2 or later does (garbage does not)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(2)
    except (OSError, TypeError, ValueError):
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def explain_load_error(path: PathLike, err: BaseException) -> ValueError:
    """A ``ValueError`` that says why ``torch.load(path, weights_only=True)`` failed."""
    name = unsafe_global(err)
    if name is not None:
        what = f'a disallowed Python global ({name})'
    elif 'Weights only load failed' in str(err) and 'Unsupported operand' in str(err) and _is_pickle(path):
        # a pickle (PROTO opcode first) with opcodes torch.save never writes: pickle.dump's
        what = 'pickled Python objects (a pickle.dump file, not torch.save of tensors)'
    else:
        what = None
    if what is not None:
        return ValueError(
            f'{path} holds {what} that torch.load(weights_only=True) refuses to unpickle: it was '
            f'not written by these tools and may run code when loaded; nothing was loaded or run. '
            f'If you trust the file, re-save its weights only: '
            f'torch.save(torch.load(SRC, weights_only=False)["state_dict"], NEW)')
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


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file: the same real path, or hard links to one inode."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def check_destination(path: PathLike, inputs: Optional[Mapping[PathLike, str]] = None) -> str:
    """The absolute path of a file to write; ``ValueError`` if it cannot be one.

    Refuses a folder, a path under something that is a file, and one of
    ``inputs`` (``{path: what it is}``, e.g. ``{src: 'the input checkpoint'}``),
    compared by real path so that a symbolic or hard link to an input is refused
    too.  Touches nothing (:func:`replacing` makes the missing parent folders):
    call it before any work.
    """
    for source, what in (inputs or {}).items():
        if same_file(path, source):
            link = '' if os.path.abspath(path) == os.path.abspath(source) else f' (through a link: {source})'
            raise ValueError(f'cannot write {path}: it is {what}{link}, which would be lost; '
                             'give another output path')
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise ValueError(f'cannot write {path}: it is a folder; give a file name inside it')
    parent = os.path.dirname(path)
    ancestor = parent
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f'cannot write {path}: {ancestor} is a file, not a folder')
    return path


def check_distinct(paths: Iterable[PathLike]) -> None:
    """``ValueError`` if two of ``paths`` name the same file, links included (nothing is touched)."""
    paths = list(paths)
    for i, a in enumerate(paths):
        for b in paths[i + 1:]:
            if same_file(a, b):
                raise ValueError('two outputs would be the same file: '
                                 f'{format_keys([os.path.abspath(a), os.path.abspath(b)])}')


# -- temporaries: named after their process, removed on SIGTERM and after kill -9 ---------------

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
# '.NAME.ssntmp-HOST-PID-RANDOM.tmp.EXT', and its '.old' backup
_TEMP = re.compile(r'^\..*\.ssntmp-([0-9a-f]{8})-(\d+)-[^.]*\.tmp')
_ACTIVE: set = set()  # temporaries of this process's open replacing() blocks
_ACTIVE_LOCK = threading.Lock()
_SWEPT: set = set()  # folders already cleaned of dead processes' temporaries
_PREVIOUS_SIGTERM: Any = None  # set while our handler is installed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def _sweep(folder: str) -> None:
    """Remove the temporaries that killed processes of this host left in ``folder`` (once)."""
    if folder in _SWEPT or os.name != 'posix':
        return
    _SWEPT.add(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        found = _TEMP.match(name)
        if found and found.group(1) == _HOST and not _alive(int(found.group(2))):
            _remove(os.path.join(folder, name))


def _on_sigterm(signum, frame) -> None:
    """Remove this process's temporaries, then end as SIGTERM would have without us."""
    previous = _PREVIOUS_SIGTERM
    if os.getpid() == _OWNER:  # not in a forked child (a data loader worker) that inherited us
        with _ACTIVE_LOCK:
            for path in list(_ACTIVE):
                _remove(path)
            _ACTIVE.clear()
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


_OWNER = os.getpid()


def _register(paths: Iterable[str]) -> None:
    global _PREVIOUS_SIGTERM, _OWNER
    with _ACTIVE_LOCK:
        _ACTIVE.update(paths)
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, 'SIGTERM'):
        return  # signal handlers can only be set from the main thread
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        _PREVIOUS_SIGTERM, _OWNER = signal.getsignal(signal.SIGTERM), os.getpid()
        signal.signal(signal.SIGTERM, _on_sigterm)


def _unregister(paths: Iterable[str]) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE.difference_update(paths)
        done = not _ACTIVE
    if done and threading.current_thread() is threading.main_thread() and \
            hasattr(signal, 'SIGTERM') and signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, _PREVIOUS_SIGTERM if _PREVIOUS_SIGTERM is not None
                      else signal.SIG_DFL)


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)  # a temporary_folder()
        else:
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
    for dst in dests:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
    temps: list[str] = []
    backups: list[str] = []
    try:
        for dst in dests:
            _sweep(os.path.dirname(dst))
            # the destination's suffix last, for writers that choose the format by it
            fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(dst)}.ssntmp-{_HOST}-{os.getpid()}-',
                                       suffix='.tmp' + os.path.splitext(dst)[1],
                                       dir=os.path.dirname(dst))
            temps.append(tmp)
            _register([tmp, f'{tmp}.old'])
            os.close(fd)
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
        _unregister([p for tmp in temps for p in (tmp, f'{tmp}.old')])


@contextmanager
def temporary_folder(beside: PathLike) -> Iterator[str]:
    """A new hidden folder beside ``beside``, to build a folder whole and rename it into place.

    Removed when the block ends (unless it was renamed away), on SIGTERM, and,
    after a ``kill -9``, by the next :func:`replacing` or ``temporary_folder``
    in the same parent folder.
    """
    target = os.path.abspath(beside)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    _sweep(parent)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(target)}.ssntmp-{_HOST}-{os.getpid()}-',
                           suffix='.tmp', dir=parent)
    _register([tmp])
    try:
        yield tmp
    finally:
        _remove(tmp)
        _unregister([tmp])


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
