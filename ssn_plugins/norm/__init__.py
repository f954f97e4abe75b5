"""SN/SSN layers, registered in mmengine's root ``MODELS`` so mmdet and mmseg both find them.

Bottom up: :mod:`.moments` (statistics, running buffers), :mod:`.composite`
(autograd path), :mod:`.fused` (one Function, closed-form backward),
:mod:`.functional` (the dispatcher), :mod:`.ratios` (logits to ratios),
:mod:`.switch_norm` (the layers), :mod:`.sync` (synced layers), :mod:`.kinds` (every
class by registered name: the one table, and the synced/plain swaps).
"""
from mmengine.registry import MODELS

from .functional import PATHS, keep_in_graph, latched_norm, switch_norm
from .moments import NORMALIZERS
from .ratios import latched_choices, switch_ratios
from .kinds import (BATCH_NORMS, LAYERS, NORM_TYPES, convert_sync_switchnorm, layer_class,
                    norm_type, revert_sync_switchnorm, spatial_rank)
from .switch_norm import (Selection, SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d,
                          SparseSwitchNormBase, SwitchNorm1d, SwitchNorm2d, SwitchNorm3d,
                          SwitchNormBase, is_switch_norm, update_choices)
from .sync import SyncSparseSwitchNorm, SyncSwitchNorm

for _name, _cls in LAYERS.items():
    MODELS.register_module(_name, module=_cls)

__all__ = [
    'NORMALIZERS', 'PATHS', 'switch_norm', 'latched_norm', 'keep_in_graph', 'switch_ratios',
    'latched_choices', 'SwitchNormBase', 'SparseSwitchNormBase', 'SwitchNorm1d', 'SwitchNorm2d',
    'SwitchNorm3d', 'SparseSwitchNorm1d', 'SparseSwitchNorm2d', 'SparseSwitchNorm3d',
    'is_switch_norm', 'update_choices', 'Selection', 'SyncSwitchNorm', 'SyncSparseSwitchNorm',
    'convert_sync_switchnorm', 'revert_sync_switchnorm', 'LAYERS', 'NORM_TYPES', 'BATCH_NORMS',
    'layer_class', 'norm_type', 'spatial_rank'
]
