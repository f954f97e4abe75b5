"""``CollapsedNorms``: the registered model of a deployed config (built, then collapsed by plan)."""
from __future__ import annotations

from typing import Optional

import torch
from mmengine.registry import MODELS
from torch import nn

from ..norm.switch_norm import SwitchNormBase
from .collapse import collapse_norms

__all__ = ['build_collapsed']


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
