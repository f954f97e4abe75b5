import io
import math

import pytest
import torch
from torch import nn

from ssn_plugins import (SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d, SwitchNorm1d,
                         SwitchNorm2d, SwitchNorm3d, update_choices)
from ssn_reference import ref_switch_norm

LAYERS = {
    SwitchNorm1d: (6, 5, 7), SwitchNorm2d: (4, 5, 3, 6), SwitchNorm3d: (3, 5, 2, 3, 4),
    SparseSwitchNorm1d: (6, 5, 7), SparseSwitchNorm2d: (4, 5, 3, 6), SparseSwitchNorm3d: (3, 5, 2, 3, 4)
}


def _randomise(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p))
        if layer.running_mean is not None:
            layer.running_mean.copy_(torch.randn_like(layer.running_mean))
            layer.running_var.copy_(torch.rand_like(layer.running_var) + 0.5)
    if hasattr(layer, 'radius'):
        layer.set_radius(0.3)
    return layer


def _one_hot_layer(cls, c, mean_index, var_index, momentum=0.1):
    layer = cls(c, momentum=momentum)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0., 0., 0.]).index_fill_(0, torch.tensor(mean_index), 50.))
        layer.var_weight.copy_(torch.tensor([0., 0., 0.]).index_fill_(0, torch.tensor(var_index), 50.))
    if hasattr(layer, 'radius'):
        layer.set_radius(1.0)
    return layer


@pytest.mark.parametrize('cls', list(LAYERS))
@pytest.mark.parametrize('training', [True, False])
def test_matches_float64_reference(cls, training):
    shape = LAYERS[cls]
    layer = _randomise(cls(shape[1])).train(training)
    x = torch.randn(shape) * 3 + 1
    mean_ratios, var_ratios = layer.ratios()
    expected = ref_switch_norm(x, mean_ratios, var_ratios, weight=layer.weight.detach(), bias=layer.bias.detach(),
                               running_mean=layer.running_mean, running_var=layer.running_var, training=training)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_1d_accepts_two_dimensional_input():
    layer = _randomise(SwitchNorm1d(5, normalizers=('ln', 'bn')))
    x = torch.randn(8, 5)
    mean_ratios, var_ratios = layer.ratios()
    expected = ref_switch_norm(x, mean_ratios, var_ratios, ('ln', 'bn'), layer.weight.detach(),
                               layer.bias.detach())
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('cls', [SwitchNorm2d, SparseSwitchNorm2d])
@pytest.mark.parametrize('training', [True, False])
def test_gradcheck_float64(cls, training):
    layer = _randomise(cls(3, dtype=torch.float64)).train(training)
    x = torch.randn(3, 3, 2, 3, dtype=torch.float64, requires_grad=True)

    assert torch.autograd.gradcheck(lambda inp: layer(inp), (x,))
    params = ('weight', 'bias', 'mean_weight', 'var_weight')
    values = tuple(getattr(layer, name).detach().clone().requires_grad_() for name in params)
    assert torch.autograd.gradcheck(
        lambda *v: torch.func.functional_call(layer, dict(zip(params, v)), (x.detach(),)), values)


@pytest.mark.parametrize('mean_index,var_index,reference', [
    (2, 2, 'bn'), (0, 0, 'in'), (1, 1, 'ln')
])
@pytest.mark.parametrize('cls', [SwitchNorm2d, SparseSwitchNorm2d])
@pytest.mark.parametrize('momentum', [0.1, None], ids=['momentum', 'cumulative'])
def test_one_hot_equals_plain_layer(cls, mean_index, var_index, reference, momentum):
    c = 6
    layer = _one_hot_layer(cls, c, mean_index, var_index, momentum)
    plain = {'bn': nn.BatchNorm2d(c, momentum=momentum), 'in': nn.InstanceNorm2d(c, affine=True),
             'ln': nn.GroupNorm(1, c)}[reference]
    with torch.no_grad():
        for p in (layer.weight, layer.bias):
            p.copy_(torch.randn_like(p))
        plain.weight.copy_(layer.weight)
        plain.bias.copy_(layer.bias)
    for step in range(3):
        x = torch.randn(4, c, 5, 7) * 2 + step
        torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-5)
    if reference == 'bn':
        torch.testing.assert_close(layer.running_mean, plain.running_mean)
        torch.testing.assert_close(layer.running_var, plain.running_var)
        if momentum is None:  # a cumulative average counts the batches, as BatchNorm
            assert torch.equal(layer.num_batches_tracked, plain.num_batches_tracked)
    layer.eval()
    plain.eval()
    x = torch.randn(2, c, 5, 7)
    torch.testing.assert_close(layer(x), plain(x), rtol=1e-5, atol=1e-5)


def test_running_stats_follow_momentum_formula():
    layer = SwitchNorm2d(4, momentum=0.3)
    running_mean, running_var = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    for _ in range(3):
        x = torch.randn(3, 4, 5, 5) * 2 + 1
        layer(x)
        xd = x.double()
        running_mean = 0.7 * running_mean + 0.3 * xd.mean((0, 2, 3))
        running_var = 0.7 * running_var + 0.3 * xd.var((0, 2, 3), unbiased=True)
    torch.testing.assert_close(layer.running_mean.double(), running_mean)
    torch.testing.assert_close(layer.running_var.double(), running_var)


@pytest.mark.parametrize('cls', [SwitchNorm2d, SparseSwitchNorm2d])
def test_large_mean_small_spread_is_accurate(cls):
    layer = _randomise(cls(8))
    x = torch.randn(4, 8, 16, 16, dtype=torch.float64) + 1e3
    mean_ratios, var_ratios = layer.ratios()
    expected = ref_switch_norm(x, mean_ratios, var_ratios, weight=layer.weight.detach(),
                               bias=layer.bias.detach())
    torch.testing.assert_close(layer(x.float()).double(), expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize('cls', [SwitchNorm2d, SparseSwitchNorm2d])
def test_one_by_one_maps_give_no_nan(cls):
    layer = cls(8)
    y = layer(torch.randn(2, 8, 1, 1))
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


def test_autocast_keeps_statistics_in_float32():
    layer = _randomise(SwitchNorm2d(4))
    x = torch.randn(2, 4, 8, 8) * 50 + 300
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    # the float64 reference on the bfloat16 input: only the output's own rounding
    # may differ (statistics of values near 300 taken in bfloat16 would be far off)
    expected = ref_switch_norm(x.bfloat16(), torch.softmax(layer.mean_weight.detach().double(), 0),
                               torch.softmax(layer.var_weight.detach().double(), 0),
                               weight=layer.weight.detach(), bias=layer.bias.detach())
    ulp = torch.finfo(torch.bfloat16).eps
    torch.testing.assert_close(y.double(), expected, rtol=ulp, atol=ulp)


def test_normalizer_subset_without_bn_has_no_running_stats():
    layer = SwitchNorm2d(4, normalizers=('ln', 'in'))
    assert layer.normalizers == ('in', 'ln')
    assert layer.running_mean is None and layer.mean_weight.shape == (2,)
    x = torch.randn(1, 4, 3, 3)
    mean_ratios, var_ratios = layer.ratios()
    torch.testing.assert_close(layer.eval()(x).double(),
                               ref_switch_norm(x, mean_ratios, var_ratios, ('in', 'ln'), layer.weight.detach(),
                                               layer.bias.detach(), training=False),
                               rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_reproduces_eval_output():
    layer = _randomise(SparseSwitchNorm2d(5, mode='official'))
    for _ in range(2):
        layer(torch.randn(4, 5, 6, 6))
    layer.eval()
    x = torch.randn(2, 5, 6, 6)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    other = SparseSwitchNorm2d(5, mode='official')
    other.load_state_dict(torch.load(buffer, weights_only=True))
    other.eval()
    torch.testing.assert_close(other(x), layer(x), rtol=0, atol=0)


def test_ssn_latches_and_survives_save_load():
    layer = SparseSwitchNorm2d(4)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.1, 0.5, 0.2]))
        layer.var_weight.copy_(torch.tensor([0.4, 0.3, 0.35]))
    layer.set_radius(0.2)
    layer(torch.randn(2, 4, 3, 3))
    assert not layer.latched and int(layer.mean_choice) == -1
    layer.set_radius(math.sqrt(2 / 3))
    layer(torch.randn(2, 4, 3, 3))
    assert layer.latched
    assert (int(layer.mean_choice), int(layer.var_choice)) == (1, 0)
    # a latched layer keeps its choice whatever the logits and the radius do
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([5., 0., 0.]))
    layer.set_radius(0.0)
    mean_ratios, var_ratios = layer.ratios()
    assert mean_ratios.tolist() == [0., 1., 0.] and var_ratios.tolist() == [1., 0., 0.]
    other = SparseSwitchNorm2d(4)
    other.load_state_dict(layer.state_dict())
    assert other.latched and other.ratios()[0].tolist() == [0., 1., 0.]
    other.unlatch()
    assert not other.latched


def test_latched_layer_does_not_run_sparsestmax(monkeypatch):
    layer = SparseSwitchNorm2d(4)
    layer.set_radius(1.0)
    layer(torch.randn(2, 4, 3, 3))
    assert layer.latched
    assert update_choices(layer) == 1  # the host learns the choices latched on the device
    import ssn_plugins.norm.ratios as ratios_module
    import ssn_plugins.norm.switch_norm as module

    def fail(*args, **kwargs):
        raise AssertionError('sparsestmax called on a latched layer')

    monkeypatch.setattr(module, 'switch_ratios', fail)
    monkeypatch.setattr(ratios_module, 'sparsestmax_unchecked', fail)
    layer(torch.randn(2, 4, 3, 3))
    layer.latch('in', 'bn')  # latched on two normalizers: one-hot ratios, still no sparsestmax
    layer(torch.randn(2, 4, 3, 3))


def test_latching_in_training_gives_the_same_output_before_and_after_update_choices():
    """Until update_choices, a layer latched on the device takes the general path: same numbers."""
    layer = _randomise(SparseSwitchNorm2d(4))
    layer.set_radius(1.0)
    layer(torch.randn(2, 4, 3, 3))  # latches here
    assert layer.latched
    fast = SparseSwitchNorm2d(4)
    fast.load_state_dict(layer.state_dict())  # loading tells the host the choices
    x = torch.randn(3, 4, 5, 5)
    for training in (True, False):
        torch.testing.assert_close(layer.train(training)(x), fast.train(training)(x), rtol=1e-5,
                                   atol=1e-5)
    torch.testing.assert_close(layer.running_mean, fast.running_mean)
    torch.testing.assert_close(layer.running_var, fast.running_var)


def test_latch_by_name_or_index_and_unlatch():
    layer = SparseSwitchNorm2d(4, normalizers=('in', 'bn'))
    layer.latch('bn', 0)
    assert (int(layer.mean_choice), int(layer.var_choice)) == (1, 0) and layer.latched
    mean_ratios, var_ratios = layer.ratios()
    assert mean_ratios.tolist() == [0., 1.] and var_ratios.tolist() == [1., 0.]
    layer.unlatch()
    assert not layer.latched and int(layer.mean_choice) == -1
    for bad in ('ln', 2, -1, True, 1.0):
        with pytest.raises(ValueError, match="latch: mean must be one of \\('in', 'bn'\\)"):
            layer.latch(bad, 'in')
    assert not layer.latched


def test_eval_does_not_latch():
    layer = SparseSwitchNorm2d(4).eval()
    layer.set_radius(1.0)
    layer(torch.randn(2, 4, 3, 3))
    assert not layer.latched


def test_latched_logits_stay_in_the_graph():
    layer = SparseSwitchNorm2d(4)
    layer.set_radius(1.0)
    layer(torch.randn(2, 4, 3, 3))
    assert layer.latched
    layer(torch.randn(2, 4, 3, 3)).sum().backward()
    assert layer.mean_weight.grad is not None and torch.equal(layer.mean_weight.grad, torch.zeros(3))


def test_latched_layer_ignores_non_finite_logits():
    """A latched row is one-hot whatever its logits hold, on the device path and on the host's."""
    layer = SparseSwitchNorm2d(4)
    layer.set_radius(1.0)
    x = torch.randn(2, 4, 3, 3)
    expected = layer(x)  # latches here
    with torch.no_grad():
        layer.mean_weight.fill_(float('nan'))
        layer.var_weight[0] = float('inf')
    torch.testing.assert_close(layer(x), expected)  # the host does not know yet
    update_choices(layer)
    y = layer(x)
    torch.testing.assert_close(y, expected)
    y.sum().backward()
    assert torch.equal(layer.mean_weight.grad, torch.zeros(3))


def test_bad_input_gives_clear_errors():
    layer = SparseSwitchNorm2d(4)
    with pytest.raises(ValueError, match='4D input'):
        layer(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match='4 channels'):
        layer(torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match='2D or 3D'):
        SwitchNorm1d(4)(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match='normalizers'):
        SwitchNorm2d(4, normalizers=('in', 'gn'))
    with pytest.raises(ValueError, match='mode'):
        SparseSwitchNorm2d(4, mode='fast')
    for bad in (-1, float('inf'), float('nan'), None, '0.5', True):
        with pytest.raises((ValueError, TypeError), match=r'radius must be a finite number in \[0, 3\.403e\+38\]'):
            layer.set_radius(bad)
    with pytest.raises(TypeError):
        SparseSwitchNorm2d(4, momentun=0.1)
    with pytest.raises(ValueError, match='momentum'):
        SwitchNorm2d(4, momentum=1.5)
    with torch.no_grad():
        layer.mean_weight[0] = float('nan')
    # checked on the device (torch._assert_async): a RuntimeError on the CPU
    with pytest.raises((ValueError, RuntimeError), match='SparseSwitchNorm2d: .*NaN or inf'):
        layer(torch.randn(2, 4, 3, 3))
    sn = SwitchNorm2d(4)
    with torch.no_grad():
        sn.var_weight[1] = float('inf')
    with pytest.raises((ValueError, RuntimeError), match='var_weight.*NaN or inf'):
        sn(torch.randn(2, 4, 3, 3))


def test_extra_repr_and_init():
    layer = SparseSwitchNorm2d(8, eps=1e-3)
    assert repr(layer) == ("SparseSwitchNorm2d(8, eps=0.001, momentum=0.1, affine=True, "
                           "normalizers=('in', 'ln', 'bn'), mode='paper', radius=0)")
    layer.set_radius(0.25)
    layer.latch('bn', 'in')
    assert repr(layer).endswith("mode='paper', radius=0.25, choice=(bn, in))")
    assert layer.selection == (2, 0) and layer.selection.state == 'latched'
    # latched on the device in a forward: print(model) shows it once the host has looked
    free = SparseSwitchNorm2d(4)
    free.set_radius(1.0)
    free.train()(torch.randn(2, 4, 3, 3))
    assert 'choice=' not in repr(free) and free.selection.state == 'free'
    update_choices(free)
    assert free.selection.state == 'latched' and repr(free).endswith('radius=1, choice=(in, in))')
    free.mean_choice.fill_(1)
    free.var_choice.fill_(-1)
    update_choices(free)
    assert free.selection.state == 'mean latched' and repr(free).endswith('choice=(ln, free))')
    assert torch.equal(layer.weight, torch.ones(8)) and torch.equal(layer.bias, torch.zeros(8))
    assert torch.equal(layer.running_var, torch.ones(8))
    assert set(dict(layer.named_buffers())) == {'running_mean', 'running_var', 'radius', 'mean_choice',
                                                  'var_choice'}


@pytest.mark.parametrize('cls', [SwitchNorm2d, SparseSwitchNorm2d])
def test_inplace_relu_after_the_layer_trains(cls):
    # every mmdet/mmseg ResNet applies ReLU(inplace=True) to the norm's output
    layer = _randomise(cls(4))
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    torch.relu_(layer(x)).sum().backward()
    expected = x.grad.clone()
    x.grad = None
    torch.relu(layer(x)).sum().backward()
    torch.testing.assert_close(x.grad, expected)
