"""Models from mmdet/mmseg configs, and the model inside a wrapper: one place for both."""
from __future__ import annotations

import copy
import os
import re
from typing import Optional, Union

from mmengine.config import Config
from mmengine.model import is_model_wrapper
from mmengine.registry import MODELS, init_default_scope
from torch import nn

from .extras import TOOLKIT_MODULES, require
from .registry import check_norm_cfgs

__all__ = ['read_config', 'require_model', 'build_model', 'unwrap_model']

# the distribution mmengine names when the package of a 'scope::' base is missing
_SCOPE_OF_DISTRIBUTION = {'mmdet': 'mmdet', 'mmsegmentation': 'mmseg', 'mmpretrain': 'mmpretrain'}


def read_config(config: Union[str, Config]) -> Config:
    """``Config.fromfile(config)``, or ``config`` itself if it is already a ``Config``.

    A ``scope::`` base of a toolkit that is not installed names the extra to
    install; a file Python or mmengine cannot read (a syntax error, a missing
    base, a name error) gives a ``ValueError`` that names the file and the problem.
    """
    if isinstance(config, Config):
        return config
    if not os.path.isfile(config):
        raise FileNotFoundError(f'config file not found: {config}')
    try:
        return Config.fromfile(config)
    except ModuleNotFoundError as err:  # mmengine: 'mmdet is not installed, please install ...'
        found = re.match(r'(\S+) is not installed', str(err))
        scope = _SCOPE_OF_DISTRIBUTION.get(found.group(1) if found else None)
        if scope is not None:  # name the extra that brings the toolkit of a 'scope::' base
            require(*TOOLKIT_MODULES[scope], purpose=f'{config} (a {scope}:: base)')
        raise
    except SyntaxError as err:
        named = err.filename and not err.filename.startswith('<')  # mmengine parses text: '<unknown>'
        where = f'{err.filename}, line {err.lineno}' if named else f'line {err.lineno}'
        raise ValueError(f'config {config} is not valid Python: {err.msg} ({where}); fix the '
                         f'config') from err
    except Exception as err:  # mmengine's base merging, a name error in the config's code, ...
        raise ValueError(f'config {config} could not be read: {type(err).__name__}: {err}') from err


def require_model(cfg: Config, config: Union[str, Config]) -> None:
    """``ValueError`` naming the config unless it defines a ``model`` dict with a ``type``."""
    model = cfg.get('model', None)
    name = config if isinstance(config, str) else (cfg.filename or 'the config')
    if not isinstance(model, dict):
        raise ValueError(f'config {name} has no model (a dict, e.g. model = dict(type=...)): '
                         'give the config the checkpoint was trained with')
    if 'type' not in model:
        raise ValueError(f"config {name}: its model has no 'type' (e.g. 'EncoderDecoder', "
                         "'MaskRCNN'); give the config the checkpoint was trained with, or "
                         "inherit its model with _base_")


def build_model(config: Union[str, Config], scope: Optional[str] = None,
                from_scratch: bool = False) -> nn.Module:
    """The (uninitialised) model of ``config``, built in its registry scope.

    Args:
        config: a config file or a loaded ``Config``.
        scope: ``'mmdet'``, ``'mmseg'``, ...; default the config's
            ``default_scope``.
        from_scratch: no pretrained weights: ``backbone.init_cfg`` and the
            model's ``pretrained`` are set to None (they would need a download).
    """
    cfg = read_config(config)
    require_model(cfg, config)
    model_cfg = cfg.model
    if from_scratch:
        model_cfg = copy.deepcopy(model_cfg)
        if 'backbone' in model_cfg:
            model_cfg['backbone']['init_cfg'] = None
        if 'pretrained' in model_cfg:
            model_cfg['pretrained'] = None
    scope = scope or cfg.get('default_scope', None) or 'mmengine'
    if scope in TOOLKIT_MODULES:
        require(*TOOLKIT_MODULES[scope], purpose=f'a {scope} model')
    init_default_scope(scope)
    check_norm_cfgs(model_cfg, scope, source=config if isinstance(config, str) else 'the config')
    return MODELS.build(model_cfg)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP (or other mmengine) wrapper, else ``model``."""
    return model.module if is_model_wrapper(model) else model
