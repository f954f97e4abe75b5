"""Speed and memory of SN/SSN against BatchNorm: per layer and in whole networks.

Everything is measured in one process on one machine, with the candidates
interleaved (round-robin, each repeat in a fresh random order) so that load
from other processes hits all of them alike; we report medians.  Memory is the
number of bytes autograd saves between forward and backward (summed with
``torch.autograd.graph.saved_tensors_hooks``): deterministic, and the term by
which a norm layer adds to a network's training peak.  Host reads, kernels
and graph breaks per layer come from :mod:`lab.profiling`.

``timing``: clocks and measures; ``layers``: per-layer benchmarks;
``networks``: whole models; ``tables``: the markdown report.
"""
from .layers import (RESNET50_NORM_SHAPES, compile_benchmark, count_benchmark, latch_layer,
                     layer_benchmark, layer_kinds)
from .networks import (build_model, det_batch, det_inputs, det_loss, network_benchmark, settle,
                       swap_norm, train_iteration_benchmark)
from .tables import format_tables
from .timing import CLOCKS, saved_bytes, time_interleaved, to_ms

__all__ = ['RESNET50_NORM_SHAPES', 'CLOCKS', 'time_interleaved', 'to_ms', 'saved_bytes',
           'latch_layer', 'layer_kinds', 'layer_benchmark', 'count_benchmark', 'compile_benchmark',
           'swap_norm', 'settle', 'build_model', 'network_benchmark', 'det_inputs', 'det_batch',
           'det_loss', 'train_iteration_benchmark', 'format_tables']
