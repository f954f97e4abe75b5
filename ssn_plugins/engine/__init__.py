from .checkpoint_io import SafeCheckpointHook
from .compile import EagerStepEndsHook, PlainParamGroupsHook
from .distributed import CPUDistributedDataParallel, setup_cpu_distributed
from .hooks import SSNRadiusHook, SwitchNormEvalHook, apply_norm_eval, radius_at
from .logit_clip import SSNLogitClipHook, SwitchNormLogitClipHook, switch_norm_logits
from .monitor import SwitchNormMonitorHook
from .optim import SummaryOptimWrapperConstructor, summarize_param_groups
from .safe_load import make_checkpoint_loaders_safe

__all__ = ['SSNRadiusHook', 'SwitchNormEvalHook', 'apply_norm_eval', 'radius_at',
           'SafeCheckpointHook', 'SwitchNormMonitorHook', 'SwitchNormLogitClipHook', 'SSNLogitClipHook',
           'switch_norm_logits',
           'CPUDistributedDataParallel', 'setup_cpu_distributed', 'PlainParamGroupsHook', 'EagerStepEndsHook',
           'SummaryOptimWrapperConstructor', 'summarize_param_groups', 'make_checkpoint_loaders_safe']
