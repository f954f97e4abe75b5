"""Markdown tables of a benchmark result."""
from __future__ import annotations

import statistics
from typing import Optional

__all__ = ['format_tables']


def _median_ratio(records: list[dict], key: str, kind: str, ref: str = 'bn') -> float:
    return statistics.median(r[key][kind] / r[key][ref] for r in records)


def _count_columns(counts: dict) -> list[str]:
    columns = ['host reads train / eval', 'kernels train (/ BN2d)', 'kernels eval']
    if 'train_breaks' in counts['kinds']['bn']:
        columns.append('graph breaks train / eval (dynamic shapes)')
    return columns


def _count_cells(counts: dict, kind: str) -> list[str]:
    if kind not in counts['kinds']:
        return ['-'] * len(_count_columns(counts))
    c, bn = counts['kinds'][kind], counts['kinds']['bn']
    cells = [f'{c["train_reads"]} / {c["eval_reads"]}',
             f'{c["train_kernels"]} ({c["train_kernels"] / bn["train_kernels"]:.1f}x)',
             f'{c["eval_kernels"]}']
    if 'train_breaks' in c:
        cells.append(f'{c["train_breaks"]} / {c["eval_breaks"]} '
                     f'({c["train_breaks_dynamic"]} / {c["eval_breaks_dynamic"]})')
    return cells


def _layer_tables(layers: Optional[list[dict]], counts: Optional[dict]) -> list[str]:
    """Per kind: time and memory ratios to BN2d, host reads, kernels, graph breaks."""
    kinds = list(layers[0]['time_ms']) if layers else list(counts['kinds'])
    header = ['layer (train fwd+bwd)']
    if layers:
        header += ['time / BN2d (median)', 'time / BN2d (max)', 'saved bytes / BN2d']
    if counts:
        header += _count_columns(counts)
    lines = ['| ' + ' | '.join(header) + ' |', '|---' * len(header) + '|']
    for kind in kinds:
        cells = [kind]
        if layers:
            worst = max(r['time_ms'][kind] / r['time_ms']['bn'] for r in layers)
            cells += [f'{_median_ratio(layers, "time_ms", kind):.2f}x', f'{worst:.2f}x',
                      f'{_median_ratio(layers, "saved_bytes", kind):.2f}x']
        if counts:
            cells += _count_cells(counts, kind)
        lines.append('| ' + ' | '.join(cells) + ' |')
    if counts:
        lines += ['', f'Counts at {tuple(counts["shape"])}: host reads and kernel-launching ATen '
                  'ops of one steady-state step (lab.profiling); graph breaks of the '
                  'forward (torch._dynamo.explain).']
    lines.append('')
    return lines


def _shape_table(records: list[dict], title: str) -> list[str]:
    kinds = list(records[0]['time_ms'])
    lines = [f'| {title} | ' + ' | '.join(kinds) + ' (ms) |', '|---' * (len(kinds) + 1) + '|']
    for r in records:
        lines.append(f'| {tuple(r["shape"])} | ' + ' | '.join(
            f'{r["time_ms"][k]:.2f}' for k in kinds) + ' |')
    lines.append('')
    return lines


def _compiled_tables(records: list[dict]) -> list[str]:
    """Compiled kinds against eager and compiled BN2d (medians over shapes)."""
    lines = [f'| layer, torch.compile ({records[0]["backend"]}), train fwd+bwd | '
             'time / BN2d eager | time / BN2d compiled |', '|---|---|---|']
    for kind in records[0]['time_ms']:
        if kind != 'bn':
            lines.append(f'| {kind} | {_median_ratio(records, "time_ms", kind):.2f}x | '
                         f'{_median_ratio(records, "time_ms", kind, "bn_compiled"):.2f}x |')
    lines.append('')
    return lines + _shape_table(records, 'shape (compiled)')


def format_tables(result: dict) -> str:
    """Markdown tables of a benchmark result (ratios are medians over shapes)."""
    lines = []
    layers, counts = result.get('layers'), result.get('counts')
    if layers or counts:
        lines += _layer_tables(layers, counts)
    if layers:
        lines += _shape_table(layers, 'shape')
    if result.get('compiled'):
        lines += _compiled_tables(result['compiled'])
    for net in result.get('networks', []):
        bn = net['latency_ms']['bn_fused']
        lines += [f'| {net["config"]} {tuple(net["input"])} inference | ms | / BN fused |',
                  '|---|---|---|']
        lines += [f'| {k} | {v:.1f} | {v / bn:.3f}x |' for k, v in net['latency_ms'].items()]
        lines.append('')
    train = result.get('train_iteration')
    if train:
        bn = train['iteration_ms']['bn']
        lines += [f'| {train["config"]} {tuple(train["input"])} train iteration | ms | / BN |',
                  '|---|---|---|']
        lines += [f'| {k} | {v:.0f} | {v / bn:.3f}x |' for k, v in train['iteration_ms'].items()]
    return '\n'.join(lines)
