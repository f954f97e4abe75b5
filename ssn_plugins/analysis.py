"""Which normalizer each SN/SSN layer selected: records, a table, a figure.

A record describes one layer, in network (state-dict) order::

    {'name': 'backbone.layer1.0.sn1', 'type': 'SSN', 'normalizers': ['in', 'ln', 'bn'],
     'mean': [0.0, 0.0, 1.0], 'var': [0.0, 1.0, 0.0], 'latched': True}

``mean``/``var`` are the importance ratios the layer's next forward uses, in
the order of ``normalizers`` (always a sub-sequence of IN, LN, BN).  Records
come from a built model (:func:`collect_ratios`, which asks each layer's
``ratios()``) or from a checkpoint alone (:func:`ratios_from_state_dict`,
which redoes softmax/SparsestMax from the stored logits and buffers).
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from .builder import build_model, unwrap_model
from .checkpoint.pretrained import check_state_dict
from .fileio import read_state_dict, replacing
from .norm.moments import NORMALIZERS
from .norm.ratios import switch_ratios
from .norm.switch_norm import SparseSwitchNormBase, is_switch_norm, radius_problem
from .ops.sparsestmax import SPARSESTMAX_MODES

__all__ = [
    'collect_ratios', 'ratios_from_state_dict', 'ratios_from_checkpoint', 'switch_norm_stats',
    'format_summary', 'plot_ratios', 'write_ratios'
]

_LABELS = {'in': 'IN', 'ln': 'LN', 'bn': 'BN'}
_COLORS = {'in': '#4c72b0', 'ln': '#dd8452', 'bn': '#55a868'}


def collect_ratios(model: nn.Module) -> list[dict]:
    """One record per SN/SSN layer of ``model``, from ``layer.ratios()``."""
    records = []
    for name, layer in unwrap_model(model).named_modules():
        if not is_switch_norm(layer):
            continue
        mean, var = layer.ratios()
        sparse = isinstance(layer, SparseSwitchNormBase)
        records.append(dict(name=name, type='SSN' if sparse else 'SN',
                            normalizers=list(layer.normalizers),
                            mean=[float(v) for v in mean], var=[float(v) for v in var],
                            latched=bool(layer.latched) if sparse else False))
    return records


def switch_norm_stats(model: nn.Module) -> dict[str, float]:
    """Cheap training-time summary of the SN/SSN layers of ``model``.

    ``ssn_entropy``: mean over layers of the average entropy (nats) of the mean
    and variance ratios (0 once every layer is one-hot); for SSN layers also
    ``ssn_latched``, the share of layers whose mean and variance choices are
    both latched, and ``ssn_radius``, their mean radius.  Empty if ``model`` has
    no SN/SSN layer.  Layers of the same kind are evaluated in one batched
    softmax/SparsestMax with a single device-to-host copy, so calling this
    every iteration costs about as much as one small layer's forward.
    """
    groups: dict[tuple, list] = {}
    for layer in unwrap_model(model).modules():
        if is_switch_norm(layer):
            sparse = isinstance(layer, SparseSwitchNormBase)
            key = (sparse, len(layer.normalizers), layer.mode if sparse else None)
            groups.setdefault(key, []).append(layer)
    if not groups:
        return {}
    entropies, latched, radii = [], [], []
    with torch.no_grad():
        for (sparse, k, mode), layers in groups.items():
            logits = torch.stack([torch.stack([m.mean_weight, m.var_weight]) for m in layers]).float()
            if not sparse:
                ratios = switch_ratios(logits)  # (L, 2, K)
            else:
                radius = torch.stack([m.radius for m in layers]).float()  # (L,)
                choice = torch.stack([torch.stack([m.mean_choice, m.var_choice]) for m in layers])
                ratios = switch_ratios(logits, radius.view(-1, 1, 1), choice, mode)
                latched.append((choice >= 0).all(-1).float())
                radii.append(radius)
            entropies.append(-(ratios * ratios.clamp_min(1e-30).log()).sum(-1).mean(-1))
    values = [torch.cat(entropies).mean()]
    if latched:
        values += [torch.cat(latched).mean(), torch.cat(radii).mean()]
    values = torch.stack(values).tolist()
    stats = {'ssn_entropy': values[0]}
    if latched:
        stats['ssn_latched'], stats['ssn_radius'] = values[1], values[2]
    return stats


def _normalizers_for(prefix: str, k: int, state: Mapping[str, Tensor]) -> tuple[str, ...]:
    if k == 3:
        return NORMALIZERS
    if k == 2 and f'{prefix}.running_mean' not in state:
        return ('in', 'ln')  # the only pair without a BN branch
    raise ValueError(f'{prefix}: cannot tell which {k} normalizers a layer with {k} logits '
                     f'{"and running statistics " if k == 2 else ""}uses from the checkpoint '
                     'alone; pass the config too (tools/analyze_ratios.py CONFIG CHECKPOINT)')


def _ratios_from_state(prefix: str, state: Mapping[str, Tensor], mode: str) -> tuple[Tensor, Tensor]:
    """(2, K) ratios of one layer's state and (2,) whether each row is latched."""
    logits = torch.stack([state[f'{prefix}.{which}_weight'].detach().double().flatten()
                          for which in ('mean', 'var')])
    radius = state.get(f'{prefix}.radius')
    if radius is None:
        return switch_ratios(logits, name=prefix), torch.zeros(2, dtype=torch.bool)
    choices = []
    for row, which in zip(logits, ('mean', 'var')):
        choice = state.get(f'{prefix}.{which}_choice')  # ssn_plugins layers
        fixed = state.get(f'{prefix}.{which}_fixed')  # the released SSN code
        if fixed is not None and int(fixed) != 0:
            # released layers store the selected one-hot vector in the logits
            choices.append(int(row.argmax()))
        else:
            choices.append(-1 if choice is None else int(choice))
    choices = torch.tensor(choices)
    problem = radius_problem(radius)
    if problem:
        raise ValueError(f'{prefix}.radius: {problem}')
    radius = radius.detach().double().flatten()[0]
    return switch_ratios(logits, radius, choices, mode, prefix), choices >= 0


def ratios_from_state_dict(state: Mapping[str, Tensor], mode: str = 'paper') -> list[dict]:
    """Records for every layer of a state dict with ``mean_weight``/``var_weight``.

    SN layers (no ``radius``) use softmax; SSN layers use their latched choice
    or SparsestMax at their stored radius with the rule ``mode`` (which the
    checkpoint does not record; it does not matter for latched layers).
    """
    if mode not in SPARSESTMAX_MODES:
        raise ValueError(f'mode must be one of {SPARSESTMAX_MODES}, got {mode!r}')
    records = []
    for key in state:
        if not key.endswith('.mean_weight'):
            continue
        prefix = key[:-len('.mean_weight')]
        if f'{prefix}.var_weight' not in state:
            raise ValueError(f'{prefix}: has mean_weight but no var_weight')
        k = state[key].numel()
        normalizers = _normalizers_for(prefix, k, state)
        (mean, var), rows_latched = _ratios_from_state(prefix, state, mode)
        sparse = f'{prefix}.radius' in state
        records.append(dict(name=prefix, type='SSN' if sparse else 'SN', normalizers=list(normalizers),
                            mean=[float(v) for v in mean], var=[float(v) for v in var],
                            latched=sparse and bool(rows_latched.all())))
    if not records:
        raise ValueError('no SN/SSN layer (keys ending in .mean_weight) in the checkpoint')
    return records


def _choice(record: dict, which: str) -> str:
    ratios = record[which]
    return record['normalizers'][max(range(len(ratios)), key=ratios.__getitem__)]


def _cells(record: dict, which: str) -> str:
    by_name = dict(zip(record['normalizers'], record[which]))
    return ' '.join(f'{by_name[n]:4.2f}' if n in by_name else '   -' for n in NORMALIZERS)


def format_summary(records: Sequence[dict]) -> str:
    """A table (one row per layer) and how many layers chose IN, LN, BN.

    A layer "chooses" the normalizer with the largest ratio (the only non-zero
    one once it is latched).
    """
    if not records:
        raise ValueError('no SN/SSN layer to summarise')
    width = max(len('layer'), *(len(r['name']) for r in records))
    head = ' '.join(_LABELS[n].rjust(4) for n in NORMALIZERS)
    lines = [f'{"layer".ljust(width)}  type  mean {head}   var {head}  latched']
    for r in records:
        lines.append(f'{r["name"].ljust(width)}  {r["type"]:<4}  {" " * 5}{_cells(r, "mean")}'
                     f'   {" " * 4}{_cells(r, "var")}  {"yes" if r["latched"] else "no"}')
    lines.append('')
    n_latched = sum(r['latched'] for r in records)
    lines.append(f'{len(records)} layers, {n_latched} latched')
    for which in ('mean', 'var'):
        counts = {n: 0 for n in NORMALIZERS}
        for r in records:
            counts[_choice(r, which)] += 1
        lines.append(f'{which:<4} chosen: ' + ', '.join(f'{_LABELS[n]} {counts[n]}' for n in NORMALIZERS))
    return '\n'.join(lines)


def plot_ratios(records: Sequence[dict], path: str) -> str:
    """Stacked bars of the mean and variance ratios per layer, in network order."""
    if not records:
        raise ValueError('no SN/SSN layer to plot')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    n = len(records)
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.16 * n + 2), 6.5), sharex=True)
    x = list(range(n))
    for ax, which in zip(axes, ('mean', 'var')):
        bottom = [0.0] * n
        for norm in NORMALIZERS:
            heights = [dict(zip(r['normalizers'], r[which])).get(norm, 0.0) for r in records]
            ax.bar(x, heights, bottom=bottom, width=0.85, color=_COLORS[norm], label=_LABELS[norm])
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set_ylim(0, 1)
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylabel(f'{which} ratios')
    axes[0].legend(loc='lower right', bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=8, frameon=False)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels([r['name'] for r in records], rotation=90,
                            fontsize=max(3.0, min(8.0, 400.0 / n)))
    axes[1].set_xlabel('layer (network order)')
    fig.tight_layout()
    with replacing(path) as (tmp, ):  # whole or not at all, as every write
        fig.savefig(tmp, dpi=150)  # the temporary keeps the suffix: the format
    plt.close(fig)
    return path


def write_ratios(records: Sequence[dict], out_dir: str) -> tuple[str, str]:
    """Write ``out_dir/ratios.json`` (the records) and ``out_dir/ratios.png``, both or neither."""
    json_path, png_path = os.path.join(out_dir, 'ratios.json'), os.path.join(out_dir, 'ratios.png')
    with replacing(json_path, png_path) as (json_tmp, png_tmp):
        with open(json_tmp, 'w') as f:
            json.dump(list(records), f, indent=1)
        plot_ratios(records, png_tmp)
    return json_path, png_path


def ratios_from_checkpoint(checkpoint: str, config: Optional[str] = None, mode: str = 'paper') -> list[dict]:
    """Records of a checkpoint, alone or loaded (strictly) into the model of ``config``.

    With a config the layers' own SparsestMax rule is used and ``mode`` is ignored.
    """
    state = read_state_dict(checkpoint)
    if config is None:
        return ratios_from_state_dict(state, mode)
    model = build_model(config)
    check_state_dict(model, state, source=checkpoint)  # exact, up to num_batches_tracked
    model.load_state_dict(state, strict=False)
    return collect_ratios(model)
