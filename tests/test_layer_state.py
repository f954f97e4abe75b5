"""The layer state is always valid (issue 19, item 6 and the layers' unclear errors).

- running statistics are left alone by a layer that cannot use BN (latched
  on IN/LN for both mean and variance), whether the host or only the
  device knows the latch;
- ``radius`` is validated wherever a state dict comes in (``load_state_dict``,
  ``SwitchNormPretrained``, the ratio analysis) and by ``set_radius``;
- ``torch.jit.script`` and a misspelt ``norm_cfg`` type fail in one line
  that says what to do.
"""
import math

import pytest
import torch
from torch import nn

from ssn_plugins import SparseSwitchNorm2d, SwitchNorm2d, update_choices

NAMES = ('in', 'ln', 'bn')


def _latched(mean: str, var: str, where: str, momentum=0.1) -> SparseSwitchNorm2d:
    """An SSN layer latched on (mean, var), known to the host or only recorded on the device."""
    torch.manual_seed(0)
    layer = SparseSwitchNorm2d(4, momentum=momentum)
    if where == 'host':
        layer.latch(mean, var)
    else:  # one-hot logits at r = 1 latch in a training forward the host does not read
        with torch.no_grad():
            layer.mean_weight.copy_(torch.eye(3)[NAMES.index(mean)] * 3)
            layer.var_weight.copy_(torch.eye(3)[NAMES.index(var)] * 3)
            layer.set_radius(1.0)
            layer.train()(torch.randn(2, 4, 3, 3))
            layer.reset_running_stats()
        assert layer.latched and layer.selection.state != 'latched'
    return layer


@pytest.mark.parametrize('momentum', [0.1, None])
@pytest.mark.parametrize('shape', [(1, 4, 1, 1), (2, 4, 3, 3)])
@pytest.mark.parametrize('where', ['host', 'device'])
@pytest.mark.parametrize('choice', [('in', 'in'), ('in', 'ln'), ('ln', 'ln'), ('ln', 'in')])
def test_a_layer_that_cannot_use_bn_leaves_running_stats_alone(choice, where, shape, momentum):
    layer = _latched(*choice, where, momentum)
    g = torch.Generator().manual_seed(1)
    for _ in range(10):  # the probe: 50 steps of (1, C, 1, 1) drove running_var to 0.005
        x = (torch.randn(shape, generator=g) * 3 + 2).requires_grad_(True)
        y = layer.train()(x)
        y.sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.equal(layer.running_mean, torch.zeros(4))
    assert torch.equal(layer.running_var, torch.ones(4))
    if momentum is None:
        assert int(layer.num_batches_tracked) == 0
    if where == 'device':  # and the host learning the latch changes nothing
        update_choices(layer)
        layer(torch.randn(shape))
        assert torch.equal(layer.running_var, torch.ones(4))


@pytest.mark.parametrize('where', ['host', 'device'])
def test_a_layer_that_can_use_bn_updates_running_stats_as_batchnorm(where):
    layer = _latched('bn', 'in', where)
    bn = nn.BatchNorm2d(4)
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    layer.train()(x), bn.train()(x)
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)


@pytest.mark.parametrize('layer', [SwitchNorm2d(4), SparseSwitchNorm2d(4), _latched('bn', 'in', 'host'),
                                   _latched('in', 'bn', 'device')], ids=['sn', 'ssn', 'bn-host', 'bn-device'])
def test_a_layer_that_can_use_bn_refuses_one_value_per_channel_as_batchnorm(layer):
    with pytest.raises((ValueError, RuntimeError), match='Expected more than 1 value per channel'):
        layer.train()(torch.randn(1, 4, 1, 1))


def _ssn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(SparseSwitchNorm2d(4)))


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf'), -1.0, -5.0])
def test_load_state_dict_refuses_an_invalid_radius_naming_the_key(bad):
    model = _ssn_model()
    state = model.state_dict()
    state['1.0.radius'] = torch.tensor(bad)
    with pytest.raises(RuntimeError, match=r'1\.0\.radius: .*must be finite and >= 0') as err:
        model.load_state_dict(state)
    assert f'{bad}' in str(err.value)
    assert float(model[1][0].radius) == 0.0  # nothing of the bad entry was kept


def test_load_state_dict_accepts_valid_radii():
    model = _ssn_model()
    for good in (0.0, 0.5, 1.0, 7.0):
        state = model.state_dict()
        state['1.0.radius'] = torch.tensor(good)
        model.load_state_dict(state)
        assert float(model[1][0].radius) == good


def test_switch_norm_pretrained_refuses_an_invalid_radius(tmp_path):
    from ssn_plugins.checkpoint.pretrained import SwitchNormPretrained
    model = _ssn_model()
    state = model.state_dict()
    state['1.0.radius'] = torch.tensor(-1.0)  # (NaN is refused earlier, by the checkpoint reader)
    path = tmp_path / 'bad.pth'
    torch.save({'state_dict': state}, path)
    with pytest.raises(RuntimeError, match=r'1\.0\.radius: -1\.0 is not a valid SparsestMax radius'):
        SwitchNormPretrained(checkpoint=str(path))(_ssn_model())


def test_ratio_analysis_refuses_an_invalid_radius_naming_the_key():
    from ssn_plugins.analysis import ratios_from_state_dict
    state = {f'backbone.layer1.0.sn1.{k}': v for k, v in SparseSwitchNorm2d(4).state_dict().items()}
    assert ratios_from_state_dict(state)  # valid: fine
    state['backbone.layer1.0.sn1.radius'] = torch.tensor(-1.0)
    with pytest.raises(ValueError, match=r'backbone\.layer1\.0\.sn1\.radius: -1\.0 is not a valid'):
        ratios_from_state_dict(state)


@pytest.mark.parametrize('radius', [1e39, -1e39, math.inf, math.nan, -0.5])
def test_set_radius_names_the_value_and_the_range(radius):
    layer = SparseSwitchNorm2d(4)
    with pytest.raises(ValueError) as err:
        layer.set_radius(radius)
    message = str(err.value)
    assert 'SparseSwitchNorm2d.set_radius' in message and f'got {radius!r}' in message
    assert 'in [0, 3.403e+38]' in message and 'overflow' not in message
    assert float(layer.radius) == 0.0


@pytest.mark.parametrize('cls', [SwitchNorm2d, SparseSwitchNorm2d])
def test_torchscript_is_refused_in_one_line_naming_what_to_use(cls):
    for module in (cls(4), nn.Sequential(nn.Conv2d(3, 4, 1), cls(4))):
        with pytest.raises(TypeError) as err:
            torch.jit.script(module)
        message = str(err.value)
        assert '\n' not in message and f'{cls.__name__}: TorchScript' in message
        assert 'torch.compile' in message and 'tools/deploy.py' in message


def _config(tmp_path, norm_type: str) -> str:
    path = tmp_path / 'typo.py'
    path.write_text("default_scope = 'mmdet'\n"
                    f"model = dict(type='ResNet', depth=18, norm_cfg=dict(type='{norm_type}'))\n")
    return str(path)


@pytest.mark.parametrize('typo,suggestion', [('SNN', 'SN'), ('ssn', 'SSN'), ('SyncSNN', 'SyncSN')])
def test_a_misspelt_norm_type_names_itself_and_a_close_match(tmp_path, typo, suggestion):
    pytest.importorskip('mmdet')
    from ssn_plugins.builder import build_model
    config = _config(tmp_path, typo)
    with pytest.raises(ValueError) as err:
        build_model(config)
    message = str(err.value)
    assert message.startswith(f"{config}: model.norm_cfg.type = '{typo}' is not a registered norm layer")
    assert f"did you mean '{suggestion}'?" in message
    assert 'SN, SSN, SyncSN, SyncSSN' in message and 'None' not in message
    assert build_model(_config(tmp_path, 'SSN')) is not None  # the right name builds


def test_the_runner_path_checks_norm_types_before_building(tmp_path):
    pytest.importorskip('mmdet')
    from mmengine.config import Config

    from ssn_plugins.engine.launch import build_runner
    cfg = Config.fromfile(_config(tmp_path, 'SNN'))
    cfg.work_dir = str(tmp_path / 'work')
    with pytest.raises(ValueError, match=r"model\.norm_cfg\.type = 'SNN'.*did you mean 'SN'"):
        build_runner(cfg)
