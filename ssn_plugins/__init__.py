"""Sparse Switchable Normalization (SSN) and Switchable Normalization (SN) for OpenMMLab.

Importing the package registers the layers (``SN``, ``SSN``, ``SyncSSN``, ...)
and the backbone ``ResNetReleasedStem`` in mmengine's root ``MODELS``, the hooks
in its root ``HOOKS`` and ``SwitchNormPretrained`` in its root
``WEIGHT_INITIALIZERS``, so mmdet and mmseg configs can use them after
``custom_imports = dict(imports=['ssn_plugins'], allow_failed_imports=False)``.
It also lets mmengine resolve ``_base_ = 'ssn_plugins::<path under configs/>'``.
"""
from .checkpoint import SwitchNormPretrained, convert_checkpoint
from .convert import (LeftoverNormHook, check_leftover_norms, convert_config, convert_norms,
                      plain_norms)
from .deploy import collapse_norms
from .engine import (SafeCheckpointHook, SSNLogitClipHook, SSNRadiusHook, SwitchNormEvalHook,
                     SwitchNormLogitClipHook, SwitchNormMonitorHook, apply_norm_eval,
                     make_checkpoint_loaders_safe)
from .norm import (SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d,
                   SparseSwitchNormBase, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, SwitchNormBase,
                   SyncSparseSwitchNorm, SyncSwitchNorm, convert_sync_switchnorm, is_switch_norm,
                   revert_sync_switchnorm, update_choices)
from .mim import config_path, register_config_prefix
from .models import ResNetReleasedStem, use_released_stem
from . import compat, registry  # noqa: F401  (registry: the 'ssn_plugins' scope of bases)
from .ops import sparsemax, sparsestmax
from .version import __version__

register_config_prefix()  # 'ssn_plugins::mmdet/...' bases, see ssn_plugins/mim.py
make_checkpoint_loaders_safe()  # the Runner's loads too: weights_only=True on every torch

__all__ = [
    'sparsemax', 'sparsestmax', 'SwitchNorm1d', 'SwitchNorm2d', 'SwitchNorm3d',
    'SparseSwitchNorm1d', 'SparseSwitchNorm2d', 'SparseSwitchNorm3d', 'SwitchNormBase',
    'SparseSwitchNormBase', 'is_switch_norm', 'update_choices',
    'SyncSwitchNorm', 'SyncSparseSwitchNorm', 'convert_sync_switchnorm', 'revert_sync_switchnorm',
    'SSNRadiusHook', 'SwitchNormEvalHook', 'SwitchNormMonitorHook', 'SafeCheckpointHook',
    'SwitchNormLogitClipHook', 'SSNLogitClipHook',
    'apply_norm_eval', 'SwitchNormPretrained', 'ResNetReleasedStem', 'convert_checkpoint',
    'use_released_stem', 'collapse_norms', 'convert_norms', 'convert_config', 'plain_norms',
    'check_leftover_norms', 'LeftoverNormHook', 'config_path', '__version__'
]
