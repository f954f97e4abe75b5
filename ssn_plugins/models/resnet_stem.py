"""The stem max-pool of the released SSN ResNets, for mmdet/mmseg ResNet.

The released ImageNet SSN models pool the stem with ``MaxPool2d(3, 2, padding=0,
ceil_mode=True)``; mmdet/mmseg (and torchvision, and the released SN models)
use ``padding=1``.  The windows are shifted by one pixel, and for odd feature
sizes the output size differs too, so loaded SSN weights only compute what
they computed on ImageNet with the released pool.  The pool holds no weights,
so it must be part of the model definition (a config), not of the
checkpoint: ``backbone=dict(type='ResNetReleasedStem', ...)`` builds the
ResNet of the current scope (mmdet or mmseg) and swaps its pool.
"""
from __future__ import annotations

from mmengine.registry import MODELS, DefaultScope
from torch import nn

from ..extras import TOOLKIT_MODULES, require

__all__ = ['RELEASED_SSN_STEM', 'TORCHVISION_STEM', 'use_released_stem', 'stem_pool_of',
           'ResNetReleasedStem']

# max-pool of the stem: released SSN models used padding 0 with ceil_mode, everything else padding 1
RELEASED_SSN_STEM = dict(kernel_size=3, stride=2, padding=0, ceil_mode=True)
TORCHVISION_STEM = dict(kernel_size=3, stride=2, padding=1, ceil_mode=False)


def use_released_stem(backbone: nn.Module) -> nn.Module:
    """Replace ``backbone.maxpool`` by the released SSN pool (padding 0, ceil_mode); returns backbone."""
    if not isinstance(getattr(backbone, 'maxpool', None), nn.MaxPool2d):
        raise TypeError(f'{type(backbone).__name__} has no nn.MaxPool2d `maxpool` to replace')
    backbone.maxpool = nn.MaxPool2d(**RELEASED_SSN_STEM)
    return backbone


def stem_pool_of(backbone: nn.Module):
    """The stem pool's ``dict(kernel_size, stride, padding, ceil_mode)``, or None without one."""
    pool = getattr(backbone, 'maxpool', None)
    if not isinstance(pool, nn.MaxPool2d):
        return None

    def scalar(v):
        return v[0] if isinstance(v, (tuple, list)) else v

    return dict(kernel_size=scalar(pool.kernel_size), stride=scalar(pool.stride),
                padding=scalar(pool.padding), ceil_mode=bool(pool.ceil_mode))


def ResNetReleasedStem(base: str = 'ResNet', **kwargs) -> nn.Module:
    """Build ``base`` (mmdet or mmseg ``ResNet``, by the default scope) with the released SSN stem pool.

    Every other argument goes to ``base`` unchanged, so the state-dict keys are
    those of the plain ResNet.  Outside a Runner, set the scope first
    (``mmengine.registry.init_default_scope('mmdet')``) or name it:
    ``base='mmdet.ResNet'``.
    """
    scope = DefaultScope.get_current_instance()
    if '.' not in base and scope is None:
        raise ValueError(f"ResNetReleasedStem: no default scope to find {base!r} in; set "
                         f"default_scope='mmdet' (or 'mmseg') or pass base='mmdet.{base}'")
    toolkit = base.split('.')[0] if '.' in base else scope.scope_name
    if toolkit in TOOLKIT_MODULES:
        require(toolkit, purpose=f'ResNetReleasedStem (the {toolkit} ResNet)')
    return use_released_stem(MODELS.build(dict(type=base, **kwargs)))


MODELS.register_module('ResNetReleasedStem', module=ResNetReleasedStem)
