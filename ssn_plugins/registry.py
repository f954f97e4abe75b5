"""Registries of the ``ssn_plugins`` scope, for configs that inherit ``'ssn_plugins::...'``.

Everything of this package is registered in mmengine's root registries, so
mmdet and mmseg both find it. A base read through ``ssn_plugins::`` gets
``_scope_='ssn_plugins'`` on its dicts that had no scope yet (the
``custom_hooks``; in the demo configs also ``train_cfg`` and
``param_scheduler``), and mmengine then builds them in the ``ssn_plugins``
child of the root registry, importing this module to find it. These
children hold nothing themselves: a name is looked up in their parent,
the root. Without them mmengine warns for every such dict and falls back
to the root.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterator, Optional

from mmengine.registry import HOOKS as ROOT_HOOKS
from mmengine.registry import LOOPS as ROOT_LOOPS
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as ROOT_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import PARAM_SCHEDULERS as ROOT_PARAM_SCHEDULERS
from mmengine.registry import WEIGHT_INITIALIZERS as ROOT_WEIGHT_INITIALIZERS
from mmengine.registry import Registry
from torch import nn

from .norm.kinds import LAYERS

__all__ = ['HOOKS', 'LOOPS', 'MODELS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS',
           'WEIGHT_INITIALIZERS', 'SWITCH_NORM_NAMES', 'norm_layer_names', 'check_norm_cfgs']

#: The names ssn_plugins registers for its layers in mmengine's root MODELS (ssn_plugins.norm).
SWITCH_NORM_NAMES = tuple(LAYERS)

_NORM_BASES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)

_SCOPE = dict(scope='ssn_plugins', locations=['ssn_plugins'])
HOOKS = Registry('hook', parent=ROOT_HOOKS, **_SCOPE)
LOOPS = Registry('loop', parent=ROOT_LOOPS, **_SCOPE)
MODELS = Registry('model', parent=ROOT_MODELS, **_SCOPE)
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor',
                                      parent=ROOT_OPTIM_WRAPPER_CONSTRUCTORS, **_SCOPE)
PARAM_SCHEDULERS = Registry('parameter scheduler', parent=ROOT_PARAM_SCHEDULERS, **_SCOPE)
WEIGHT_INITIALIZERS = Registry('weight initializer', parent=ROOT_WEIGHT_INITIALIZERS, **_SCOPE)


def norm_layer_names(scope: Optional[str] = None) -> list[str]:
    """Names of the normalization layers ``norm_cfg`` can use in ``scope`` (its MODELS and the root's)."""
    registries = [ROOT_MODELS]
    if scope:
        with ROOT_MODELS.switch_scope_and_registry(scope) as registry:
            registries.insert(0, registry)
    names = {name for name in SWITCH_NORM_NAMES if name in ROOT_MODELS.module_dict}
    for registry in registries:
        registry.import_from_location()
        names.update(name for name, cls in registry.module_dict.items()
                     if isinstance(cls, type) and issubclass(cls, _NORM_BASES))
    return sorted(names)


def check_norm_cfgs(model_cfg: Any, scope: Optional[str] = None, source: str = 'the config') -> None:
    """``ValueError`` for a ``norm_cfg`` in ``model_cfg`` (a config's ``model``) whose ``type`` no
    registry of ``scope`` knows, before anything is built.

    mmcv's ``build_norm_layer`` says only ``Cannot find None in registry``;
    this names the type, where it is, a close match and the names there are.
    """
    for path, norm_type in _norm_types(model_cfg, 'model'):
        with ROOT_MODELS.switch_scope_and_registry(scope) as registry:
            found = registry.get(norm_type) is not None
        if found:
            continue
        names = norm_layer_names(scope)
        by_lower = {name.lower(): name for name in names}
        close = difflib.get_close_matches(norm_type.lower(), list(by_lower), n=1, cutoff=0.5)
        hint = f"did you mean '{by_lower[close[0]]}'? " if close else ''
        others = [name for name in names if name not in SWITCH_NORM_NAMES]
        raise ValueError(f"{source}: {path}.type = '{norm_type}' is not a registered norm layer; "
                         f"{hint}ssn_plugins registers {', '.join(SWITCH_NORM_NAMES)}; also known "
                         f"here: {', '.join(others)}")


def _norm_types(cfg: Any, path: str) -> Iterator[tuple[str, str]]:
    """(dotted path of a ``norm_cfg``, its type) for every ``norm_cfg`` dict with a str type in ``cfg``."""
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            where = f'{path}.{key}'
            if key == 'norm_cfg' and isinstance(value, dict) and isinstance(value.get('type'), str):
                yield where, value['type']
            else:
                yield from _norm_types(value, where)
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            yield from _norm_types(value, f'{path}[{i}]')
