"""ONNX export of a collapsed mmseg/mmdet model, checked against PyTorch in onnxruntime.

What is exported, from the image (N, 3, H, W), float, channels as loaded
(BGR for mmcv's loader), values 0..255; the data preprocessor's channel swap
and normalisation are part of the graph:

- segmentors: the logits (N, num_classes, H, W), as ``encode_decode`` gives
  them before the argmax;
- detectors: the backbone and neck features and, when there is one, the
  RPN's (or single-stage head's) raw per-level scores and box deltas.
  Proposals, RoI heads and NMS are not exported: mmdet 3.x does that through
  mmdeploy, whose rewrites of mmcv's RoIAlign and NMS are not available here.

The graph holds standard ONNX operators only (collapsed instance norms,
``GroupNorm(C, C)``, included); :func:`export_onnx` checks that, runs it in
onnxruntime and reports the largest difference to PyTorch.

SN/SSN layers that have not latched (``collapse_norms`` leaves them as they
are) are exported as what they compute in eval mode: a fixed mixture of the
IN, LN and BN statistics whose ratios are constants in the graph.  In eval
mode the ratios depend only on the logits and the radius, so this is exact;
the report counts these layers, and they stay trainable in the deployed
checkpoint, where nothing is fixed.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from ..compat import ONNX_DYNAMO_MIN_TORCH, TORCH_VERSION
from ..extras import require
from ..norm.functional import switch_norm
from ..norm.switch_norm import SparseSwitchNormBase, SwitchNormBase

__all__ = ['FixedRatioNorm', 'fixed_ratios', 'ImageToOutputs', 'export_onnx', 'onnx_input_shape', 'check_standard_ops', 'require_onnx']

# ONNX's own operator set; anything else (a custom domain) needs a runtime plug-in
STANDARD_DOMAINS = ('', 'ai.onnx')


class FixedRatioNorm(nn.Module):
    """An eval-mode SN/SSN ``layer`` with its (mean, var) ratios as constants.

    Computes what ``layer`` computes in eval mode, with the ratios it would
    use there (:meth:`~ssn_plugins.SwitchNormBase.ratios`) taken once, so the
    exported graph needs no SparsestMax (ONNX has no stable sort).  Shares the
    layer's parameters and running statistics.
    """

    def __init__(self, layer: SwitchNormBase) -> None:
        super().__init__()
        if layer.training:
            raise ValueError('FixedRatioNorm fixes the eval-mode ratios: call layer.eval() first')
        self.layer = layer
        self.register_buffer('ratios', torch.stack(layer.ratios()))  # (2, K): mean, var

    def forward(self, x: Tensor) -> Tensor:
        layer = self.layer
        return switch_norm(x, self.ratios, layer.normalizers, layer.running_mean, layer.running_var,
                           layer.weight, layer.bias, training=False, momentum=0.0, eps=layer.eps,
                           path='composite')


@contextmanager
def fixed_ratios(model: nn.Module) -> Iterator[int]:
    """Within the block, every SN/SSN layer of ``model`` that has not latched is a :class:`FixedRatioNorm`.

    Yields how many were replaced; puts the layers back on exit.
    """
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SwitchNormBase) and not (
                    isinstance(child, SparseSwitchNormBase) and child.latched):
                parent._modules[name] = FixedRatioNorm(child)
                swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            parent._modules[name] = child


class ImageToOutputs(nn.Module):
    """An mmseg segmentor or mmdet detector as a plain ``image -> tensors`` module."""

    def __init__(self, model: nn.Module, image_shape: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.image_shape = tuple(int(s) for s in image_shape)  # (H, W)
        pre = model.data_preprocessor
        # mmseg names it channel_conversion, mmengine (and so mmdet) _channel_conversion
        swap = getattr(pre, 'channel_conversion', getattr(pre, '_channel_conversion', False))
        self.swap_channels = bool(swap)
        self.normalize = bool(getattr(pre, '_enable_normalize', False))
        self.is_segmentor = hasattr(model, 'encode_decode')
        if not self.is_segmentor and not hasattr(model, 'extract_feat'):
            raise TypeError(f'export_onnx takes an mmseg segmentor or an mmdet detector, '
                            f'got {type(model).__name__}')
        # the dense head whose raw outputs are exported: two-stage RPN, or a single-stage head
        self.dense_head = None
        if getattr(model, 'rpn_head', None) is not None:
            self.dense_head = 'rpn_head'
        elif getattr(model, 'bbox_head', None) is not None and not hasattr(model, 'roi_head'):
            self.dense_head = 'bbox_head'

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        x = image
        if self.swap_channels:
            x = x.flip(1)
        if self.normalize:
            pre = self.model.data_preprocessor
            x = (x - pre.mean) / pre.std
        if self.is_segmentor:
            h, w = self.image_shape
            metas = [dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w))] * x.shape[0]
            return (self.model.encode_decode(x, metas), )
        feats = tuple(self.model.extract_feat(x))
        if self.dense_head is None:
            return feats
        per_level = getattr(self.model, self.dense_head)(feats)  # (scores per level, deltas per level, ...)
        return feats + tuple(t for outputs in per_level for t in outputs)


def onnx_input_shape(cfg, shape: Optional[Sequence[int]] = None) -> tuple[int, int]:
    """``shape`` (H, W), else the data preprocessor's fixed ``size``, else 256 x 256."""
    if shape is not None:
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f'the ONNX input shape is H W (two positive numbers), got {list(shape)}')
        return int(shape[0]), int(shape[1])
    pre = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    size = pre.get('size')
    return (int(size[0]), int(size[1])) if size else (256, 256)


def check_standard_ops(model) -> None:
    """``ValueError`` naming the operators of an ONNX model outside ONNX's own domain."""
    custom = sorted({f'{node.domain}::{node.op_type}' for graph in _graphs(model.graph)
                     for node in graph.node if node.domain not in STANDARD_DOMAINS}
                    | {f'{f.domain}::{f.name}' for f in model.functions if f.domain not in STANDARD_DOMAINS})
    if custom:
        raise ValueError(f'the exported graph uses operators outside standard ONNX: {custom}')


def _graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g is not None and len(attr.g.node):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def require_onnx() -> None:
    """Raise before any work unless ONNX export can run here (the ``[onnx]`` extra, torch >= 2.5)."""
    require('onnx', 'onnxscript', 'onnxruntime', purpose='ONNX export')
    if TORCH_VERSION < ONNX_DYNAMO_MIN_TORCH:
        need = '.'.join(map(str, ONNX_DYNAMO_MIN_TORCH))
        raise ImportError(f"ONNX export uses torch.onnx.export(dynamo=True), which needs torch >= "
                           f"{need}; this is torch {torch.__version__}")


def export_onnx(model: nn.Module, cfg, path: str, shape: Optional[Sequence[int]] = None,
                seed: int = 0) -> dict:
    """Export the eval-mode ``model`` of ``cfg`` to ``path``; compare it with PyTorch.

    The comparison runs one random image (seeded) through PyTorch (``model``
    itself) and onnxruntime.  SN/SSN layers that have not latched are exported
    with their eval-mode ratios as constants (:func:`fixed_ratios`).  Returns
    ``{'outputs': n, 'input_shape': [1, 3, H, W], 'max_abs_diff': float,
    'kind': 'segmentor' or 'detector', 'fixed_mixtures': number of such layers}``.
    """
    require_onnx()
    import onnx
    import onnxruntime

    if model.training:
        raise ValueError('export_onnx needs model.eval() (running statistics, no dropout)')
    h, w = onnx_input_shape(cfg, shape)
    wrapper = ImageToOutputs(model, (h, w)).eval()
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, h, w, generator=generator) * 255
    with torch.no_grad():
        expected = wrapper(image)
        names = [f'output{i}' for i in range(len(expected))]
        with warnings.catch_warnings(), fixed_ratios(model) as mixtures:
            warnings.simplefilter('ignore')
            program = torch.onnx.export(wrapper, (image, ), dynamo=True, input_names=['image'],
                                        output_names=names, verbose=False)
    program.save(path)
    exported = onnx.load(path)
    onnx.checker.check_model(exported)
    check_standard_ops(exported)
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    max_diff = max(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected))
    return dict(outputs=len(expected), input_shape=[1, 3, h, w], max_abs_diff=max_diff,
                kind='segmentor' if wrapper.is_segmentor else 'detector', path=os.path.abspath(path),
                fixed_mixtures=mixtures)
