"""Counters that predict a layer's GPU behaviour from a CPU run.

On a GPU three things make a normalization layer slow besides arithmetic:
host reads (each one waits for the device: a sync), kernel launches (each
small op on an (N, C) vector costs a launch of a few microseconds) and
graph breaks under ``torch.compile``.  All three can be counted on the CPU:

- :class:`OpCounter` enters a ``TorchFunctionMode`` (Python-level tensor
  calls) and a ``TorchDispatchMode`` (ATen ops, forward *and* backward) and
  counts host reads and kernel-launching ops;
- :func:`graph_breaks` runs ``torch._dynamo.explain`` (static or dynamic shapes);
- :func:`train_step_counts` and :func:`eval_forward_counts` measure one
  steady-state step of a layer.

What counts as a host read:

- Python level (``TorchFunctionMode``): a call of one of
  :data:`PYTHON_HOST_READS` (``item``, ``tolist``, ``numpy``, ``bool(t)``,
  ``int(t)``, ``float(t)``, ``f'{t}'``, ``nonzero``, ``masked_select``,
  ``unique``, ...), and ``t[mask]`` / ``t[mask] = v`` with a bool or uint8
  mask.  ``tolist`` and ``numpy`` read CPU memory without any ATen op: only
  this level sees them.
- ATen level (``TorchDispatchMode``): an op tagged ``data_dependent_output``
  (``_local_scalar_dense``, which ``item``/``bool``/``int``/``float`` end
  in) or ``dynamic_output_shape`` (``nonzero``, ``masked_select``,
  ``unique*``, ``bincount``, ``repeat_interleave`` without ``output_size``,
  ``index.Tensor`` with a bool/uint8 index), ``index_put`` with a bool index,
  and ``equal``, ``is_nonzero``.  This level also sees reads made inside
  ATen composites and in backward.

:attr:`OpCounts.host_reads` is the Python-level reads plus the ATen-level
reads made outside any Python-level read, so ``t.item()`` counts once.
Caveat: a few ATen composites check their input on CPU only and read it
there, but not on CUDA (``F.one_hot`` reads ``min``/``max`` on the CPU):
this counter reports them.

What counts as a kernel (:attr:`OpCounts.kernels`): every ATen op the
dispatch mode sees (forward, backward and gradient accumulation), except

- views: ``func.is_view`` (``view``, ``expand``, ``select``, ``detach``,
  ``as_strided``, ...) and ops tagged ``inplace_view`` (``t_``, ``set_``, ...);
- allocations and metadata-only ops: :data:`NON_KERNEL_OPS` (``empty*``,
  ``new_empty*``, ``resize_``, ``_unsafe_view``, ``lift_fresh``, ``sym_*``, ...);
- the scalar copies of host reads (``_local_scalar_dense``, ``item``): a
  device-to-host copy, counted as a read, not as a kernel.  Host-read ops that
  compute (``nonzero``, ``masked_select``) count as both.

One ATen op is a proxy for one launch: some launch two or three (a CUDA
``native_batch_norm``), a fused op launches one where a composite would
launch many, and ``torch.compile`` fuses further.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ['PYTHON_HOST_READS', 'NON_KERNEL_OPS', 'OpCounts', 'OpCounter', 'graph_breaks',
           'train_step_counts', 'eval_forward_counts', 'layer_graph_breaks']

#: Names of the Python-level calls that read tensor values on the host.
PYTHON_HOST_READS = frozenset({
    'item', 'tolist', 'numpy', '__bool__', '__int__', '__float__', '__index__', '__complex__',
    '__format__', 'nonzero', 'argwhere', 'masked_select', 'unique', 'unique_consecutive',
    'bincount', 'equal', 'allclose', 'is_nonzero'
})

#: ATen packets (``torch.ops.aten.<name>``) that allocate or touch metadata only: no kernel.
NON_KERNEL_OPS = frozenset({
    'empty', 'empty_like', 'empty_strided', 'empty_permuted', 'new_empty', 'new_empty_strided',
    'resize_', 'resize_as_', '_unsafe_view', 'lift_fresh', 'sym_size', 'sym_stride',
    'sym_numel', 'sym_storage_offset', 'is_same_size', '_has_compatible_shallow_copy_type',
    'is_complex', 'is_floating_point', 'is_conj', 'is_neg', '_local_scalar_dense', 'item'
})

# ATen packets that read values on the host but carry neither tag.
_ATEN_HOST_READS = frozenset({'equal', 'is_nonzero'})
_MASK_DTYPES = (torch.bool, torch.uint8)


def _packet(func: torch._ops.OpOverload) -> str:
    """``'add'`` for ``aten.add.Tensor``."""
    return func.overloadpacket.__name__


def _has_mask_index(indices: Any) -> bool:
    """True when an index (or a list/tuple of them) holds a bool or uint8 tensor."""
    if isinstance(indices, Tensor):
        return indices.dtype in _MASK_DTYPES
    if isinstance(indices, (list, tuple)):
        return any(_has_mask_index(index) for index in indices)
    return False


def _is_aten_host_read(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> bool:
    name = _packet(func)
    if name in ('index', 'index_put', 'index_put_', '_index_put_impl_'):
        return _has_mask_index(args[1])
    if name == 'repeat_interleave':  # the output size is sum(repeats) unless given
        return func._schema.overload_name != 'self_int' and kwargs.get('output_size') is None
    return (torch.Tag.data_dependent_output in func.tags
            or torch.Tag.dynamic_output_shape in func.tags or name in _ATEN_HOST_READS)


def _is_kernel(func: torch._ops.OpOverload) -> bool:
    return not (func.is_view or torch.Tag.inplace_view in func.tags
                or _packet(func) in NON_KERNEL_OPS)


def _is_python_host_read(func: Callable, args: tuple) -> bool:
    name = getattr(func, '__name__', '')
    if name in PYTHON_HOST_READS:
        return True
    if name in ('__getitem__', '__setitem__') and len(args) > 1:
        return _has_mask_index(args[1])
    if name == 'where':
        return len(args) == 1  # torch.where(condition): nonzero
    return False


@dataclasses.dataclass
class OpCounts:
    """What an :class:`OpCounter` saw; each field maps a name to how often it was seen.

    ``python_reads``: Python-level host reads (``'item'``, ``'__bool__'``, ...);
    ``aten_reads``: every ATen-level host read (``'_local_scalar_dense'``, ...);
    ``other_reads``: the ATen-level reads made outside any Python-level read;
    ``kernel_ops``: the kernel-launching ATen ops (``'aten.mul.Tensor'``, ...).
    """

    python_reads: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    aten_reads: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    other_reads: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    kernel_ops: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def host_reads(self) -> int:
        """Distinct host reads: Python-level ones plus ATen-level ones outside them."""
        return sum(self.python_reads.values()) + sum(self.other_reads.values())

    @property
    def kernels(self) -> int:
        """Kernel-launching ATen ops (see the module docstring for what is left out)."""
        return sum(self.kernel_ops.values())


class _FunctionReads(TorchFunctionMode):

    def __init__(self, counter: 'OpCounter') -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _is_python_host_read(func, args):
            return func(*args, **kwargs)
        self.counter.counts.python_reads[getattr(func, '__name__', str(func))] += 1
        self.counter._depth += 1  # ATen reads below this call are this read
        try:
            return func(*args, **kwargs)
        finally:
            self.counter._depth -= 1


class _DispatchOps(TorchDispatchMode):

    def __init__(self, counter: 'OpCounter') -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        counts = self.counter.counts
        if _is_aten_host_read(func, args, kwargs):
            counts.aten_reads[_packet(func)] += 1
            if self.counter._depth == 0:
                counts.other_reads[_packet(func)] += 1
        if _is_kernel(func):
            counts.kernel_ops[str(func)] += 1
        return func(*args, **kwargs)


class OpCounter:
    """Count host reads and kernel-launching ATen ops of the code run inside ``with``.

    Example:
        >>> with OpCounter() as counter:
        ...     total = torch.ones(3).sum().item()  # ones, sum: 2 kernels; item: 1 read
        >>> counter.counts.host_reads, counter.counts.kernels
        (1, 2)
    """

    def __init__(self) -> None:
        self.counts = OpCounts()
        self._depth = 0
        self._modes: list = []

    def __enter__(self) -> 'OpCounter':
        # dispatch mode first: the function mode runs its handler with itself disabled only
        self._modes = [_DispatchOps(self), _FunctionReads(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc_info)
        self._modes = []


def graph_breaks(fn: Callable, *args: Any, dynamic: bool = False) -> int:
    """``torch._dynamo.explain(fn)(*args).graph_break_count``, after resetting dynamo.

    ``explain`` traces with dynamo and an inspecting backend (no inductor
    compile), so this is cheap; it runs ``fn`` once, mutating state the way a
    call does (running statistics, latched choices).  ``dynamic=True`` traces
    every dimension as symbolic, as ``torch.compile`` does after a shape
    changed (automatic dynamic shapes: a detector's varying RoI count), where
    ops without a symbolic-shape meta function break the graph.
    """
    import torch._dynamo
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(assume_static_by_default=not dynamic):
            return torch._dynamo.explain(fn)(*args).graph_break_count
    finally:
        torch._dynamo.reset()


def _train_step(layer: nn.Module, x: Tensor, grad: Tensor) -> None:
    layer.zero_grad(set_to_none=True)  # as optimizers do: gradients are set, not accumulated
    x.grad = None
    (layer(x) * grad).sum().backward()


def train_step_counts(layer: nn.Module, x: Tensor, warmup: int = 1) -> tuple[int, int]:
    """(host reads, kernels) of one steady-state training step of ``layer`` on ``x``.

    The step is ``(layer(x) * g).sum().backward()`` in train mode, with
    ``x`` requiring grad and the gradients set to None first (an optimizer's
    ``zero_grad``); ``warmup`` uncounted steps run before, so one-off work
    (a latch, a cache fill) is not counted.  The layer's state moves on as in
    training.
    """
    layer.train()
    x = x.detach().requires_grad_(True)
    grad = torch.randn_like(x)
    for _ in range(warmup):
        _train_step(layer, x, grad)
    with OpCounter() as counter:
        _train_step(layer, x, grad)
    return counter.counts.host_reads, counter.counts.kernels


def eval_forward_counts(layer: nn.Module, x: Tensor, warmup: int = 1) -> tuple[int, int]:
    """(host reads, kernels) of one eval-mode forward of ``layer`` under ``torch.no_grad``."""
    layer.eval()
    with torch.no_grad():
        for _ in range(warmup):
            layer(x)
        with OpCounter() as counter:
            layer(x)
    return counter.counts.host_reads, counter.counts.kernels


def layer_graph_breaks(layer: nn.Module, x: Tensor, train: bool = True,
                       dynamic: bool = False) -> int:
    """Graph breaks of ``layer``'s forward on ``x`` in train (or eval) mode (see :func:`graph_breaks`).

    Only the forward is traced: dynamo always breaks at ``.backward()``, and
    ``torch.compile`` traces the backward of a graph with AOTAutograd, without
    breaks of its own.
    """
    layer.train(train)
    with torch.set_grad_enabled(train):
        return graph_breaks(layer, x, dynamic=dynamic)
