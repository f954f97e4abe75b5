"""Bad input to a layer gets what torch.nn.BatchNorm2d does, or a clear error, never corrupted state."""
import math

import pytest
import torch
from torch import nn

from ssn_plugins import SparseSwitchNorm2d, SwitchNorm1d, SwitchNorm2d
from ssn_reference import ref_sparsestmax, ref_switch_norm


def _ssn(c=4, radius=0.3):
    torch.manual_seed(0)
    layer = SparseSwitchNorm2d(c)
    layer.set_radius(radius)
    return layer


def test_nan_logit_on_an_unlatched_layer_raises_a_clear_error():
    layer = _ssn()
    with torch.no_grad():
        layer.mean_weight[1] = float('nan')
    with pytest.raises(RuntimeError, match='SparseSwitchNorm2d: mean_weight/var_weight hold NaN or inf'):
        layer.train()(torch.randn(2, 4, 3, 3))


@pytest.mark.parametrize('half', [False, True], ids=['latched', 'mean-latched'])
def test_nan_logit_on_a_latched_row_leaves_output_and_gradients_untouched(half):
    layer, reference = _ssn(), _ssn()
    for m in (layer, reference):
        if half:
            m.mean_choice.fill_(2)
        else:
            m.latch('bn', 'in')
    with torch.no_grad():
        layer.mean_weight[0] = float('nan')
        if not half:
            layer.var_weight[2] = float('inf')
    x = torch.randn(2, 4, 3, 3)
    y, y_ref = layer.train()(x), reference.train()(x)
    torch.testing.assert_close(y, y_ref)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    assert torch.equal(layer.mean_weight.grad, torch.zeros(3))
    for name in ('weight', 'bias', 'var_weight'):
        if half and name == 'var_weight':
            torch.testing.assert_close(layer.var_weight.grad, reference.var_weight.grad)
        elif not half or name != 'var_weight':
            torch.testing.assert_close(getattr(layer, name).grad, getattr(reference, name).grad)


@pytest.mark.parametrize('cls', [SwitchNorm2d, SparseSwitchNorm2d])
def test_one_value_per_channel_in_training_raises_like_batchnorm(cls):
    layer = cls(4)
    before = layer.running_var.clone()
    # SN raises BatchNorm's ValueError; a free SSN layer asks the device whether its BN
    # branch takes part (no host read), so torch._assert_async raises a RuntimeError
    error = ValueError if cls is SwitchNorm2d else RuntimeError
    with pytest.raises(error, match='Expected more than 1 value per channel when training'):
        layer.train()(torch.randn(1, 4, 1, 1))
    assert torch.equal(layer.running_var, before)
    with pytest.raises(ValueError, match='Expected more than 1 value per channel'):
        nn.BatchNorm2d(4).train()(torch.randn(1, 4, 1, 1))
    layer.eval()(torch.randn(1, 4, 1, 1))  # eval uses the running statistics: fine


def test_latched_in_or_ln_layer_takes_single_values_in_training():
    layer = _ssn()
    layer.latch('in', 'ln')
    y = layer.train()(torch.randn(1, 4, 1, 1))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize('shape', [(2, 4, 0), (0, 4), (0, 4, 5)], ids=['zero-length', 'empty-2d', 'empty-3d'])
def test_empty_input_gives_empty_output_and_leaves_statistics_alone(shape):
    layer = SwitchNorm1d(4)
    bn = nn.BatchNorm1d(4)
    x = torch.randn(shape, requires_grad=True)
    y = layer.train()(x)
    assert y.shape == bn.train()(x).shape == x.shape
    assert torch.equal(layer.running_mean, torch.zeros(4)) and torch.equal(layer.running_var, torch.ones(4))
    y.sum().backward()  # parameters stay in the graph


@pytest.mark.parametrize('radius, error', [(math.inf, ValueError), (math.nan, ValueError), (-0.1, ValueError),
                                           ('0.5', TypeError), (None, TypeError), (True, TypeError)])
def test_set_radius_refuses_bad_values_naming_the_valid_range(radius, error):
    layer = _ssn()
    with pytest.raises(error, match=r"finite number in \[0, 3\.403e\+38\]"):
        layer.set_radius(radius)
    assert float(layer.radius) == pytest.approx(0.3)
    layer.train()(torch.randn(2, 4, 3, 3))  # still works


@pytest.mark.parametrize('value', [5, -2, 3])
def test_state_dict_with_an_out_of_range_choice_is_refused_at_load_time(value):
    layer = _ssn()
    state = layer.state_dict()
    state['mean_choice'] = torch.tensor(value)
    target = _ssn()
    target.weight.data.fill_(2.0)
    with pytest.raises(RuntimeError, match=rf'mean_choice = {value} is out of range: -1 \(not latched\) or 0\.\.2'):
        target.load_state_dict(state)
    assert int(target.mean_choice) == -1 and torch.equal(target.weight, torch.full((4, ), 2.0))
    target.train()(torch.randn(2, 4, 3, 3))


def test_momentum_none_is_a_cumulative_moving_average_like_batchnorm():
    torch.manual_seed(0)
    layer = SwitchNorm2d(3, momentum=None)
    bn = nn.BatchNorm2d(3, momentum=None)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([-30.0, -30.0, 30.0]))  # BN only
        layer.var_weight.copy_(torch.tensor([-30.0, -30.0, 30.0]))
    for _ in range(4):
        x = torch.randn(4, 3, 5, 5) * 2 + 1
        layer.train()(x)
        bn.train()(x)
    torch.testing.assert_close(layer.running_mean, bn.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.running_var, bn.running_var, rtol=1e-5, atol=1e-6)
    assert int(layer.num_batches_tracked) == 4


@pytest.mark.parametrize('cls', [SwitchNorm2d, SparseSwitchNorm2d])
def test_double_backward_for_gradient_penalties(cls):
    torch.manual_seed(0)
    layer = cls(3).double()
    if isinstance(layer, SparseSwitchNorm2d):
        layer.set_radius(0.2)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.3, -0.2, 0.5]))
        layer.var_weight.copy_(torch.tensor([0.1, 0.4, -0.3]))
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    params = (layer.weight, layer.bias, layer.mean_weight, layer.var_weight)
    assert torch.autograd.gradgradcheck(lambda x, *p: layer.train()(x), (x, *params))
    # an R1-style penalty: its gradient equals double autograd through the float64
    # reference (the composite path is what the fused backward itself runs twice)
    grad, = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    penalty = grad.square().sum()
    penalty.backward()
    expected_x = x.detach().clone().requires_grad_(True)
    if isinstance(layer, SparseSwitchNorm2d):
        mean_ratios, var_ratios = (torch.tensor(ref_sparsestmax(w.tolist(), 0.2), dtype=torch.float64)
                                   for w in (layer.mean_weight, layer.var_weight))
    else:
        mean_ratios, var_ratios = (torch.softmax(w.detach(), 0)
                                   for w in (layer.mean_weight, layer.var_weight))
    y = ref_switch_norm(expected_x, mean_ratios, var_ratios, layer.normalizers,
                        layer.weight.detach(), layer.bias.detach(), eps=layer.eps)
    g, = torch.autograd.grad(y.square().sum(), expected_x, create_graph=True)
    g.square().sum().backward()
    torch.testing.assert_close(x.grad, expected_x.grad)
