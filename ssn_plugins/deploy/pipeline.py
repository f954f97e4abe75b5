"""The file pipeline of ``tools/deploy.py``: a trained checkpoint in, a collapsed one, its config and ONNX out."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from mmengine.config import Config

from ..builder import build_model, read_config, require_model
from ..checkpoint.pretrained import check_state_dict
from ..fileio import (check_destination, check_distinct, read_checkpoint, read_state_dict, replacing,
                      torch_save)
from .collapse import collapse_norms, collapse_plan
from .onnx import export_onnx, require_onnx

__all__ = ['deploy_checkpoint', 'Deployed']


def _deployed_config(cfg: Config, plan: dict[str, list[int]], fuse_conv: bool) -> Config:
    """``cfg`` with its model as :func:`build_collapsed` takes it, and ``ssn_plugins`` imported."""
    deployed = copy.deepcopy(cfg)
    model = cfg.model.to_dict()
    deployed.model = dict(type='CollapsedNorms',
                          collapsed=dict(model_type=model.pop('type'), plan=plan, fuse_conv=fuse_conv),
                          **model)
    imports = deployed.get('custom_imports') or dict(imports=[], allow_failed_imports=False)
    names = imports.get('imports', [])
    names = [names] if isinstance(names, str) else list(names)
    if 'ssn_plugins' not in names:  # CollapsedNorms must be registered wherever the config is read
        deployed.custom_imports = dict(imports, imports=names + ['ssn_plugins'])
    return deployed


@dataclass
class Deployed:
    """What :func:`deploy_checkpoint` wrote: paths, and the ONNX check when asked for."""
    checkpoint: str
    config: str
    onnx: Optional[str] = None
    onnx_report: Optional[dict] = None  # see ssn_plugins.deploy.onnx.export_onnx


def _deploy_paths(config: Union[str, Config], checkpoint: str, out: str,
                  onnx: Optional[str]) -> list[str]:
    """``[OUT, OUT.py(, ONNX)]``, refusing names that would overwrite an input or each other."""
    if os.path.splitext(out)[1] == '.py':
        raise ValueError(f'OUT {out} ends in .py, but the deployed config is written to OUT with '
                         f'the suffix .py, so it would overwrite the checkpoint: name it e.g. '
                         f'{os.path.splitext(out)[0]}.pth')
    paths = [out, os.path.splitext(out)[0] + '.py'] + ([onnx] if onnx else [])
    inputs = {checkpoint: 'the input checkpoint'}
    if isinstance(config, str):
        inputs[config] = 'the input config'
    check_distinct(paths)  # before any other check or work (replacing checks them again)
    for path in paths:
        check_destination(path, inputs)  # by real path: a link to an input is refused too
    return paths


def deploy_checkpoint(config: Union[str, Config],
                      checkpoint: str,
                      out: str,
                      fuse_conv: bool = True,
                      onnx: Optional[str] = None,
                      onnx_shape: Optional[Sequence[int]] = None) -> Deployed:
    """Collapse a trained checkpoint of ``config``; write ``out``, a config beside it, and ONNX.

    ``out`` holds the collapsed ``state_dict`` (plain tensors, loads with
    ``weights_only=True``; its ``meta`` has the config and the source's
    ``dataset_meta``) and ``out`` with the suffix ``.py`` a config whose model
    is ``CollapsedNorms`` (see :func:`build_collapsed`), so ``tools/test.py
    OUT.py OUT``, mmseg's ``init_model``, mmdet's ``init_detector`` and the
    Inferencers use the deployed network.  With
    ``onnx``, the collapsed model is also exported there (image ``onnx_shape``
    (H, W); see :mod:`ssn_plugins.deploy.onnx`) and checked in onnxruntime.

    The files are written as temporaries beside their destinations and
    renamed over them only when all were written, so a failure leaves an
    older deployment whole (:func:`ssn_plugins.fileio.replacing`; only a
    crash between the renames could leave a new checkpoint beside an old
    config).
    """
    cfg = read_config(config)
    require_model(cfg, config)  # before reading the checkpoint
    paths = _deploy_paths(config, checkpoint, out, onnx)
    if onnx:
        require_onnx()  # before the work, not after it
    source = read_checkpoint(checkpoint)
    state = read_state_dict(source, where=checkpoint)
    model = build_model(cfg)
    check_state_dict(model, state, source=checkpoint)  # exact, up to num_batches_tracked
    model.load_state_dict(state, strict=False)
    model.eval()
    plan = collapse_plan(model)
    with torch.no_grad():
        collapse_norms(model, fuse_conv)
    deployed = _deployed_config(cfg, plan, fuse_conv)
    meta = {'cfg': deployed.pretty_text}  # as in a Runner checkpoint: the Inferencers read it
    if isinstance(source.get('meta'), dict) and 'dataset_meta' in source['meta']:
        meta['dataset_meta'] = source['meta']['dataset_meta']
    report = None
    with replacing(*paths) as temps:
        torch_save({'state_dict': model.state_dict(), 'meta': meta}, temps[0])
        deployed.dump(temps[1])
        if onnx:
            report = export_onnx(model, cfg, temps[2], onnx_shape)
            report['path'] = os.path.abspath(onnx)
    return Deployed(os.path.abspath(out), os.path.abspath(paths[1]),
                    os.path.abspath(onnx) if onnx else None, report)
