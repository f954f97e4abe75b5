"""Clip the gradient norm of the SN/SSN logits alone, as the released SSN recipe does.

mmengine's ``clip_grad`` clips all parameters together. The released
ImageNet recipe clips only the ``mean_weight``/``var_weight`` group, jointly,
to norm 1.0, after the gradient all-reduce. :class:`SwitchNormLogitClipHook`
does that, for SN and SSN layers alike, inside the optimizer's ``step``, so
it runs after DDP's all-reduce and after AMP's unscaling, right before every
``optimizer.step`` (``OptimWrapper`` and ``AmpOptimWrapper`` alike).  It
wraps the optimizer's ``step`` rather than registering a step pre-hook:
torch 2.1 stops calling the step hooks of every optimizer made after the
first ``torch.compile`` in the process, so a hook would silently not clip::

    custom_hooks = [dict(type='SwitchNormLogitClipHook', max_norm=1.0)]

``SSNLogitClipHook``, its first name, stays registered as an alias, so older
configs keep working.
"""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS
from torch import nn
from torch.nn.utils import clip_grad_norm_

from ..builder import unwrap_model
from ..norm.switch_norm import is_switch_norm

__all__ = ['SwitchNormLogitClipHook', 'SSNLogitClipHook', 'switch_norm_logits']


def switch_norm_logits(model: nn.Module) -> list[nn.Parameter]:
    """``mean_weight`` and ``var_weight`` of every SN/SSN layer of ``model``."""
    return [p for m in unwrap_model(model).modules() if is_switch_norm(m)
            for p in (m.mean_weight, m.var_weight)]


@HOOKS.register_module()
class SwitchNormLogitClipHook(Hook):
    """Clip the joint gradient norm of all SN/SSN logits before each optimizer step.

    Args:
        max_norm: the norm the logits' gradients are clipped to (released: 1.0).

    The norm before clipping is logged as ``ssn_logit_grad_norm``.
    """

    priority = 'NORMAL'

    def __init__(self, max_norm: float = 1.0) -> None:
        if not max_norm > 0:
            raise ValueError(f'max_norm must be > 0, got {max_norm!r}')
        self.max_norm = float(max_norm)
        self._wrapped = []  # (optimizer, its own step attribute or None, our wrapper)

    def before_train(self, runner) -> None:
        logits = {id(p): p for p in switch_norm_logits(runner.model)}
        if not logits:
            raise ValueError(f'{type(self).__name__}: the model has no SN/SSN layer whose logits to clip')
        wrappers = (runner.optim_wrapper.values() if isinstance(runner.optim_wrapper, OptimWrapperDict)
                    else [runner.optim_wrapper])
        for wrapper in wrappers:
            optimizer = wrapper.optimizer
            owned = [p for group in optimizer.param_groups for p in group['params'] if id(p) in logits]
            if owned:
                self._wrap_step(optimizer, self._clipper(runner, owned))

    def _wrap_step(self, optimizer, clip) -> None:
        own = optimizer.__dict__.get('step')
        step = optimizer.step

        def clipped_step(*args, **kwargs):
            clip()
            return step(*args, **kwargs)

        optimizer.step = clipped_step
        self._wrapped.append((optimizer, own, clipped_step))

    def _clipper(self, runner, params: list[nn.Parameter]):

        def clip() -> None:
            grads = [p for p in params if p.grad is not None]
            if grads:
                norm = clip_grad_norm_(grads, self.max_norm)
                runner.message_hub.update_scalar('train/ssn_logit_grad_norm', float(norm))

        return clip

    def after_train(self, runner) -> None:
        for optimizer, own, clipped_step in reversed(self._wrapped):
            if optimizer.__dict__.get('step') is not clipped_step:
                continue  # wrapped again by someone else: theirs stays
            if own is None:
                del optimizer.step
            else:
                optimizer.step = own
        self._wrapped = []


# the first name, from when only SSN configs used it; the same class
SSNLogitClipHook = SwitchNormLogitClipHook
HOOKS.register_module(name='SSNLogitClipHook', module=SwitchNormLogitClipHook)
