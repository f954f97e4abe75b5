"""Map a BN/GN model's state dict onto the same model built with SN/SSN layers.

mmcv names a norm layer after its type (``bn1`` for BN, ``gn1`` for GN,
``sn1`` for ours), and a model converted in Python keeps the old names, so
an SN/SSN layer ``a.sn1`` takes the tensors of ``a.sn1``, ``a.bn1`` or
``a.gn1`` in the source: ``weight``, ``bias`` and, from BN, the running
statistics.  Every other tensor must be there under its own name.  What
the SN/SSN layers add (logits, radius, latched choices) keeps the model's
own values.  A key the model does not take, or one it lacks, is an error
that names them; only a classifier head (``fc``, ``head``, ``classifier``)
the model does not have is dropped, as for a backbone from an ImageNet file.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from ..fileio import key_mismatch
from ..norm.switch_norm import SwitchNormBase

__all__ = ['map_plain_norms', 'SWITCH_ONLY_ENTRIES']

# entries an SN/SSN layer has that a BN/GN layer does not: the model's own values are kept
SWITCH_ONLY_ENTRIES = ('mean_weight', 'var_weight', 'radius', 'mean_choice', 'var_choice',
                       'num_batches_tracked')
_COPIED = ('weight', 'bias', 'running_mean', 'running_var')
_CLASSIFIER = re.compile(r'^(fc|head|classifier)\.')
_ABBR = re.compile(r'(^|\.)sn(\w*)$')


def _source_layer(name: str, state_dict: Mapping[str, Tensor]) -> str | None:
    """The layer of ``state_dict`` that the SN/SSN layer ``name`` takes its tensors from."""
    candidates = [name] + [_ABBR.sub(rf'\1{abbr}\2', name) for abbr in ('bn', 'gn')]
    prefix = (lambda n: f'{n}.' if n else '')
    for candidate in dict.fromkeys(candidates):
        if any(f'{prefix(candidate)}{entry}' in state_dict for entry in _COPIED):
            return candidate
    return None


def map_plain_norms(module: nn.Module, state_dict: Mapping[str, Tensor],
                    source: str = 'checkpoint') -> tuple[dict[str, Tensor], dict]:
    """``state_dict`` renamed for ``module``; raises ``ValueError`` unless it fits.

    Returns the mapped state dict (load it with ``strict=False``: the
    SN/SSN-only entries are absent on purpose) and a report: how many tensors
    were mapped, how many norm layers were filled, which layers kept their
    running statistics at 0/1 (a GN source has none).
    """
    expected = module.state_dict()
    switch = {name: m for name, m in module.named_modules() if isinstance(m, SwitchNormBase)}
    mapped, used, no_stats = {}, set(), []
    for name, layer in switch.items():
        src = _source_layer(name, state_dict)
        if src is None:
            continue
        pre, dst = (f'{src}.' if src else ''), (f'{name}.' if name else '')
        for entry in _COPIED + SWITCH_ONLY_ENTRIES:
            if dst + entry in expected and pre + entry in state_dict:
                mapped[dst + entry] = state_dict[pre + entry]
                used.add(pre + entry)
        if layer.running_mean is not None and pre + 'running_mean' not in state_dict:
            no_stats.append(name)
        for entry in SWITCH_ONLY_ENTRIES:  # BN's counter has no use here
            if pre + entry in state_dict:
                used.add(pre + entry)
    for key, value in state_dict.items():
        if key in expected and key not in mapped and key not in used:
            mapped[key] = value
            used.add(key)
    optional = set()
    for name in switch:
        dst = f'{name}.' if name else ''
        optional.update(dst + entry for entry in SWITCH_ONLY_ENTRIES)
        if name in no_stats:
            optional.update(dst + entry for entry in ('running_mean', 'running_var'))
    missing = [k for k in expected if k not in mapped and k not in optional
               and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in used and not k.endswith('num_batches_tracked')
                  and not (_CLASSIFIER.match(k) and k not in expected)]
    mismatched = [f'{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}'
                  for k, v in mapped.items() if v.shape != expected[k].shape]
    if missing or unexpected or mismatched:
        lines = [f'{source} does not fit {type(module).__name__} with BN/GN keys mapped onto its '
                 f'SN/SSN layers', *key_mismatch(missing, unexpected, mismatched)]
        lines.append('check that the checkpoint is of this architecture (depth, stem, style) and '
                     'the prefix, or set init_cfg=None to train from scratch')
        raise ValueError('; '.join(lines))
    report = dict(tensors=len(mapped), norm_layers=len(switch), without_statistics=no_stats)
    return mapped, report
