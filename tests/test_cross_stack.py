"""The oldest and the newest stack compute the same: every layer kind, on the same seeded
inputs and states, run under both stacks' interpreters (torch 2.1 and torch 2.13)."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from ssn_plugins.norm import (SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d,
                              SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, SyncSparseSwitchNorm)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
WORKER = osp.join(REPO, 'tests', 'cross_stack_worker.py')
STACKS = {'newest': osp.join(REPO, '.venv', 'bin', 'python'),
          'oldest': osp.join(REPO, '.venv-oldest', 'bin', 'python')}


def _state(layer, generator, choices=None):
    with torch.no_grad():
        for name, tensor in layer.state_dict().items():
            if name in ('weight', 'bias', 'mean_weight', 'var_weight', 'running_mean'):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            elif name == 'running_var':
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
        if choices is not None:
            layer.latch(*choices)
    return {k: v.clone() for k, v in layer.state_dict().items()}


def _cases():
    generator = torch.Generator().manual_seed(0)
    cases = {}

    def add(name, cls, shape, radius=None, choices=None, collapse=False, **options):
        layer = cls(shape[1], **options)
        case = dict(cls=cls.__name__, channels=shape[1], options=options,
                    state=_state(layer, generator, choices), collapse=collapse,
                    x=torch.randn(shape, generator=generator) * 3 + 1,
                    dy=torch.randn(shape, generator=generator))
        if radius is not None:
            case['radius'] = radius
        cases[name] = case

    add('sn2d', SwitchNorm2d, (4, 6, 5, 7))
    add('sn1d', SwitchNorm1d, (4, 6, 9))
    add('sn3d', SwitchNorm3d, (2, 6, 3, 4, 5))
    add('sn2d_momentum_none', SwitchNorm2d, (4, 6, 5, 5), momentum=None)
    add('sn2d_in_ln', SwitchNorm2d, (1, 6, 5, 5), normalizers=('in', 'ln'))
    add('ssn2d_free', SparseSwitchNorm2d, (4, 6, 5, 7), radius=0.3)
    add('ssn2d_official', SparseSwitchNorm2d, (4, 6, 5, 7), radius=0.5, mode='official')
    add('ssn2d_latching', SparseSwitchNorm2d, (4, 6, 5, 7), radius=1.0)
    add('ssn1d', SparseSwitchNorm1d, (4, 6, 9), radius=0.4)
    add('ssn3d', SparseSwitchNorm3d, (2, 6, 3, 4, 5), radius=0.4)
    for mean, var in (('bn', 'bn'), ('in', 'in'), ('ln', 'ln'), ('in', 'bn'), ('bn', 'ln')):
        add(f'ssn2d_latched_{mean}_{var}', SparseSwitchNorm2d, (4, 6, 5, 7), choices=(mean, var),
            collapse=True)
    add('ssn2d_pooled_1x1', SparseSwitchNorm2d, (4, 6, 1, 1), radius=0.2)
    add('syncssn_one_process', SyncSparseSwitchNorm, (4, 6, 5, 7), radius=0.3)
    return cases


def _run(python, cases_file, out_file):
    proc = subprocess.run([python, WORKER, cases_file, out_file], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out_file, weights_only=True)


@pytest.mark.slow
def test_both_stacks_give_the_same_outputs_gradients_and_state(tmp_path):
    here = osp.realpath(sys.prefix)  # venvs share the base interpreter: tell them by prefix
    others = {name: python for name, python in STACKS.items()
              if os.access(python, os.X_OK) and osp.realpath(osp.dirname(osp.dirname(python))) != here}
    if not others:
        pytest.skip('the other stack is not installed here (make venv STACK=oldest / newest); '
                    'CI installs both and runs this test on the second')
    cases = _cases()
    cases_file = str(tmp_path / 'cases.pt')
    torch.save(cases, cases_file)
    mine = _run(sys.executable, cases_file, str(tmp_path / 'mine.pt'))
    assert mine.pop('torch') == str(torch.__version__)
    for stack, python in others.items():
        theirs = _run(python, cases_file, str(tmp_path / f'{stack}.pt'))
        their_torch = theirs.pop('torch')
        assert their_torch != torch.__version__, 'the same torch on both sides proves nothing'
        assert sorted(theirs) == sorted(mine) == sorted(cases)
        for name, got in mine.items():
            assert sorted(theirs[name]) == sorted(got), name
            for key, value in got.items():
                other = theirs[name][key]
                if value is None or other is None:
                    assert value is None and other is None, (name, key)
                    continue
                torch.testing.assert_close(value, other, rtol=1e-5, atol=1e-5,
                                           msg=lambda m: f'{name}.{key}, torch {torch.__version__} '
                                                         f'vs {their_torch}: {m}')
    # the cases exercise latching and collapse, not only the general path
    assert mine['ssn2d_latching']['choices'].min() >= 0
    assert 'collapsed_y' in mine['ssn2d_latched_in_bn']
