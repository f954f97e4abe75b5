"""Run every layer kind on given inputs and states; save outputs and gradients.

    python cross_stack_worker.py CASES.pt OUT.pt

Run by tests/test_cross_stack.py under each stack's interpreter (torch 2.1
and torch 2.13) on the same file, so their results can be compared.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssn_plugins import collapse_norms, update_choices  # noqa: E402
from ssn_plugins.norm import (SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d,  # noqa: E402
                              SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, SyncSparseSwitchNorm)

CLASSES = {cls.__name__: cls for cls in (SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, SparseSwitchNorm1d,
                                         SparseSwitchNorm2d, SparseSwitchNorm3d, SyncSparseSwitchNorm)}


def run(case):
    layer = CLASSES[case['cls']](case['channels'], **case.get('options', {}))
    layer.load_state_dict(case['state'])
    if 'radius' in case:
        layer.set_radius(case['radius'])
    update_choices(layer)
    out = {}
    x = case['x'].clone().requires_grad_(True)
    layer.train()
    y = layer(x)
    y.mul(case['dy']).sum().backward()
    out['train_y'] = y.detach()
    out['grad_x'] = x.grad
    out['grad_weight'] = layer.weight.grad
    out['grad_mean_weight'] = layer.mean_weight.grad
    if layer.running_mean is not None:  # none without a BN branch
        out['running_mean'] = layer.running_mean.clone()
        out['running_var'] = layer.running_var.clone()
    mean_ratios, var_ratios = layer.ratios()
    out['mean_ratios'], out['var_ratios'] = mean_ratios.detach(), var_ratios.detach()
    if hasattr(layer, 'mean_choice'):
        out['choices'] = torch.stack([layer.mean_choice, layer.var_choice])
    layer.eval()
    with torch.no_grad():
        out['eval_y'] = layer(case['x'])
        if case.get('collapse'):
            update_choices(layer)
            out['collapsed_y'] = collapse_norms(torch.nn.Sequential(layer).eval())(case['x'])
    return out


def main(src, dst):
    cases = torch.load(src, weights_only=True)
    results = {name: run(case) for name, case in cases.items()}
    results['torch'] = str(torch.__version__)
    torch.save(results, dst)


if __name__ == '__main__':
    main(*sys.argv[1:3])
