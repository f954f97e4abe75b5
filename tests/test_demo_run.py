"""The README's main command, `make demo` (tools/demo.py), end to end on a tiny schedule."""
import glob
import json
import math
import os.path as osp
import runpy
import sys

import matplotlib.image
import pytest

DEMO = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools', 'demo.py')


@pytest.mark.slow
def test_demo_main_job_runs_end_to_end(tmp_path, monkeypatch, capsys):
    out = tmp_path / 'demo'
    monkeypatch.setattr(sys, 'argv', ['tools/demo.py', '--out', str(out), '--iters', '4', '--num-train', '8',
                                      '--num-val', '4', '--size', '64', '--workers', '0'])
    runpy.run_path(DEMO, run_name='__main__')
    printed = capsys.readouterr().out
    assert 'Which normalizer each SSN layer selected' in printed and 'bbox_mAP' in printed

    result = json.loads((out / 'results.json').read_text())
    for stage in ('untrained', 'trained'):
        for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
            assert isinstance(result[stage][key], float) and not math.isnan(result[stage][key])
    assert result['ssn_layers'] == 32 and result['iters'] == 4
    records = json.loads((out / 'ratios.json').read_text())
    assert len(records) == 32
    image = matplotlib.image.imread(out / 'ratios.png')
    assert image.shape[0] > 200 and image.shape[1] > 200

    # a readable log: one line on the logits' optimizer options, not one per parameter (issue 12 §6)
    logs = ''.join(open(p).read() for p in glob.glob(str(out / 'work_dir' / '*' / '*.log')))
    assert logs.count('param groups: 64 (mean_weight, var_weight) at lr x1, weight_decay x0;') == 1
    assert 'paramwise_options' not in logs
