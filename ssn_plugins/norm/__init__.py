"""SN/SSN layers, registered in mmengine's root ``MODELS`` so mmdet and mmseg both find them.

Bottom up: :mod:`.moments` (statistics, running buffers), :mod:`.composite`
(autograd path), :mod:`.fused` (one Function, closed-form backward),
:mod:`.functional` (the dispatcher), :mod:`.ratios` (logits to ratios),
:mod:`.switch_norm` (the layers), :mod:`.sync` (synced layers).
"""
from mmengine.registry import MODELS

from .functional import PATHS, keep_in_graph, latched_norm, switch_norm
from .moments import NORMALIZERS
from .ratios import latched_choices, switch_ratios
from .switch_norm import (SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d,
                          SparseSwitchNormBase, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d,
                          SwitchNormBase, is_switch_norm, update_choices)
from .sync import (SyncSparseSwitchNorm, SyncSwitchNorm, convert_sync_switchnorm,
                   revert_sync_switchnorm)

for _name, _cls in (('SN', SwitchNorm2d), ('SN1d', SwitchNorm1d), ('SN3d', SwitchNorm3d),
                    ('SSN', SparseSwitchNorm2d), ('SSN1d', SparseSwitchNorm1d),
                    ('SSN3d', SparseSwitchNorm3d)):
    MODELS.register_module(_name, module=_cls)
MODELS.register_module('SyncSN', module=SyncSwitchNorm)
MODELS.register_module('SyncSSN', module=SyncSparseSwitchNorm)

__all__ = [
    'NORMALIZERS', 'PATHS', 'switch_norm', 'latched_norm', 'keep_in_graph', 'switch_ratios',
    'latched_choices', 'SwitchNormBase', 'SparseSwitchNormBase', 'SwitchNorm1d', 'SwitchNorm2d',
    'SwitchNorm3d', 'SparseSwitchNorm1d', 'SparseSwitchNorm2d', 'SparseSwitchNorm3d',
    'is_switch_norm', 'update_choices', 'SyncSwitchNorm', 'SyncSparseSwitchNorm',
    'convert_sync_switchnorm', 'revert_sync_switchnorm'
]
