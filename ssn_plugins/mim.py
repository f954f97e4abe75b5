"""The configs shipped inside the package, and the ``ssn_plugins::`` prefix that finds them.

OpenMMLab packages ship their configs under ``<package>/.mim/configs``;
mmengine resolves ``_base_ = 'mmdet::mask_rcnn/...'`` there. This package
does the same (``ssn_plugins/.mim/configs`` is the repository's ``configs/``
tree: a link in a checkout and an editable install, copied files in a
wheel), so a config anywhere can write::

    _base_ = 'ssn_plugins::mmdet/mask-rcnn_r50-ssn_fpn_1x_coco.py'

mmengine 0.10.7 accepts only the prefixes listed in its ``MODULE2PACKAGE``
(an assertion in ``config/utils.py``), so importing ``ssn_plugins``
registers this one. That happens in every tool that imports the package
first: ``tools/train.py``, ``tools/test.py``, the demo, Python code after
``import ssn_plugins``. mmdet's and mmseg's own ``tools/train.py`` read the
config before anything imports it; there, give the installed file's path
(:func:`config_path`) as the base instead.
"""
from __future__ import annotations

import os.path as osp

from mmengine.config.utils import MODULE2PACKAGE
from mmengine.utils import get_installed_path

__all__ = ['PREFIX', 'config_path', 'register_config_prefix']

PREFIX = 'ssn_plugins'
# mmengine maps the prefix to a distribution name and asks pkg_resources
# where that is installed. For an editable install the answer is
# site-packages, where the package is not. This module's dotted name is
# no distribution, so mmengine falls back to importlib's spec of this file,
# whose folder is the package wherever it lives (checkout or site-packages).
_LOCATOR = __name__


def register_config_prefix() -> None:
    """Let mmengine resolve ``ssn_plugins::`` (idempotent)."""
    MODULE2PACKAGE.setdefault(PREFIX, _LOCATOR)


def config_path(name: str) -> str:
    """Absolute path of a shipped config, e.g. ``config_path('demo/fcn_r18-ssn_demo.py')``.

    The same file mmengine reads for ``'ssn_plugins::' + name``.
    """
    root = osp.join(get_installed_path(_LOCATOR), '.mim', 'configs')
    path = osp.join(root, name)
    if not osp.isfile(path):
        raise FileNotFoundError(f'no shipped config {name!r} under {root}; the names are paths '
                                "relative to the repository's configs/, e.g. "
                                "'mmdet/mask-rcnn_r50-ssn_fpn_1x_coco.py'")
    return path
