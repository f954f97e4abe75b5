"""Nothing left behind silently: the BN/GN layers a model that asks for SN/SSN still holds.

A config that sets ``norm_cfg=dict(type='SSN')`` in the backbone but not in a
head trains a partly converted model.  :func:`check_leftover_norms` names
every other normalization layer of such a model, once, and
:class:`LeftoverNormHook` (in every runtime base of this package, and added
by :func:`~ssn_plugins.convert.convert_config`) does it before training or
testing starts; ``strict=True`` makes it an error.
"""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from torch import nn

from ..builder import unwrap_model
from ..norm.switch_norm import is_switch_norm
from .modules import plain_norms

__all__ = ['check_leftover_norms', 'LeftoverNormHook']


def check_leftover_norms(model: nn.Module, strict: bool = False) -> dict[str, str]:
    """Name the non-SN/SSN normalization layers of a model that has SN/SSN layers.

    Returns ``{module name: class name}`` (empty when the model has no SN/SSN
    layer, or nothing else), logs them in one warning, and raises
    ``ValueError`` instead with ``strict=True``.
    """
    model = unwrap_model(model)
    if not any(is_switch_norm(m) for m in model.modules()):
        return {}
    left = plain_norms(model)
    if not left:
        return left
    listing = ', '.join(f'{name} ({cls})' for name, cls in left.items())
    message = (f'{len(left)} normalization layers are not SN/SSN although the model asks for SN/SSN: '
               f'{listing}. Set their norm_cfg too (ssn_plugins.convert_config or tools/train.py '
               f'--norm SSN converts every one)')
    if strict:
        raise ValueError(message + '; or set LeftoverNormHook(strict=False) to train them as they are')
    print_log(message, logger='current', level=30)  # WARNING
    return left


@HOOKS.register_module()
class LeftoverNormHook(Hook):
    """Before training (or testing) starts, name the BN/GN layers an SN/SSN model still holds.

    Args:
        strict: raise instead of warning, before any training step.
    """

    priority = 'VERY_HIGH'

    def __init__(self, strict: bool = False) -> None:
        if not isinstance(strict, bool):
            raise TypeError(f'LeftoverNormHook: strict must be a bool, got {strict!r}')
        self.strict = strict
        self._checked = False

    def before_run(self, runner) -> None:
        if not self._checked:
            check_leftover_norms(runner.model, self.strict)
            self._checked = True
