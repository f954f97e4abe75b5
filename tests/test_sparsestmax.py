import math
import sys

import pytest
import torch

from ssn_plugins import sparsemax, sparsestmax
from ssn_reference import ref_sparsemax, ref_sparsestmax

MODES = ('paper', 'official')
_OPS = sys.modules['ssn_plugins.ops.sparsestmax']


PATHS = {'closed': 3, 'loop': 0}  # CLOSED_FORM_MAX_K: K <= 3 in closed form, or every K on the loop


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch):
    """Run a test through the closed form (K <= 3) and through the general loop (any K)."""
    monkeypatch.setattr(_OPS, 'CLOSED_FORM_MAX_K', PATHS[request.param])
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
@pytest.mark.parametrize('k', [2, 3, 4, 5])
def test_sparsestmax_matches_reference(k, mode, path):
    if k > 3 and path == 'closed':
        pytest.skip('K > 3 always takes the loop')
    g = torch.Generator().manual_seed(100 + k)
    z = _inputs(1500, k, g)
    radii = torch.rand(len(z), generator=g, dtype=torch.float64) * 1.1 * math.sqrt((k - 1) / k)
    expected = torch.tensor([ref_sparsestmax(row.tolist(), float(r), mode) for row, r in zip(z, radii)],
                            dtype=torch.float64)
    # a radius per row
    torch.testing.assert_close(sparsestmax(z, radii, mode=mode), expected, rtol=0, atol=1e-9)
    # and one radius for the whole batch
    r = 0.6 * math.sqrt((k - 1) / k)
    expected = torch.tensor([ref_sparsestmax(row.tolist(), r, mode) for row in z], dtype=torch.float64)
    torch.testing.assert_close(sparsestmax(z, r, mode=mode), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize('mode', MODES)
# float32: about 16 ulps at 1 (the closed form pushes along a unit vector and does not renormalise)
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 2e-6), (torch.float64, 1e-12)])
def test_outputs_are_simplex_points(mode, dtype, tol, path):
    g = torch.Generator().manual_seed(7)
    z = _inputs(2000, 3, g).to(dtype)
    for r in (0.0, 0.2, 0.45, 0.6, 0.75, 0.8, 0.9):
        p = sparsestmax(z, r, mode=mode)
        assert not torch.isnan(p).any()
        assert (p >= 0).all()
        torch.testing.assert_close(p.sum(-1), torch.ones(len(z), dtype=dtype), rtol=0, atol=tol)


@pytest.mark.parametrize('k', [2, 3, 5])
def test_paper_mode_satisfies_the_constraint(k, path):
    g = torch.Generator().manual_seed(11)
    z = _inputs(2000, k, g)
    vertex_dist = math.sqrt((k - 1) / k)
    for r in torch.linspace(0, vertex_dist - 1e-6, 7).tolist():
        p = sparsestmax(z, r)
        assert ((p - 1 / k).norm(dim=-1) >= r - 1e-9).all()


@pytest.mark.parametrize('mode', MODES)
def test_zero_radius_is_sparsemax(mode, path):
    z = torch.randn(500, 3, dtype=torch.float64)
    torch.testing.assert_close(sparsestmax(z, 0.0, mode=mode), sparsemax(z), rtol=0, atol=1e-12)


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('k', [2, 3, 4])
def test_large_radius_is_one_hot_argmax(mode, k, path):
    z = torch.randn(500, k, dtype=torch.float64)
    z[:10] = 0.3  # ties go to the lowest index
    expected = torch.nn.functional.one_hot(z.argmax(-1), k).to(z.dtype)
    for r in (math.sqrt((k - 1) / k), 1.0, 3.0):
        torch.testing.assert_close(sparsestmax(z, r, mode=mode), expected, rtol=0, atol=1e-12)


def test_modes_agree_when_sparsemax_is_dense(path):
    z = torch.randn(3000, 3, dtype=torch.float64) * 0.3
    dense = (sparsemax(z) > 0).all(-1)
    assert dense.sum() > 1000
    for r in (0.3, 0.5, 0.7, 0.8):
        torch.testing.assert_close(sparsestmax(z[dense], r, mode='paper'),
                                   sparsestmax(z[dense], r, mode='official'), rtol=0, atol=1e-12)


def test_modes_differ_on_a_sparse_start(path):
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
def test_cuda_matches_cpu(mode, path):
    z = torch.randn(1000, 3)
    for r in (0.0, 0.5, 0.8, 1.0):
        torch.testing.assert_close(sparsestmax(z.cuda(), r, mode=mode).cpu(), sparsestmax(z, r, mode=mode),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize('k', [2, 3])
def test_closed_form_equals_loop_with_gradients(k, monkeypatch):
    """Values and gradients of the two implementations on random, edge and vertex inputs.

    Values on the tie rows too; their gradients are checked by the tie test below.
    """
    g = torch.Generator().manual_seed(5)
    z = _inputs(400, k, g)
    z[::3, -1] -= 4  # more sparse starts
    ties = torch.zeros(len(z), dtype=torch.bool)
    ties[200:240] = True  # the exact ties of _inputs (quarter = 100)
    radii = torch.rand(len(z), generator=g, dtype=torch.float64) * 1.1 * math.sqrt((k - 1) / k)
    weights = torch.randn(len(z), k, generator=g, dtype=torch.float64)
    for mode in MODES:
        results = []
        for limit in PATHS.values():
            monkeypatch.setattr(_OPS, 'CLOSED_FORM_MAX_K', limit)
            logits = z.clone().requires_grad_()
            out = sparsestmax(logits, radii, mode=mode)
            (out * weights).sum().backward()
            results.append((out.detach(), logits.grad))
        (closed, closed_grad), (loop, loop_grad) = results
        torch.testing.assert_close(closed, loop, rtol=0, atol=1e-12)
        torch.testing.assert_close(closed_grad[~ties], loop_grad[~ties], rtol=0, atol=1e-9)


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('z', [[1.0, 1.0, 1.0], [1.5, 1.5, -4.0], [0.2, 0.2]], ids=['3-way', 'edge', 'K=2'])
def test_tie_without_push_has_the_sparsemax_gradient(z, mode, path):
    """A tie the radius does not push (r = 0, or below the face's distance) is sparsemax's point,
    with sparsemax's gradient: a fresh SSN layer (logits all ones) at radius 0 must get a
    gradient for its logits.  A pushed tie does not move (zero gradient)."""
    z = torch.tensor(z, dtype=torch.float64)
    k = len(z)
    weights = torch.tensor([0.3, -0.2, 0.5][:k], dtype=torch.float64)
    # the centre and K = 2 move for any r > 0; the paper's edge face only for r > sqrt(1/2 - 1/3)
    on_paper_edge = k == 3 and z[-1] < 0 and mode == 'paper'
    radii = [0.0, 0.1, 0.3] if on_paper_edge else [0.0]
    for r in radii:
        logits = z.clone().requires_grad_()
        (sparsestmax(logits, r, mode=mode) * weights).sum().backward()
        expected_logits = z.clone().requires_grad_()
        (sparsemax(expected_logits) * weights).sum().backward()
        torch.testing.assert_close(logits.grad, expected_logits.grad, rtol=0, atol=1e-12,
                                   msg=lambda m, r=r: f'r={r}: {m}')
    logits = z.clone().requires_grad_()
    pushed = sparsestmax(logits, 0.5, mode=mode)  # the tie breaks towards the lowest index
    assert pushed[0] > pushed[1]
    (pushed * weights).sum().backward()
    assert torch.equal(logits.grad, torch.zeros_like(z))


def _extreme_logits(k: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Rows mixing +-1e20, +-3e38 (near float32's limit) with ordinary logits and ties."""
    big = [1e20, -1e20, 3e38, -3e38, 3e38 * 0.999, 0.0, 0.5, -0.2]
    rows = [[1e20, -1e20, 0.0] + [0.0] * (k - 3), [3e38, -3e38, 0.0] + [1.0] * (k - 3),
            [3e38] * 2 + [-3e38] * (k - 2), [-3e38] * k, [3e38] * k, [-3e38] * (k - 1) + [-3e38 * 0.999]]
    picks = torch.randint(len(big), (200, k), generator=generator)
    rows += torch.tensor(big, dtype=torch.float64)[picks].tolist()
    return torch.tensor([row[:k] for row in rows], dtype=dtype)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('k', [3, 4])
def test_extreme_finite_logits_are_finite_and_correct(k, mode, dtype, path):
    """Any finite logits, even +-3e38: the float64 reference after a shift (minus the row max)."""
    if k > 3 and path == 'closed':
        pytest.skip('K > 3 always takes the loop')
    z = _extreme_logits(k, dtype, torch.Generator().manual_seed(k))
    assert torch.isfinite(z).all()
    shifted = [[x - max(row) for x in row] for row in z.double().tolist()]  # exact in float64
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    expected = torch.tensor([ref_sparsemax(row) for row in shifted], dtype=torch.float64)
    torch.testing.assert_close(sparsemax(z).double(), expected, rtol=0, atol=tol)
    for r in (0.0, 0.3, 0.6, 1.5):
        expected = torch.tensor([ref_sparsestmax(row, r, mode) for row in shifted], dtype=torch.float64)
        zg = z.clone().requires_grad_(True)
        out = sparsestmax(zg, r, mode=mode)
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=tol, msg=f'r={r}')
        out.backward(torch.randn(out.shape, dtype=dtype, generator=torch.Generator().manual_seed(0)))
        assert torch.isfinite(zg.grad).all(), r


def test_issue_19_probe_is_sparsemax_at_radius_zero():
    z = torch.tensor([[1e20, -1e20, 0.]])
    for mode in MODES:
        assert sparsestmax(z, 0.3, mode=mode).tolist() == [[1.0, 0.0, 0.0]]
        assert sparsestmax(z, 0.0, mode=mode).tolist() == sparsemax(z).tolist() == [[1.0, 0.0, 0.0]]
