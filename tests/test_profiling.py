"""lab.profiling: the counters count what they claim (host reads, kernels, graph breaks).

The layers' own targets (no reads, kernel budgets, one graph) are in test_hot_path.py."""
import pytest
import torch
from torch import nn

from lab import profiling


def _counts(fn):
    with profiling.OpCounter() as counter:
        fn()
    return counter.counts


def test_item_is_one_read_in_both_modes():
    t = torch.randn(4)
    counts = _counts(lambda: t.sum().item())
    assert counts.python_reads == {'item': 1}  # TorchFunctionMode
    assert counts.aten_reads == {'_local_scalar_dense': 1}  # TorchDispatchMode
    assert counts.host_reads == 1  # the same read, counted once
    assert counts.kernels == 1  # sum; the scalar copy is a read, not a kernel


@pytest.mark.parametrize('name, fn, python, aten', [
    ('bool', lambda t: bool(t.sum() > 0), '__bool__', '_local_scalar_dense'),
    ('float', lambda t: float(t[0]), '__float__', '_local_scalar_dense'),
    ('nonzero', lambda t: t.nonzero(), 'nonzero', 'nonzero'),
    ('mask', lambda t: t[t > 0], '__getitem__', 'index'),
    ('masked_select', lambda t: t.masked_select(t > 0), 'masked_select', 'masked_select'),
])
def test_each_kind_of_read_is_seen_at_both_levels(name, fn, python, aten):
    t = torch.randn(5)
    counts = _counts(lambda: fn(t))
    if name == 'mask' and not counts.python_reads:
        # torch 2.1 does not route Tensor.__getitem__ through TorchFunctionMode: the read
        # is still seen once, at the ATen level
        assert counts.other_reads == {aten: 1}, name
    else:
        assert counts.python_reads == {python: 1}, name
    assert counts.aten_reads == {aten: 1}, name
    assert counts.host_reads == 1, name


def test_reads_one_level_alone_sees():
    t = torch.randn(5)
    tolist = _counts(lambda: t.tolist())  # reads CPU memory with no ATen op
    assert tolist.python_reads == {'tolist': 1} and not tolist.aten_reads
    assert tolist.host_reads == 1
    repeat = _counts(lambda: torch.repeat_interleave(torch.tensor([1, 2])))  # inside ATen
    assert not repeat.python_reads and repeat.other_reads == {'repeat_interleave': 1}
    assert repeat.host_reads == 1
    assert _counts(lambda: torch.repeat_interleave(torch.tensor([1, 2]), output_size=3)).host_reads == 0
    assert _counts(lambda: t[torch.tensor([0, 2])]).host_reads == 0  # integer index: no read


def test_views_and_allocations_are_not_kernels():
    x = torch.randn(4, 6)
    assert _counts(lambda: x.view(6, 4).t().unsqueeze(0).expand(2, 4, 6)[0, 1:]).kernels == 0
    assert _counts(lambda: (torch.empty(3), torch.empty_like(x), x.detach())).kernels == 0
    ops = _counts(lambda: x.mul(2).add_(1).sum()).kernel_ops
    assert ops == {'aten.mul.Tensor': 1, 'aten.add_.Tensor': 1, 'aten.sum.default': 1}


def test_batchnorm2d_train_step_counts_are_stable_and_read_nothing():
    # torch 2.13: native_batch_norm, num_batches_tracked.add_, (y * g), sum; backward:
    # ones_like, mul, native_batch_norm_backward = 7 (other torch versions differ by an op
    # or two, so the layer budgets are ratios to this count, measured in the same run)
    counts = []
    for shape in [(2, 256, 14, 14), (8, 64, 56, 56), (2, 8, 1, 1)]:
        bn = nn.BatchNorm2d(shape[1])
        x = torch.randn(*shape)
        first = profiling.train_step_counts(bn, x)
        assert first[0] == 0 and first[1] >= 4, shape  # forward, loss and backward kernels
        assert profiling.train_step_counts(bn, x) == first, shape  # stable across steps
        assert profiling.eval_forward_counts(bn, x) == (0, 1), shape  # one batch_norm kernel
        counts.append(first)
    assert len(set(counts)) == 1, counts  # the same for every shape


def test_graph_breaks():
    def data_dependent(t):
        if t.sum() > 0:
            return t + 1
        return t - 1

    assert profiling.graph_breaks(data_dependent, torch.randn(4)) >= 1
    assert profiling.graph_breaks(lambda t: (t * 2).sum(), torch.randn(4)) == 0
    x = torch.randn(2, 8, 4, 4)
    for train in (True, False):
        for dynamic in (False, True):
            assert profiling.layer_graph_breaks(nn.BatchNorm2d(8), x, train, dynamic) == 0
