from .checkpoint_io import SafeCheckpointHook
from .compile import PlainParamGroupsHook
from .distributed import CPUDistributedDataParallel, setup_cpu_distributed
from .hooks import SSNRadiusHook, SwitchNormEvalHook, apply_norm_eval, radius_at
from .logit_clip import SSNLogitClipHook, SwitchNormLogitClipHook, switch_norm_logits
from .monitor import SwitchNormMonitorHook
from .optim import SummaryOptimWrapperConstructor, summarize_param_groups

__all__ = ['SSNRadiusHook', 'SwitchNormEvalHook', 'apply_norm_eval', 'radius_at',
           'SafeCheckpointHook', 'SwitchNormMonitorHook', 'SwitchNormLogitClipHook', 'SSNLogitClipHook',
           'switch_norm_logits',
           'CPUDistributedDataParallel', 'setup_cpu_distributed', 'PlainParamGroupsHook',
           'SummaryOptimWrapperConstructor', 'summarize_param_groups']
