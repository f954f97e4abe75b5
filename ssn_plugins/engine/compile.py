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

from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS

__all__ = ['PlainParamGroupsHook', 'add_compile_hooks']


@HOOKS.register_module()
class PlainParamGroupsHook(Hook):
    """Turn the optimizers' parameter groups into plain dicts, so dynamo can trace ``step``.

    The groups keep their keys and values (``params``, ``lr``, the
    schedulers' ``initial_lr``, ...) and the list keeps its identity.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        wrapper = runner.optim_wrapper
        wrappers = wrapper.values() if isinstance(wrapper, OptimWrapperDict) else [wrapper]
        for optim_wrapper in wrappers:
            groups = optim_wrapper.optimizer.param_groups
            groups[:] = [dict(group) for group in groups]


def add_compile_hooks(cfg: Config) -> Config:
    """Append :class:`PlainParamGroupsHook` to ``cfg.custom_hooks`` when ``cfg.compile`` is on."""
    if not cfg.get('compile', None):
        return cfg
    hooks = list(cfg.get('custom_hooks', None) or [])
    if not any(isinstance(h, PlainParamGroupsHook) or (isinstance(h, dict) and h.get('type') in (
            'PlainParamGroupsHook', PlainParamGroupsHook)) for h in hooks):
        hooks.append(dict(type='PlainParamGroupsHook'))
    cfg.custom_hooks = hooks
    return cfg
