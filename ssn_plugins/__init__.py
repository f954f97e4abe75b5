"""Sparse Switchable Normalization (SSN) and Switchable Normalization (SN) for OpenMMLab.

Importing the package registers the layers (``SN``, ``SSN``, ...) in mmengine's
root ``MODELS`` and the hooks in its root ``HOOKS``, so mmdet and mmseg
configs can use them after
``custom_imports = dict(imports=['ssn_plugins'], allow_failed_imports=False)``.
"""
from .engine import SSNRadiusHook, SwitchNormEvalHook, SwitchNormMonitorHook, apply_norm_eval
from .norm import (SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d, SwitchNorm1d,
                   SwitchNorm2d, SwitchNorm3d, is_switch_norm)
from .norm import (SyncSparseSwitchNorm, SyncSwitchNorm, convert_sync_switchnorm,
                   revert_sync_switchnorm)
from .ops import sparsemax, sparsestmax
from .checkpoint import (ResNetReleasedStem, SwitchNormPretrained, convert_checkpoint,
                         use_released_stem)
from .deploy import collapse_norms

__version__ = '0.1.0'

__all__ = [
    'sparsemax', 'sparsestmax', 'SwitchNorm1d', 'SwitchNorm2d', 'SwitchNorm3d',
    'SparseSwitchNorm1d', 'SparseSwitchNorm2d', 'SparseSwitchNorm3d', 'is_switch_norm',
    'SSNRadiusHook', 'SwitchNormEvalHook', 'SwitchNormMonitorHook', 'apply_norm_eval',
    'SyncSwitchNorm', 'SyncSparseSwitchNorm', 'convert_sync_switchnorm', 'revert_sync_switchnorm',
    'collapse_norms',
    'SwitchNormPretrained', 'ResNetReleasedStem', 'convert_checkpoint', 'use_released_stem'
]
