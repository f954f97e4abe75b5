"""``mim train ssn_plugins CONFIG`` and ``mim test ssn_plugins CONFIG --checkpoint CKPT`` (openmim).

mim runs ``<root>/.mim/tools/{train,test}.py`` and finds a bare config name
under ``<root>``, where ``<root>`` is the folder beside the distribution's
``.dist-info`` (``ssn_plugins/mim.py`` explains it). In a wheel install that
is the installed package; an editable install gets a link there from
:func:`ssn_plugins.mim.link_for_mim` (``make venv`` runs it after
``pip install -e``). Both run the demo config for 2 iterations, then
evaluate the checkpoint, through the ``mim`` command a user types.
"""
import json
import os
import os.path as osp
import re
import subprocess
import sys
from importlib import metadata

import pytest
from source_tree import install_to_target

pytest.importorskip('mim', reason='openmim is not installed (pip install -e .[tests]); '
                                  "mim's train/test commands cannot be checked")

import torch  # noqa: E402

from ssn_plugins import mim as ssn_mim  # noqa: E402
from ssn_plugins.engine.checkpoint_io import decode_checkpoint  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'fcn_r18-ssn_demo.py'  # a bare name: mim looks it up in the installed package
# as tests/test_upstream_tools.py: no worker processes, logs every iteration, and
# no validation during training (the test step evaluates)
TINY = ['train_dataloader.batch_size=1', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False', 'val_dataloader.batch_size=1',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
        'default_hooks.logger.interval=1', 'randomness.seed=0']
SCHEDULE = ['train_cfg.max_iters=2', 'train_cfg.val_interval=100',
            'default_hooks.checkpoint.interval=1']
METRICS = ('aAcc', 'mIoU', 'mAcc')


def _mim():
    """The ``mim`` console script of this environment (``python -m mim`` without one)."""
    script = osp.join(osp.dirname(sys.executable), 'mim')
    return [script] if osp.isfile(script) else [sys.executable, '-m', 'mim']


def _run_mim(args, cwd, env=None, timeout=240):
    env = dict(os.environ if env is None else env, PYTHONHASHSEED='0')
    proc = subprocess.run([*_mim(), *args], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'mim {" ".join(args[:2])} failed:\n{out[-6000:]}'
    return out


def _command(out, verb):
    """``(script, config)`` from mim's "Training command is PYTHON SCRIPT CONFIG ..." line."""
    found = re.search(rf'{verb} command is (\S+) (\S+) (\S+)', out)
    assert found, out[-3000:]
    python, script, config = found.groups()
    assert osp.realpath(python) == osp.realpath(sys.executable)
    return script, config


def _metrics(out):
    """The metrics tools/test.py prints as its last JSON line."""
    for line in reversed(out.splitlines()):
        line = line.strip()
        if line.startswith('{') and 'mIoU' in line:
            return json.loads(line)
    raise AssertionError(f'no metrics in the output:\n{out[-3000:]}')


def _train_and_test(cwd, config, env=None):
    """mim train 2 iterations, mim test the checkpoint; what mim ran and what came out."""
    work = osp.join(str(cwd), 'work')
    train_out = _run_mim(['train', 'ssn_plugins', config, '--work-dir', work,
                          '--cfg-options', *TINY, *SCHEDULE], cwd, env)
    train_script, train_config = _command(train_out, 'Training')
    ckpt = osp.join(work, 'iter_2.pth')
    assert osp.isfile(ckpt), sorted(os.listdir(work))
    state = torch.load(ckpt, map_location='cpu', weights_only=True)
    decode_checkpoint(state)
    assert state['meta']['iter'] == 2
    assert any(k.startswith('backbone.') and k.endswith('mean_weight') for k in state['state_dict'])
    assert 'Iter(train) [2/2]' in train_out  # logged every iteration, to the console

    test_work = osp.join(str(cwd), 'work_test')
    test_out = _run_mim(['test', 'ssn_plugins', config, '--checkpoint', ckpt, '--work-dir', test_work,
                         '--cfg-options', *TINY], cwd, env)
    test_script, test_config = _command(test_out, 'Testing')
    assert test_config == train_config
    metrics = _metrics(test_out)
    for key in METRICS:
        assert 0.0 <= metrics[key] <= 100.0, metrics
    # the runner's log file has the same metrics
    logs = [osp.join(root, f) for root, _, files in os.walk(test_work) for f in files if f.endswith('.log')]
    assert logs and 'mIoU' in open(sorted(logs)[-1]).read()
    return dict(train=train_script, test=test_script, config=train_config, metrics=metrics)


@pytest.fixture(scope='module')
def editable_install():
    """This environment's editable install, linked for mim as ``make venv`` does (idempotent)."""
    dist = ssn_mim.editable_distribution()
    if dist is None:
        pytest.fail('ssn_plugins is not installed editable in this environment: pip install -e .[tests]')
    assert osp.realpath(ssn_mim.editable_checkout(dist)) == osp.realpath(REPO)
    link = ssn_mim.link_for_mim(dist)
    return dist, link


@pytest.mark.slow
def test_editable_install_is_where_mim_looks(editable_install, tmp_path):
    dist, link = editable_install
    assert link == osp.join(str(dist.locate_file('')), 'ssn_plugins') and osp.islink(link)
    assert ssn_mim.link_for_mim(dist) == link  # idempotent
    assert [str(f) for f in dist.files].count('ssn_plugins') == 1  # pip uninstall removes it
    # a fresh mim process: its lookup, the import and the ssn_plugins:: prefix all reach the checkout
    probe = r'''
import json, os.path as osp, sys
from mim.utils import get_installed_path
import ssn_plugins
from mmengine.config import Config
with open('my_config.py', 'w') as f:
    f.write("_base_ = 'ssn_plugins::demo/fcn_r18-ssn_demo.py'\n")
cfg = Config.fromfile('my_config.py')
print(json.dumps(dict(root=get_installed_path('ssn_plugins'), module=ssn_plugins.__file__,
                      config=ssn_plugins.config_path('demo/fcn_r18-ssn_demo.py'),
                      norm=cfg.model.backbone.norm_cfg.type)))
'''
    proc = subprocess.run([sys.executable, '-c', probe], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    package = osp.join(osp.realpath(REPO), 'ssn_plugins')
    assert osp.realpath(got['root']) == package
    assert osp.realpath(osp.join(got['root'], '.mim', 'tools', 'train.py')) == \
        osp.join(osp.realpath(REPO), 'tools', 'train.py')
    assert osp.realpath(got['module']) == osp.join(package, '__init__.py')
    assert osp.realpath(got['config']) == osp.join(osp.realpath(REPO), 'configs', 'demo', CONFIG)
    assert got['norm'] == 'SSN'


def _fake_install(tmp_path, editable=True):
    checkout = tmp_path / 'checkout'
    (checkout / 'ssn_plugins' / '.mim').mkdir(parents=True)
    (checkout / 'ssn_plugins' / '__init__.py').write_text('')
    site = tmp_path / 'site'
    info = site / 'ssn_plugins-0.1.0.dist-info'
    info.mkdir(parents=True)
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: ssn_plugins\nVersion: 0.1.0\n')
    record = ['ssn_plugins-0.1.0.dist-info/METADATA,,', 'ssn_plugins-0.1.0.dist-info/RECORD,,']
    if editable:
        (info / 'direct_url.json').write_text(json.dumps(
            dict(url=checkout.as_uri(), dir_info=dict(editable=True))))
        record.append('ssn_plugins-0.1.0.dist-info/direct_url.json,,')
    (info / 'RECORD').write_text('\n'.join(record))  # no final newline: appending must add one
    return checkout, site, metadata.PathDistribution(info)


def test_link_for_mim_links_once_and_records_the_link(tmp_path):
    checkout, site, dist = _fake_install(tmp_path)
    link = ssn_mim.link_for_mim(dist)
    assert link == str(site / 'ssn_plugins') and osp.islink(link)
    assert osp.realpath(link) == osp.realpath(str(checkout / 'ssn_plugins'))
    assert ssn_mim.link_for_mim(dist) == link
    lines = (site / 'ssn_plugins-0.1.0.dist-info' / 'RECORD').read_text().splitlines()
    assert lines.count('ssn_plugins,,') == 1 and len(lines) == 4

    # a link left by another checkout is replaced
    other = tmp_path / 'other'
    other.mkdir()
    os.unlink(link)
    os.symlink(str(other), link)
    assert ssn_mim.link_for_mim(dist) == link
    assert osp.realpath(link) == osp.realpath(str(checkout / 'ssn_plugins'))
    assert (site / 'ssn_plugins-0.1.0.dist-info' / 'RECORD').read_text().splitlines() == lines

    # a real package folder there is not ours to remove
    os.unlink(link)
    os.mkdir(link)
    with pytest.raises(RuntimeError, match='leftover of another install'):
        ssn_mim.link_for_mim(dist)


def test_link_for_mim_leaves_a_wheel_install_alone(tmp_path):
    _, site, dist = _fake_install(tmp_path, editable=False)
    assert ssn_mim.editable_checkout(dist) is None
    assert ssn_mim.link_for_mim(dist) is None
    assert not osp.lexists(str(site / 'ssn_plugins'))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mim_train_and_test_in_the_editable_install(editable_install, demo_dir):
    """About 30 s: the checkout's tools and configs, found through the link.

    The config as a user in the checkout types it; in this folder (the demo
    data's) mim finds it by name in the package (the link, then .mim/configs).
    """
    ran = _train_and_test(demo_dir, 'configs/demo/' + CONFIG)
    assert osp.realpath(ran['train']) == osp.join(osp.realpath(REPO), 'tools', 'train.py')
    assert osp.realpath(ran['test']) == osp.join(osp.realpath(REPO), 'tools', 'test.py')
    assert osp.realpath(ran['config']) == osp.join(osp.realpath(REPO), 'configs', 'demo', CONFIG)


def _install_wheel(tmp_path):
    """A plain (non-editable) install into a --target folder, as tests/test_packaging.py builds it."""
    return install_to_target(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_mim_train_and_test_from_a_wheel_install(demo_dir):
    """About 45 s: mim runs the tools and the config copied into the installed package."""
    site = _install_wheel(demo_dir / 'wheel')
    env = dict(os.environ, PYTHONPATH=site)
    package = osp.join(site, 'ssn_plugins')
    # what the tools mim starts import: the installed copy, not the checkout (found, not imported)
    where = "import importlib.util as u; print(u.find_spec('ssn_plugins').origin)"
    proc = subprocess.run([sys.executable, '-c', where], cwd=str(demo_dir), env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == osp.join(package, '__init__.py')

    ran = _train_and_test(demo_dir, CONFIG, env)
    for tool in ('train', 'test'):
        script = ran[tool]
        assert script in (osp.join(package, '.mim', 'tools', f'{tool}.py'),
                          osp.join(package, 'tools', f'{tool}.py')), script
        assert not osp.islink(script) and osp.realpath(script).startswith(osp.realpath(site) + os.sep)
    assert ran['config'] == osp.realpath(osp.join(package, '.mim', 'configs', 'demo', CONFIG))
