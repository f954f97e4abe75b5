"""Watch SN/SSN layers converge during training, in mmengine's log and visualizers.

Registered in mmengine's root ``HOOKS``::

    custom_hooks = [dict(type='SSNRadiusHook'), dict(type='SwitchNormMonitorHook')]
"""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..analysis import switch_norm_stats
from ..compat import stack
from ..version import __version__
from .hooks import SSNRadiusHook

__all__ = ['SwitchNormMonitorHook']


@HOOKS.register_module()
class SwitchNormMonitorHook(Hook):
    """Log how far the SN/SSN layers are from a hard selection.

    After every ``interval``-th training iteration it updates the message hub
    with ``train/ssn_entropy`` (mean entropy of the ratios, in nats; 0 when
    every layer is one-hot) and, for SSN, ``train/ssn_latched`` (share of
    layers whose choices are latched) and ``train/ssn_radius`` (unless
    ``SSNRadiusHook`` already logs it).  ``LoggerHook`` prints them and passes
    them to the configured visualizer backends (e.g. TensorBoard).  Training
    starts with a log line naming the package version and the stack.
    """

    # NORMAL runs before LoggerHook (BELOW_NORMAL), so an iteration's values
    # appear in that iteration's log line.
    priority = 'NORMAL'

    def __init__(self, interval: int = 1) -> None:
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f'interval must be a positive int, got {interval!r}')
        self.interval = interval
        self._log_radius = True

    def before_train(self, runner) -> None:
        runner.logger.info(f'ssn_plugins {__version__} ({stack()})')
        if not switch_norm_stats(runner.model):
            raise ValueError('SwitchNormMonitorHook: the model has no SN/SSN layer; '
                             "set norm_cfg=dict(type='SSN') (or 'SN') or remove the hook")
        self._log_radius = not any(isinstance(hook, SSNRadiusHook) for hook in runner.hooks)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.every_n_train_iters(runner, self.interval):
            return
        for key, value in switch_norm_stats(runner.model).items():
            if key != 'ssn_radius' or self._log_radius:
                runner.message_hub.update_scalar(f'train/{key}', value)
