"""Any OpenMMLab config to SN/SSN: every ``norm_cfg``, the runtime, the pretrained init.

:func:`convert_config` returns a new ``Config`` (the input is left as it was)
whose model asks for SN/SSN everywhere a ``norm_cfg`` appears, with this
package's hooks, the logits' optimizer recipe and ``custom_imports`` added,
and a BN ``Pretrained`` init turned into a ``SwitchNormPretrained`` that maps
the BN keys and statistics onto the SN/SSN layers when it loads.
It can also say, line by line, what it changed besides the layer types;
``tools/convert_config.py`` writes that at the top of the file.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import os
from typing import Any, Optional, Union

from mmengine.config import Config, ConfigDict

from ..builder import read_config
from ..mim import config_path
from ..norm import LAYERS
from .modules import NORM_TYPES

__all__ = ['convert_config', 'asks_switch_norm', 'upstream_config_path', 'SWITCH_NORM_TYPES']

# what a norm_cfg of ours may name (registry names and classes' names)
SWITCH_NORM_TYPES = tuple(LAYERS) + tuple(cls.__name__ for cls in LAYERS.values())
# norm_cfg keys our layers take; anything else (GN's num_groups, ...) is dropped, not merged
_KEPT_KEYS = ('eps', 'momentum')
_LOGIT_KEYS = ('mean_weight', 'var_weight')
_DEFAULT_CONSTRUCTORS = (None, 'DefaultOptimWrapperConstructor', 'SummaryOptimWrapperConstructor')


def upstream_config_path(path: str) -> str:
    """The file of ``'mmdet::mask_rcnn/...py'`` (also mmseg::, mmpretrain::) in the installed
    toolkit, as mmengine resolves such a ``_base_``; any other path as it is."""
    if '::' not in path:
        return path
    from mmengine.config.utils import _get_external_cfg_base_path, _get_package_and_cfg_path
    from mmengine.utils import get_installed_path

    from ..extras import TOOLKIT_MODULES, require
    scope = path.split('::', 1)[0]
    if scope in TOOLKIT_MODULES:
        require(*TOOLKIT_MODULES[scope], purpose=path)
    package, relative = _get_package_and_cfg_path(path)
    found = _get_external_cfg_base_path(get_installed_path(package), relative)
    if not os.path.isfile(found):
        raise FileNotFoundError(f'{path}: no such config in the installed {package} ({found})')
    return found


def _type_name(value: Any) -> str:
    return value if isinstance(value, str) else getattr(value, '__name__', str(value))


def asks_switch_norm(cfg: Union[Config, dict]) -> bool:
    """True if any ``norm_cfg`` in ``cfg['model']`` names an SN/SSN layer."""
    found = []

    def visit(node: Any, path: str) -> Any:
        if isinstance(node, dict) and _type_name(node.get('type')).split('.')[-1] in SWITCH_NORM_TYPES \
                and path.endswith('norm_cfg'):
            found.append(path)
        return node

    _walk(cfg.get('model', {}), 'model', visit)
    return bool(found)


def _walk(node: Any, path: str, visit) -> Any:
    """Rebuild ``node`` bottom-up, calling ``visit(value, path)`` on every dict and list item."""
    if isinstance(node, dict):
        out = type(node)() if isinstance(node, ConfigDict) else {}
        for key, value in node.items():
            out[key] = _walk(value, f'{path}.{key}', visit)
        return visit(out, path)
    if isinstance(node, (list, tuple)):
        return type(node)(_walk(v, f'{path}[{i}]', visit) for i, v in enumerate(node))
    return node


def _new_norm_cfg(old: dict, norm: str, path: str, notes: list[str]) -> dict:
    new = dict(type=norm, requires_grad=True)
    new.update({k: old[k] for k in _KEPT_KEYS if k in old})
    dropped = sorted(set(old) - set(_KEPT_KEYS) - {'type', 'requires_grad'})
    if dropped:
        notes.append(f'{path}: {_type_name(old.get("type"))} options {dropped} dropped')
    if old.get('requires_grad') is False:
        notes.append(f'{path}: requires_grad was False; {norm} layers train (their logits must learn)')
    return new


def _pretrained(init_cfg: Any, path: str, notes: list[str]) -> Any:
    """A ``Pretrained`` init (or list of inits) with the BN/GN keys mapped onto SN/SSN on load."""
    if isinstance(init_cfg, (list, tuple)):
        return type(init_cfg)(_pretrained(c, path, notes) for c in init_cfg)
    if not isinstance(init_cfg, dict) or _type_name(init_cfg.get('type')) != 'Pretrained':
        return init_cfg
    new = dict(type='SwitchNormPretrained', checkpoint=init_cfg['checkpoint'], map_norms=True)
    if init_cfg.get('prefix') is not None:
        new['prefix'] = init_cfg['prefix']
    notes.append(f"{path}: Pretrained {init_cfg['checkpoint']} loads through SwitchNormPretrained"
                 f'(map_norms=True): BN/GN weights and statistics go to the SN/SSN layers, logits start '
                 f'uniform, and any key that does not fit is an error')
    return new


def _registry(scope: Optional[str]):
    """The ``MODELS`` registry of ``scope`` (its modules imported), or mmengine's root."""
    from mmengine.registry import MODELS
    if scope in (None, 'mmengine'):
        return MODELS
    try:
        return importlib.import_module(f'{scope}.registry').MODELS
    except ImportError:
        return MODELS


def _default_norm_cfg(node: dict, registry) -> Optional[dict]:
    """The ``norm_cfg`` default of the class ``node['type']`` names, if it is a dict (e.g. mmdet's
    FCOSHead defaults to GN, mmpretrain's ResNet to BN), else None."""
    kind = node.get('type')
    try:
        cls = registry.get(kind) if isinstance(kind, str) else kind
    except Exception:  # not a model type (an assigner, a sampler, ...) or not importable here
        return None
    for klass in getattr(cls, '__mro__', ())[:-1]:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        params = inspect.signature(init).parameters
        if 'norm_cfg' in params:
            default = params['norm_cfg'].default
            return dict(default) if isinstance(default, dict) else None
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
    return None


def _convert_model(model: dict, norm: str, notes: list[str], scope: Optional[str] = None) -> dict:
    converted = []
    registry = _registry(scope)

    def visit(node: Any, path: str) -> Any:
        if not isinstance(node, dict):
            return node
        if 'type' in node and 'norm_cfg' not in node:
            default = _default_norm_cfg(node, registry)
            if default is not None:  # the class's own default (GN, BN): set it explicitly
                node['norm_cfg'] = default
                notes.append(f'{path}: {_type_name(node["type"])} defaults to norm_cfg type '
                             f'{_type_name(default.get("type"))}; set to {norm}')
        if isinstance(node.get('norm_cfg'), dict):
            node['norm_cfg'] = _new_norm_cfg(node['norm_cfg'], norm, f'{path}.norm_cfg', notes)
            converted.append(f'{path}.norm_cfg')
        if node.get('norm_eval') is True:
            node['norm_eval'] = False
            notes.append(f'{path}: norm_eval=True -> False, so the {norm} layers learn their selection')
        if 'init_cfg' in node:
            node['init_cfg'] = _pretrained(node['init_cfg'], f'{path}.init_cfg', notes)
        return node

    model = _walk(model, 'model', visit)
    if model.get('pretrained'):  # mmseg's model.pretrained: the backbone's Pretrained init
        if 'backbone' not in model:
            raise ValueError(f"model.pretrained={model['pretrained']!r} but the model has no backbone")
        model['backbone']['init_cfg'] = _pretrained(
            dict(type='Pretrained', checkpoint=model['pretrained']), 'model.pretrained', notes)
        model['pretrained'] = None
    if not converted:
        raise ValueError('convert_config: the model has no norm_cfg anywhere, so nothing to convert; '
                         'for a model built in Python use ssn_plugins.convert_norms(model)')
    notes.insert(0, f'{len(converted)} norm_cfg converted to {norm}: {", ".join(converted)}')
    return model


def _runtime(norm: str) -> Config:
    sparse = norm in ('SSN', 'SyncSSN')
    return Config.fromfile(config_path('_base_/ssn_runtime.py' if sparse else '_base_/sn_runtime.py'))


def _merge_hooks(hooks: list, ours: list) -> list:
    have = {_type_name(h.get('type')) for h in hooks}
    return list(hooks) + [copy.deepcopy(h) for h in ours if h['type'] not in have]


def _optim_wrapper(wrapper: dict, recipe: dict, notes: list[str]) -> dict:
    wrapper = copy.deepcopy(wrapper)
    constructor = wrapper.get('constructor')
    if constructor in _DEFAULT_CONSTRUCTORS:
        wrapper['constructor'] = recipe['constructor']
    else:
        notes.append(f'optim_wrapper.constructor {constructor!r} kept; it must honour '
                     f'paramwise_cfg.custom_keys for the logits recipe to apply')
    paramwise = dict(wrapper.get('paramwise_cfg') or {})
    keys = dict(paramwise.get('custom_keys') or {})
    for key in _LOGIT_KEYS:
        keys.setdefault(key, recipe['paramwise_cfg']['custom_keys'][key])
    paramwise['custom_keys'] = keys
    wrapper['paramwise_cfg'] = paramwise
    return wrapper


def convert_config(cfg: Union[str, Config], norm: str = 'SSN',
                   notes: Optional[list] = None) -> Config:
    """A copy of ``cfg`` whose model uses ``norm`` (``'SN'``, ``'SSN'``, ``'SyncSN'``, ``'SyncSSN'``).

    - Every ``norm_cfg`` under ``model`` (backbone, neck, every head, nested
      heads, mmseg's decode and auxiliary heads) and the top-level
      ``norm_cfg`` the upstream bases interpolate become
      ``dict(type=norm, requires_grad=True)``, keeping ``eps`` and
      ``momentum``; other keys (GN's ``num_groups``) are dropped.
      ``norm_eval=True`` becomes False so the selection is learned.
    - ``custom_imports``, this package's hooks (the radius schedule for SSN,
      logit clipping, ``norm_eval``, monitoring, safe checkpoints, the check
      for layers left behind) and the logits' optimizer recipe are added.
    - A BN ``Pretrained`` init (``torchvision://``, ``open-mmlab://``, a path;
      also mmseg's ``model.pretrained``) becomes ``SwitchNormPretrained`` with
      ``map_norms=True``, which maps the BN keys and statistics on load and
      refuses a checkpoint that does not fit, naming the keys.

    ``notes``, if given, is filled with one line per change besides the
    layer types (dropped options, ``norm_eval``, ``requires_grad``, inits).
    ``load_from`` (a whole-model checkpoint the Runner loads without mapping
    keys) is refused: convert that checkpoint or start from a backbone init.
    """
    if norm not in NORM_TYPES:
        raise ValueError(f'convert_config: norm must be one of {NORM_TYPES}, got {norm!r}')
    source = read_config(upstream_config_path(cfg) if isinstance(cfg, str) else cfg)
    if 'model' not in source:
        raise ValueError(f'{source.filename or "the config"} has no model to convert')
    if source.get('load_from'):
        raise ValueError(
            f'{source.filename or "the config"}: load_from={source.load_from!r} is a whole-model '
            f'checkpoint the Runner loads without mapping BN keys onto {norm} layers (mmengine would '
            f'only warn and leave them at their init). Set load_from=None and initialise the backbone '
            f'from a BN checkpoint (its Pretrained init is mapped), or train that checkpoint with '
            f'{norm} first')
    notes = [] if notes is None else notes
    out = Config(copy.deepcopy(source.to_dict()), filename=source.filename)
    out.model = _convert_model(out.to_dict()['model'], norm, notes, out.get('default_scope'))
    if isinstance(out.get('norm_cfg'), dict):
        out.norm_cfg = _new_norm_cfg(out.norm_cfg, norm, 'norm_cfg', [])
    runtime = _runtime(norm)
    imports = out.get('custom_imports') or dict(imports=[], allow_failed_imports=False)
    names = list(imports.get('imports', []))
    out.custom_imports = dict(imports=names + ['ssn_plugins'] * ('ssn_plugins' not in names),
                              allow_failed_imports=False)
    out.custom_hooks = _merge_hooks(list(out.get('custom_hooks') or []), runtime.custom_hooks)
    if 'optim_wrapper' in out:
        out.optim_wrapper = _optim_wrapper(out.optim_wrapper.to_dict(),
                                           runtime.switch_norm_optim_wrapper.to_dict(), notes)
    return out
