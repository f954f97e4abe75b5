"""The configs travel with the package: ``_base_ = 'ssn_plugins::...'`` from a config
anywhere, in an editable install (this environment) and in a plain wheel install
(built here into a temporary folder), and the demo finds its config the same way."""
import glob
import os
import os.path as osp
import subprocess
import sys

import logging

import pytest
from source_tree import install_to_target
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import HOOKS, init_default_scope

import ssn_plugins
from ssn_plugins.demo.run import DEMO_CONFIG

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHIPPED = sorted(osp.relpath(p, osp.join(REPO, 'configs'))
                 for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True))


def _user_config(folder, base, extra=''):
    path = osp.join(folder, 'my_config.py')
    with open(path, 'w') as f:
        f.write(f'_base_ = {base!r}\n{extra}')
    return path


def _without_scope(value):
    """A config value without the ``_scope_`` keys mmengine adds to package bases."""
    if isinstance(value, dict):
        return {k: _without_scope(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return [_without_scope(v) for v in value]
    return value


@pytest.mark.parametrize('name', ['mmdet/mask-rcnn_r50-ssn_fpn_1x_coco.py',
                                  'mmseg/pspnet_r50-ssn-d8_4xb4-80k_ade20k-512x512.py'])
def test_user_config_inherits_a_packaged_config(name, tmp_path, monkeypatch):
    """Outside the checkout: the same model, optimizer and hooks as the repository file."""
    monkeypatch.chdir(tmp_path)
    user = _user_config(str(tmp_path), f'ssn_plugins::{name}',
                        'model = dict(backbone=dict(init_cfg=None))\n')
    cfg = Config.fromfile(user)
    ref = Config.fromfile(osp.join(REPO, 'configs', name))
    assert cfg.model.backbone.init_cfg is None
    ref.model.backbone.init_cfg = None
    for key in ('model', 'optim_wrapper', 'custom_hooks', 'param_scheduler', 'train_cfg',
                'default_scope', 'custom_imports'):
        assert _without_scope(cfg[key]) == _without_scope(ref[key]), key

    # the hooks came with _scope_='ssn_plugins': they build from ssn_plugins.registry,
    # without mmengine's "Failed to search registry" warnings
    assert {h._scope_ for h in cfg.custom_hooks} == {'ssn_plugins'}
    init_default_scope(cfg.default_scope)
    logger = MMLogger.get_current_instance()
    warned = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warned.append
    logger.addHandler(handler)
    try:
        hooks = [HOOKS.build(h) for h in cfg.custom_hooks]
    finally:
        logger.removeHandler(handler)
    assert [type(h).__name__ for h in hooks] == [h.type for h in ref.custom_hooks]
    assert not warned, [r.getMessage() for r in warned]


def test_editable_install_reads_the_checkout_configs():
    assert osp.realpath(ssn_plugins.config_path('mmdet/mask-rcnn_r50-ssn_fpn_1x_coco.py')) == \
        osp.join(osp.realpath(REPO), 'configs', 'mmdet', 'mask-rcnn_r50-ssn_fpn_1x_coco.py')
    assert DEMO_CONFIG == ssn_plugins.config_path('demo/mask-rcnn_r18-ssn_fpn_demo.py')
    with pytest.raises(FileNotFoundError, match='no shipped config'):
        ssn_plugins.config_path('mmdet/nope.py')


_CHECK_INSTALLED = r'''
import glob, json, os, os.path as osp, sys
from importlib.metadata import version
import ssn_plugins
from mmengine.config import Config
from ssn_plugins.demo.run import DEMO_CONFIG

site = sys.argv[1]
pkg = osp.join(site, 'ssn_plugins')
assert ssn_plugins.__file__.startswith(pkg), ssn_plugins.__file__
configs = osp.join(pkg, '.mim', 'configs')
shipped = sorted(osp.relpath(p, configs) for p in glob.glob(osp.join(configs, '**', '*.py'), recursive=True))
assert not any(osp.islink(osp.join(configs, p)) for p in shipped) and not osp.islink(configs)
assert DEMO_CONFIG.startswith(configs) and osp.isfile(DEMO_CONFIG)
for tool in ('train.py', 'test.py', 'dist_train.sh'):  # where mim looks for a package's tools
    assert osp.isfile(osp.join(pkg, '.mim', 'tools', tool)), tool
out = {'shipped': shipped, 'version': ssn_plugins.__version__, 'dist_version': version('ssn_plugins')}
for name in ('mmdet/mask-rcnn_r50-ssn_fpn_1x_coco.py', 'mmseg/pspnet_r50-ssn-d8_4xb4-80k_ade20k-512x512.py'):
    with open('my_config.py', 'w') as f:
        f.write(f"_base_ = 'ssn_plugins::{name}'\n")
    cfg = Config.fromfile('my_config.py')
    out[name] = dict(norm=cfg.model.backbone.norm_cfg.type, hooks=[h.type for h in cfg.custom_hooks],
                     lr_mult=cfg.optim_wrapper.paramwise_cfg.custom_keys.mean_weight.lr_mult,
                     files=sorted(set(l[:-1] for l in cfg.text.splitlines(True) if l.endswith('.py\n')
                                      and osp.isabs(l.strip()))))
print(json.dumps(out))
'''


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_install_ships_every_config(tmp_path):
    """A plain (non-editable) ``pip install``: configs copied into site-packages.

    Builds the wheel from a copy of the sources with pip (no network: no
    dependencies, no build isolation) into ``--target``; about 15 s.
    """
    site = install_to_target(tmp_path)
    work = tmp_path / 'elsewhere'
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, '-c', _CHECK_INSTALLED, str(site)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out['shipped'] == SHIPPED  # new config folders travel without a packaging change
    assert out['version'] == out['dist_version'] == ssn_plugins.__version__
    det = out['mmdet/mask-rcnn_r50-ssn_fpn_1x_coco.py']
    seg = out['mmseg/pspnet_r50-ssn-d8_4xb4-80k_ade20k-512x512.py']
    for got in (det, seg):
        assert got['norm'] == 'SSN' and got['lr_mult'] == 0.1
        assert 'SSNRadiusHook' in got['hooks'] and 'SwitchNormLogitClipHook' in got['hooks']
        # the relative _base_ files resolved inside the installed copy, not in the checkout
        ours = [f for f in got['files'] if 'ssn_plugins' in f]
        assert ours and all(f.startswith(str(site)) for f in ours), got['files']


# the lab's tools import lab/, which the wheel does not hold
LAB_TOOLS = ('benchmark.py', 'gpu_check.py', 'small_batch_study.py')


def _library_files():
    """What the wheel must hold: the package's modules, the configs and the users' tools."""
    files = set()
    for path in glob.glob(osp.join(REPO, 'ssn_plugins', '**', '*'), recursive=True):
        rel = osp.relpath(path, REPO)
        if osp.isfile(path) and '__pycache__' not in rel and '.mim' not in rel and \
                (rel.endswith('.py') or osp.basename(rel) == 'py.typed'):
            files.add(rel.replace(os.sep, '/'))
    files.add('ssn_plugins/.mim/model-index.yml')
    files.update(f'ssn_plugins/.mim/configs/{name}' for name in SHIPPED)
    for path in glob.glob(osp.join(REPO, 'tools', '*.py')) + glob.glob(osp.join(REPO, 'tools', '*.sh')):
        if osp.basename(path) not in LAB_TOOLS:
            files.add(f'ssn_plugins/.mim/tools/{osp.basename(path)}')
    return files


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_holds_the_library_and_not_the_lab(tmp_path):
    """About 15 s: the wheel built from the sources, lab/ and tests/ beside them, as in the repository."""
    import shutil
    import zipfile

    from source_tree import copy_sources
    src = copy_sources(tmp_path / 'src')
    for folder in ('lab', 'tests'):  # beside the package, as in the checkout: must not be picked up
        shutil.copytree(osp.join(REPO, folder), osp.join(src, folder),
                        ignore=shutil.ignore_patterns('__pycache__'))
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps', '--no-build-isolation',
                    '--no-index', '--wheel-dir', str(tmp_path / 'dist'), src],
                   check=True, cwd=str(tmp_path), timeout=240)
    wheel, = glob.glob(str(tmp_path / 'dist' / 'ssn_plugins-*.whl'))
    names = zipfile.ZipFile(wheel).namelist()
    files = {n for n in names if '.dist-info/' not in n}
    assert files == _library_files(), (sorted(files - _library_files()), sorted(_library_files() - files))
    for lab in ('profiling', 'benchmark', 'gpu_check', 'study'):
        assert not [n for n in names if lab in n], lab
    assert not [n for n in names if n.startswith(('lab/', 'tests/'))]
    assert 'ssn_plugins/models/resnet_stem.py' in files and 'ssn_plugins/deploy/onnx.py' in files


def _package_imports():
    """``{unit: {units it imports at module level}}`` over ssn_plugins' top-level modules and
    subpackages, and every module that imports ``lab`` anywhere (functions included)."""
    import ast
    edges, lab_users = {}, []
    for path in glob.glob(osp.join(REPO, 'ssn_plugins', '**', '*.py'), recursive=True):
        rel = osp.relpath(path, REPO)[:-3].split(os.sep)
        package = rel[:-1]  # what a relative import starts from, for a module and an __init__
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                names = [base + node.module.split('.')] if node.module else \
                    [base + [a.name] for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name.split('.') for a in node.names]
            else:
                continue
            for name in names:
                if name[0] == 'lab':
                    lab_users.append(path)
                top_level = node in tree.body or any(node in ast.walk(n) for n in tree.body
                                                     if isinstance(n, (ast.If, ast.Try)))
                if name[0] == 'ssn_plugins' and len(rel) > 1 and top_level and len(name) > 1 \
                        and name[1] != rel[1]:
                    edges.setdefault(rel[1], set()).add(name[1])
    return edges, lab_users


def test_the_package_imports_one_way_and_never_the_lab():
    edges, lab_users = _package_imports()
    assert not lab_users
    done, path = set(), []

    def visit(unit):  # depth-first: a unit met again on the current path closes a circle
        assert unit not in path, f"import circle: {' -> '.join(path[path.index(unit):] + [unit])}"
        if unit in done:
            return
        path.append(unit)
        for other in sorted(edges.get(unit, ())):
            visit(other)
        path.pop()
        done.add(unit)

    for unit in sorted(edges):
        visit(unit)
    assert 'ssn_plugins' not in edges.get('models', ()) and 'checkpoint' not in edges.get('models', ())
