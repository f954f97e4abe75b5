"""The logic behind ``tools/train.py`` and ``tools/test.py``.

Thin wrappers over mmengine's ``Runner`` that behave like mmdet's,
mmseg's and mmpretrain's own tools, for configs of any of them (told apart
by the config's ``default_scope``), plus two things those tools lack here: every
run gets :class:`~ssn_plugins.engine.checkpoint_io.SafeCheckpointHook`, so
its checkpoints load under torch's ``weights_only=True``, and ``--amp``
without a GPU is a clear error instead of an assertion deep in mmengine.
"""
from __future__ import annotations

import os
import os.path as osp
import pickle
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..builder import read_config
from ..compat import check_compile
from ..extras import TOOLKIT_MODULES, require
from ..fileio import explain_load_error
from ..registry import check_norm_cfgs
from .checkpoint_io import add_safe_checkpoint_hook
from .compile import add_compile_hooks
from .distributed import setup_cpu_distributed

__all__ = ['TOOLKITS', 'toolkit_of', 'load_config', 'enable_amp', 'enable_compile', 'set_resume',
           'build_runner', 'train', 'test']

TOOLKITS = ('mmdet', 'mmseg', 'mmpretrain')
LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def toolkit_of(cfg: Config) -> str:
    """``'mmdet'``, ``'mmseg'`` or ``'mmpretrain'``, from the config's ``default_scope``."""
    scope = cfg.get('default_scope', None)
    if scope not in TOOLKITS:
        raise ValueError(f'config default_scope must be one of {TOOLKITS} (inherit an mmdet::, '
                         f'mmseg:: or mmpretrain:: base config), got {scope!r}')
    require(*TOOLKIT_MODULES[scope], purpose=f'a {scope} config')
    return scope


def load_config(config: str, cfg_options: Optional[dict] = None, work_dir: Optional[str] = None,
                launcher: str = 'none', norm: Optional[str] = None) -> Config:
    """Read ``config`` and apply the command-line overrides, as mmdet/mmseg ``train.py`` do.

    ``config`` may be an upstream one (``mmdet::mask_rcnn/...py``); ``norm``
    (``'SSN'``, ...) converts it with :func:`~ssn_plugins.convert.convert_config`
    before the overrides.  ``work_dir`` precedence: argument, then the
    config's, then ``./work_dirs/<config name>``.
    """
    from ..convert import LeftoverNormHook, asks_switch_norm, convert_config, upstream_config_path
    config = upstream_config_path(config)
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file not found: {config}')
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher must be one of {LAUNCHERS}, got {launcher!r}')
    cfg = read_config(config)
    if norm is not None:
        notes = []
        cfg = convert_config(cfg, norm, notes)
        for note in notes:
            print_log(f'--norm {norm}: {note}', logger='current')
    if asks_switch_norm(cfg) and not any(
            h.get('type') in ('LeftoverNormHook', LeftoverNormHook) for h in cfg.get('custom_hooks', [])):
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [dict(type='LeftoverNormHook')]
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    toolkit_of(cfg)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return add_safe_checkpoint_hook(cfg)


def enable_amp(cfg: Config) -> Config:
    """Switch the optimizer wrapper to ``AmpOptimWrapper`` (dynamic loss scale).

    mmengine's AMP wrapper needs an accelerator; on a CPU-only machine this
    raises ``ValueError`` rather than failing later inside the Runner.
    """
    if not torch.cuda.is_available():
        raise ValueError('--amp needs a CUDA GPU (mmengine AmpOptimWrapper); none is available here')
    wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper_type not in ('OptimWrapper', 'AmpOptimWrapper'):
        raise ValueError(f'--amp works with optim_wrapper.type OptimWrapper, got {wrapper_type!r}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    return cfg


def enable_compile(cfg: Config, backend: Optional[str] = None) -> Config:
    """Switch on mmengine's ``compile``: ``torch.compile`` of the model's ``train_step``.

    ``backend=None`` is ``compile=True`` (torch's default, inductor); a name
    gives ``compile=dict(backend=name)`` (e.g. ``'aot_eager'``: no code
    generation, quick to start).  mmengine 0.10.7 compiles the whole
    ``train_step`` (data preprocessing, loss, backward, optimizer step), so
    dynamo breaks the graph at the backward and wherever mmdet/mmseg code
    needs the host; validation and test stay eager.  :func:`build_runner`
    adds the hook that lets dynamo trace the optimizer step.
    """
    check_compile()
    cfg.compile = True if backend is None else dict(backend=backend)
    return cfg


def _check_last_checkpoint(work_dir: str) -> None:
    """``ValueError`` if the work dir's ``last_checkpoint`` (read by mmengine) cannot be resumed from.

    mmengine reads the path in it as text and, for an empty or binary file,
    fails with ``FileNotFoundError:  can not be found.`` or ``UnicodeDecodeError``.
    No ``last_checkpoint`` at all is fine: mmengine then trains from scratch.
    """
    path = osp.join(work_dir, 'last_checkpoint')
    if not osp.lexists(path):
        return
    fix = f'delete {path} to start from scratch, or pass --resume PATH'
    try:
        with open(path, 'rb') as f:
            named = f.read().decode('utf-8').strip()
    except UnicodeDecodeError:
        raise ValueError(f'--resume: {path} is not text (it should hold the path of the latest '
                         f'checkpoint): {fix}') from None
    except OSError as err:
        raise ValueError(f'--resume: cannot read {path} ({err.strerror or err}): {fix}') from err
    if not named:
        raise ValueError(f'--resume: {path} is empty (it should hold the path of the latest '
                         f'checkpoint; was its write interrupted?): {fix}')
    if '://' not in named and not osp.isfile(named):
        raise ValueError(f'--resume: {path} names {named[:200]!r}, which is not a file: {fix}')


def set_resume(cfg: Config, resume: Optional[str]) -> Config:
    """``resume=None``: no resume; ``'auto'``: the work dir's last checkpoint; else that file."""
    if resume is None:
        return cfg
    if resume == 'auto':
        _check_last_checkpoint(cfg.work_dir)
        cfg.resume, cfg.load_from = True, None
    else:
        if not osp.isfile(resume):
            raise FileNotFoundError(f'--resume checkpoint not found: {resume}')
        cfg.resume, cfg.load_from = True, resume
    return cfg


def build_runner(cfg: Config) -> Runner:
    """``Runner.from_cfg``, or the registered ``runner_type`` when the config names one.

    With ``compile`` on, adds :class:`~ssn_plugins.engine.compile.PlainParamGroupsHook`.
    """
    setup_cpu_distributed(cfg)  # torchrun on CPUs: gloo, DDP without device ids
    add_compile_hooks(cfg)
    if isinstance(cfg.get('model'), dict):  # an unknown norm_cfg type, named before the Runner starts
        check_norm_cfgs(cfg.model, cfg.get('default_scope'), source=cfg.filename or 'the config')
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


@contextmanager
def _explain_unsafe_checkpoint(path: Optional[str]) -> Iterator[None]:
    """Say why torch refused a checkpoint, keeping the refusal (and its type)."""
    try:
        yield
    except pickle.UnpicklingError as err:  # the words convert and deploy use (one message)
        if getattr(err, 'explained', False):  # by safe_load, naming the file it read
            raise
        raise pickle.UnpicklingError(str(explain_load_error(path or 'the checkpoint', err))) from err


def train(cfg: Config) -> Runner:
    """Train as configured; returns the finished Runner."""
    runner = build_runner(cfg)
    with _explain_unsafe_checkpoint(cfg.get('load_from', None)):
        runner.train()
    return runner


def test(cfg: Config, checkpoint: Optional[str]) -> dict:
    """Evaluate ``checkpoint`` with the config's test loop; returns the metrics.

    ``checkpoint=None`` evaluates the freshly initialised model (the
    "untrained" baseline of the demo).
    """
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    cfg.load_from = checkpoint
    cfg.resume = False
    runner = build_runner(cfg)
    if checkpoint is None:
        runner.model.init_weights()
    with _explain_unsafe_checkpoint(checkpoint):
        metrics = runner.test()
    return {k: float(v) if isinstance(v, (int, float)) or hasattr(v, 'item') else v
            for k, v in metrics.items()}


def local_rank_env(local_rank: Optional[int]) -> None:
    """torch.distributed.launch passes ``--local-rank``; mmengine reads ``LOCAL_RANK``."""
    if local_rank is not None and 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(local_rank)
