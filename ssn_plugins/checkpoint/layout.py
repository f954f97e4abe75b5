"""The key layout of ResNet v1 ImageNet checkpoints (released SN/SSN, torchvision, mmcv, ours).

All of them name their modules like torchvision: ``conv1``, ``<norm>1``,
``layerX.Y.conv{1,2,3}``, ``layerX.Y.<norm>{1,2,3}``, ``layerX.0.downsample.{0,1}``
and ``fc``; ``<norm>`` is ``sn`` or ``bn``.  :func:`parse_resnet_v1` reads the
architecture back from the keys and lists every key that does not fit, so a
conversion is complete or refused, never partial.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import Tensor

from ..fileio import format_keys

__all__ = ['ResNetLayout', 'NORM_ENTRIES', 'parse_resnet_v1', 'ConversionError']

# depth by (block type, blocks per stage), as in torchvision and mmdet/mmseg ResNet
_DEPTHS = {
    ('basic', (2, 2, 2, 2)): 18,
    ('basic', (3, 4, 6, 3)): 34,
    ('bottleneck', (3, 4, 6, 3)): 50,
    ('bottleneck', (3, 4, 23, 3)): 101,
    ('bottleneck', (3, 8, 36, 3)): 152,
}

# the state-dict entries of one norm layer, by source kind
NORM_ENTRIES = {
    'bn': ('weight', 'bias', 'running_mean', 'running_var'),
    'sn': ('weight', 'bias', 'mean_weight', 'var_weight', 'running_mean', 'running_var'),
    'ssn': ('weight', 'bias', 'mean_weight', 'var_weight', 'running_mean', 'running_var',
            'mean_fixed', 'var_fixed', 'radius'),
}
# SSN layers of this package (files trained with ssn_plugins, e.g. mmpretrain's ImageClassifier):
# (C,) tensors, a scalar radius and the latched choices as indices (-1 = free)
NATIVE_SSN_ENTRIES = ('weight', 'bias', 'mean_weight', 'var_weight', 'running_mean', 'running_var',
                      'radius', 'mean_choice', 'var_choice')
_NO_BN_BRANCH = ('running_mean', 'running_var')  # absent from SN files trained with using_bn=False

_V2_MARKERS = re.compile(r'(^|\.)(sn_out|bn_out)\.|^layer\d+\.\d+\.downsample\.(weight|bias)$')


class ConversionError(ValueError):
    """A checkpoint that cannot be converted completely; the message lists the offending keys."""


@dataclass
class ResNetLayout:
    """What a ResNet v1 state dict holds: depth, norm naming and which module owns each key."""

    depth: int
    block: str  # 'basic' or 'bottleneck'
    stage_blocks: tuple[int, ...]
    norm_abbr: str  # 'sn' or 'bn'
    kind: str  # 'ssn', 'sn' or 'bn'
    num_logits: int  # K: 3 (IN, LN, BN) or 2 (IN, LN); 0 for BN sources
    convs: list[str] = field(default_factory=list)  # module names, in network order
    norms: dict[str, str] = field(default_factory=dict)  # norm module -> conv module before it
    native: bool = False  # SSN layers of this package (mean_choice/var_choice), not the released ones

    @property
    def arch(self) -> str:
        return f'resnet{self.depth}_v1'


def _modules(stage_blocks: tuple[int, ...], block: str, abbr: str) -> tuple[list[str], dict[str, str]]:
    convs, norms = ['conv1'], {f'{abbr}1': 'conv1'}
    n_convs = 3 if block == 'bottleneck' else 2
    for i, blocks in enumerate(stage_blocks, start=1):
        for j in range(blocks):
            prefix = f'layer{i}.{j}'
            for k in range(1, n_convs + 1):
                convs.append(f'{prefix}.conv{k}')
                norms[f'{prefix}.{abbr}{k}'] = f'{prefix}.conv{k}'
        # stage 1 of a BasicBlock ResNet keeps 64 channels and stride 1: no projection
        if block == 'bottleneck' or i > 1:
            convs.append(f'layer{i}.0.downsample.0')
            norms[f'layer{i}.0.downsample.1'] = f'layer{i}.0.downsample.0'
    return convs, norms


def _detect_kind(keys: list[str]) -> str:
    entries = {k.rsplit('.', 1)[-1] for k in keys}
    if entries & {'mean_fixed', 'var_fixed', 'radius', 'mean_choice', 'var_choice'}:
        return 'ssn'
    if entries & {'mean_weight', 'var_weight'}:
        return 'sn'
    if 'running_mean' in entries:
        return 'bn'
    raise ConversionError('cannot tell the source kind: no norm layer with running_mean, '
                          'mean_weight or radius found; keys: ' + format_keys(keys))


def parse_resnet_v1(state_dict: dict[str, Tensor]) -> ResNetLayout:
    """Read the ResNet v1 architecture from ``state_dict`` (classifier already dropped).

    Raises :class:`ConversionError` listing the keys of a pre-activation (v2)
    network, keys that belong to no module of the detected ResNet, missing
    keys and tensors whose shape does not fit.
    """
    keys = list(state_dict)
    v2 = [k for k in keys if _V2_MARKERS.search(k)]
    if v2:
        raise ConversionError(
            'pre-activation (ResNet v2) checkpoint: mmdet/mmseg ResNet is v1 and has no module for '
            'these keys (a shortcut without norm, a final norm before pooling): ' + format_keys(v2))
    if not any(k.startswith('conv1.') for k in keys):
        raise ConversionError('not a ResNet v1 with a 7x7 stem: no conv1.weight; keys: ' + format_keys(keys))
    abbrs = {m.group(1) for k in keys if (m := re.match(r'(sn|bn)1\.', k))}
    if len(abbrs) != 1:
        raise ConversionError(f'expected one stem norm named sn1 or bn1, found {sorted(abbrs) or "none"}')
    abbr = abbrs.pop()
    kind = _detect_kind(keys)
    stage_blocks = []
    for i in range(1, 5):
        ids = {int(m.group(1)) for k in keys if (m := re.match(rf'layer{i}\.(\d+)\.', k))}
        if ids != set(range(len(ids))) or not ids:
            raise ConversionError(f'layer{i} blocks are not numbered 0..n-1: {sorted(ids)}')
        stage_blocks.append(len(ids))
    block = 'bottleneck' if any(re.match(r'layer\d+\.\d+\.conv3\.', k) for k in keys) else 'basic'
    depth = _DEPTHS.get((block, tuple(stage_blocks)))
    if depth is None:
        raise ConversionError(f'no ResNet depth has {block} blocks {tuple(stage_blocks)} per stage')
    convs, norms = _modules(tuple(stage_blocks), block, abbr)
    k_logits = 0
    if kind != 'bn':
        sizes = {tuple(state_dict[k].shape) for k in keys if k.endswith(('.mean_weight', '.var_weight'))}
        if sizes not in ({(3,)}, {(2,)}):
            raise ConversionError(f'mean_weight/var_weight must all have shape (3,) or all (2,), got {sizes}')
        k_logits = sizes.pop()[0]
        if kind == 'ssn' and k_logits != 3:
            raise ConversionError('SSN checkpoints have 3 logits (IN, LN, BN), got 2')
    native = kind == 'ssn' and any(k.endswith(('.mean_choice', '.var_choice')) for k in keys)
    entries = NATIVE_SSN_ENTRIES if native else NORM_ENTRIES[kind]
    if k_logits == 2:
        entries = tuple(e for e in entries if e not in _NO_BN_BRANCH)
    expected = {f'{c}.weight' for c in convs} | {f'{n}.{e}' for n in norms for e in entries}
    unexpected = set(keys) - expected
    missing = expected - set(keys)
    if unexpected or missing:
        lines = [f'{kind.upper()} ResNet-{depth} v1 checkpoint does not map completely']
        if unexpected:
            lines.append('keys with no place in the network: ' + format_keys(unexpected))
        if missing:
            lines.append('missing keys: ' + format_keys(missing))
        raise ConversionError('; '.join(lines))
    layout = ResNetLayout(depth, block, tuple(stage_blocks), abbr, kind, k_logits, convs, norms, native)
    _check_shapes(state_dict, layout)
    return layout


def _check_shapes(sd: dict[str, Tensor], layout: ResNetLayout) -> None:
    bad = []
    for conv in layout.convs:
        if sd[f'{conv}.weight'].dim() != 4:
            bad.append(f'{conv}.weight {tuple(sd[conv + ".weight"].shape)} (expected 4-D)')
    for norm, conv in layout.norms.items():
        c = sd[f'{conv}.weight'].shape[0]
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            key = f'{norm}.{name}'
            if key not in sd:
                continue
            # (C,) for BN and converted files, (1, C, 1, 1) / (1, C, 1) for the released ones
            t = sd[key]
            if t.numel() != c or t.dim() == 0 or t.shape[0 if t.dim() == 1 else 1] != c:
                bad.append(f'{key} {tuple(t.shape)} (expected {c} channels like {conv})')
        for name in ('mean_fixed', 'var_fixed', 'radius', 'mean_choice', 'var_choice'):
            key = f'{norm}.{name}'
            if key in sd and sd[key].numel() != 1:
                bad.append(f'{key} {tuple(sd[key].shape)} (expected one value)')
    if bad:
        raise ConversionError('tensors with the wrong shape: ' + format_keys(bad))
