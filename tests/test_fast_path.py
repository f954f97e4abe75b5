"""A latched SSN layer runs PyTorch's own kernel and equals the dense computation."""
import copy

import pytest
import torch
import torch.nn.functional as F

import ssn_plugins
import ssn_plugins.norm.switch_norm as switch_norm_module
from ssn_plugins import SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d
from ssn_plugins.norm.functional import has_latched_kernel, latched_norm, switch_norm
from ssn_plugins.norm.moments import local_batch_moments

CHOICES = [('bn', 'bn'), ('in', 'in'), ('ln', 'ln'), ('in', 'bn'), ('bn', 'ln'), ('ln', 'in')]


def _latched(cls, c, mean, var, affine=True):
    layer = cls(c, affine=affine)
    layer.latch(mean, var)
    with torch.no_grad():
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 1.5)
        if affine:
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.normal_()
    return layer


def _dense(layer, x):
    """The same layer computed the slow way: one-hot ratios through the composite path."""
    ratios = torch.stack(layer.ratios())  # (2, K)
    return switch_norm(x, ratios, layer.normalizers, layer.running_mean, layer.running_var,
                       layer.weight, layer.bias, layer.training, layer.momentum, layer.eps,
                       path='composite')


@pytest.mark.parametrize('choice', CHOICES)
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('cls,shape', [(SparseSwitchNorm2d, (4, 6, 5, 5)),
                                       (SparseSwitchNorm1d, (4, 6, 7)),
                                       (SparseSwitchNorm3d, (2, 6, 3, 3, 3))])
def test_latched_equals_dense(choice, training, cls, shape):
    layer = _latched(cls, shape[1], *choice).train(training)
    reference = _latched(cls, shape[1], *choice).train(training)
    reference.load_state_dict(layer.state_dict())
    x = (torch.randn(shape) * 2 + 1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y = layer(x)
    y_ref = _dense(reference, x_ref)
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-5)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad, atol=1e-4, rtol=1e-4)
    if 'bn' in choice:  # running statistics follow the dense path's update
        torch.testing.assert_close(layer.running_mean, reference.running_mean)
        torch.testing.assert_close(layer.running_var, reference.running_var)
    if training:  # logits stay in the graph with a zero gradient (DDP)
        assert layer.mean_weight.grad is not None and not layer.mean_weight.grad.any()


def test_latched_without_affine_keeps_logits_in_graph():
    layer = _latched(SparseSwitchNorm2d, 3, 'in', 'in', affine=False).train()
    x = torch.randn(2, 3, 4, 4)
    y = layer(x)
    torch.testing.assert_close(y, F.instance_norm(x, eps=layer.eps))
    y.sum().backward()
    assert layer.var_weight.grad is not None


@pytest.mark.parametrize('choice', [('bn', 'bn'), ('in', 'in'), ('ln', 'ln')])
def test_single_normalizer_skips_the_switch_computation(choice, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError('dense switch_norm called for a latched single-normalizer layer')

    monkeypatch.setattr(switch_norm_module, 'switch_norm', fail)
    layer = _latched(SparseSwitchNorm2d, 4, *choice)
    layer(torch.randn(2, 4, 3, 3)).sum().backward()
    layer.eval()(torch.randn(2, 4, 3, 3))


def test_latched_in_training_takes_the_kernel_after_update_choices(monkeypatch):
    """Latching in a forward is recorded on the device; update_choices hands it to the host."""
    layer = SparseSwitchNorm2d(4)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0., 0., 3.]))
        layer.var_weight.copy_(torch.tensor([0., 0., 3.]))
    layer.set_radius(1.0)
    x = torch.randn(2, 4, 3, 3)
    layer(x)  # latches on (BN, BN) here, through switch_norm
    assert (int(layer.mean_choice), int(layer.var_choice)) == (2, 2)
    running = [layer.running_mean.clone(), layer.running_var.clone()]
    expected = F.batch_norm(x, *running, layer.weight, layer.bias, True, layer.momentum, layer.eps)
    # the host has not been told yet: the general path, same numbers
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)

    def fail(*args, **kwargs):
        raise AssertionError('dense switch_norm called for a latched single-normalizer layer')

    monkeypatch.setattr(switch_norm_module, 'switch_norm', fail)
    assert ssn_plugins.update_choices(layer) == 1
    expected = F.batch_norm(x, *running, layer.weight, layer.bias, True, layer.momentum, layer.eps)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.running_mean, running[0])
    torch.testing.assert_close(layer.running_var, running[1])


def _counting_pool(calls):
    """This process's batch moments, as a custom ``batch_pool`` that records its calls."""

    def pool(mean, var, length):
        calls.append(mean.shape)
        return local_batch_moments(mean, var, length)

    return pool


def test_custom_batch_pool_needs_the_composite_path():
    """A ``batch_pool`` is only taken by path='composite'; this process's pool equals the default."""
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    ratios = torch.softmax(torch.randn(2, 3), -1).requires_grad_()
    buffers = [(torch.zeros(4), torch.ones(4)) for _ in range(3)]
    with pytest.raises(ValueError, match="path='composite'"):
        switch_norm(x, ratios, running_mean=torch.zeros(4), running_var=torch.ones(4),
                    path='fused', batch_pool=local_batch_moments)
    calls = []
    outputs = [
        switch_norm(x, ratios, running_mean=rm, running_var=rv, path=path, batch_pool=pool)
        for (rm, rv), (path, pool) in zip(buffers, [('fused', None), ('composite', None),
                                                    ('composite', _counting_pool(calls))])]
    assert calls == [(3, 4)], 'the batch_pool was not used'
    grad = torch.randn_like(x)
    expected = torch.autograd.grad(outputs[0], (x, ratios), grad)
    for y, (rm, rv) in zip(outputs[1:], buffers[1:]):
        torch.testing.assert_close(y, outputs[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rm, buffers[0][0])
        torch.testing.assert_close(rv, buffers[0][1])
        for got, want in zip(torch.autograd.grad(y, (x, ratios), grad), expected):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_layer_with_a_batch_pool_skips_the_bn_kernel():
    """Synced layers override _batch_pool: a latched (BN, BN) must still use it, not F.batch_norm."""
    calls = []

    class Pooled(SparseSwitchNorm2d):

        def _batch_pool(self):
            return _counting_pool(calls)

    layer = _latched(Pooled, 4, 'bn', 'bn')
    reference = _latched(SparseSwitchNorm2d, 4, 'bn', 'bn')
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(layer(x), reference(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.running_mean, reference.running_mean)
    torch.testing.assert_close(layer.running_var, reference.running_var)
    assert calls, 'the overridden _batch_pool was not used'


@pytest.mark.parametrize('choice', CHOICES)
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('n', [1, 2])
def test_one_by_one_maps(choice, training, n):
    """PSPNet's pooling branch: one value per (n, c); IN gives the bias, no error."""
    layer = _latched(SparseSwitchNorm2d, 6, *choice).train(training)
    x = torch.randn(n, 6, 1, 1, requires_grad=True)
    if training and n == 1 and 'bn' in choice:
        # batch statistics of a single value per channel: BatchNorm2d refuses too
        with pytest.raises(ValueError, match='more than 1 value per channel'):
            layer(x)
        return
    reference = copy.deepcopy(layer)  # its own running buffers: BN's backward reads the layer's
    y = layer(x)
    # var = 0: y = x * rsqrt(eps) - x * rsqrt(eps) + bias loses ~1e-4 in float32
    torch.testing.assert_close(y, _dense(reference, x), atol=5e-4, rtol=0)
    y.sum().backward()


def test_latched_norm_names_the_one_case_without_a_kernel():
    one_value = torch.randn(2, 6, 1, 1)
    assert not has_latched_kernel('in', one_value)
    assert has_latched_kernel('ln', one_value) and has_latched_kernel('in', torch.randn(2, 6, 2, 1))
    with pytest.raises(ValueError, match=r'latched_norm: IN on maps of one value \(2, 6, 1, 1\) has no '
                                         r'PyTorch kernel; use switch_norm with one-hot ratios'):
        latched_norm(one_value, 'in', None, None, None, None, True, 0.1, 1e-5)
