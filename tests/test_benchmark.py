"""tools/benchmark.py's measurements: tiny shapes only (speed itself is never asserted)."""
import json
import os
import sys

import pytest
import torch

from lab import benchmark, profiling
from ssn_plugins import SparseSwitchNorm2d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_swap_norm_replaces_every_switch_norm_cfg():
    cfg = dict(backbone=dict(norm_cfg=dict(type='SSN')), heads=[dict(norm_cfg=dict(type='SN'))],
               neck=dict(norm_cfg=dict(type='GN', num_groups=4)))
    swapped = benchmark.swap_norm(cfg, dict(type='BN'))
    assert swapped['backbone']['norm_cfg'] == dict(type='BN')
    assert swapped['heads'][0]['norm_cfg'] == dict(type='BN')
    assert swapped['neck']['norm_cfg'] == dict(type='GN', num_groups=4)
    assert cfg['backbone']['norm_cfg'] == dict(type='SSN')  # a copy


def _tool():
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import benchmark as tool  # tools/benchmark.py
    sys.path.pop(0)
    return tool


KINDS = {'bn', 'sn', 'ssn_dense', 'ssn_half', 'ssn_latched_bn', 'ssn_latched_in-bn'}


def test_latch_layer_sets_both_or_one_choice():
    both = benchmark.latch_layer(SparseSwitchNorm2d(4), 'in', 'bn')
    assert (int(both.mean_choice), int(both.var_choice)) == (0, 2)
    half = benchmark.latch_layer(SparseSwitchNorm2d(4), 'bn', -1)
    assert (int(half.mean_choice), int(half.var_choice)) == (2, -1)


def test_layer_benchmark_records_and_memory(tmp_path):
    tool = _tool()
    out = tmp_path / 'bench.json'
    records = benchmark.layer_benchmark(batches=(2, ), shapes=[(8, 16)], repeats=2,
                                        latched=('bn', 'in-bn'))
    assert set(records[0]['time_ms']) == KINDS
    # x (2*8*256 floats) dominates what autograd keeps: all kinds within 10% of BN2d's bytes
    memory = records[0]['saved_bytes']
    assert all(v <= 1.1 * memory['bn'] for v in memory.values())
    table = benchmark.format_tables(dict(layers=records))
    assert '| sn |' in table and 'ssn_latched_in-bn' in table
    tool.main(['--out', str(out), '--skip-networks', '--skip-counts', '--batches', '2',
               '--repeats', '1', '--threads', '1', '--shapes', '8x4'])
    assert json.loads(out.read_text())['layers'][0]['shape'] == [2, 8, 4, 4]


@pytest.mark.slow
def test_counts_columns(tmp_path):
    counts = benchmark.count_benchmark(2, (8, 4), ('bn', 'in-bn'))
    assert counts['shape'] == [2, 8, 4, 4] and set(counts['kinds']) == KINDS
    bn = counts['kinds']['bn']
    # BatchNorm2d's own count, measured here (it differs between torch versions)
    _, bn_train = profiling.train_step_counts(torch.nn.BatchNorm2d(8), torch.randn(2, 8, 4, 4))
    assert bn == dict(train_reads=0, train_kernels=bn_train, eval_reads=0, eval_kernels=1,
                      train_breaks=0, eval_breaks=0, train_breaks_dynamic=0, eval_breaks_dynamic=0)
    for kind, c in counts['kinds'].items():
        assert all(isinstance(v, int) and v >= 0 for v in c.values()), kind
        assert c['train_kernels'] >= c['eval_kernels'] >= 1, kind
    table = benchmark.format_tables(dict(counts=counts))
    assert 'kernels train (/ BN2d)' in table
    assert f'| bn | 0 / 0 | {bn_train} (1.0x) | 1 | 0 / 0 (0 / 0) |' in table
    out = tmp_path / 'bench.json'
    _tool().main(['--out', str(out), '--skip-networks', '--skip-layers', '--latched', 'bn',
                  '--threads', '1', '--count-shape', '8x4'])
    result = json.loads(out.read_text())
    assert set(result['counts']['kinds']) == {'bn', 'sn', 'ssn_dense', 'ssn_half', 'ssn_latched_bn'}
    assert 'layers' not in result


@pytest.mark.slow
def test_compile_mode_times_compiled_layers(tmp_path):
    # aot_eager: dynamo and AOTAutograd as with inductor, without code generation (fast)
    records = benchmark.compile_benchmark((2, ), [(8, 4)], repeats=1, latched=('bn', ),
                                          backend='aot_eager')
    assert records[0]['shape'] == [2, 8, 4, 4] and records[0]['backend'] == 'aot_eager'
    assert set(records[0]['time_ms']) == {'bn'} | {f'{k}_compiled' for k in KINDS - {
        'ssn_latched_in-bn'}}
    table = benchmark.format_tables(dict(compiled=records))
    assert 'time / BN2d compiled' in table and '| ssn_dense_compiled |' in table
    out = tmp_path / 'bench.json'
    _tool().main(['--out', str(out), '--skip-networks', '--skip-layers', '--skip-counts',
                  '--compile', '--compile-backend', 'aot_eager', '--batches', '2', '--repeats', '1',
                  '--threads', '1', '--shapes', '8x4', '--latched', 'bn'])
    assert json.loads(out.read_text())['compiled'][0]['backend'] == 'aot_eager'
