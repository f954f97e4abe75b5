"""Deployment: replace settled SN/SSN layers by plain PyTorch norms, then fold BN into convs.

Once an SSN layer has latched (or an SN layer's ratios are exactly one-hot),
it *is* a BatchNorm, an InstanceNorm (GroupNorm(C, C), see :class:`InstanceNorm`) or a LayerNorm over
(C, H, W) (GroupNorm(1, C)).
:func:`collapse_norms` swaps in that module (same parameters and running
statistics), so inference runs PyTorch's kernels and every tool that knows
those layers (``fuse_conv_bn``, FLOP counters, ONNX export) sees them.  Mixed
choices (e.g. BN mean with IN variance) become a latched SSN layer, whose
forward computes only the statistics it needs.  Layers that have not settled
are left alone, with a log line saying why.
"""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model.utils import _BatchNormXd
from mmengine.registry import MODELS
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .builder import build_model, read_config, require_model
from .checkpoint.pretrained import check_state_dict
from .fileio import (check_destination, check_distinct, read_checkpoint, read_state_dict, replacing,
                     torch_save)
from .onnx_export import export_onnx, require_onnx
from .norm.switch_norm import (SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d,
                               SparseSwitchNormBase, SwitchNormBase)

__all__ = ['InstanceNorm', 'collapse_norms', 'collapse_plan', 'plain_norm', 'fold_conv_bn', 'build_collapsed',
           'deploy_checkpoint', 'Deployed']

_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_SSN = {1: SparseSwitchNorm1d, 2: SparseSwitchNorm2d, 3: SparseSwitchNorm3d}
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RANKS = {(2, 3): 1, (4,): 2, (5,): 3}


class InstanceNorm(nn.GroupNorm):
    """Instance norm with affine for any input (N, C, *): ``GroupNorm(C, C)`` that takes 1x1 maps.

    ``nn.InstanceNorm*d`` and ``GroupNorm`` refuse maps with one value per
    (n, c) (PSPNet's and ASPP's pooling branches); there the result is ``bias``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_features, num_features, eps=eps, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() != x.shape[0] * x.shape[1]:
            return super().forward(x)
        y = torch.zeros_like(x)  # (x - mean) is 0 when the map has one value
        if self.bias is not None:
            y = y + self.bias.view((1, -1) + (1, ) * (x.dim() - 2))
        return y


def _rank(layer: SwitchNormBase) -> Optional[int]:
    """1, 2 or 3 like ``BatchNorm{1,2,3}d``; None for layers of any rank (synced ones)."""
    return _RANKS.get(tuple(layer._input_ranks))


def _choices(layer: SwitchNormBase) -> Optional[tuple[int, int]]:
    """Indices of the (mean, var) normalizers if the layer has settled on one each, else None."""
    if isinstance(layer, SparseSwitchNormBase) and layer.latched:
        return int(layer.mean_choice), int(layer.var_choice)
    mean_ratios, var_ratios = layer.ratios()
    if bool((mean_ratios == 1).any()) and bool((var_ratios == 1).any()):
        return int(mean_ratios.argmax()), int(var_ratios.argmax())
    return None


def collapse_plan(model: nn.Module) -> dict[str, list[int]]:
    """``{layer name: [mean index, var index]}`` for every settled SN/SSN layer of ``model``."""
    plan = {}
    for name, module in model.named_modules():
        if isinstance(module, SwitchNormBase):
            choices = _choices(module)
            if choices is not None:
                plan[name] = list(choices)
    return plan


def _copy_affine(src: SwitchNormBase, dst: nn.Module) -> nn.Module:
    if src.affine:
        dst.weight.data.copy_(src.weight.detach())
        dst.bias.data.copy_(src.bias.detach())
    return dst.to(device=src.mean_weight.device, dtype=src.mean_weight.dtype).train(src.training)


def plain_norm(layer: SwitchNormBase,
               choices: Optional[Sequence[int]] = None) -> Optional[nn.Module]:
    """The plain module equal to a settled SN/SSN ``layer``, or None if it has not settled.

    ``choices`` (mean index, var index) overrides what the layer says it settled on.
    """
    choices = _choices(layer) if choices is None else tuple(choices)
    if choices is None:
        return None
    mean_name, var_name = (layer.normalizers[i] for i in choices)
    c, rank = layer.num_features, _rank(layer)
    if mean_name == var_name == 'bn':
        bn = _BN.get(rank, _BatchNormXd)(c, eps=layer.eps, momentum=layer.momentum, affine=layer.affine)
        bn.running_mean.copy_(layer.running_mean)
        bn.running_var.copy_(layer.running_var)
        return _copy_affine(layer, bn)
    if mean_name == var_name == 'in':
        return _copy_affine(layer, InstanceNorm(c, eps=layer.eps, affine=layer.affine))
    if mean_name == var_name == 'ln':
        return _copy_affine(layer, nn.GroupNorm(1, c, eps=layer.eps, affine=layer.affine))
    if isinstance(layer, SparseSwitchNormBase) or rank is None:
        # Latched SSN (or a synced SN): its forward already computes just what it needs.
        if isinstance(layer, SparseSwitchNormBase):
            layer.latch(*choices)
        return layer
    # An SN layer with one-hot mixed ratios: the compact equivalent is a latched SSN layer.
    compact = _SSN[rank](c, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                         normalizers=layer.normalizers)
    compact.load_state_dict(layer.state_dict(), strict=False)
    compact.latch(*choices)
    return compact.to(device=layer.mean_weight.device).train(layer.training)


def fold_conv_bn(module: nn.Module) -> int:
    """Fold every eval-mode BN into the conv registered right before it; returns how many.

    Like mmcv's ``fuse_conv_bn`` (the BN becomes ``nn.Identity``), but it also
    takes Conv1d/Conv3d and BN without affine (torch's ``fuse_conv_bn_eval``),
    only pairs *adjacent* children with matching channels, and skips a
    ``ConvModule`` whose norm runs before its conv (``order=('norm', 'conv', ...)``).
    Like mmcv's, it trusts registration order to be data-flow order (true for
    mmdet/mmseg ResNets, ConvModule, FPN and the heads; check custom modules).
    """
    folded = 0
    previous_name, previous = None, None
    order = getattr(module, 'order', None)
    norm_first = isinstance(order, tuple) and 'norm' in order and 'conv' in order and \
        order.index('norm') < order.index('conv')
    for name, child in list(module.named_children()):
        if (isinstance(child, nn.modules.batchnorm._BatchNorm) and isinstance(previous, _CONV)
                and not norm_first and child.track_running_stats and child.running_mean is not None
                and previous.out_channels == child.num_features and not child.training
                and not previous.training):
            module._modules[previous_name] = fuse_conv_bn_eval(previous, child)
            module._modules[name] = nn.Identity()
            folded += 1
            previous_name, previous = None, None
            continue
        folded += fold_conv_bn(child)
        previous_name, previous = name, child
    return folded


def collapse_norms(model: nn.Module,
                   fuse_conv: bool = True,
                   plan: Optional[dict[str, Sequence[int]]] = None) -> nn.Module:
    """Replace settled SN/SSN layers of ``model`` by plain norms (in place) and return it.

    Args:
        model: any module; its SN/SSN layers are found by type.
        fuse_conv: then fold each BatchNorm (collapsed or original) into the
            convolution right before it.  Needs ``model.eval()`` first, since
            folding freezes the running statistics.
        plan: collapse exactly these layers (see :func:`collapse_plan`) and
            no others; used to rebuild a deployed model's structure before
            loading its weights (:func:`build_collapsed`).

    Example:
        >>> model = collapse_norms(model.eval())  # after training with SSNRadiusHook
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'collapse_norms expects an nn.Module, got {type(model).__name__}')
    if fuse_conv and model.training:
        raise ValueError('collapse_norms(fuse_conv=True) folds running statistics into convs: '
                         'call model.eval() first (or pass fuse_conv=False)')
    counts: dict[str, int] = {}
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, SwitchNormBase):
                continue
            full_name = f'{parent_name}.{name}' if parent_name else name
            if plan is not None and full_name not in plan:
                replacement = None
            else:
                replacement = plain_norm(child, None if plan is None else plan[full_name])
            if replacement is None:
                mean_ratios, var_ratios = child.ratios()
                print_log(f'collapse_norms: left {full_name} ({type(child).__name__}) as is: its '
                          f'ratios are not one-hot (mean {mean_ratios.tolist()}, var '
                          f'{var_ratios.tolist()}); train it further or raise the radius',
                          logger='current', level=logging.WARNING)
                counts['kept'] = counts.get('kept', 0) + 1
                continue
            parent._modules[name] = replacement
            kind = type(replacement).__name__
            counts[kind] = counts.get(kind, 0) + 1
    folded = fold_conv_bn(model) if fuse_conv else 0
    summary = ', '.join(f'{k}: {v}' for k, v in sorted(counts.items())) or 'no SN/SSN layers'
    print_log(f'collapse_norms: {summary}; {folded} BatchNorm folded into convs', logger='current')
    return model


def build_collapsed(collapsed: Optional[dict] = None, **model_args) -> nn.Module:
    """Build the model of a deployed config, with the structure :func:`collapse_norms` left.

    Registered as ``CollapsedNorms`` in mmengine's root ``MODELS``.  The config
    ``tools/deploy.py`` writes keeps the trained model's arguments and only
    swaps its type::

        model = dict(type='CollapsedNorms',
                     collapsed=dict(model_type='EncoderDecoder', plan={...}, fuse_conv=True),
                     backbone=..., decode_head=..., ...)  # the trained model's arguments

    so whatever edits ``cfg.model`` edits the trained model's arguments, as it
    would in the original config: mmseg's ``init_model`` (``pretrained``,
    ``train_cfg``), mmdet's ``init_detector`` (``backbone.init_cfg``), the
    Inferencers, the Runner's ``data_preprocessor``, ``--cfg-options model.*``.
    The model is built, then collapsed exactly as ``collapsed['plan']`` says
    (see :func:`collapse_plan`), ready for the deployed weights.

    Configs written before this layout (``model=``, ``plan=``, ``fuse_conv=``) still build.
    """
    if collapsed is None and 'model' in model_args and 'plan' in model_args:
        model = dict(model_args.pop('model'))  # the earlier layout: the original model nested
        collapsed = dict(model_type=model.pop('type'), plan=model_args.pop('plan'),
                         fuse_conv=model_args.pop('fuse_conv', True))
        data_preprocessor = model_args.pop('data_preprocessor', None)
        if data_preprocessor is not None:  # mmengine's Runner merges the top-level one in
            model.setdefault('data_preprocessor', data_preprocessor)
        model_args = dict(model, **model_args)  # e.g. init_model's pretrained=None, train_cfg=None
    if not isinstance(collapsed, dict) or not {'model_type', 'plan'} <= set(collapsed):
        raise TypeError("CollapsedNorms needs collapsed=dict(model_type=..., plan=..., fuse_conv=...) "
                        "beside the model's arguments, as in the config tools/deploy.py writes; "
                        f"got collapsed={collapsed!r}")
    plan = collapsed['plan']
    built = MODELS.build(dict(model_args, type=collapsed['model_type']))
    built.eval()  # not chained: some modules' train() returns None (mmseg's ResNet)
    layers = {n for n, m in built.named_modules() if isinstance(m, SwitchNormBase)}
    unknown = sorted(set(plan) - layers)
    if unknown:
        raise ValueError(f'CollapsedNorms: plan names layers that are not SN/SSN in this model: '
                         f'{unknown[:5]}')
    with torch.no_grad():
        return collapse_norms(built, collapsed.get('fuse_conv', True),
                              plan={k: tuple(v) for k, v in plan.items()})


MODELS.register_module('CollapsedNorms', module=build_collapsed)


def _deployed_config(cfg: Config, plan: dict[str, list[int]], fuse_conv: bool) -> Config:
    """``cfg`` with its model as :func:`build_collapsed` takes it, and ``ssn_plugins`` imported."""
    deployed = copy.deepcopy(cfg)
    model = cfg.model.to_dict()
    deployed.model = dict(type='CollapsedNorms',
                          collapsed=dict(model_type=model.pop('type'), plan=plan, fuse_conv=fuse_conv),
                          **model)
    imports = deployed.get('custom_imports') or dict(imports=[], allow_failed_imports=False)
    names = imports.get('imports', [])
    names = [names] if isinstance(names, str) else list(names)
    if 'ssn_plugins' not in names:  # CollapsedNorms must be registered wherever the config is read
        deployed.custom_imports = dict(imports, imports=names + ['ssn_plugins'])
    return deployed


@dataclass
class Deployed:
    """What :func:`deploy_checkpoint` wrote: paths, and the ONNX check when asked for."""
    checkpoint: str
    config: str
    onnx: Optional[str] = None
    onnx_report: Optional[dict] = None  # see ssn_plugins.onnx_export.export_onnx


def _deploy_paths(config: Union[str, Config], checkpoint: str, out: str,
                  onnx: Optional[str]) -> list[str]:
    """``[OUT, OUT.py(, ONNX)]``, refusing names that would overwrite an input or each other."""
    if os.path.splitext(out)[1] == '.py':
        raise ValueError(f'OUT {out} ends in .py, but the deployed config is written to OUT with '
                         f'the suffix .py, so it would overwrite the checkpoint: name it e.g. '
                         f'{os.path.splitext(out)[0]}.pth')
    paths = [out, os.path.splitext(out)[0] + '.py'] + ([onnx] if onnx else [])
    inputs = {checkpoint: 'the input checkpoint'}
    if isinstance(config, str):
        inputs[config] = 'the input config'
    check_distinct(paths)  # before any other check or work (replacing checks them again)
    for path in paths:
        check_destination(path, inputs)  # by real path: a link to an input is refused too
    return paths


def deploy_checkpoint(config: Union[str, Config],
                      checkpoint: str,
                      out: str,
                      fuse_conv: bool = True,
                      onnx: Optional[str] = None,
                      onnx_shape: Optional[Sequence[int]] = None) -> Deployed:
    """Collapse a trained checkpoint of ``config``; write ``out``, a config beside it, and ONNX.

    ``out`` holds the collapsed ``state_dict`` (plain tensors, loads with
    ``weights_only=True``; its ``meta`` has the config and the source's
    ``dataset_meta``) and ``out`` with the suffix ``.py`` a config whose model
    is ``CollapsedNorms`` (see :func:`build_collapsed`), so ``tools/test.py
    OUT.py OUT``, mmseg's ``init_model``, mmdet's ``init_detector`` and the
    Inferencers use the deployed network.  With
    ``onnx``, the collapsed model is also exported there (image ``onnx_shape``
    (H, W); see :mod:`ssn_plugins.onnx_export`) and checked in onnxruntime.

    The files are written as temporaries beside their destinations and
    renamed over them only when all were written, so a failure leaves an
    older deployment whole (:func:`ssn_plugins.fileio.replacing`; only a
    crash between the renames could leave a new checkpoint beside an old
    config).
    """
    cfg = read_config(config)
    require_model(cfg, config)  # before reading the checkpoint
    paths = _deploy_paths(config, checkpoint, out, onnx)
    if onnx:
        require_onnx()  # before the work, not after it
    source = read_checkpoint(checkpoint)
    state = read_state_dict(source, where=checkpoint)
    model = build_model(cfg)
    check_state_dict(model, state, source=checkpoint)  # exact, up to num_batches_tracked
    model.load_state_dict(state, strict=False)
    model.eval()
    plan = collapse_plan(model)
    with torch.no_grad():
        collapse_norms(model, fuse_conv)
    deployed = _deployed_config(cfg, plan, fuse_conv)
    meta = {'cfg': deployed.pretty_text}  # as in a Runner checkpoint: the Inferencers read it
    if isinstance(source.get('meta'), dict) and 'dataset_meta' in source['meta']:
        meta['dataset_meta'] = source['meta']['dataset_meta']
    report = None
    with replacing(*paths) as temps:
        torch_save({'state_dict': model.state_dict(), 'meta': meta}, temps[0])
        deployed.dump(temps[1])
        if onnx:
            report = export_onnx(model, cfg, temps[2], onnx_shape)
            report['path'] = os.path.abspath(onnx)
    return Deployed(os.path.abspath(out), os.path.abspath(paths[1]),
                    os.path.abspath(onnx) if onnx else None, report)
