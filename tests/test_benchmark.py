"""tools/benchmark.py's measurements: tiny shapes only (speed itself is never asserted)."""
import json
import os
import sys

from ssn_plugins import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_swap_norm_replaces_every_switch_norm_cfg():
    cfg = dict(backbone=dict(norm_cfg=dict(type='SSN')), heads=[dict(norm_cfg=dict(type='SN'))],
               neck=dict(norm_cfg=dict(type='GN', num_groups=4)))
    swapped = benchmark.swap_norm(cfg, dict(type='BN'))
    assert swapped['backbone']['norm_cfg'] == dict(type='BN')
    assert swapped['heads'][0]['norm_cfg'] == dict(type='BN')
    assert swapped['neck']['norm_cfg'] == dict(type='GN', num_groups=4)
    assert cfg['backbone']['norm_cfg'] == dict(type='SSN')  # a copy


def test_layer_benchmark_records_and_memory(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import benchmark as tool  # tools/benchmark.py
    sys.path.pop(0)
    out = tmp_path / 'bench.json'
    records = benchmark.layer_benchmark(batches=(2, ), shapes=[(8, 16)], repeats=2,
                                        latched=('bn', 'in-bn'))
    kinds = set(records[0]['time_ms'])
    assert kinds == {'bn', 'sn', 'ssn_dense', 'ssn_latched_bn', 'ssn_latched_in-bn'}
    # x (2*8*256 floats) dominates what autograd keeps: all kinds within 10% of BN2d's bytes
    memory = records[0]['saved_bytes']
    assert all(v <= 1.1 * memory['bn'] for v in memory.values())
    table = benchmark.format_tables(dict(layers=records))
    assert '| sn |' in table and 'ssn_latched_in-bn' in table
    tool.main(['--out', str(out), '--skip-networks', '--batches', '2', '--repeats', '1',
               '--threads', '1', '--shapes', '8x4'])
    assert json.loads(out.read_text())['layers'][0]['shape'] == [2, 8, 4, 4]
