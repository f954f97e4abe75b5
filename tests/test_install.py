"""What a user's environment sees: version ranges, the Python floor, the core without extras,
and installs that leave torch, torchvision and mmcv alone."""
import configparser
import glob
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import pytest
from source_tree import copy_sources

import ssn_plugins
from ssn_plugins import compat
from ssn_plugins.extras import EXTRAS, MissingExtraError, require

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
STACK = ('torch', 'torchvision', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain')


def _setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(osp.join(REPO, 'setup.cfg'))
    return parser


def _requirements(text):
    return [line.strip() for line in text.strip().splitlines() if line.strip()]


def _lock(stack):
    pins = {}
    with open(osp.join(REPO, 'requirements', f'{stack}.txt')) as f:
        for line in f:
            line = line.split('#')[0].strip()
            if line:
                name, version = re.split(r'={2,3}', line)
                pins[name.strip().lower()] = version.strip()
    return pins


def _floor(requirement):
    found = re.search(r'>=\s*([0-9][0-9.]*)', requirement)
    return found.group(1) if found else None


def _release(version, parts):
    return tuple(int(p) for p in version.split('+')[0].split('.')[:parts])


def test_install_requires_are_ranges_whose_floors_the_oldest_lock_tests():
    cfg = _setup_cfg()
    core = _requirements(cfg['options']['install_requires'])
    extras = {k: _requirements(v) for k, v in cfg['options.extras_require'].items()}
    assert not [r for r in core if '==' in r], core  # pins belong in requirements/*.txt
    assert not any(r.startswith('setuptools') for r in core)  # a build requirement only
    names = {re.split(r'[<>=!~ ;\[]', r)[0].lower() for r in core}
    assert names == {'torch', 'mmcv', 'mmengine', 'numpy'}  # what `import ssn_plugins` needs
    oldest, newest = _lock('oldest'), _lock('newest')
    ranged = core + [r for name in ('det', 'seg', 'pretrain') for r in extras[name]]
    for requirement in ranged:
        name = re.split(r'[<>=!~ ;\[]', requirement)[0].lower()
        floor = _floor(requirement)
        if floor is None:
            continue
        assert name in oldest, f'{requirement}: no version in requirements/oldest.txt tests the floor'
        parts = len(floor.split('.'))
        # the floor is the oldest stack's version: a floor no CI job runs would be a claim
        assert _release(oldest[name], parts) == _release(floor, parts), (requirement, oldest[name])
        assert _release(newest[name], parts) >= _release(floor, parts), (requirement, newest[name])
    # an mmseg user gets neither mmdet, mmpretrain nor torchvision
    seg = ' '.join(extras['seg'])
    assert 'mmsegmentation' in seg and not re.search(r'mmdet|mmpretrain|torchvision', seg)
    assert set(extras) >= {'det', 'seg', 'pretrain', 'all', 'tests', 'onnx'}


def test_the_oldest_lock_is_the_oldest_supported_stack():
    oldest = _lock('oldest')
    assert oldest['torch'] == '2.1.2' and oldest['torchvision'] == '0.16.2'
    assert _release(oldest['numpy'], 1) < (2, )
    assert oldest['mmcv'] == '2.1.0'


def test_python_floor_matches_the_code_vermin():
    """``python_requires`` is what the code needs: checked statically (only 3.11 runs here)."""
    floor = _setup_cfg()['options']['python_requires'].strip()
    assert floor == '>=3.8'
    vermin = shutil.which('vermin', path=osp.dirname(sys.executable)) or shutil.which('vermin')
    if vermin is None:
        pytest.skip('vermin is not installed (pip install -e .[tests])')
    files = sorted(glob.glob(osp.join(REPO, 'ssn_plugins', '**', '*.py'), recursive=True)
                   + glob.glob(osp.join(REPO, 'lab', '**', '*.py'), recursive=True)
                   + glob.glob(osp.join(REPO, 'tools', '*.py')))
    # annotations are evaluated only in modules without `from __future__ import annotations`
    lazy = [f for f in files if 'from __future__ import annotations' in open(f).read()]
    eager = [f for f in files if f not in lazy]
    for group, flags in ((lazy, []), (eager, ['--eval-annotations'])):
        if not group:
            continue
        proc = subprocess.run([vermin, '--no-tips', '--violations', '-t=3.8-', *flags, *group],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_module_level_code_parses_as_python_3_8():
    """What vermin does not see: syntax newer than 3.8, and builtin generics outside annotations."""
    import ast
    for path in glob.glob(osp.join(REPO, 'ssn_plugins', '**', '*.py'), recursive=True) + \
            glob.glob(osp.join(REPO, 'lab', '**', '*.py'), recursive=True):
        source = open(path).read()
        tree = ast.parse(source, path, feature_version=(3, 8))
        for node in tree.body:  # module-level aliases are evaluated at import
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Subscript):
                base = node.value.value
                assert not (isinstance(base, ast.Name) and base.id in ('tuple', 'list', 'dict', 'type')), \
                    f'{path}:{node.lineno}: builtin generic outside an annotation needs Python 3.9'
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and \
                    node.value.id in ('tuple', 'list', 'dict', 'type'):
                parent_ok = 'from __future__ import annotations' in source
                assert parent_ok, f'{path}:{node.lineno}: {node.value.id}[...] needs Python 3.9'


_CORE_ONLY = r'''
import json, subprocess, sys
# the extras are absent: `import x` fails, find_spec reports them missing
for name in {blocked!r}:
    sys.modules[name] = None
import torch
import ssn_plugins
from mmengine.registry import HOOKS, MODELS, WEIGHT_INITIALIZERS
out = dict(models=sorted(n for n in ('SN', 'SSN', 'SN1d', 'SN3d', 'SSN1d', 'SSN3d', 'SyncSN', 'SyncSSN',
                                     'ResNetReleasedStem') if MODELS.get(n) is not None),
           hooks=sorted(n for n in ('SSNRadiusHook', 'SwitchNormEvalHook', 'SwitchNormMonitorHook',
                                    'SafeCheckpointHook', 'SwitchNormLogitClipHook') if HOOKS.get(n)),
           init=WEIGHT_INITIALIZERS.get('SwitchNormPretrained') is not None)
torch.manual_seed(0)
layer = MODELS.build(dict(type='SSN', num_features=4))
layer.set_radius(1.0)
y = layer(torch.randn(3, 4, 5, 5))
out['latched'] = bool(layer.latched)
out['collapsed'] = type(ssn_plugins.collapse_norms(torch.nn.Sequential(layer).eval())[0]).__name__
errors = {{}}
from mmengine.registry import init_default_scope
for what, call in (
        ('stem', lambda: MODELS.build(dict(type='ResNetReleasedStem', base='mmdet.ResNet', depth=18))),
        ('demo_data', lambda: __import__('ssn_plugins.demo', fromlist=['x']).make_demo_dataset('d', 2, 2, 64)),
        ('toolkit', lambda: __import__('ssn_plugins.engine.launch', fromlist=['x']).toolkit_of(
            {{'default_scope': 'mmseg'}})),
        ('onnx', lambda: __import__('ssn_plugins.deploy.onnx', fromlist=['x']).require_onnx())):
    try:
        call()
        errors[what] = None
    except ImportError as err:
        errors[what] = [type(err).__name__, str(err)]
out['errors'] = errors
print(json.dumps(out))
'''


@pytest.mark.slow
def test_import_with_only_the_core_installed(tmp_path):
    """No mmdet, mmseg, mmpretrain, torchvision, pycocotools, onnx: the layers, hooks and
    conversion work, and each missing extra is named where it is needed."""
    blocked = sorted(EXTRAS)
    proc = subprocess.run([sys.executable, '-c', _CORE_ONLY.format(blocked=blocked)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out['models'] == sorted(['SN', 'SSN', 'SN1d', 'SN3d', 'SSN1d', 'SSN3d', 'SyncSN',
                                    'SyncSSN', 'ResNetReleasedStem'])
    assert len(out['hooks']) == 5 and out['init']
    assert out['latched'] and 'Switch' not in out['collapsed'], out
    errors = out['errors']
    for what, extra, module in (('stem', 'det', 'mmdet'), ('demo_data', 'det', 'pycocotools'),
                                ('toolkit', 'seg', 'mmseg'), ('onnx', 'onnx', 'onnx')):
        kind, message = errors[what]
        assert kind == 'MissingExtraError', (what, errors[what])
        assert f"pip install 'ssn_plugins[{extra}]'" in message and module in message, message
        assert '\n' not in message


@pytest.mark.slow
def test_tools_name_the_missing_extra_in_one_line(tmp_path):
    blocker = tmp_path / 'sitecustomize.py'  # loaded at start-up: mmdet is absent
    blocker.write_text("import sys\nsys.modules['mmdet'] = None\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    config = osp.join(REPO, 'configs', 'demo', 'mask-rcnn_r18-ssn_fpn_demo.py')
    for tool, args in (('train.py', [config]), ('test.py', [config, 'none.pth'])):
        proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', tool), *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, (tool, proc.stderr[-3000:])
        last = proc.stderr.strip().splitlines()[-1]
        assert "needs mmdet, which is not installed: pip install 'ssn_plugins[det]'" in last, \
            proc.stderr[-3000:]
        assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]


def test_a_base_of_a_missing_toolkit_names_its_extra(tmp_path, monkeypatch):
    """mmengine's own error for an ``mmseg::`` base when mmseg is not installed, translated."""
    from mmengine.config import Config

    from ssn_plugins.engine import launch

    def not_installed(path):
        raise ModuleNotFoundError('mmsegmentation is not installed, please install mmsegmentation '
                                  'manually')

    monkeypatch.setattr(Config, 'fromfile', staticmethod(not_installed))
    monkeypatch.setitem(sys.modules, 'mmseg', None)
    config = tmp_path / 'my_seg.py'
    config.write_text("_base_ = 'mmseg::fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py'\n")
    with pytest.raises(MissingExtraError, match=r"my_seg.py \(a mmseg:: base\) needs mmseg, which "
                                                r"is not installed: pip install 'ssn_plugins\[seg\]'"):
        launch.load_config(str(config))


def test_require_names_every_missing_module_and_its_extras():
    require('torch', 'mmengine', purpose='nothing')  # installed: no error
    with pytest.raises(MissingExtraError, match=r"x needs no_such_module_ssn, which is not "
                                                r"installed: pip install no_such_module_ssn"):
        require('torch', 'no_such_module_ssn', purpose='x')


def test_stack_line_names_the_running_versions():
    line = compat.stack()
    assert line.startswith(f'python {sys.version.split()[0]}, torch {compat.torch.__version__}')
    assert 'mmengine ' in line and 'mmcv ' in line


def _dry_run(args, cwd):
    """What ``pip install ARGS`` would install here (with dependencies), from pip's own report."""
    proc = subprocess.run([sys.executable, '-m', 'pip', 'install', '--dry-run', '--quiet',
                           '--report', '-', '--no-build-isolation', *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index('{'):])
    return {item['metadata']['name'].lower(): item['metadata']['version'] for item in report['install']}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_installing_into_an_existing_environment_keeps_its_torch_and_mmcv(tmp_path):
    """``pip install`` of the wheel (with dependencies) and ``pip install -e '.[seg]'`` into this
    environment would install only ssn_plugins: torch, torchvision and mmcv stay."""
    src = copy_sources(tmp_path / 'src')
    dist = tmp_path / 'dist'
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps', '--no-build-isolation',
                    '--no-index', '-w', str(dist), str(src)], check=True, cwd=tmp_path, timeout=300)
    wheel = glob.glob(str(dist / 'ssn_plugins-*.whl'))[0]
    for args in ([f'{wheel}[all]'], ['-e', f'{src}[seg]']):
        would = _dry_run(args, tmp_path)
        assert set(would) == {'ssn_plugins'} or set(would) == {'ssn-plugins'}, (args, would)
    import mmcv.ops  # noqa: F401  (still loads: nothing replaced it)
