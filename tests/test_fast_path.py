"""A latched SSN layer runs PyTorch's own kernel and equals the dense computation."""
import pytest
import torch
import torch.nn.functional as F

import ssn_plugins.norm.switch_norm as switch_norm_module
from ssn_plugins import SparseSwitchNorm1d, SparseSwitchNorm2d, SparseSwitchNorm3d
from ssn_plugins.norm.functional import pool_batch, switch_norm

CHOICES = [('bn', 'bn'), ('in', 'in'), ('ln', 'ln'), ('in', 'bn'), ('bn', 'ln'), ('ln', 'in')]


def _latched(cls, c, mean, var, affine=True):
    layer = cls(c, affine=affine)
    layer.mean_choice.fill_(layer.normalizers.index(mean))
    layer.var_choice.fill_(layer.normalizers.index(var))
    with torch.no_grad():
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 1.5)
        if affine:
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.normal_()
    return layer


def _dense(layer, x):
    """The same layer computed the slow way: one-hot ratios through the autograd path."""
    p, q = layer.ratios()
    return switch_norm(x, p, q, layer.normalizers, layer.running_mean, layer.running_var,
                       layer.weight, layer.bias, layer.training, layer.momentum, layer.eps,
                       pool_batch, fused=False)


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


def test_overridden_bn_pool_falls_back_to_dense_path(monkeypatch):
    """Synced layers replace _bn_pool: a latched (BN, BN) must still use it."""
    calls = []

    class Pooled(SparseSwitchNorm2d):

        def _bn_pool(self, mean, var):
            calls.append(mean.shape)
            return pool_batch(mean, var)

    layer = _latched(Pooled, 4, 'bn', 'bn')
    reference = _latched(SparseSwitchNorm2d, 4, 'bn', 'bn')
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(layer(x), reference(x), atol=1e-5, rtol=1e-5)
    assert calls, 'the overridden _bn_pool was not used'


@pytest.mark.parametrize('choice', CHOICES)
@pytest.mark.parametrize('training', [True, False])
def test_one_by_one_maps(choice, training):
    """PSPNet's pooling branch: one value per (n, c); IN gives the bias, no error."""
    if training and choice == ('bn', 'bn'):
        pytest.skip('batch statistics of a single value per channel: BatchNorm2d refuses too')
    layer = _latched(SparseSwitchNorm2d, 6, *choice).train(training)
    x = torch.randn(1, 6, 1, 1, requires_grad=True)
    y = layer(x)
    # var = 0: y = x * rsqrt(eps) - x * rsqrt(eps) + bias loses ~1e-4 in float32
    torch.testing.assert_close(y, _dense(layer, x), atol=5e-4, rtol=0)
    y.sum().backward()
