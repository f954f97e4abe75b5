"""What a wheel is built from, copied out of the checkout, and a plain install of it."""
import os
import os.path as osp
import shutil
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def copy_sources(dest):
    """Copy setup.cfg, pyproject.toml, README.md, configs/, tools/ and the package to ``dest``."""
    dest = str(dest)
    os.makedirs(dest, exist_ok=True)
    for name in ('setup.cfg', 'pyproject.toml', 'README.md'):
        shutil.copy(osp.join(REPO, name), osp.join(dest, name))
    for folder in ('configs', 'tools'):
        shutil.copytree(osp.join(REPO, folder), osp.join(dest, folder),
                        ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copytree(osp.join(REPO, 'ssn_plugins'), osp.join(dest, 'ssn_plugins'), symlinks=True,
                    ignore=shutil.ignore_patterns('__pycache__'))
    return dest


def install_to_target(tmp_path):
    """A plain (non-editable) install of a copy of the sources into ``tmp_path/site``.

    pip builds the wheel without network: no dependencies, no build isolation.
    """
    src = copy_sources(osp.join(str(tmp_path), 'src'))
    site = osp.join(str(tmp_path), 'site')
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps', '--no-build-isolation',
                    '--no-compile', '--no-index', '--target', site, src],
                   check=True, cwd=str(tmp_path), timeout=240)
    return site
