"""The fused SN Function against the float64 reference and the autograd path."""
import pytest
import torch
from ssn_reference import ref_switch_norm

from ssn_plugins.norm.functional import switch_norm
from ssn_plugins.norm.fused import _FusedSwitchNorm, fused_switch_norm

SUBSETS = [('in', 'ln', 'bn'), ('in', 'ln'), ('in', 'bn'), ('ln', 'bn')]


def _inputs(shape, normalizers, dtype=torch.float64, loc=0.0, scale=1.0, affine=True):
    c, k = shape[1], len(normalizers)
    x = (torch.randn(shape, dtype=dtype) * scale + loc).requires_grad_()
    p = torch.softmax(torch.randn(k, dtype=dtype), 0).requires_grad_()
    q = torch.softmax(torch.randn(k, dtype=dtype), 0).requires_grad_()
    w = (torch.rand(c, dtype=dtype) + 0.5).requires_grad_() if affine else None
    b = torch.randn(c, dtype=dtype).requires_grad_() if affine else None
    rm = torch.randn(c, dtype=dtype) if 'bn' in normalizers else None
    rv = torch.rand(c, dtype=dtype) + 0.5 if 'bn' in normalizers else None
    return x, p, q, w, b, rm, rv


@pytest.mark.parametrize('normalizers', SUBSETS)
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('shape', [(3, 4, 5), (2, 3, 2, 3), (4, 3)])
def test_gradcheck_float64(normalizers, training, shape):
    x, p, q, w, b, rm, rv = _inputs(shape, normalizers)

    def fn(x, p, q, w, b):
        # running buffers are cloned so the repeated evaluations see the same state
        return _FusedSwitchNorm.apply(x, p, q, w, b, None if rm is None else rm.clone(),
                                      None if rv is None else rv.clone(), normalizers, training,
                                      0.1, 1e-5)

    assert torch.autograd.gradcheck(fn, (x, p, q, w, b), eps=1e-6, atol=1e-6)


def test_gradcheck_without_affine_and_partial_needs():
    x, p, q, _, _, rm, rv = _inputs((3, 4, 6), ('in', 'ln', 'bn'), affine=False)
    p.requires_grad_(False)

    def fn(x, q):
        return _FusedSwitchNorm.apply(x, p, q, None, None, rm.clone(), rv.clone(),
                                      ('in', 'ln', 'bn'), True, 0.1, 1e-5)

    assert torch.autograd.gradcheck(fn, (x, q), eps=1e-6, atol=1e-6)


def _check_against_reference(shape, normalizers, training, loc, atol_y, rtol_g):
    x, p, q, w, b, rm, rv = _inputs(shape, normalizers, dtype=torch.float32, loc=loc)
    y = fused_switch_norm(x, p, q, normalizers, rm, rv, w, b, training=training)
    leaves = [x.detach().double().requires_grad_() for _ in range(1)] + [
        t.detach().double().requires_grad_() for t in (p, q, w, b)]
    ref = ref_switch_norm(leaves[0], leaves[1], leaves[2], normalizers, leaves[3], leaves[4],
                          None if rm is None else rm.double(), None if rv is None else rv.double(),
                          training=training)
    assert y.dtype == torch.float32
    assert (y.double() - ref).abs().max() <= atol_y
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, leaves, grad)
    grads = torch.autograd.grad(y, (x, p, q, w, b), grad.float())
    for name, got, want in zip('x p q w b'.split(), grads, ref_grads):
        err = (got.double() - want).abs().max() / want.abs().max().clamp_min(1e-6)
        assert err <= rtol_g, (name, float(err))


@pytest.mark.parametrize('normalizers', SUBSETS)
@pytest.mark.parametrize('training', [True, False])
def test_float32_matches_reference(normalizers, training):
    _check_against_reference((4, 8, 6, 5), normalizers, training, 0.0, 2e-5, 1e-4)


@pytest.mark.parametrize('normalizers', [('in', 'ln', 'bn'), ('in', 'ln')])
def test_large_mean_no_cancellation(normalizers):
    """Mean 1e3, std 1 in float32: one-pass E[x^2] - E[x]^2 would lose every digit."""
    _check_against_reference((4, 8, 16, 16), normalizers, True, 1e3, 1e-3, 1e-3)


def test_matches_autograd_path_and_running_stats():
    x, p, q, w, b, rm, rv = _inputs((4, 6, 7, 7), ('in', 'ln', 'bn'), dtype=torch.float32)
    rm2, rv2 = rm.clone(), rv.clone()
    y_fast = switch_norm(x, p, q, ('in', 'ln', 'bn'), rm, rv, w, b, True, 0.1, 1e-5)
    y_slow = switch_norm(x, p, q, ('in', 'ln', 'bn'), rm2, rv2, w, b, True, 0.1, 1e-5, fused=False)
    torch.testing.assert_close(y_fast, y_slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rm, rm2)
    torch.testing.assert_close(rv, rv2)
    grad = torch.randn_like(y_fast)
    for a, b_ in zip(torch.autograd.grad(y_fast, (x, p, q, w, b), grad),
                     torch.autograd.grad(y_slow, (x, p, q, w, b), grad)):
        torch.testing.assert_close(a, b_, atol=1e-4, rtol=1e-4)


def test_saves_no_more_than_batchnorm():
    """Autograd keeps x plus per-(n, c) vectors only: within 10% of BatchNorm2d's saved bytes."""

    def saved_bytes(fn):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return total[0]

    x = torch.randn(2, 32, 14, 14, requires_grad=True)
    bn = torch.nn.BatchNorm2d(32)
    from ssn_plugins import SparseSwitchNorm2d, SwitchNorm2d
    base = saved_bytes(lambda: bn(x))
    for layer in (SwitchNorm2d(32), SparseSwitchNorm2d(32)):
        assert saved_bytes(lambda: layer(x)) <= 1.1 * base


def test_bfloat16_autocast_output_dtype():
    x, p, q, w, b, rm, rv = _inputs((2, 4, 5, 5), ('in', 'ln', 'bn'), dtype=torch.float32)
    xb = x.detach().bfloat16().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = fused_switch_norm(xb, p, q, ('in', 'ln', 'bn'), rm, rv, w, b)
    assert y.dtype == torch.bfloat16
    ref = ref_switch_norm(xb.detach().double(), p.double(), q.double(), weight=w.double(),
                          bias=b.double())
    assert (y.double() - ref).abs().max() < 0.05
    y.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad).all()


def test_eval_without_running_stats_is_an_error():
    x, p, q, w, b, _, _ = _inputs((2, 3, 4), ('in', 'bn'))
    with pytest.raises(ValueError, match='running_mean'):
        fused_switch_norm(x, p, q, ('in', 'bn'), None, None, w, b, training=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    x, p, q, w, b, rm, rv = _inputs((4, 8, 9, 9), ('in', 'ln', 'bn'), dtype=torch.float32, loc=3.0)
    grad = torch.randn(x.shape)
    y_cpu = fused_switch_norm(x, p, q, ('in', 'ln', 'bn'), rm.clone(), rv.clone(), w, b)
    g_cpu = torch.autograd.grad(y_cpu, (x, p, q, w, b), grad)
    leaves = [t.detach().cuda().requires_grad_() for t in (x, p, q, w, b)]
    y_gpu = fused_switch_norm(leaves[0], leaves[1], leaves[2], ('in', 'ln', 'bn'), rm.cuda(),
                              rv.cuda(), leaves[3], leaves[4])
    g_gpu = torch.autograd.grad(y_gpu, leaves, grad.cuda())
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, atol=1e-4, rtol=1e-4)
    for a, b_ in zip(g_gpu, g_cpu):
        torch.testing.assert_close(a.cpu(), b_, atol=1e-3, rtol=1e-3)


def test_inplace_op_on_the_output():
    """ResNets apply ReLU(inplace=True) to the norm output: it must not be a Function's view."""
    from ssn_plugins import SwitchNorm2d
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    torch.relu_(SwitchNorm2d(4)(x)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
