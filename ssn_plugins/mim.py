"""The configs and tools shipped inside the package: mmengine's ``ssn_plugins::`` prefix and ``mim``.

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

``mim train ssn_plugins CONFIG`` and ``mim test ssn_plugins CONFIG --checkpoint CKPT``
-------------------------------------------------------------------------------------

openmim (0.3.9) runs ``<root>/.mim/tools/train.py`` (``test.py``; it also
tries ``<root>/tools/``), and looks up a config name that is no path under
``<root>``, where ``<root>`` is ``mim.utils.get_installed_path('ssn_plugins')``:
``pkg_resources.get_distribution('ssn_plugins').location`` joined with
the package name (or the first line of ``top_level.txt``). ``location`` is
the folder that holds the distribution's ``.dist-info``:

* a wheel install: site-packages (or the ``--target`` folder), where
  ``ssn_plugins/.mim/tools`` holds the copied tools: mim works as it is;
* an editable install (``pip install -e .``, PEP 660): the ``.dist-info``
  is in site-packages too, but the package is not. setuptools' editable
  wheel holds only a ``.pth`` file and an import hook that map
  ``ssn_plugins`` to the checkout (its ``compat`` and ``strict`` modes only
  put a folder on ``sys.path``), so mim's ``<root>`` is
  ``site-packages/ssn_plugins``, which does not exist, and mim fails
  running ``python site-packages/ssn_plugins/tools/train.py -h`` (or, for a
  bare config name, "can not find the config file").

Unlike mmengine, mim takes the distribution's name from the command line
and imports none of our code, so no module name (the trick
``register_config_prefix`` uses) can redirect it. A wheel cannot carry a
link, a real ``site-packages/ssn_plugins`` folder holding only ``.mim``
would shadow the package (an empty namespace package is found before
setuptools' import hook), and a copy of the tools there would go stale. So
:func:`link_for_mim` finishes an editable install with one link,
``site-packages/ssn_plugins -> <checkout>/ssn_plugins``, the layout of a
wheel install with the checkout's files: mim finds ``.mim/tools`` and
``.mim/configs`` through it, ``import ssn_plugins`` finds the same files
(through the link instead of the hook), and the ``ssn_plugins::`` prefix
still resolves (importlib's spec of this module). The link is added to the
distribution's ``RECORD``, so ``pip uninstall ssn_plugins`` and the next
``pip install`` (editable or not) remove it instead of writing a wheel's
files through it into the checkout. It is idempotent and does nothing for
a wheel install; ``make venv`` runs it after ``pip install -e``; by hand::

    pip install -e . && python -c 'import ssn_plugins.mim as m; m.link_for_mim()'
"""
from __future__ import annotations

import csv
import io
import json
import os
import os.path as osp
from importlib import metadata
from typing import Optional
from urllib.parse import urlparse
from urllib.request import url2pathname

from mmengine.config.utils import MODULE2PACKAGE
from mmengine.utils import get_installed_path

from .fileio import replacing

__all__ = ['PREFIX', 'config_path', 'register_config_prefix', 'editable_checkout',
           'editable_distribution', 'link_for_mim']

PREFIX = 'ssn_plugins'
DIST = 'ssn_plugins'  # the distribution name, the import name, and mim's PACKAGE argument
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


def editable_checkout(dist: metadata.Distribution) -> Optional[str]:
    """The project folder of an editable install (its ``direct_url.json``, PEP 610); else None."""
    text = dist.read_text('direct_url.json')
    if not text:
        return None
    info = json.loads(text)
    url = urlparse(info.get('url', ''))
    if not info.get('dir_info', {}).get('editable') or url.scheme != 'file':
        return None
    return url2pathname(url.path)


def editable_distribution() -> Optional[metadata.Distribution]:
    """The editable install of ``ssn_plugins`` on ``sys.path``, if any."""
    # every ssn_plugins distribution on sys.path: the first may be a stray
    # ssn_plugins.egg-info in the current folder
    for dist in metadata.distributions(name=DIST):
        if editable_checkout(dist) is not None:
            return dist
    return None


def _record(dist: metadata.Distribution, entry: str) -> None:
    """Add ``entry`` (relative to the site folder) to the distribution's RECORD, once."""
    files = dist.files or []
    if any(f.as_posix() == entry for f in files):
        return
    records = [f for f in files if f.name == 'RECORD' and f.parent.name.endswith('.dist-info')]
    if not records:
        return
    path = str(dist.locate_file(records[0]))
    with open(path, 'rb') as f:
        text = f.read()
    line = io.StringIO()
    csv.writer(line, lineterminator='\n').writerow([entry, '', ''])
    if text and not text.endswith(b'\n'):
        text += b'\n'
    with replacing(path) as (tmp, ):  # the whole RECORD or the old one, never half of it
        with open(tmp, 'wb') as f:
            f.write(text + line.getvalue().encode())


def link_for_mim(dist: Optional[metadata.Distribution] = None, verbose: bool = False) -> Optional[str]:
    """Let ``mim train ssn_plugins`` and ``mim test ssn_plugins`` find an editable install's tools.

    Links ``<site-packages>/ssn_plugins`` to the checkout's package (see the
    module docstring: mim looks for ``.mim/tools`` beside the ``.dist-info``)
    and records the link for ``pip uninstall``. Idempotent; replaces a link
    left by an editable install of another checkout.

    Args:
        dist: the installed ``ssn_plugins`` distribution; by default the
            editable one on ``sys.path``.
        verbose: print what was done.

    Returns:
        The link's path, or None where there is nothing to link (no editable
        install: a wheel install already has the package beside its
        ``.dist-info``).

    Raises:
        RuntimeError: the link cannot be made (a package folder already
            stands there, or the file system refuses links).
    """
    dist = dist if dist is not None else editable_distribution()
    project = editable_checkout(dist) if dist is not None else None
    if project is None:
        if verbose:
            print('ssn_plugins: no editable install, nothing to link for mim')
        return None
    package = osp.join(project, DIST)
    if not osp.isfile(osp.join(package, '__init__.py')):
        raise RuntimeError(f'the editable install of {DIST} points at {project}, which holds no '
                           f'{DIST} package: install it again (pip install -e <checkout>)')
    site = str(dist.locate_file(''))
    link = osp.join(site, DIST)
    if osp.islink(link):
        if osp.realpath(link) == osp.realpath(package):
            _record(dist, DIST)
            if verbose:
                print(f'ssn_plugins: {link} -> {package} (already there)')
            return link
        os.unlink(link)  # another checkout's, or dangling
    elif osp.lexists(link):
        raise RuntimeError(f'{link} exists beside the editable install of {DIST} ({project}): '
                           f'a leftover of another install; remove it, then run this again')
    try:
        os.symlink(osp.realpath(package), link, target_is_directory=True)
    except OSError as err:  # e.g. Windows without the privilege to create links
        raise RuntimeError(f'cannot link {link} -> {package} for mim: {err}') from err
    _record(dist, DIST)
    if verbose:
        print(f'ssn_plugins: {link} -> {package} (mim train/test ssn_plugins use the checkout)')
    return link
