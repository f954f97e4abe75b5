"""Optional dependencies: which extra brings which package, and one clear error when one is missing.

``pip install ssn_plugins`` brings what ``import ssn_plugins`` needs (torch,
mmcv, mmengine, numpy): the layers, hooks, checkpoint conversion and
collapse.  Detection, segmentation, pretraining and ONNX export need the
extras below; the code that needs one calls :func:`require` where it is used,
so a missing package is named with the command that installs it, before
anything deep inside fails.
"""
from __future__ import annotations

import importlib.util
from typing import Dict

__all__ = ['EXTRAS', 'MissingExtraError', 'require', 'TOOLKIT_MODULES']

#: module -> the extra of ``ssn_plugins`` that installs it
EXTRAS: Dict[str, str] = {
    'mmdet': 'det', 'pycocotools': 'det',
    'mmseg': 'seg', 'ftfy': 'seg', 'regex': 'seg',
    'mmpretrain': 'pretrain', 'torchvision': 'pretrain',
    'onnx': 'onnx', 'onnxscript': 'onnx', 'onnxruntime': 'onnx',
}

#: what a config of each OpenMMLab toolkit (its ``default_scope``) needs to build and run
TOOLKIT_MODULES = {
    'mmdet': ('mmdet', 'pycocotools'),
    'mmseg': ('mmseg', 'ftfy', 'regex'),  # mmseg imports ftfy and regex without declaring them
    'mmpretrain': ('mmpretrain', 'torchvision'),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: blocked with sys.modules[name] = None
        return False


def require(*modules: str, purpose: str) -> None:
    """Raise :class:`MissingExtraError` unless every module in ``modules`` can be imported.

    Example:
        >>> require('mmdet', purpose='the Mask R-CNN demo')  # doctest: +SKIP
        MissingExtraError: the Mask R-CNN demo needs mmdet, which is not installed:
        pip install 'ssn_plugins[det]'
    """
    missing = [name for name in modules if not _importable(name)]
    if not missing:
        return
    extras = sorted({EXTRAS[name] for name in missing if name in EXTRAS})
    names = ', '.join(missing)
    verb = 'is' if len(missing) == 1 else 'are'
    hint = f"pip install 'ssn_plugins[{','.join(extras)}]'" if extras else f'pip install {names}'
    raise MissingExtraError(f'{purpose} needs {names}, which {verb} not installed: {hint}')
