"""Distributed training on CPUs (gloo), for the launchers mmengine only runs on GPUs.

mmengine 0.10.7's ``init_dist`` calls ``torch.cuda.set_device`` and its
``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to DDP, so
``--launcher pytorch`` fails on a machine without CUDA.  :func:`setup_cpu_distributed`
starts the process group itself with gloo (the Runner then skips ``init_dist``)
and wraps the model with :class:`CPUDistributedDataParallel`.  With CUDA it
does nothing: GPU runs keep mmengine's own path (NCCL, device ids).
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from torch import nn

__all__ = ['CPUDistributedDataParallel', 'setup_cpu_distributed']

_TORCHRUN_ENV = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` for a model on the CPU.

    DDP rejects ``device_ids`` for CPU modules, and mmengine's Runner always
    passes them; this wrapper drops them and is otherwise the same.
    """

    def __init__(self, module: nn.Module, device_ids=None, **kwargs) -> None:
        super().__init__(module=module, device_ids=None, **kwargs)


def setup_cpu_distributed(cfg: Config) -> Config:
    """Make a distributed ``cfg`` (``launcher != 'none'``) run on CPUs with gloo.

    Initialises the default process group from torchrun's environment
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and selects
    :class:`CPUDistributedDataParallel`, keeping ``find_unused_parameters``.
    A configured ``nccl`` backend (the mmdet/mmseg default) is replaced by
    gloo with a warning.  Returns ``cfg``; no-op with CUDA or without a launcher.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher == 'none' or torch.cuda.is_available():
        return cfg
    if launcher != 'pytorch':
        raise ValueError(f'distributed training without CUDA supports --launcher pytorch '
                         f'(torchrun, tools/dist_train.sh), got --launcher {launcher}')
    missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise ValueError(f'--launcher pytorch needs the environment torchrun sets; missing {missing}. '
                         f'Launch with tools/dist_train.sh CONFIG NPROC')
    if not dist.is_initialized():
        dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
        backend = dist_cfg.pop('backend', 'gloo')
        if backend != 'gloo':
            print_log(f'No CUDA: using the gloo backend instead of {backend!r} '
                      f'(env_cfg.dist_cfg.backend)', logger='current', level=30)
        timeout = dist_cfg.pop('timeout', None)
        if timeout is not None:
            dist_cfg['timeout'] = datetime.timedelta(seconds=timeout)
        dist.init_process_group('gloo', init_method='env://', **dist_cfg)
    wrapper = dict(cfg.get('model_wrapper_cfg', None) or {})
    if wrapper.get('type', 'MMDistributedDataParallel') == 'MMDistributedDataParallel':
        # The arguments mmengine's Runner uses when no wrapper is configured.
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
        wrapper['type'] = 'CPUDistributedDataParallel'
        cfg.model_wrapper_cfg = wrapper
    return cfg
