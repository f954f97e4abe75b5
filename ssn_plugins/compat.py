"""Calls whose spelling depends on the torch version, in one place.

The package supports torch 2.1 to 2.13.  Everything in ``norm/`` and
``ops/`` that is newer than torch 2.1 goes through this module; the rest of
the package uses it too where a version matters.
"""
from __future__ import annotations

import importlib.metadata
import sys
from typing import Dict, Optional, Tuple

import torch

__all__ = ['TORCH_VERSION', 'COMPILE_MIN_TORCH', 'FUNCTION_COMPILE_MIN_TORCH',
           'WHOLE_STEP_COMPILE_MIN_TORCH', 'ONNX_DYNAMO_MIN_TORCH', 'is_compiling', 'is_tracing',
           'custom_functions_traceable', 'check_compile', 'grad_scaler', 'recompile_limit_option',
           'versions', 'stack']


def _release(version: str) -> Tuple[int, int]:
    """``(major, minor)`` of a version string such as ``'2.1.2+cu121'``."""
    major, minor = version.split('+')[0].split('.')[:2]
    return int(major), int(''.join(ch for ch in minor if ch.isdigit()) or 0)


#: ``(major, minor)`` of the running torch.
TORCH_VERSION = _release(torch.__version__)

#: The lowest torch on which the layers compile with ``torch.compile(fullgraph=True)``
#: (tested in CI on the oldest and the newest stack).
COMPILE_MIN_TORCH = (2, 1)

#: The lowest torch whose dynamo traces the fused SN forward and SparsestMax's
#: closed form, custom autograd Functions with non-tensor arguments (checked with
#: ``fullgraph=True``: torch 2.1 and 2.3 refuse such arguments, 2.5 fails on the
#: ``batch_norm`` inside, 2.6, 2.7, 2.9 and 2.13 trace them).  Below it, traced
#: code takes the equivalent autograd-composite paths.
FUNCTION_COMPILE_MIN_TORCH = (2, 6)

#: The lowest torch on which mmengine's ``compile=True`` traces the whole ``train_step``
#: here, data preprocessing and optimizer step included (torch 2.1 crashes in both; the
#: versions between are not tested, so they run those two parts eagerly as well).
WHOLE_STEP_COMPILE_MIN_TORCH = (2, 13)

#: ``torch.onnx.export(..., dynamo=True)``, which ``tools/deploy.py --onnx`` uses.
ONNX_DYNAMO_MIN_TORCH = (2, 5)

if hasattr(torch.compiler, 'is_compiling'):  # torch >= 2.3
    is_compiling = torch.compiler.is_compiling
else:  # torch 2.1, 2.2: dynamo folds this one to True while tracing, as the newer name
    from torch._dynamo import is_compiling


def is_tracing() -> bool:
    """True while dynamo or a fake-tensor trace runs this code, so it must not touch caches.

    torch 2.1's dynamo does not inline a custom autograd Function: it runs the
    Function's forward as it stands, on fake tensors, where :func:`is_compiling`
    is False.  The fake mode on the dispatch stack tells that case apart; the
    stack is empty in plain eager code, so the check costs nothing there.
    """
    if is_compiling():
        return True
    if not torch._C._len_torch_dispatch_stack():
        return False
    from torch._guards import detect_fake_mode
    return detect_fake_mode() is not None


def custom_functions_traceable() -> bool:
    """Whether the fused autograd Functions may run here: always in eager, under dynamo from
    :data:`FUNCTION_COMPILE_MIN_TORCH` on."""
    return TORCH_VERSION >= FUNCTION_COMPILE_MIN_TORCH or not is_compiling()


def check_compile() -> None:
    """Raise ``RuntimeError`` naming the torch needed when ``torch.compile`` of the layers is unsupported."""
    if TORCH_VERSION < COMPILE_MIN_TORCH:
        need = '.'.join(map(str, COMPILE_MIN_TORCH))
        raise RuntimeError(f'torch.compile of SN/SSN layers needs torch >= {need}; this is torch '
                           f'{torch.__version__}. Train without compile, or upgrade torch.')


def grad_scaler(device_type: str, enabled: bool = True) -> 'torch.cuda.amp.GradScaler':
    """A loss scaler for mixed precision on ``device_type``."""
    if TORCH_VERSION >= (2, 3):
        return torch.amp.GradScaler(device_type, enabled=enabled)
    if device_type != 'cuda':
        raise ValueError(f'torch {torch.__version__} has a GradScaler for CUDA only, '
                         f'not {device_type!r}')
    return torch.cuda.amp.GradScaler(enabled=enabled)


def recompile_limit_option() -> str:
    """The ``torch._dynamo.config`` name of the per-function recompile limit."""
    return 'recompile_limit' if TORCH_VERSION >= (2, 6) else 'cache_size_limit'


def _distribution_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> Dict[str, Optional[str]]:
    """Versions of Python and of the stack the package runs on (None where not installed)."""
    found = {'python': sys.version.split()[0], 'torch': torch.__version__}
    for name in ('torchvision', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain',
                 'numpy'):
        found[name] = _distribution_version(name)
    return found


def stack() -> str:
    """One line naming the installed stack, e.g. for logs: ``'python 3.11.7, torch 2.1.2, ...'``."""
    return ', '.join(f'{name} {version}' for name, version in versions().items()
                     if version is not None)
