"""No tool writes over one of its inputs, every destination is checked before any work, and the
temporary files of a killed write do not pile up.

Probed as a user meets them: ``convert x.pth x.pth``, ``test.py CFG ckpt.pth --out-metrics ckpt.pth``,
outputs that are a symbolic or a hard link to an input, a bad destination together with a bad input
(the destination must be named first: nothing was read or built), ``kill -9`` and SIGTERM in the
middle of a write (real child processes), and a raw ``pickle.dump`` file given to every tool.
"""
import os
import pickle
import signal
import subprocess
import sys

import pytest
import torch

import ssn_plugins  # noqa: F401  (registers SN/SSN for the configs)
from released_layout import released_state_dict, save_released
from ssn_plugins import fileio
from ssn_plugins.engine import launch
from tiny_models import TINY_SEG
from tool_loader import one_line_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def released(tmp_path_factory):
    """A released ResNet-50 SSN checkpoint (narrow), as convert_checkpoint reads it."""
    folder = tmp_path_factory.mktemp('released')
    return save_released(released_state_dict('ssn', 50, 8), str(folder / 'src.pth'))


def _links(tmp_path, target):
    """A symbolic and a hard link to ``target``: other names of the same file."""
    symlink, hardlink = tmp_path / 'symlink.pth', tmp_path / 'hardlink.pth'
    symlink.symlink_to(target)
    os.link(target, hardlink)
    return [symlink, hardlink]


# -- no tool writes over one of its inputs --------------------------------------------------------

def test_convert_never_writes_over_its_source(tmp_path, released):
    src = tmp_path / 'x.pth'
    src.write_bytes(open(released, 'rb').read())
    before = src.read_bytes()
    for dst in [src, *_links(tmp_path, src)]:
        message = one_line_error('convert_checkpoint', src, dst)
        assert f'cannot write {dst}: it is the input checkpoint' in message and 'another output' in message
    assert src.read_bytes() == before  # the original, with its fc, is still there
    assert 'fc.weight' in torch.load(src, weights_only=True)['state_dict']


def test_deploy_never_writes_over_an_input_through_a_link(tmp_path, latched_seg):
    config, ckpt = latched_seg
    before = open(ckpt, 'rb').read(), open(config).read()
    for out in _links(tmp_path, ckpt):
        message = one_line_error('deploy', config, ckpt, out)
        assert 'it is the input checkpoint (through a link' in message
    os.symlink(config, tmp_path / 'cfg_link.py')  # OUT.py would be the config
    message = one_line_error('deploy', config, ckpt, tmp_path / 'cfg_link.pth')
    assert 'cfg_link.py: it is the input config (through a link' in message
    assert (open(ckpt, 'rb').read(), open(config).read()) == before
    assert sorted(os.listdir(tmp_path)) == ['cfg_link.py', 'hardlink.pth', 'symlink.pth']


@pytest.mark.parametrize('which', ['checkpoint', 'config'])
def test_test_tool_never_writes_its_metrics_over_an_input(tmp_path, which):
    """`test.py CFG ckpt.pth --out-metrics ckpt.pth` turned a checkpoint into 74 bytes of JSON."""
    config = tmp_path / 'cfg.py'
    config.write_text(TINY_SEG)
    ckpt = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {'w': torch.ones(3)}}, ckpt)
    before = ckpt.read_bytes(), config.read_bytes()
    target = ckpt if which == 'checkpoint' else config
    for out in [target, *_links(tmp_path, target)]:
        message = one_line_error('test', config, ckpt, '--out-metrics', out)
        assert message.startswith(f'test: --out-metrics: cannot write {out}: it is the {which} to test')
    assert (ckpt.read_bytes(), config.read_bytes()) == before


def test_analyze_ratios_never_writes_over_its_checkpoint(tmp_path, released):
    ckpt = tmp_path / 'ratios.json'  # a checkpoint that happens to carry the output's name
    ckpt.write_bytes(open(released, 'rb').read())
    before = ckpt.read_bytes()
    message = one_line_error('analyze_ratios', ckpt, '--out', tmp_path)
    assert f'cannot write {ckpt}: it is the checkpoint to analyse' in message
    assert ckpt.read_bytes() == before and sorted(os.listdir(tmp_path)) == ['ratios.json']


# -- destinations are checked before any work ----------------------------------------------------

def test_destinations_are_checked_before_anything_is_read_or_built(tmp_path, latched_seg):
    """A bad destination is named first, even with a broken input (which would fail first if read)."""
    config = latched_seg[0]
    empty = tmp_path / 'empty.pth'
    empty.touch()
    (tmp_path / 'file').write_text('x')
    below_a_file = tmp_path / 'file' / 'out.pth'
    for tool, args in [('deploy', [config, empty, below_a_file]),
                       ('convert_checkpoint', [empty, below_a_file]),
                       ('analyze_ratios', [empty, '--out', tmp_path / 'file']),
                       ('test', [config, empty, '--out-metrics', below_a_file])]:
        message = one_line_error(tool, *args)
        assert f'{tmp_path / "file"} is a file, not a folder' in message, (tool, message)
    (tmp_path / 'folder.onnx').mkdir()
    message = one_line_error('deploy', config, empty, tmp_path / 'd.pth', '--onnx', tmp_path / 'folder.onnx')
    assert 'folder.onnx: it is a folder' in message
    assert sorted(os.listdir(tmp_path)) == ['empty.pth', 'file', 'folder.onnx']


# -- every tool names a raw pickle the same way ---------------------------------------------------

def test_a_raw_pickle_file_is_called_unsafe_not_corrupted_by_every_tool(tmp_path, latched_seg):
    raw = tmp_path / 'raw.pth'
    with open(raw, 'wb') as f:
        pickle.dump({'state_dict': {'w': torch.ones(2)}}, f)
    expected = ('holds pickled Python objects (a pickle.dump file, not torch.save of tensors) that '
                'torch.load(weights_only=True) refuses to unpickle: it was not written by these tools '
                'and may run code when loaded; nothing was loaded or run.')
    for tool, args in [('convert_checkpoint', [raw, tmp_path / 'c.pth']),
                       ('deploy', [latched_seg[0], raw, tmp_path / 'd.pth']),
                       ('analyze_ratios', [raw, '--out', tmp_path / 'r'])]:
        message = one_line_error(tool, *args)
        assert f'{raw} {expected}' in message and 'corrupted' not in message, (tool, message)
    # the Runner's loaders (tools/test.py, --resume, load_from) say the same
    with pytest.raises(pickle.UnpicklingError) as err:
        with launch._explain_unsafe_checkpoint(str(raw)):
            torch.load(raw, weights_only=True)
    assert f'{raw} {expected}' in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ['raw.pth']


# -- temporary files of a killed write ------------------------------------------------------------

_WRITER = """
import sys, time
from ssn_plugins.fileio import replacing
with replacing(sys.argv[1], sys.argv[2]) as temps:
    for tmp in temps:
        with open(tmp, 'wb') as f:
            f.write(b'x' * 1000000)
    print('written', flush=True)
    time.sleep(120)
"""


def _start_writer(folder):
    child = subprocess.Popen([sys.executable, '-c', _WRITER, str(folder / 'a.pth'), str(folder / 'a.py')],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert child.stdout.readline().strip() == 'written'
    temps = [n for n in os.listdir(folder) if n.startswith('.a.')]
    assert len(temps) == 2, temps
    return child


@pytest.mark.slow
def test_sigterm_during_a_write_removes_its_temporaries(tmp_path):
    (tmp_path / 'a.pth').write_text('old')
    child = _start_writer(tmp_path)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == -signal.SIGTERM  # still ends as SIGTERM says
    assert sorted(os.listdir(tmp_path)) == ['a.pth'] and (tmp_path / 'a.pth').read_text() == 'old'


@pytest.mark.slow
def test_temporaries_of_a_killed_write_are_removed_by_the_next_write(tmp_path):
    (tmp_path / 'a.pth').write_text('old')
    (tmp_path / '.notes.tmp').write_text('not ours')
    killed = []
    for _ in range(3):  # kill -9, again and again: each write removes the last one's, no pile
        child = _start_writer(tmp_path)
        child.kill()
        child.wait(timeout=60)
        killed.append(sorted(n for n in os.listdir(tmp_path) if n.startswith('.a.')))
    assert [len(names) for names in killed] == [2, 2, 2] and killed[0] != killed[1] != killed[2]
    assert (tmp_path / 'a.pth').read_text() == 'old'
    # a live writer's temporaries are left alone by another process's write
    (tmp_path / 'live').mkdir()
    live = _start_writer(tmp_path / 'live')
    subprocess.run([sys.executable, '-c', 'import sys; from ssn_plugins import fileio; '
                    'fileio.save_checkpoint({}, sys.argv[1]); fileio.save_checkpoint({}, sys.argv[2])',
                    str(tmp_path / 'b.pth'), str(tmp_path / 'live' / 'b.pth')], check=True, cwd=ROOT)
    assert sorted(os.listdir(tmp_path)) == ['.notes.tmp', 'a.pth', 'b.pth', 'live']
    assert len([n for n in os.listdir(tmp_path / 'live') if n.startswith('.a.')]) == 2
    live.kill()
    live.wait(timeout=60)


def test_a_failed_build_of_a_folder_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with fileio.temporary_folder(tmp_path / 'set') as tmp:
            (open(os.path.join(tmp, 'f'), 'w')).write('x')
            raise RuntimeError('failed')
    assert os.listdir(tmp_path) == []
