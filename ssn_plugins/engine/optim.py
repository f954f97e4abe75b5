"""An optimizer constructor whose log says in one line what got which multiplier.

mmengine's ``DefaultOptimWrapperConstructor`` logs every option of every
parameter a ``paramwise_cfg`` touches at INFO: with ``custom_keys`` for the
SN/SSN logits that is about 200 lines before training starts.
:class:`SummaryOptimWrapperConstructor` builds exactly the same param groups,
moves those lines to DEBUG (``log_level='DEBUG'`` shows them) and logs one
summary line at INFO instead::

    optim_wrapper = dict(constructor='SummaryOptimWrapperConstructor',
                         paramwise_cfg=dict(custom_keys={...}))
"""
from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator, Optional

from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from ..builder import unwrap_model
from ..norm.switch_norm import is_switch_norm

__all__ = ['SummaryOptimWrapperConstructor', 'summarize_param_groups']

_PER_PARAM = 'paramwise_options -- '  # how mmengine 0.10.7 starts each per-parameter line


class _ToDebug(logging.Filter):
    """Re-level mmengine's per-parameter lines to DEBUG; handlers then drop them below DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and str(record.msg).startswith(_PER_PARAM):
            record.levelno, record.levelname = logging.DEBUG, 'DEBUG'
        return True


@contextmanager
def _per_param_lines_at_debug() -> Iterator[None]:
    logger = MMLogger.get_current_instance()
    demote = _ToDebug()
    logger.addFilter(demote)
    try:
        yield
    finally:
        logger.removeFilter(demote)


def _multiplier(value: float, base: Optional[float]) -> str:
    if not base:
        return f'={value:g}'
    return f' x{value / base:g}'


def summarize_param_groups(model: nn.Module, param_groups: list[dict], base_lr: float,
                           base_wd: Optional[float]) -> str:
    """One line: how many parameters got which lr/weight decay multiplier, with their names.

    Parameters are named by their last component (``mean_weight``), so the
    line stays short whatever the depth of the model.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    counts: dict[str, int] = defaultdict(int)
    kinds: dict[str, set] = defaultdict(set)
    for group in param_groups:
        setting = f"lr{_multiplier(group['lr'], base_lr)}"
        if base_wd is not None:
            setting += f", weight_decay{_multiplier(group.get('weight_decay', 0.0), base_wd)}"
        for p in group['params']:
            counts[setting] += 1
            kinds[setting].add(names.get(id(p), '?').rsplit('.', 1)[-1])
    parts = []
    for setting in sorted(counts, key=counts.get):
        shown = sorted(kinds[setting])
        listed = ', '.join(shown[:4]) + (', ...' if len(shown) > 4 else '')
        parts.append(f'{counts[setting]} ({listed}) at {setting}')
    return 'param groups: ' + '; '.join(parts)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class SummaryOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` with a one-line log of the paramwise options.

    The param groups are those of the default constructor, with one addition:
    ``paramwise_cfg.norm_decay_mult`` applies to SN/SSN layers as to torch's
    norms (mmengine recognises a norm by its torch class, and these layers are
    not ``_BatchNorm`` on purpose); a matching ``custom_keys`` entry still
    wins.  Its per-parameter log lines go to DEBUG.
    """

    def add_params(self, params: list, module: nn.Module, prefix: str = '', is_dcn_module=None) -> None:
        first = len(params)
        super().add_params(params, module, prefix, is_dcn_module)
        norm_decay_mult = self.paramwise_cfg.get('norm_decay_mult', None)
        if not is_switch_norm(module) or norm_decay_mult is None or self.base_wd is None:
            return
        own = {id(p): name for name, p in module.named_parameters(recurse=False)}
        keys = self.paramwise_cfg.get('custom_keys', {})
        for group in params[first:]:
            name = own.get(id(group['params'][0]))
            if name is not None and not any(key in f'{prefix}.{name}' for key in keys):
                group['weight_decay'] = self.base_wd * norm_decay_mult

    def __call__(self, model: nn.Module) -> OptimWrapper:
        if not self.paramwise_cfg:
            return super().__call__(model)
        with _per_param_lines_at_debug():
            wrapper = super().__call__(model)
        print_log(summarize_param_groups(unwrap_model(model), wrapper.optimizer.param_groups, self.base_lr,
                                         self.base_wd) + ' (per-parameter options at DEBUG)',
                  logger='current')
        return wrapper
