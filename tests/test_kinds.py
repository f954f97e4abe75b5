"""The one table of layer classes: the registry, the synced/plain swaps, conversion and deployment agree."""
import pytest
import torch
from mmengine.registry import MODELS
from torch import nn

import ssn_plugins
from ssn_plugins.norm import (BATCH_NORMS, LAYERS, NORM_TYPES, SparseSwitchNorm1d, SparseSwitchNorm3d,
                              SwitchNorm2d, SyncSparseSwitchNorm, convert_sync_switchnorm,
                              layer_class, norm_type, revert_sync_switchnorm, spatial_rank)
from ssn_plugins.registry import SWITCH_NORM_NAMES


def test_every_registered_name_builds_its_class_of_the_table():
    assert SWITCH_NORM_NAMES == tuple(LAYERS)
    for name, cls in LAYERS.items():
        assert MODELS.get(name) is cls
        layer = MODELS.build(dict(type=name, num_features=4))
        assert norm_type(layer) == name.rstrip('13d') and type(layer) is cls


@pytest.mark.parametrize('norm', NORM_TYPES)
@pytest.mark.parametrize('rank', [1, 2, 3, None])
def test_layer_class_has_the_rank_of_batchnorm(norm, rank):
    cls = layer_class(norm, rank)
    layer = cls(4)
    assert norm_type(layer) == norm
    if norm.startswith('Sync'):
        assert spatial_rank(layer) is None  # any rank, as SyncBatchNorm
    else:
        assert spatial_rank(layer) == (rank or 2)
        bn = BATCH_NORMS[rank or 2](4)
        x = torch.randn((2, 4) + (3, ) * (rank or 2))
        assert layer(x).shape == bn(x).shape


def test_an_unknown_kind_is_named():
    with pytest.raises(ValueError, match=r"norm must be one of \('SN', 'SSN', 'SyncSN', 'SyncSSN'\), got 'BN'"):
        layer_class('BN', 2)


@pytest.mark.parametrize('cls', [SparseSwitchNorm1d, SwitchNorm2d, SparseSwitchNorm3d])
def test_sync_round_trip_keeps_class_state_and_selection(cls):
    model = nn.Sequential(cls(4))
    if cls is not SwitchNorm2d:
        model[0].latch('bn', 'in')
    synced = convert_sync_switchnorm(model)
    assert type(synced[0]) is layer_class('Sync' + norm_type(cls(4)))
    back = revert_sync_switchnorm(synced)
    assert type(back[0]) is cls
    if cls is not SwitchNorm2d:
        assert back[0].selection == (2, 0) and synced[0].selection.state == 'latched'


def test_a_synced_layer_built_from_a_config_reverts_to_the_2d_class():
    layer = MODELS.build(dict(type='SyncSSN', num_features=4))
    assert isinstance(layer, SyncSparseSwitchNorm)
    assert type(revert_sync_switchnorm(layer)) is ssn_plugins.SparseSwitchNorm2d
