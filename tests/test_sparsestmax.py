import math
import sys

import pytest
import torch

from ssn_plugins import sparsemax, sparsestmax
from ssn_reference import ref_sparsemax, ref_sparsestmax

MODES = ('paper', 'official')
_OPS = sys.modules['ssn_plugins.ops.sparsestmax']


@pytest.fixture(params=['tensor', 'small'])
def path(request, monkeypatch):
    """Run a test through the batched tensor path and through the few-rows CPU path."""
    monkeypatch.setattr(_OPS, 'SMALL_PATH_MAX_NUMEL', 0 if request.param == 'tensor' else 10**9)
    return request.param


def _inputs(num: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """Random logits mixed with edge, vertex and tie cases."""
    z = torch.randn(num, k, generator=generator, dtype=torch.float64) * 2
    quarter = num // 4
    # points whose sparsemax lies on a lower face (edges): one logit far below
    z[:quarter, -1] -= 5
    # near a vertex: one logit far above
    z[quarter:2 * quarter, 0] += 3 * torch.rand(quarter, generator=generator, dtype=torch.float64)
    # exact ties: all equal, or two equal and the rest far below
    z[2 * quarter:2 * quarter + 20] = 0.7
    z[2 * quarter + 20:2 * quarter + 40, :2] = 1.5
    z[2 * quarter + 20:2 * quarter + 40, 2:] = -4
    return z


@pytest.mark.parametrize('k', [2, 3, 4, 5])
def test_sparsemax_matches_reference(k):
    g = torch.Generator().manual_seed(k)
    z = _inputs(1000, k, g)
    expected = torch.tensor([ref_sparsemax(row.tolist()) for row in z], dtype=torch.float64)
    torch.testing.assert_close(sparsemax(z), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('k', [2, 3, 4])
def test_sparsestmax_matches_reference(k, mode, path):
    g = torch.Generator().manual_seed(100 + k)
    z = _inputs(1500 if path == 'tensor' else 300, k, g)
    radii = torch.rand(len(z), generator=g, dtype=torch.float64) * 1.1 * math.sqrt((k - 1) / k)
    expected = torch.tensor([ref_sparsestmax(row.tolist(), float(r), mode) for row, r in zip(z, radii)],
                            dtype=torch.float64)
    if path == 'tensor':  # a radius per row
        out = sparsestmax(z, radii, mode=mode)
    else:  # the small path takes one radius per call
        out = torch.cat([sparsestmax(z[i:i + 1], float(radii[i]), mode=mode) for i in range(len(z))])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-9)
    # and one radius for the whole batch
    r = 0.6 * math.sqrt((k - 1) / k)
    expected = torch.tensor([ref_sparsestmax(row.tolist(), r, mode) for row in z], dtype=torch.float64)
    torch.testing.assert_close(sparsestmax(z, r, mode=mode), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_outputs_are_simplex_points(mode, dtype, tol):
    g = torch.Generator().manual_seed(7)
    z = _inputs(2000, 3, g).to(dtype)
    for r in (0.0, 0.2, 0.45, 0.6, 0.75, 0.8, 0.9):
        p = sparsestmax(z, r, mode=mode)
        assert not torch.isnan(p).any()
        assert (p >= 0).all()
        torch.testing.assert_close(p.sum(-1), torch.ones(len(z), dtype=dtype), rtol=0, atol=tol)


@pytest.mark.parametrize('k', [2, 3, 5])
def test_paper_mode_satisfies_the_constraint(k):
    g = torch.Generator().manual_seed(11)
    z = _inputs(2000, k, g)
    vertex_dist = math.sqrt((k - 1) / k)
    for r in torch.linspace(0, vertex_dist - 1e-6, 7).tolist():
        p = sparsestmax(z, r)
        assert ((p - 1 / k).norm(dim=-1) >= r - 1e-9).all()


@pytest.mark.parametrize('mode', MODES)
def test_zero_radius_is_sparsemax(mode):
    z = torch.randn(500, 3, dtype=torch.float64)
    torch.testing.assert_close(sparsestmax(z, 0.0, mode=mode), sparsemax(z), rtol=0, atol=1e-12)


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('k', [2, 3, 4])
def test_large_radius_is_one_hot_argmax(mode, k):
    z = torch.randn(500, k, dtype=torch.float64)
    z[:10] = 0.3  # ties go to the lowest index
    expected = torch.nn.functional.one_hot(z.argmax(-1), k).to(z.dtype)
    for r in (math.sqrt((k - 1) / k), 1.0, 3.0):
        torch.testing.assert_close(sparsestmax(z, r, mode=mode), expected, rtol=0, atol=1e-12)


def test_modes_agree_when_sparsemax_is_dense():
    z = torch.randn(3000, 3, dtype=torch.float64) * 0.3
    dense = (sparsemax(z) > 0).all(-1)
    assert dense.sum() > 1000
    for r in (0.3, 0.5, 0.7, 0.8):
        torch.testing.assert_close(sparsestmax(z[dense], r, mode='paper'),
                                   sparsestmax(z[dense], r, mode='official'), rtol=0, atol=1e-12)


def test_modes_differ_on_a_sparse_start():
    # DESIGN.md / reference: edge point measured from the edge midpoint by the released code
    z = torch.tensor([0.8, 0.2, -1.0], dtype=torch.float64)
    torch.testing.assert_close(sparsestmax(z, 0.5, mode='official'),
                               torch.tensor([0.5 + 0.5 / math.sqrt(2), 0.5 - 0.5 / math.sqrt(2), 0.0],
                                            dtype=torch.float64))
    torch.testing.assert_close(sparsestmax(z, 0.5, mode='paper'), torch.tensor([0.8, 0.2, 0.0], dtype=torch.float64))
    assert sparsestmax(z, 0.72, mode='official')[0] == 1
    assert sparsestmax(z, 0.72, mode='paper')[0] < 1


def test_batched_over_other_dims(path):
    z = torch.randn(4, 3, 5, dtype=torch.float64)
    out = sparsestmax(z, 0.5, dim=1)
    loop = torch.stack([sparsestmax(z[:, :, j], 0.5) for j in range(5)], dim=-1)
    torch.testing.assert_close(out, loop)
    torch.testing.assert_close(sparsemax(z, dim=1), torch.stack([sparsemax(z[:, :, j]) for j in range(5)], -1))


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('radius', [0.0, 0.3, 0.55, 0.75])
def test_gradcheck(mode, radius, path):
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        z = (torch.randn(6, 3, generator=g, dtype=torch.float64)).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: sparsestmax(t, radius, mode=mode), (z,))
    z = torch.randn(6, 4, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sparsemax(t), (z,))


def test_tie_gradient_is_finite(path):
    z = torch.full((2, 3), 0.5, dtype=torch.float64, requires_grad=True)
    sparsestmax(z, 0.4).sum().backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_logits_raise(bad, path):
    z = torch.tensor([0.1, bad, 0.3])
    with pytest.raises(ValueError, match='NaN or inf'):
        sparsestmax(z, 0.5)
    with pytest.raises(ValueError, match='NaN or inf'):
        sparsemax(z)


def test_bad_arguments_raise(path):
    z = torch.randn(3)
    with pytest.raises(ValueError, match='radius'):
        sparsestmax(z, -0.1)
    with pytest.raises(ValueError, match='radius'):
        sparsestmax(z, torch.tensor([-0.1]))
    with pytest.raises(ValueError, match='mode'):
        sparsestmax(z, 0.1, mode='fast')
    with pytest.raises(ValueError, match='at least 2'):
        sparsestmax(torch.randn(4, 1), 0.1)
    with pytest.raises(TypeError, match='floating point'):
        sparsemax(torch.tensor([1, 2, 3]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('mode', MODES)
def test_cuda_matches_cpu(mode):
    z = torch.randn(1000, 3)
    for r in (0.0, 0.5, 0.8, 1.0):
        torch.testing.assert_close(sparsestmax(z.cuda(), r, mode=mode).cpu(), sparsestmax(z, r, mode=mode),
                                   rtol=0, atol=1e-6)


def test_small_path_equals_tensor_path_with_gradients(monkeypatch):
    g = torch.Generator().manual_seed(5)
    for k in (2, 3, 5):
        for trial in range(200):
            z = torch.randn(2, k, generator=g, dtype=torch.float64) * 2
            z[0, -1] -= 4 * (trial % 3 == 0)
            r = float(torch.rand((), generator=g)) * math.sqrt((k - 1) / k)
            weights = torch.randn(2, k, generator=g, dtype=torch.float64)
            results = []
            for limit in (0, 10**9):
                monkeypatch.setattr(_OPS, 'SMALL_PATH_MAX_NUMEL', limit)
                logits = z.clone().requires_grad_()
                out = sparsestmax(logits, r, mode=MODES[trial % 2])
                (out * weights).sum().backward()
                results.append((out.detach(), logits.grad))
            torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-12)
            torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=1e-9)
