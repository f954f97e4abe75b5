"""mmengine hooks for SN/SSN training: radius schedule and ``norm_eval``.

Both are registered in mmengine's root ``HOOKS`` so mmdet and mmseg configs
find them by name::

    custom_hooks = [dict(type='SSNRadiusHook'), dict(type='SwitchNormEvalHook')]
"""
from __future__ import annotations

from typing import Iterator, Optional

from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from torch import nn

from ..builder import unwrap_model
from ..norm.switch_norm import SparseSwitchNormBase, is_switch_norm, update_choices

__all__ = ['SSNRadiusHook', 'SwitchNormEvalHook', 'radius_at', 'apply_norm_eval']


def sparse_switch_norms(model: nn.Module) -> Iterator[SparseSwitchNormBase]:
    """Every SSN layer of ``model`` (any rank, synced or not)."""
    return (m for m in unwrap_model(model).modules() if isinstance(m, SparseSwitchNormBase))


def radius_at(iteration: int, max_radius: float, start: int, end: int) -> float:
    """``max_radius * clip((iteration - start) / (end - start), 0, 1)``."""
    if end <= start:
        return max_radius if iteration >= start else 0.0
    return max_radius * min(max((iteration - start) / (end - start), 0.0), 1.0)


@HOOKS.register_module()
class SSNRadiusHook(Hook):
    """Grow every SSN layer's SparsestMax radius linearly with training progress.

    Before each training iteration ``i`` (0-based, the runner's global
    iteration, so a resumed run continues the schedule exactly) every SSN layer
    gets ``r = max_radius * clip((i - start) / (end - start), 0, 1)``.  The
    defaults are the released recipe: 0 at the first iteration, ``max_radius =
    1.0`` at the end of training (``end=None`` means ``runner.max_iters``),
    so every layer is one-hot after about 82% of training.  The radius is also
    logged as ``ssn_radius``.

    After each training iteration (and before training, e.g. after a resume)
    it tells the layers their latched choices with :func:`update_choices`:
    one batched host read per iteration for the whole model, after which
    latched layers take their fast paths.
    """

    priority = 'NORMAL'

    def __init__(self, max_radius: float = 1.0, start: int = 0, end: Optional[int] = None) -> None:
        if not max_radius >= 0:
            raise ValueError(f'max_radius must be >= 0, got {max_radius!r}')
        if start < 0 or (end is not None and end < start):
            raise ValueError(f'need 0 <= start <= end, got start={start}, end={end}')
        self.max_radius = float(max_radius)
        self.start = int(start)
        self.end = end

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        end = runner.max_iters if self.end is None else self.end
        radius = radius_at(runner.iter, self.max_radius, self.start, end)
        for layer in sparse_switch_norms(runner.model):
            layer.set_radius(radius)
        runner.message_hub.update_scalar('train/ssn_radius', radius)

    def before_train(self, runner) -> None:
        update_choices(unwrap_model(runner.model))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        update_choices(unwrap_model(runner.model))


def apply_norm_eval(model: nn.Module) -> int:
    """Put SN/SSN layers under a module with ``norm_eval=True`` in eval mode.

    mmdet/mmseg backbones do this only for ``_BatchNorm`` instances, which SN
    and SSN deliberately are not.  Returns how many layers were switched.
    """
    switched = 0
    for module in unwrap_model(model).modules():
        if getattr(module, 'norm_eval', False) and module.training:
            for layer in module.modules():
                if is_switch_norm(layer) and layer.training:
                    layer.eval()
                    switched += 1
    return switched


@HOOKS.register_module()
class SwitchNormEvalHook(Hook):
    """Honour ``norm_eval=True`` for SN/SSN layers, as mmdet/mmseg do for BN.

    Runs after the loop's ``model.train()``, before every training iteration.
    """

    priority = 'NORMAL'

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        apply_norm_eval(runner.model)
