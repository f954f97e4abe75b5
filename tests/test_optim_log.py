"""SummaryOptimWrapperConstructor: the default constructor's param groups, one INFO line
about them instead of one line per parameter option (those go to DEBUG)."""
import logging
import uuid

import pytest
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from ssn_plugins import SparseSwitchNorm2d
from ssn_plugins.engine import SummaryOptimWrapperConstructor

CFG = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4))
PARAMWISE = dict(custom_keys={'mean_weight': dict(lr_mult=0.1, decay_mult=0.0),
                              'var_weight': dict(lr_mult=0.1, decay_mult=0.0)})


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), SparseSwitchNorm2d(4), nn.Conv2d(4, 4, 1, bias=False),
                         SparseSwitchNorm2d(4))


class _Collect(logging.Handler):

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def logger():
    """A fresh current MMLogger at INFO, and every record that reaches its handlers."""
    log = MMLogger.get_instance(f'optim_log_{uuid.uuid4().hex}', log_level='INFO')
    collect = _Collect()
    log.addHandler(collect)
    yield log, collect
    log.removeHandler(collect)


def _groups(wrapper, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: {k: v for k, v in g.items() if k != 'params'}
            for g in wrapper.optimizer.param_groups for p in g['params']}


def test_same_param_groups_as_the_default_constructor():
    model = _model()
    ours = _groups(SummaryOptimWrapperConstructor(CFG, PARAMWISE)(model), model)
    default = _groups(DefaultOptimWrapperConstructor(CFG, PARAMWISE)(model), model)
    assert ours == default
    assert ours['1.mean_weight']['lr'] == pytest.approx(0.002) and ours['1.var_weight']['weight_decay'] == 0
    assert ours['0.weight']['lr'] == 0.02 and ours['0.weight']['weight_decay'] == 1e-4


def test_one_summary_line_at_info_and_the_options_at_debug(logger):
    log, collect = logger
    SummaryOptimWrapperConstructor(CFG, PARAMWISE)(_model())
    info = [r.getMessage() for r in collect.records if r.levelno >= logging.INFO]
    assert info == ['param groups: 4 (mean_weight, var_weight) at lr x0.1, weight_decay x0; '
                    '7 (bias, weight) at lr x1, weight_decay x1 (per-parameter options at DEBUG)']
    per_param = [r for r in collect.records if r.getMessage().startswith('paramwise_options -- ')]
    # mmengine's lines (lr, weight_decay, lr_mult, decay_mult of 4 logits) are all still there,
    # at DEBUG, for log_level='DEBUG'
    assert len(per_param) == 16 and all(r.levelno == logging.DEBUG for r in per_param)
    console = [h for h in log.handlers if h is not collect]
    assert console and all(h.level == logging.INFO for h in console)  # so it prints the summary only
    assert not log.filters  # the demotion ends with the build

    # the default constructor is untouched: its lines stay at INFO
    collect.records.clear()
    DefaultOptimWrapperConstructor(CFG, PARAMWISE)(_model())
    assert sum(r.levelno == logging.INFO and r.getMessage().startswith('paramwise_options -- ')
               for r in collect.records) == 16


def test_no_paramwise_cfg_means_no_summary(logger):
    _, collect = logger
    wrapper = SummaryOptimWrapperConstructor(CFG)(_model())
    assert len(wrapper.optimizer.param_groups) == 1
    assert not any('param groups' in r.getMessage() for r in collect.records)
