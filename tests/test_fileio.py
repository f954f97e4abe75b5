"""Files are never half-written, and bad checkpoints get a message that names the problem.

Probed as a user meets them: a full disk (``ulimit -f`` in a child process),
a crash between writes, outputs that would overwrite each other, a folder or
a file where a folder should be, empty, malicious and broken checkpoints.
"""
import os
import subprocess
import sys

import pytest
import torch

import ssn_plugins  # noqa: F401  (registers SN/SSN for the configs)
from released_layout import released_state_dict, save_released
from ssn_plugins import fileio
from ssn_plugins.checkpoint import convert_checkpoint
from ssn_plugins.deploy import deploy_checkpoint
from tool_loader import one_line_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# a child process that may write at most LIMIT bytes to a file (ulimit -f), running tools' mains
_FULL_DISK = """
import importlib.util, resource, signal, sys
limit = int(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
for call in sys.argv[2:]:
    name, *args = call.split('|')
    spec = importlib.util.spec_from_file_location(name, f'tools/{name}.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    try:
        tool.main(args)
        print(f'{name}: exit 0')
    except SystemExit as exit_info:
        print(f'{name}: {exit_info.code}')
"""


def _no_temporaries(folder):
    assert not [n for n in os.listdir(folder) if '.tmp' in n]


# -- writes: whole or not at all ----------------------------------------------------------------

@pytest.mark.slow
def test_convert_and_deploy_on_a_full_disk_keep_the_old_files(tmp_path, latched_seg):
    config, ckpt = latched_seg
    src = save_released(released_state_dict('ssn', 50, 8), str(tmp_path / 'src.pth'))
    converted, deployed = tmp_path / 'converted.pth', tmp_path / 'deployed.pth'
    convert_checkpoint(src, str(converted))
    deploy_checkpoint(config, ckpt, str(deployed))
    old = {p: p.read_bytes() for p in (converted, deployed, tmp_path / 'deployed.py')}
    limit = min(len(old[converted]), len(old[deployed])) // 4
    run = subprocess.run(
        [sys.executable, '-c', _FULL_DISK, str(limit), f'convert_checkpoint|{src}|{converted}',
         f'deploy|{config}|{ckpt}|{deployed}'],
        capture_output=True, text=True, cwd=ROOT, timeout=300, env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith(('convert_checkpoint:', 'deploy:'))]
    assert len(lines) == 2, run.stdout
    assert lines[0].startswith(f'convert_checkpoint: convert_checkpoint: could not write {converted}')
    assert lines[1].startswith(f'deploy: deploy: could not write {deployed}')
    assert all(line.endswith('nothing was replaced') for line in lines), lines
    assert {p: p.read_bytes() for p in old} == old
    _no_temporaries(tmp_path)


def test_deploy_replaces_neither_file_when_the_second_write_fails(tmp_path, monkeypatch, latched_seg):
    from mmengine.config import Config
    config, ckpt = latched_seg
    out = tmp_path / 'deployed.pth'
    (tmp_path / 'deployed.pth').write_bytes(b'old checkpoint')
    (tmp_path / 'deployed.py').write_text('old config')

    def failing_dump(self, file=None):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(Config, 'dump', failing_dump)
    with pytest.raises(OSError, match='No space left'):
        deploy_checkpoint(config, ckpt, str(out))
    assert out.read_bytes() == b'old checkpoint' and (tmp_path / 'deployed.py').read_text() == 'old config'
    _no_temporaries(tmp_path)


def test_a_failed_rename_restores_the_files_already_replaced(tmp_path, monkeypatch):
    first, second = tmp_path / 'a.pth', tmp_path / 'a.py'
    first.write_text('old a')
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if dst == str(second):
            raise PermissionError(13, 'Permission denied', dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, 'replace', replace)
    with pytest.raises(PermissionError):
        with fileio.replacing(first, second) as (tmp_a, tmp_b):
            open(tmp_a, 'w').write('new a')
            open(tmp_b, 'w').write('new b')
    assert first.read_text() == 'old a' and not second.exists()
    assert calls[:2] == [str(first), str(second)]  # the first was replaced, then put back
    _no_temporaries(tmp_path)


def test_replaced_files_get_the_usual_permissions(tmp_path):
    fileio.save_checkpoint({'w': torch.ones(1)}, tmp_path / 'new.pth')
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / 'new.pth').st_mode & 0o777 == 0o666 & ~umask
    os.chmod(tmp_path / 'new.pth', 0o640)
    fileio.save_checkpoint({'w': torch.zeros(1)}, tmp_path / 'new.pth')
    assert os.stat(tmp_path / 'new.pth').st_mode & 0o777 == 0o640


def test_deploy_refuses_outputs_that_overwrite_each_other_or_an_input(tmp_path, latched_seg):
    config, ckpt = latched_seg
    message = one_line_error('deploy', config, ckpt, tmp_path / 'out' / 'model.py')
    assert 'ends in .py' in message and 'model.pth' in message
    assert not (tmp_path / 'out').exists()
    with pytest.raises(ValueError, match='input checkpoint'):
        deploy_checkpoint(config, ckpt, ckpt)
    with pytest.raises(ValueError, match='input config'):
        deploy_checkpoint(config, ckpt, os.path.splitext(config)[0] + '.pth')
    with pytest.raises(ValueError, match='same file'):
        deploy_checkpoint(config, ckpt, str(tmp_path / 'd.pth'), onnx=str(tmp_path / 'd.py'))


def test_destinations_that_cannot_be_files_get_one_line(tmp_path):
    src = save_released(released_state_dict('ssn', 50, 8), str(tmp_path / 'src.pth'))
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'file').write_text('x')
    assert 'is a folder' in one_line_error('convert_checkpoint', src, tmp_path / 'folder')
    message = one_line_error('convert_checkpoint', src, tmp_path / 'file' / 'dst.pth')
    assert f'{tmp_path / "file"} is a file, not a folder' in message
    with pytest.raises(ValueError, match='is a file, not a folder'):
        fileio.save_checkpoint({}, tmp_path / 'file' / 'deeper' / 'dst.pth')
    assert (tmp_path / 'file').read_text() == 'x'


# -- reads: what is wrong with the file ---------------------------------------------------------

def test_empty_checkpoint_is_named_by_every_tool(tmp_path, latched_seg):
    empty = tmp_path / 'empty.pth'
    empty.touch()
    for tool, args in [('analyze_ratios', [empty, '--out', tmp_path / 'r']),
                       ('analyze_ratios', [latched_seg[0], empty, '--out', tmp_path / 'r']),
                       ('deploy', [latched_seg[0], empty, tmp_path / 'd.pth']),
                       ('convert_checkpoint', [empty, tmp_path / 'c.pth'])]:
        assert f'{empty} is empty (0 bytes)' in one_line_error(tool, *args)
    assert os.listdir(tmp_path) == ['empty.pth']


class _Malicious:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def test_malicious_pickle_is_named_and_nothing_runs(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'x': _Malicious(marker)}, path)
    with pytest.raises(ValueError) as err:
        fileio.read_state_dict(str(path))
    message = str(err.value)
    assert 'disallowed Python global (posix.system)' in message and 'nothing was loaded' in message
    assert 'corrupted' not in message
    message = one_line_error('convert_checkpoint', path, tmp_path / 'out.pth')
    assert 'posix.system' in message and 'nothing was loaded' in message
    assert not marker.exists() and not (tmp_path / 'out.pth').exists()


def test_nan_or_inf_in_a_source_checkpoint_is_refused_naming_the_keys(tmp_path):
    sd = released_state_dict('ssn', 50, 8)
    sd['layer1.0.conv1.weight'][0, 0, 0, 0] = float('nan')
    sd['layer2.0.sn2.running_var'][0, 3, 0] = float('inf')
    src = save_released(sd, str(tmp_path / 'src.pth'))
    with pytest.raises(ValueError, match=r'NaN or inf in layer1\.0\.conv1\.weight, '
                                         r'layer2\.0\.sn2\.running_var;'):
        convert_checkpoint(src, str(tmp_path / 'dst.pth'))
    assert not (tmp_path / 'dst.pth').exists()


def test_entries_that_are_not_tensors_are_refused_not_dropped(tmp_path):
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {'a.weight': torch.ones(1), 'a.note': 'text', 'a.n': 3}}, path)
    with pytest.raises(ValueError, match=r'not tensors: a\.n, a\.note'):
        fileio.read_state_dict(str(path))
