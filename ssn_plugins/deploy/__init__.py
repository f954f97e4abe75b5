"""Deployment: settled SN/SSN layers become plain PyTorch norms, BN folds into convs, ONNX.

- :mod:`.collapse`: :func:`collapse_norms` replaces each settled layer by the
  norm it equals (:func:`plain_norm`, :func:`collapse_plan`);
- :mod:`.fold`: :func:`fold_conv_bn` folds eval-mode BatchNorms into the conv before them;
- :mod:`.build`: ``CollapsedNorms`` (:func:`build_collapsed`), the registered
  model of a deployed config;
- :mod:`.pipeline`: :func:`deploy_checkpoint`, the files ``tools/deploy.py`` writes;
- :mod:`.onnx`: :func:`export_onnx`, checked in onnxruntime (the ``[onnx]`` extra).
"""
from .build import build_collapsed
from .collapse import InstanceNorm, collapse_norms, collapse_plan, plain_norm
from .fold import fold_conv_bn
from .pipeline import Deployed, deploy_checkpoint

__all__ = ['InstanceNorm', 'collapse_norms', 'collapse_plan', 'plain_norm', 'fold_conv_bn', 'build_collapsed',
           'deploy_checkpoint', 'Deployed']
