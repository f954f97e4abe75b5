from .checkpoint_io import SafeCheckpointHook
from .hooks import SSNRadiusHook, SwitchNormEvalHook, apply_norm_eval, radius_at

__all__ = ['SSNRadiusHook', 'SwitchNormEvalHook', 'apply_norm_eval', 'radius_at',
           'SafeCheckpointHook']
