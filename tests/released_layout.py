"""Synthetic checkpoints in the layout of the released SN/SSN and BN ResNets, and a float64
re-implementation of the released ResNet v1 forward (reference/ssn_original.md sections 2-3).

The real files (Google Drive / Baidu) cannot be downloaded here: these builders
write the same keys, shapes and dtypes with random values.  ``width`` scales
the channels (64 = the real ResNet-50), so format tests can stay tiny.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

from ssn_reference import ref_sparsestmax

_BLOCKS = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)), 50: ('bottleneck', (3, 4, 6, 3)),
           101: ('bottleneck', (3, 4, 23, 3))}


def resnet_v1_modules(depth: int = 50, width: int = 64):
    """[(conv name, weight shape, norm name, stride)] of a torchvision-style ResNet v1, in order."""
    block, stages = _BLOCKS[depth]
    mods = [('conv1', (width, 3, 7, 7), 'sn1', 2)]
    inplanes = width
    for i, n in enumerate(stages):
        planes = width * 2**i
        out = planes * 4 if block == 'bottleneck' else planes
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            p = f'layer{i + 1}.{j}'
            if block == 'bottleneck':
                mods += [(f'{p}.conv1', (planes, inplanes, 1, 1), f'{p}.sn1', 1),
                         (f'{p}.conv2', (planes, planes, 3, 3), f'{p}.sn2', stride),
                         (f'{p}.conv3', (out, planes, 1, 1), f'{p}.sn3', 1)]
            else:
                mods += [(f'{p}.conv1', (planes, inplanes, 3, 3), f'{p}.sn1', stride),
                         (f'{p}.conv2', (planes, planes, 3, 3), f'{p}.sn2', 1)]
            if j == 0 and (stride != 1 or inplanes != out):
                mods.append((f'{p}.downsample.0', (out, inplanes, 1, 1), f'{p}.downsample.1', stride))
            inplanes = out
    return mods, inplanes


def _conv(shape, gen):
    fan_in = shape[1] * shape[2] * shape[3]
    return torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)


def _affine_stats(c, gen, shapes):
    w_shape, s_shape = shapes
    return OrderedDict(
        weight=(0.5 + torch.rand(c, generator=gen)).reshape(w_shape),
        bias=(0.1 * torch.randn(c, generator=gen)).reshape(w_shape),
        running_mean=(0.1 * torch.randn(c, generator=gen)).reshape(s_shape),
        running_var=(0.5 + torch.rand(c, generator=gen)).reshape(s_shape))


def ssn_norm(c, gen, fixed=(2, 2), radius=1.0):
    """Released SSN2d entries; ``fixed`` = latched (mean, var) choices, None = still free."""
    p = _affine_stats(c, gen, ((1, c, 1, 1), (1, c, 1)))
    for which, choice in zip(('mean', 'var'), fixed):
        if choice is None:
            p[f'{which}_weight'] = torch.randn(3, generator=gen)
        else:  # the released layer overwrote its logits with the one-hot choice
            p[f'{which}_weight'] = F.one_hot(torch.tensor(choice), 3).float()
    p['mean_fixed'] = torch.LongTensor([int(fixed[0] is not None)])
    p['var_fixed'] = torch.LongTensor([int(fixed[1] is not None)])
    p['radius'] = torch.FloatTensor([radius])
    return p


def sn_norm(c, gen, k=3):
    """Released SwitchNorm2d entries; k=2 is using_bn=False (IN, LN; no running stats)."""
    p = _affine_stats(c, gen, ((1, c, 1, 1), (1, c, 1)))
    p['mean_weight'] = torch.randn(k, generator=gen)
    p['var_weight'] = torch.randn(k, generator=gen)
    if k == 2:
        del p['running_mean'], p['running_var']
    return p


def bn_norm(c, gen):
    p = _affine_stats(c, gen, ((c,), (c,)))
    p['num_batches_tracked'] = torch.tensor(1000, dtype=torch.long)
    return p


def released_state_dict(kind='ssn', depth=50, width=64, seed=0, fixed=None, free_every=0, k=3,
                        radius=1.0):
    """A state dict with the released (or torchvision BN) keys, shapes and dtypes, plus ``fc``.

    kind 'ssn': every norm latched with random (mean, var) choices, except every
    ``free_every``-th layer, left free with random logits (radius ``radius``);
    ``fixed`` forces one (mean, var) pair everywhere.  kind 'sn' (k = 3 or 2), 'bn'.
    """
    gen = torch.Generator().manual_seed(seed)
    mods, feat = resnet_v1_modules(depth, width)
    sd = OrderedDict()
    for n, (conv, shape, norm, _) in enumerate(mods):
        sd[f'{conv}.weight'] = _conv(shape, gen)
        c = shape[0]
        if kind == 'ssn':
            choice = fixed or tuple(int(i) for i in torch.randint(0, 3, (2,), generator=gen))
            if free_every and n % free_every == free_every - 1:
                choice = (None, None)
            p = ssn_norm(c, gen, choice, radius)
        elif kind == 'sn':
            p = sn_norm(c, gen, k)
        else:
            p = bn_norm(c, gen)
            norm = norm.replace('.sn', '.bn') if '.sn' in norm else norm.replace('sn1', 'bn1')
        for name, value in p.items():
            sd[f'{norm}.{name}'] = value
    sd['fc.weight'] = 0.01 * torch.randn(1000, feat, generator=gen)
    sd['fc.bias'] = torch.zeros(1000)
    return sd


def v2_state_dict(width=8, seed=0):
    """A pre-activation (v2) SN ResNet-50 layout: bare shortcut convs and a final ``sn_out``."""
    sd = released_state_dict('sn', 50, width, seed)
    for key in [k for k in sd if '.downsample.' in k]:
        del sd[key]
    for i, c_in in enumerate((width, width * 4, width * 8, width * 16), start=1):
        sd[f'layer{i}.0.downsample.weight'] = torch.zeros(c_in * 4 if i > 1 else width * 4, c_in, 1, 1)
    for name, value in sn_norm(width * 32, torch.Generator().manual_seed(1)).items():
        sd[f'sn_out.{name}'] = value
    return sd


def save_released(sd, path, wrap=True, module_prefix=False, legacy=False):
    """Write ``sd`` as the released training scripts did (optionally DataParallel 'module.' keys)."""
    if module_prefix:
        sd = OrderedDict((f'module.{k}', v) for k, v in sd.items())
    obj = sd
    if wrap:
        obj = {'epoch': 100, 'model': 'resnet_v1_ssn50', 'state_dict': sd, 'best_prec1': 77.25,
               'optimizer': {'state': {0: {'momentum_buffer': torch.zeros(3)}},
                             'param_groups': [{'lr': 0.1, 'momentum': 0.9, 'params': [0]}]},
               'lr_scheduler': {'milestones': [30, 60, 90], 'last_epoch': 99}}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


# ---------------------------------------------------------------------------------------------
# float64 re-implementation of the released ResNet v1 + SN/SSN forward (eval mode)

def _ratios(p, which, mode):
    logits = p[f'{which}_weight'].double()
    if f'{which}_fixed' in p:  # SSN
        if int(p[f'{which}_fixed']):
            return logits  # already one-hot
        return torch.tensor(ref_sparsestmax(logits.tolist(), float(p['radius']), mode),
                            dtype=torch.float64)
    return torch.softmax(logits, 0)


def released_norm(x, p, mode='official', unbiased=False, eps=1e-5):
    """SwitchNorm2d/SSN2d (eval) as released: IN moments over H*W, LN/BN derived from them.

    The released code takes the IN variance unbiased; this package uses the
    biased one (DESIGN.md), so ``unbiased=False`` is what the layers here compute.
    """
    x = x.double()
    n, c = x.shape[:2]
    if 'mean_weight' not in p:  # plain BN
        mu, var = p['running_mean'].double().view(1, c, 1, 1), p['running_var'].double().view(1, c, 1, 1)
        return (x - mu) / torch.sqrt(var + eps) * p['weight'].double().view(1, c, 1, 1) \
            + p['bias'].double().view(1, c, 1, 1)
    flat = x.view(n, c, -1)
    mean_in = flat.mean(-1, keepdim=True)  # (N, C, 1)
    var_in = flat.var(-1, keepdim=True, unbiased=unbiased)
    temp = var_in + mean_in**2
    mean_ln = mean_in.mean(1, keepdim=True)
    var_ln = temp.mean(1, keepdim=True) - mean_ln**2
    means, variances = [mean_in, mean_ln], [var_in, var_ln]
    if 'running_mean' in p:
        means.append(p['running_mean'].double().view(1, c, 1))
        variances.append(p['running_var'].double().view(1, c, 1))
    pm, pv = _ratios(p, 'mean', mode), _ratios(p, 'var', mode)
    mean = sum(w * m for w, m in zip(pm, means))
    var = sum(w * v for w, v in zip(pv, variances))
    y = ((flat - mean) / torch.sqrt(var + eps)).view_as(x)
    return y * p['weight'].double().view(1, c, 1, 1) + p['bias'].double().view(1, c, 1, 1)


def released_forward(sd, x, depth=50, released_stem=True, mode='official', unbiased=False):
    """The four stage outputs of the released ResNet v1 (torchvision-like, stride on the 3x3 conv).

    ``released_stem``: max-pool k3 s2 padding 0 ceil_mode (released SSN) or padding 1 (SN).
    """
    sd = OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in sd.items())

    def norm(name, t):
        p = {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + '.')}
        return released_norm(t, p, mode, unbiased)

    def conv(name, t, stride):
        w = sd[f'{name}.weight'].double()
        return F.conv2d(t, w, stride=stride, padding=w.shape[-1] // 2)

    block, stages = _BLOCKS[depth]
    h = F.relu(norm('sn1', conv('conv1', x.double(), 2)))
    h = F.max_pool2d(h, 3, 2, 0, ceil_mode=True) if released_stem else F.max_pool2d(h, 3, 2, 1)
    outs = []
    for i, n in enumerate(stages, start=1):
        for j in range(n):
            p = f'layer{i}.{j}'
            stride = 2 if (i > 1 and j == 0) else 1
            if block == 'bottleneck':
                y = F.relu(norm(f'{p}.sn1', conv(f'{p}.conv1', h, 1)))
                y = F.relu(norm(f'{p}.sn2', conv(f'{p}.conv2', y, stride)))
                y = norm(f'{p}.sn3', conv(f'{p}.conv3', y, 1))
            else:
                y = F.relu(norm(f'{p}.sn1', conv(f'{p}.conv1', h, stride)))
                y = norm(f'{p}.sn2', conv(f'{p}.conv2', y, 1))
            if f'{p}.downsample.0.weight' in sd:
                h = norm(f'{p}.downsample.1', conv(f'{p}.downsample.0', h, stride))
            h = F.relu(y + h)
        outs.append(h)
    return outs
