"""Any model or config to SN/SSN (the inverse of :func:`ssn_plugins.collapse_norms`).

- :func:`convert_norms`: a built model (torchvision, timm, mmpretrain, your own).
- :func:`convert_config`: an OpenMMLab config (mmdet, mmseg, mmpretrain).
- :func:`plain_norms`, :func:`check_leftover_norms`, :class:`LeftoverNormHook`:
  the normalization layers a model still holds, named.
"""
from .check import LeftoverNormHook, check_leftover_norms
from .configs import SWITCH_NORM_TYPES, asks_switch_norm, convert_config, upstream_config_path
from .modules import NORM_TYPES, LeftoverNormWarning, convert_norms, plain_norms

__all__ = ['convert_norms', 'convert_config', 'plain_norms', 'asks_switch_norm', 'NORM_TYPES',
           'SWITCH_NORM_TYPES', 'upstream_config_path', 'LeftoverNormWarning', 'check_leftover_norms', 'LeftoverNormHook']
