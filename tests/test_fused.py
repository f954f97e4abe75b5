"""The fused SN Function against the float64 reference and the composite (autograd) path."""
import pytest
import torch
from ssn_reference import ref_switch_norm

from ssn_plugins.norm.composite import composite_switch_norm
from ssn_plugins.norm.functional import switch_norm
from ssn_plugins.norm.fused import _FusedSwitchNorm, fused_switch_norm

SUBSETS = [('in', 'ln', 'bn'), ('in', 'ln'), ('in', 'bn'), ('ln', 'bn')]


def _inputs(shape, normalizers, dtype=torch.float64, loc=0.0, scale=1.0, affine=True):
    """x, ratios (2, K) (rows: mean, var), weight, bias, running mean and var."""
    c, k = shape[1], len(normalizers)
    x = (torch.randn(shape, dtype=dtype) * scale + loc).requires_grad_()
    ratios = torch.softmax(torch.randn(2, k, dtype=dtype), -1).requires_grad_()
    w = (torch.rand(c, dtype=dtype) + 0.5).requires_grad_() if affine else None
    b = torch.randn(c, dtype=dtype).requires_grad_() if affine else None
    rm = torch.randn(c, dtype=dtype) if 'bn' in normalizers else None
    rv = torch.rand(c, dtype=dtype) + 0.5 if 'bn' in normalizers else None
    return x, ratios, w, b, rm, rv


def _clone(t):
    return None if t is None else t.clone()


@pytest.mark.parametrize('normalizers', SUBSETS)
@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('shape', [(3, 4, 5), (2, 3, 2, 3), (4, 3)])
def test_gradcheck_float64(normalizers, training, shape):
    x, ratios, w, b, rm, rv = _inputs(shape, normalizers)

    def fn(x, ratios, w, b):
        # running buffers are cloned so the repeated evaluations see the same state
        return _FusedSwitchNorm.apply(x, ratios, w, b, _clone(rm), _clone(rv), 0.1, normalizers,
                                      training, 1e-5)

    assert torch.autograd.gradcheck(fn, (x, ratios, w, b), eps=1e-6, atol=1e-6)


def test_gradcheck_without_affine_and_partial_needs():
    x, ratios, _, _, rm, rv = _inputs((3, 4, 6), ('in', 'ln', 'bn'), affine=False)
    ratios.requires_grad_(False)

    def fn(x):
        return _FusedSwitchNorm.apply(x, ratios, None, None, rm.clone(), rv.clone(), 0.1,
                                      ('in', 'ln', 'bn'), True, 1e-5)

    assert torch.autograd.gradcheck(fn, (x, ), eps=1e-6, atol=1e-6)
    x.requires_grad_(False)
    ratios.requires_grad_(True)

    def fn_ratios(ratios):
        return _FusedSwitchNorm.apply(x, ratios, None, None, rm.clone(), rv.clone(), 0.1,
                                      ('in', 'ln', 'bn'), True, 1e-5)

    assert torch.autograd.gradcheck(fn_ratios, (ratios, ), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize('training', [True, False])
def test_double_backward_float64(training):
    """create_graph=True recomputes through the composite path: gradient penalties are exact."""
    x, ratios, w, b, rm, rv = _inputs((2, 3, 4), ('in', 'ln', 'bn'))

    def fn(x, ratios, w, b):
        return fused_switch_norm(x, ratios, ('in', 'ln', 'bn'), rm.clone(), rv.clone(), w, b,
                                 training, 0.1, 1e-5)

    assert torch.autograd.gradgradcheck(fn, (x, ratios, w, b), eps=1e-6, atol=1e-5)


def _check_against_reference(shape, normalizers, training, loc, atol_y, rtol_g):
    x, ratios, w, b, rm, rv = _inputs(shape, normalizers, dtype=torch.float32, loc=loc)
    ref_rm, ref_rv = (None, None) if rm is None else (rm.double(), rv.double())
    y = fused_switch_norm(x, ratios, normalizers, rm, rv, w, b, training, 0.1, 1e-5)
    leaves = [t.detach().double().requires_grad_() for t in (x, ratios, w, b)]
    ref = ref_switch_norm(leaves[0], leaves[1][0], leaves[1][1], normalizers, leaves[2], leaves[3],
                          ref_rm, ref_rv, training=training)
    assert y.dtype == torch.float32
    assert (y.double() - ref).abs().max() <= atol_y
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, leaves, grad)
    grads = torch.autograd.grad(y, (x, ratios, w, b), grad.float())
    for name, got, want in zip('x ratios w b'.split(), grads, ref_grads):
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


@pytest.mark.parametrize('training', [True, False])
def test_matches_composite_path_and_running_stats(training):
    x, ratios, w, b, rm, rv = _inputs((4, 6, 7, 7), ('in', 'ln', 'bn'), dtype=torch.float32)
    rm2, rv2 = rm.clone(), rv.clone()
    y_fast = switch_norm(x, ratios, ('in', 'ln', 'bn'), rm, rv, w, b, training, 0.1, 1e-5,
                         path='fused')
    y_slow = switch_norm(x, ratios, ('in', 'ln', 'bn'), rm2, rv2, w, b, training, 0.1, 1e-5,
                         path='composite')
    torch.testing.assert_close(y_fast, y_slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rm, rm2)
    torch.testing.assert_close(rv, rv2)
    grad = torch.randn_like(y_fast)
    for a, b_ in zip(torch.autograd.grad(y_fast, (x, ratios, w, b), grad),
                     torch.autograd.grad(y_slow, (x, ratios, w, b), grad)):
        torch.testing.assert_close(a, b_, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('normalizers', SUBSETS)
def test_composite_matches_reference_float64(normalizers):
    """The composite path (synced layers, double backward) against the reference too."""
    x, ratios, w, b, rm, rv = _inputs((3, 4, 3, 5), normalizers)
    for training in (True, False):
        y = composite_switch_norm(x, ratios, normalizers, _clone(rm), _clone(rv), w, b, training,
                                  0.1, 1e-5)
        ref = ref_switch_norm(x, ratios[0], ratios[1], normalizers, w, b, rm, rv, training=training)
        torch.testing.assert_close(y, ref, rtol=0, atol=1e-10)


def test_unknown_path_is_an_error():
    x, ratios, w, b, rm, rv = _inputs((2, 3, 4), ('in', 'ln', 'bn'))
    with pytest.raises(ValueError, match="path must be one of"):
        switch_norm(x, ratios, path='dense')


def test_saves_no_more_than_batchnorm():
    """Autograd keeps x plus per-(n, c) vectors only: within 10% of BatchNorm2d's saved bytes."""
    from lab.benchmark.timing import saved_bytes  # the benchmark's own measure
    x = torch.randn(2, 32, 14, 14, requires_grad=True)
    bn = torch.nn.BatchNorm2d(32)
    from ssn_plugins import SparseSwitchNorm2d, SwitchNorm2d
    base = saved_bytes(lambda: bn(x))
    for layer in (SwitchNorm2d(32), SparseSwitchNorm2d(32)):
        assert saved_bytes(lambda: layer(x)) <= 1.1 * base


def test_bfloat16_autocast_output_dtype():
    x, ratios, w, b, rm, rv = _inputs((2, 4, 5, 5), ('in', 'ln', 'bn'), dtype=torch.float32)
    xb = x.detach().bfloat16().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = fused_switch_norm(xb, ratios, ('in', 'ln', 'bn'), rm, rv, w, b, True, 0.1, 1e-5)
    assert y.dtype == torch.bfloat16
    ref = ref_switch_norm(xb.detach().double(), ratios[0].double(), ratios[1].double(),
                          weight=w.double(), bias=b.double())
    assert (y.double() - ref).abs().max() < 0.05
    y.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad).all()


@pytest.mark.parametrize('path', ['fused', 'composite'])
def test_eval_without_running_stats_is_an_error(path):
    x, ratios, w, b, _, _ = _inputs((2, 3, 4), ('in', 'bn'))
    with pytest.raises(ValueError, match='running_mean'):
        switch_norm(x, ratios, ('in', 'bn'), None, None, w, b, training=False, path=path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    x, ratios, w, b, rm, rv = _inputs((4, 8, 9, 9), ('in', 'ln', 'bn'), dtype=torch.float32, loc=3.0)
    grad = torch.randn(x.shape)
    y_cpu = fused_switch_norm(x, ratios, ('in', 'ln', 'bn'), rm.clone(), rv.clone(), w, b, True,
                              0.1, 1e-5)
    g_cpu = torch.autograd.grad(y_cpu, (x, ratios, w, b), grad)
    leaves = [t.detach().cuda().requires_grad_() for t in (x, ratios, w, b)]
    y_gpu = fused_switch_norm(leaves[0], leaves[1], ('in', 'ln', 'bn'), rm.cuda(), rv.cuda(),
                              leaves[2], leaves[3], True, 0.1, 1e-5)
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
