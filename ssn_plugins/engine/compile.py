"""What mmengine's ``compile=True`` needs besides traceable layers.

mmengine 0.10.7 compiles the model's whole ``train_step``, so dynamo also
traces ``optimizer.step``.  With a ``paramwise_cfg`` (every SN/SSN config has
one, for the logits) mmengine's ``DefaultOptimWrapperConstructor`` hands the
optimizer its parameter groups as ``ConfigDict``s, and dynamo (torch 2.13)
fails on those: ``InternalTorchDynamoError: AttributeError:
'UserDefinedDictVariable' object has no attribute 'items'``.
:class:`PlainParamGroupsHook` makes them plain dicts before training.
"""
from __future__ import annotations

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS

from ..compat import TORCH_VERSION, WHOLE_STEP_COMPILE_MIN_TORCH

__all__ = ['PlainParamGroupsHook', 'EagerStepEndsHook', 'add_compile_hooks']


def _optim_wrappers(runner) -> list:
    wrapper = runner.optim_wrapper
    return list(wrapper.values()) if isinstance(wrapper, OptimWrapperDict) else [wrapper]


@HOOKS.register_module()
class PlainParamGroupsHook(Hook):
    """Turn the optimizers' parameter groups into plain dicts, so dynamo can trace ``step``.

    The groups keep their keys and values (``params``, ``lr``, the
    schedulers' ``initial_lr``, ...) and the list keeps its identity.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        for optim_wrapper in _optim_wrappers(runner):
            groups = optim_wrapper.optimizer.param_groups
            groups[:] = [dict(group) for group in groups]


@HOOKS.register_module()
class EagerStepEndsHook(Hook):
    """Run the data preprocessor and the optimizer update of a compiled ``train_step`` eagerly.

    mmengine compiles the whole ``train_step``.  torch 2.1's dynamo crashes
    inside both ends of it: ``SGD.step`` (``InternalTorchDynamoError: list
    index out of range``) and mmengine's ``stack_batch`` (``scalar_tensor()``
    of a list), and also in mmdet's heads (``InstanceData`` indexing).  Below
    :data:`~ssn_plugins.compat.WHOLE_STEP_COMPILE_MIN_TORCH` the two ends run
    outside dynamo (a graph break at each), and dynamo's ``suppress_errors``
    is switched on, so any other frame it cannot trace runs eagerly instead of
    failing the run.  The model's forward and loss, the SN/SSN layers
    included (which compile with ``fullgraph=True`` from torch 2.1), stay compiled.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._suppressed = False

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        preprocessor = model.data_preprocessor
        preprocessor.forward = torch._dynamo.disable(preprocessor.forward)
        for optim_wrapper in _optim_wrappers(runner):
            optim_wrapper.update_params = torch._dynamo.disable(optim_wrapper.update_params)
        self._suppressed = torch._dynamo.config.suppress_errors
        torch._dynamo.config.suppress_errors = True

    def after_train(self, runner) -> None:
        torch._dynamo.config.suppress_errors = self._suppressed  # a process-wide setting


def add_compile_hooks(cfg: Config) -> Config:
    """When ``cfg.compile`` is on, append :class:`PlainParamGroupsHook` to ``cfg.custom_hooks``,
    and :class:`EagerStepEndsHook` below torch :data:`~ssn_plugins.compat.WHOLE_STEP_COMPILE_MIN_TORCH`."""
    if not cfg.get('compile', None):
        return cfg
    hooks = list(cfg.get('custom_hooks', None) or [])
    needed = [PlainParamGroupsHook]
    if TORCH_VERSION < WHOLE_STEP_COMPILE_MIN_TORCH:
        needed.append(EagerStepEndsHook)
    for hook_type in needed:
        if not any(isinstance(h, hook_type) or (isinstance(h, dict) and h.get('type') in (
                hook_type.__name__, hook_type)) for h in hooks):
            hooks.append(dict(type=hook_type.__name__))
    cfg.custom_hooks = hooks
    return cfg
