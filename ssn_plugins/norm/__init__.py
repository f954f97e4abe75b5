"""SN/SSN layers, registered in mmengine's root ``MODELS`` so mmdet and mmseg both find them."""
from mmengine.registry import MODELS

from .functional import NORMALIZERS, switch_norm
from .switch_norm import (SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d,
                          SwitchNorm1d, SwitchNorm2d, SwitchNorm3d, is_switch_norm)
from .sync import (SyncSparseSwitchNorm, SyncSwitchNorm, convert_sync_switchnorm,
                   revert_sync_switchnorm)

for _name, _cls in (('SN', SwitchNorm2d), ('SN1d', SwitchNorm1d), ('SN3d', SwitchNorm3d),
                    ('SSN', SparseSwitchNorm2d), ('SSN1d', SparseSwitchNorm1d),
                    ('SSN3d', SparseSwitchNorm3d)):
    MODELS.register_module(_name, module=_cls)
MODELS.register_module('SyncSN', module=SyncSwitchNorm)
MODELS.register_module('SyncSSN', module=SyncSparseSwitchNorm)

__all__ = [
    'NORMALIZERS', 'switch_norm', 'SwitchNorm1d', 'SwitchNorm2d', 'SwitchNorm3d',
    'SparseSwitchNorm1d', 'SparseSwitchNorm2d', 'SparseSwitchNorm3d', 'is_switch_norm',
    'SyncSwitchNorm', 'SyncSparseSwitchNorm', 'convert_sync_switchnorm', 'revert_sync_switchnorm'
]
