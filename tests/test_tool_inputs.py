"""Damaged inputs of the tools get one line naming the file or argument and the fix, before any work.

Probed as a user meets them: ``--resume`` with an empty or binary ``last_checkpoint`` in the work
dir, a damaged ``study.json`` of the small-batch study (which must be refused before any training),
``make_demo_data --seed -1`` (which must not leave a half-made data root).
"""
import json
import os

import pytest

import lab.study as study
from tool_loader import load_tool, one_line_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG_CFG = os.path.join(ROOT, 'configs', 'demo', 'fcn_r18-ssn_demo.py')


# -- --resume with a broken last_checkpoint -------------------------------------------------------

@pytest.mark.parametrize('content, problem', [
    (b'', 'is empty'), (b'  \n', 'is empty'), (b'\x80\x02\xff\xfe\x00binary', 'is not text'),
    (b'work/iter_9.pth\n', "names 'work/iter_9.pth', which is not a file")],
    ids=['empty', 'blank', 'binary', 'missing'])
def test_resume_names_a_broken_last_checkpoint(tmp_path, monkeypatch, content, problem):
    monkeypatch.chdir(tmp_path)
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'last_checkpoint').write_bytes(content)
    message = one_line_error('train', SEG_CFG, '--work-dir', work, '--resume')
    last = work / 'last_checkpoint'
    assert message.startswith(f'train: --resume: {last} {problem}'), message
    assert message.endswith(f'delete {last} to start from scratch, or pass --resume PATH')
    assert sorted(os.listdir(work)) == ['last_checkpoint']  # nothing built, nothing written


# -- a damaged study.json is refused before any training ------------------------------------------

_SETTING = study.StudySetting(images=8, num_train=4, num_val=2, size=64)
_GOOD_RECORD = dict(norm='SSN', batch=1, seed=0, mIoU=40.0, shares=None, latched=None)


def _damaged():
    setting = json.dumps({'setting': study.dataclasses.asdict(_SETTING), 'records': []})[:-1]
    with_records = lambda *records: json.dumps(  # noqa: E731
        {'setting': study.dataclasses.asdict(_SETTING), 'records': list(records)}).encode()
    return [
        ('not-json', b'{"setting": ', 'cannot be read as JSON (JSONDecodeError'),
        ('binary', b'\x80\x04\x95\xff', 'cannot be read as JSON (UnicodeDecodeError'),
        ('truncated', setting.encode(), 'cannot be read as JSON (JSONDecodeError'),
        ('a-list', b'[1, 2]', "is not an object with a 'setting' object and a 'records' list"),
        ('no-records', json.dumps({'setting': study.dataclasses.asdict(_SETTING)}).encode(),
         "is not an object with a 'setting' object and a 'records' list"),
        ('record-not-object', with_records(3), 'has record 0 that is a int, not an object'),
        ('record-without-norm', with_records(_GOOD_RECORD, {k: v for k, v in _GOOD_RECORD.items() if k != 'norm'}),
         "has record 1 without 'norm'"),
        ('miou-text', with_records(dict(_GOOD_RECORD, mIoU='high')), "has record 0 whose 'mIoU' is 'high'"),
        ('bad-shares', with_records(dict(_GOOD_RECORD, shares={'mean': {}})),
         "has record 0 whose shares are not {mean, var} x ('IN', 'LN', 'BN') numbers"),
    ]


@pytest.mark.parametrize('name, content, problem', _damaged(), ids=[d[0] for d in _damaged()])
def test_a_damaged_study_json_is_named_before_any_training(tmp_path, monkeypatch, name, content, problem):
    def must_not_run(*args, **kwargs):
        raise AssertionError('work started before study.json was checked')

    monkeypatch.setattr(study, 'make_demo_dataset', must_not_run)
    monkeypatch.setattr(study, 'run_one', must_not_run)
    (tmp_path / 'study.json').write_bytes(content)
    monkeypatch.setattr(study, 'FULL', _SETTING)
    message = one_line_error('small_batch_study', '--out', tmp_path, '--norms', 'SSN', '--batches', '1',
                              '--images', '8', '--num-train', '4', '--num-val', '2', '--size', '64')
    path = tmp_path / 'study.json'
    assert message.startswith(f'small_batch_study: {path} {problem}'), message
    assert message.endswith('it is not a study this tool wrote; remove it to start again, or pass another --out')
    assert (tmp_path / 'study.json').read_bytes() == content
    assert os.listdir(tmp_path) == ['study.json']


def test_study_outputs_that_cannot_be_written_are_named_before_any_training(tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError('work started before the outputs were checked')

    monkeypatch.setattr(study, 'make_demo_dataset', must_not_run)
    monkeypatch.setattr(study, 'run_one', must_not_run)
    (tmp_path / 'file').write_text('x')
    message = one_line_error('small_batch_study', '--out', tmp_path / 'file', '--quick')
    assert message == f'small_batch_study: cannot write {tmp_path / "file" / "study.json"}: ' \
                      f'{tmp_path / "file"} is a file, not a folder'
    (tmp_path / 'out' / 'study.png').mkdir(parents=True)
    message = one_line_error('small_batch_study', '--out', tmp_path / 'out', '--quick')
    assert 'study.png: it is a folder' in message


# -- make_demo_data: arguments named, the root made whole or not at all ---------------------------

@pytest.mark.parametrize('args, named', [(['--seed', '-1'], '--seed'), (['--seed', 'x'], '--seed'),
                                         (['--num-train', '0'], '--num-train'), (['--size', '8'], '--size')])
def test_make_demo_data_names_a_bad_argument_and_makes_nothing(tmp_path, capsys, args, named):
    with pytest.raises(SystemExit) as exit_info:
        load_tool('make_demo_data').main([str(tmp_path / 'data'), *args])
    assert exit_info.value.code == 2  # argparse's usage error
    assert f'error: argument {named}: must be an integer >=' in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_make_demo_dataset_names_a_negative_seed_and_makes_nothing(tmp_path):
    from ssn_plugins.demo import make_demo_dataset
    with pytest.raises(ValueError, match=r'seed must be an int >= 0, got -1'):
        make_demo_dataset(str(tmp_path / 'data'), num_train=2, num_val=1, size=64, seed=-1)
    assert os.listdir(tmp_path) == []
