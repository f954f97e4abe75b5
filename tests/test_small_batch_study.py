"""The small-batch study (tools/small_batch_study.py) and the varied shapes data it trains on."""
import dataclasses
import json
import math
import os.path as osp
import runpy
import sys

import matplotlib.image
import numpy as np
import pytest
import torch

from lab.study import (QUICK, StudySetting, choice_shares, format_table, gn_groups, run_study,
                       study_config, summarize)
from ssn_plugins.demo import make_demo_dataset

STUDY = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools', 'small_batch_study.py')
TINY = StudySetting(images=4, num_train=8, num_val=4, size=32)
# pixel sums of the two train images of make_demo_dataset(num_train=2, num_val=1, size=64, seed=3),
# as rendered before the ``varied`` option existed
GOLDEN_SUMS = [1259011.0, 1704010.0]


def _images(root, split='train'):
    import cv2
    names = sorted(json.load(open(osp.join(root, 'annotations', f'instances_{split}.json')))['images'],
                   key=lambda i: i['id'])
    return np.stack([cv2.imread(osp.join(root, 'images', split, i['file_name']))[:, :, ::-1]
                     for i in names]).astype(np.float64)


def test_default_shapes_unchanged(tmp_path):
    """The plain data set (the demo's, behind the README's numbers) is what it always was."""
    make_demo_dataset(str(tmp_path), num_train=2, num_val=1, size=64, seed=3)
    img = _images(str(tmp_path))
    assert img.reshape(2, -1).sum(1).tolist() == pytest.approx(GOLDEN_SUMS, abs=0)
    assert 'varied' not in json.load(open(tmp_path / 'meta.json'))


def test_varied_shapes_vary_per_image(tmp_path):
    """Brightness and contrast differ from image to image; textures and clutter fill the background."""
    import cv2
    plain, varied = str(tmp_path / 'plain'), str(tmp_path / 'varied')
    make_demo_dataset(plain, num_train=40, num_val=2, size=64, seed=0)
    make_demo_dataset(varied, num_train=40, num_val=2, size=64, seed=0, varied=True)
    assert json.load(open(osp.join(varied, 'meta.json')))['varied'] is True
    with pytest.raises(ValueError, match='already holds'):  # a plain set is not silently reused
        make_demo_dataset(varied, num_train=40, num_val=2, size=64, seed=0)
    stats = {}
    for name, root in (('plain', plain), ('varied', varied)):
        img = _images(root)
        background = [_label(root, i) == 0 for i in range(len(img))]
        brightness, contrast = img.mean((1, 2, 3)), img.std((1, 2, 3))
        # texture: background detail between the pixel noise (sigma 1) and the gradient (sigma 8)
        texture = np.mean([np.abs(cv2.GaussianBlur(x, (0, 0), 1.0) - cv2.GaussianBlur(x, (0, 0), 8.0))[b].mean()
                           for x, b in zip(img, background)])
        stats[name] = np.array([brightness.std(), contrast.std() / contrast.mean(), texture])
    assert (stats['varied'] > 1.5 * stats['plain']).all(), stats


def _label(root, i, split='train'):
    import cv2
    return cv2.imread(osp.join(root, 'masks', split, f'{i:06d}.png'), cv2.IMREAD_UNCHANGED)


def test_run_configs():
    """Same images seen, lr linear in the batch, the norm everywhere, SSN's recipe only where it applies."""
    cfgs = {(n, b): study_config(n, b, 0, QUICK, '/data', '/work') for n in ('BN', 'GN', 'SSN') for b in (1, 8)}
    for (norm, batch), cfg in cfgs.items():
        assert cfg.train_cfg.max_iters * batch == QUICK.images
        assert cfg.train_dataloader.batch_size == batch
        assert cfg.optim_wrapper.optimizer.lr == pytest.approx(QUICK.lr * batch / 8)
        assert cfg.param_scheduler[0].end == cfg.train_cfg.max_iters
        assert cfg.randomness.seed == 0
        for part in ('backbone', 'decode_head', 'auxiliary_head'):
            assert cfg.model[part].norm_cfg.type == norm
        hooks = {h['type'] for h in cfg.custom_hooks}
        assert ('SSNRadiusHook' in hooks) == (norm == 'SSN')
        assert ('SwitchNormLogitClipHook' in hooks) == (norm == 'SSN')
    assert cfgs['GN', 1].model.backbone.norm_cfg.num_groups == gn_groups(QUICK.width) == 16
    assert [gn_groups(w) for w in (32, 64, 16, 48, 40, 7)] == [32, 32, 16, 24, 20, 7]
    for bad, match in ((dict(norm='XN'), 'norm'), (dict(batch=0), 'batch'), (dict(batch=2000), 'images')):
        args = dict(norm='BN', batch=1, seed=0, setting=QUICK, data_root='/d', work_dir='/w')
        args.update(bad)
        with pytest.raises(ValueError, match=match):
            study_config(**args)
    with pytest.raises(ValueError, match='images'):
        StudySetting(images=0)


def test_choice_shares():
    layers = [dict(normalizers=['in', 'ln', 'bn'], mean=[1, 0, 0], var=[0, 0, 1]),
              dict(normalizers=['in', 'ln', 'bn'], mean=[0, 1, 0], var=[0, 0.2, 0.8])]
    assert choice_shares(layers) == {'mean': {'IN': 0.5, 'LN': 0.5, 'BN': 0.0},
                                     'var': {'IN': 0.0, 'LN': 0.0, 'BN': 1.0}}


@pytest.mark.slow
def test_study_cli_end_to_end(tmp_path, monkeypatch, capsys):
    """The command users run, on a tiny setting; a rerun adds runs; each run is independent."""
    out = tmp_path / 'study'
    argv = ['tools/small_batch_study.py', '--out', str(out), '--seeds', '1',
            '--images', '4', '--num-train', '8', '--num-val', '4', '--size', '32',
            '--threads', str(torch.get_num_threads())]  # leave the other tests' threads as they were
    monkeypatch.setattr(sys, 'argv', argv + ['--norms', 'SSN', '--batches', '1', '2'])
    runpy.run_path(STUDY, run_name='__main__')
    first = json.loads((out / 'study.json').read_text())
    assert len(first['records']) == 2
    printed = capsys.readouterr().out
    assert 'val mIoU' in printed and 'SSN: share of layers choosing' in printed

    monkeypatch.setattr(sys, 'argv', argv + ['--norms', 'BN', 'SSN', '--batches', '2'])
    runpy.run_path(STUDY, run_name='__main__')
    records = json.loads((out / 'study.json').read_text())['records']
    assert records[:2] == first['records']  # kept, not rerun
    assert [(r['norm'], r['batch'], r['seed']) for r in records] == [('SSN', 1, 0), ('SSN', 2, 0), ('BN', 2, 0)]
    for r in records:
        assert r['images'] == r['iters'] * r['batch'] == 4
        assert r['lr'] == pytest.approx(TINY.lr * r['batch'] / 8)
        assert 0.0 <= r['mIoU'] <= 100.0 and math.isfinite(r['mIoU'])
        assert r['train_seconds'] > 0
        if r['norm'] == 'SSN':
            for which in ('mean', 'var'):
                assert sum(r['shares'][which].values()) == pytest.approx(1.0)
        else:
            assert r['shares'] is None
    printed = capsys.readouterr().out
    assert all(f'{n:<5}' in printed for n in ('BN', 'SSN')) and '±' in printed
    assert json.load(open(out / 'data' / 'meta.json'))['varied'] is True
    image = matplotlib.image.imread(out / 'study.png')
    assert image.shape[0] > 200 and image.shape[1] > 300

    # SSN at batch 2 alone gives what it gave after SSN at batch 1 in the same process
    alone = run_study(str(tmp_path / 'alone'), TINY, seeds=1, norms=['SSN'], batches=[2], log=lambda s: None)
    before = next(r for r in records if (r['norm'], r['batch']) == ('SSN', 2))
    assert (alone[0]['final_loss'], alone[0]['mIoU']) == (before['final_loss'], before['mIoU'])
    ssn1 = records[0]  # and a different batch gave a different run
    assert ssn1['final_loss'] != before['final_loss']
    with pytest.raises(ValueError, match='another setting'):
        run_study(str(out), dataclasses.replace(TINY, images=8), seeds=1, norms=['BN'], batches=[1])


def test_summary_table():
    """Mean and sample std over seeds, per norm and batch; SSN's choices per batch."""
    shares = {'mean': {'IN': 0.5, 'LN': 0.5, 'BN': 0.0}, 'var': {'IN': 1.0, 'LN': 0.0, 'BN': 0.0}}
    records = [dict(norm='BN', batch=1, seed=0, mIoU=40.0, shares=None),
               dict(norm='BN', batch=1, seed=1, mIoU=44.0, shares=None),
               dict(norm='SSN', batch=1, seed=0, mIoU=60.0, shares=shares)]
    assert summarize(records) == {('BN', 1): (42.0, pytest.approx(2 ** 0.5 * 2), 2), ('SSN', 1): (60.0, 0.0, 1)}
    table = format_table(records)
    assert '42.0 ±  2.8' in table and '60.0 ±  0.0' in table
    assert 'batch 1: mean 0.50 / 0.50 / 0.00   var 1.00 / 0.00 / 0.00' in table
