"""Ratio analysis (records, JSON, PNG, summary, CLI) and the monitoring hook."""
import glob
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn

from ssn_plugins import SparseSwitchNorm2d, SwitchNorm2d, is_switch_norm
from ssn_plugins.analysis import (collect_ratios, format_summary, ratios_from_checkpoint,
                                  ratios_from_state_dict, switch_norm_stats, write_ratios)
from ssn_plugins.fileio import read_state_dict
from ssn_reference import ref_sparsestmax
from tool_loader import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mixed_model():
    """SSN layers in every state (latched, sparse, dense, both rules), a K=2 one, and SN."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), SparseSwitchNorm2d(4),                 # latched below
        nn.Conv2d(4, 4, 1), SparseSwitchNorm2d(4),                 # radius 0.3, not latched
        SparseSwitchNorm2d(4, mode='official'),                    # sparse logits, radius 0.5
        SparseSwitchNorm2d(4, normalizers=('in', 'ln')),           # K=2
        SwitchNorm2d(4))
    with torch.no_grad():
        for m in model.modules():
            if is_switch_norm(m):
                m.mean_weight.copy_(torch.randn(m.mean_weight.shape))
                m.var_weight.copy_(torch.randn(m.var_weight.shape))
        model[4].mean_weight.copy_(torch.tensor([0.6, 0.3, -1.0]))  # sparsemax lies on an edge
    model[1].set_radius(1.0)
    model[1].train()(torch.randn(2, 4, 3, 3))                      # latches both choices
    model[3].set_radius(0.3)
    model[4].set_radius(0.5)
    model[5].set_radius(0.2)
    return model.eval()


def _layers(model):
    return [(n, m) for n, m in model.named_modules() if is_switch_norm(m)]


def test_json_equals_the_layers_ratios(tmp_path):
    model = _mixed_model()
    assert model[1].latched and not model[3].latched
    json_path, png_path = write_ratios(collect_ratios(model), str(tmp_path))
    assert json_path == str(tmp_path / 'ratios.json') and png_path == str(tmp_path / 'ratios.png')
    with open(json_path) as f:
        records = json.load(f)
    layers = _layers(model)
    assert [r['name'] for r in records] == [n for n, _ in layers]   # network order
    for record, (name, layer) in zip(records, layers):
        mean, var = layer.ratios()
        assert record['mean'] == pytest.approx(mean.tolist(), abs=1e-7)
        assert record['var'] == pytest.approx(var.tolist(), abs=1e-7)
        assert record['normalizers'] == list(layer.normalizers)
        assert record['latched'] == bool(getattr(layer, 'latched', False))
        assert record['type'] == ('SSN' if isinstance(layer, SparseSwitchNorm2d) else 'SN')
    assert records[0]['latched'] and records[0]['mean'] in ([1, 0, 0], [0, 1, 0], [0, 0, 1])
    assert records[-1]['mean'] == pytest.approx(F.softmax(model[6].mean_weight, 0).tolist())


def test_batched_stats_equal_the_layers_ratios():
    """The monitor's batched summary equals the entropies of every layer's own ratios()."""
    model = _mixed_model()
    model[3].mean_choice.fill_(2)  # mean latched, variance not: only half of the layer is one-hot
    records = collect_ratios(model)

    def entropy(p):
        return -sum(x * math.log(x) for x in p if x > 0)

    sparse = [r for r in records if r['type'] == 'SSN']
    expected = {
        'ssn_entropy': sum(0.5 * (entropy(r['mean']) + entropy(r['var'])) for r in records) / len(records),
        'ssn_latched': sum(r['latched'] for r in sparse) / len(sparse),
        'ssn_radius': (1.0 + 0.3 + 0.5 + 0.2) / 4,
    }
    assert records[1]['mean'] == [0, 0, 1] and not records[1]['latched']
    assert switch_norm_stats(model) == pytest.approx(expected, abs=1e-6)
    assert switch_norm_stats(nn.Sequential(nn.Conv2d(1, 1, 1))) == {}


def test_png_is_a_real_figure(tmp_path):
    import matplotlib.image as mpimg

    _, png_path = write_ratios(collect_ratios(_mixed_model()), str(tmp_path))
    image = mpimg.imread(png_path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] >= 400 and image.shape[1] >= 600
    assert image[..., :3].std() > 0.05  # bars, not a blank canvas


@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_checkpoint_alone_gives_the_same_ratios(tmp_path, prefix):
    model = _mixed_model()
    state = {prefix + k: v for k, v in model.state_dict().items()}
    path = str(tmp_path / 'ckpt.pth')
    torch.save({'meta': {'iter': 3}, 'state_dict': state}, path)
    expected = collect_ratios(model)
    got = ratios_from_state_dict(read_state_dict(path))
    # the 'official' layer is only reproduced when the rule is given
    official = ratios_from_state_dict(read_state_dict(path), mode='official')
    for i, (e, g, o) in enumerate(zip(expected, got, official)):
        assert (g['name'], g['type'], g['normalizers'], g['latched']) == \
            (e['name'], e['type'], e['normalizers'], e['latched'])
        mine = o if i == 2 else g
        assert mine['mean'] == pytest.approx(e['mean'], abs=1e-6)
        assert mine['var'] == pytest.approx(e['var'], abs=1e-6)
    assert got[2]['mean'] != pytest.approx(expected[2]['mean'], abs=1e-3)  # the rules differ here


def test_released_ssn_layout():
    """Released SSN files: (1,)-shaped radius, mean_fixed/var_fixed flags, one-hot logits."""
    state = {
        'sn1.weight': torch.ones(1, 4, 1, 1), 'sn1.mean_weight': torch.tensor([0., 0., 1.]),
        'sn1.var_weight': torch.tensor([0., 1., 0.]), 'sn1.running_mean': torch.zeros(1, 4, 1),
        'sn1.running_var': torch.ones(1, 4, 1), 'sn1.mean_fixed': torch.tensor([1]),
        'sn1.var_fixed': torch.tensor([1]), 'sn1.radius': torch.tensor([1.0]),
        'layer1.0.sn1.mean_weight': torch.tensor([1.0, 0.5, 0.2]),
        'layer1.0.sn1.var_weight': torch.tensor([0.3, 0.5, 0.2]),
        'layer1.0.sn1.running_mean': torch.zeros(1, 4, 1),
        'layer1.0.sn1.mean_fixed': torch.tensor([0]), 'layer1.0.sn1.var_fixed': torch.tensor([0]),
        'layer1.0.sn1.radius': torch.tensor([0.4]),
    }
    first, second = ratios_from_state_dict(state)
    assert first['latched'] and first['mean'] == [0, 0, 1] and first['var'] == [0, 1, 0]
    assert not second['latched']
    # the float64 reference, written from the definition (not the package's sparsestmax)
    assert second['mean'] == pytest.approx(ref_sparsestmax([1.0, 0.5, 0.2], 0.4), abs=1e-6)
    assert second['var'] == pytest.approx(ref_sparsestmax([0.3, 0.5, 0.2], 0.4), abs=1e-6)


def test_released_sn_layout_uses_softmax_and_two_normalizers():
    logits = torch.tensor([0.3, -0.2])
    state = {'sn1.mean_weight': logits, 'sn1.var_weight': logits}  # (8,1) models: IN and LN only
    (record,) = ratios_from_state_dict(state)
    assert record['type'] == 'SN' and record['normalizers'] == ['in', 'ln']
    assert record['mean'] == pytest.approx(F.softmax(logits.double(), 0).tolist())


def test_ambiguous_or_empty_checkpoints_raise(tmp_path):
    state = {'sn1.mean_weight': torch.ones(2), 'sn1.var_weight': torch.ones(2),
             'sn1.running_mean': torch.zeros(4), 'sn1.running_var': torch.ones(4)}
    with pytest.raises(ValueError, match='CONFIG CHECKPOINT'):
        ratios_from_state_dict(state)
    with pytest.raises(ValueError, match='no SN/SSN layer'):
        ratios_from_state_dict({'conv.weight': torch.ones(1)})
    with pytest.raises(ValueError, match='mode'):
        ratios_from_state_dict({}, mode='fast')
    with pytest.raises(FileNotFoundError):
        read_state_dict(str(tmp_path / 'missing.pth'))


def test_pickled_objects_are_refused(tmp_path):
    path = str(tmp_path / 'unsafe.pth')
    torch.save({'state_dict': {}, 'meta': {'obj': _Unsafe()}}, path)
    with pytest.raises(ValueError, match='weights_only'):
        read_state_dict(path)


class _Unsafe:
    pass


def test_summary_counts_the_choices():
    records = [
        dict(name='a', type='SSN', normalizers=['in', 'ln', 'bn'], mean=[0, 0, 1], var=[0, 0, 1],
             latched=True),
        dict(name='b', type='SSN', normalizers=['in', 'ln', 'bn'], mean=[1, 0, 0], var=[0, 0, 1],
             latched=True),
        dict(name='c', type='SSN', normalizers=['in', 'ln'], mean=[0.2, 0.8], var=[0.6, 0.4],
             latched=False),
    ]
    text = format_summary(records)
    assert '3 layers, 2 latched' in text
    assert 'mean chosen: IN 1, LN 1, BN 1' in text
    assert 'var  chosen: IN 1, LN 0, BN 2' in text
    row_c = next(line for line in text.splitlines() if line.startswith('c '))
    assert '0.20 0.80    -' in row_c and row_c.rstrip().endswith('no')


def test_cli_with_checkpoint_alone(tmp_path, capsys):
    model = _mixed_model()
    ckpt = str(tmp_path / 'model.pth')
    torch.save(model.state_dict(), ckpt)
    load_tool('analyze_ratios').main([ckpt, '--out', str(tmp_path / 'out')])
    out = capsys.readouterr().out
    assert 'mean chosen:' in out and 'var  chosen:' in out
    with open(tmp_path / 'out' / 'ratios.json') as f:
        assert [r['name'] for r in json.load(f)] == [n for n, _ in _layers(model)]
    assert os.path.getsize(tmp_path / 'out' / 'ratios.png') > 1000


@pytest.mark.slow
def test_cli_with_config_and_checkpoint(tmp_path):
    from mmengine.registry import MODELS, init_default_scope

    config = tmp_path / 'tiny.py'
    base = os.path.join(ROOT, 'configs', 'mmseg', 'pspnet_r50-ssn-d8_4xb2-40k_cityscapes-512x1024.py')
    config.write_text(f"_base_ = {base!r}\n"
                      "model = dict(backbone=dict(depth=18, init_cfg=None),\n"
                      "             decode_head=dict(in_channels=512, channels=8),\n"
                      "             auxiliary_head=dict(in_channels=256, channels=8))\n")
    from mmengine.config import Config
    cfg = Config.fromfile(str(config))
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    layers = _layers(model)
    with torch.no_grad():
        for _, m in layers:
            m.mean_weight.copy_(torch.randn(3))
            m.set_radius(0.6)
    ckpt = str(tmp_path / 'seg.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    load_tool('analyze_ratios').main([str(config), ckpt, '--out', str(tmp_path / 'out')])
    with open(tmp_path / 'out' / 'ratios.json') as f:
        records = json.load(f)
    assert [r['name'] for r in records] == [n for n, _ in layers]
    for record, (_, layer) in zip(records, layers):
        assert record['mean'] == pytest.approx(layer.ratios()[0].tolist(), abs=1e-7)
    # a checkpoint of another model does not load silently
    torch.save({'state_dict': _mixed_model().state_dict()}, ckpt)
    with pytest.raises(ValueError, match=r'does not fit EncoderDecoder exactly; missing .*backbone\.conv1'):
        ratios_from_checkpoint(ckpt, config=str(config))


class _ToyModel(BaseModel):

    def __init__(self, norm=SparseSwitchNorm2d):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), norm(8), nn.ReLU(),
                                 nn.Conv2d(8, 8, 3, padding=1), norm(8))

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.net(torch.stack(inputs))
        return {'loss': (out - 0.5).square().mean()} if mode == 'loss' else out


def _run(tmp_path, custom_hooks, max_iters=6, norm=SparseSwitchNorm2d):
    dataset = [dict(inputs=torch.randn(3, 6, 6)) for _ in range(8)]
    name = f'monitor_{len(os.listdir(tmp_path))}'  # one work dir, message hub and log per run
    runner = Runner(
        model=_ToyModel(norm), work_dir=str(tmp_path / name),
        train_dataloader=dict(dataset=dataset, batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False)),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        custom_hooks=custom_hooks,
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='CheckpointHook', interval=max_iters, by_epoch=False)),
        visualizer=dict(type='Visualizer', vis_backends=[dict(type='LocalVisBackend')]),
        log_processor=dict(by_epoch=False), default_scope='mmengine',
        experiment_name=name)
    runner.train()
    return runner


def _scalars(runner):
    (path,) = glob.glob(os.path.join(runner.log_dir, 'vis_data', 'scalars.json'))
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_monitor_values_reach_log_and_visualizer(tmp_path):
    runner = _run(tmp_path, [dict(type='SSNRadiusHook'), dict(type='SwitchNormMonitorHook'),
                             dict(type='SafeCheckpointHook')])
    rows = _scalars(runner)
    assert [r['step'] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all({'ssn_radius', 'ssn_latched', 'ssn_entropy'} <= r.keys() for r in rows)
    assert [r['ssn_radius'] for r in rows] == pytest.approx([i / 6 for i in range(6)])
    # radius 0: sparsemax of near-equal logits, close to uniform; radius 5/6 > sqrt(2/3): one-hot
    assert 0.8 * math.log(3) < rows[0]['ssn_entropy'] <= math.log(3) + 1e-6
    assert rows[0]['ssn_latched'] == 0.0
    assert rows[-1]['ssn_latched'] == 1.0 and rows[-1]['ssn_entropy'] == pytest.approx(0.0, abs=1e-9)
    assert switch_norm_stats(runner.model) == pytest.approx(
        {k: rows[-1][k] for k in ('ssn_radius', 'ssn_latched', 'ssn_entropy')})
    with open(os.path.join(runner.log_dir, os.path.basename(runner.log_dir) + '.log')) as f:
        log = f.read()
    assert 'ssn_latched: 1.0000' in log and 'ssn_entropy:' in log
    from ssn_plugins import __version__
    assert f'ssn_plugins {__version__} (python ' in log  # the version at training start
    # SSNRadiusHook logs the radius; the monitor does not log it a second time
    assert len(runner.message_hub.get_scalar('train/ssn_radius').data[0]) == 6
    # the run's checkpoint feeds the analysis: every layer latched, one-hot
    records = ratios_from_checkpoint(os.path.join(runner.work_dir, 'iter_6.pth'))
    assert len(records) == 2 and all(r['latched'] for r in records)
    assert records == collect_ratios(runner.model)


def test_monitor_alone_logs_the_radius_and_sn_entropy(tmp_path):
    runner = _run(tmp_path, [dict(type='SwitchNormMonitorHook')], max_iters=2)
    rows = _scalars(runner)
    assert [r['ssn_radius'] for r in rows] == [0.0, 0.0]
    runner = _run(tmp_path, [dict(type='SwitchNormMonitorHook')], max_iters=2, norm=SwitchNorm2d)
    rows = _scalars(runner)
    assert all('ssn_entropy' in r and 'ssn_latched' not in r for r in rows)


def test_monitor_rejects_a_model_without_switch_norm(tmp_path):
    with pytest.raises(ValueError, match='no SN/SSN layer'):
        _run(tmp_path, [dict(type='SwitchNormMonitorHook')], max_iters=1, norm=nn.BatchNorm2d)
    from ssn_plugins import SwitchNormMonitorHook
    with pytest.raises(ValueError, match='interval'):
        SwitchNormMonitorHook(interval=0)
