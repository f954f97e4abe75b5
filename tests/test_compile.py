"""mmengine's ``compile=True`` (tools/train.py --compile) trains every demo config.

mmengine 0.10.7 compiles the model's ``train_step``; mmdet's and mmseg's
heads graph-break (NMS, sampling, mmcv ops, boolean masks), which is
accepted: only the SN/SSN layers must trace without breaks
(tests/test_profiling.py).  The default backend, inductor, needs 6 (FCN) to
10 (Mask R-CNN) minutes for two iterations on 2 CPU cores, so the test uses
``aot_eager``: the same dynamo and AOTAutograd tracing (what breaks or fails
there fails under inductor too), without code generation; still about 2 to
4 minutes per config, most of it tracing the SN/SSN layers.
"""
import glob
import os.path as osp

import pytest
import torch
import torch._dynamo

from ssn_plugins.compat import TORCH_VERSION, WHOLE_STEP_COMPILE_MIN_TORCH
from ssn_plugins.engine import EagerStepEndsHook, launch
from tool_loader import load_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', 'demo', '*.py')))
# one config per demo model, each 2-3.5 minutes on 2 cores: the SyncSSN Mask R-CNN demo runs
# the SSN one's code in one process, the cls-pretrained one only starts from other weights,
# and the classification demo needs mmpretrain (tests/test_mmpretrain.py)
COMPILED_CONFIGS = [osp.join(REPO, 'configs', 'demo', name)
                    for name in ('fcn_r18-ssn_demo.py', 'mask-rcnn_r18-ssn_fpn_demo.py')]
TINY = {'train_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False, 'train_cfg.max_iters': 2,
        'default_hooks.checkpoint.interval': 100, 'default_hooks.logger.interval': 1}


def test_enable_compile_sets_mmengine_option():
    cfg = launch.load_config(DEMO_CONFIGS[0], work_dir='unused')
    assert launch.enable_compile(cfg).compile is True
    assert launch.enable_compile(cfg, 'aot_eager').compile == dict(backend='aot_eager')


def test_train_tool_compile_flags(monkeypatch):
    tool = load_tool('train')
    trained = []
    monkeypatch.setattr(launch, 'train', trained.append)
    tool.main([DEMO_CONFIGS[0], '--work-dir', 'unused', '--compile'])
    tool.main([DEMO_CONFIGS[0], '--work-dir', 'unused', '--compile-backend', 'aot_eager'])
    tool.main([DEMO_CONFIGS[0], '--work-dir', 'unused'])
    assert [cfg.get('compile') for cfg in trained] == [True, dict(backend='aot_eager'), None]


@pytest.mark.slow
@pytest.mark.parametrize('config', COMPILED_CONFIGS, ids=osp.basename)
def test_runner_with_compile_trains_demo_config(config, demo_dir):
    cfg = launch.load_config(config, TINY, str(demo_dir / 'work'))
    for key in ('val_dataloader', 'val_evaluator', 'val_cfg'):  # training only
        cfg[key] = None
    launch.enable_compile(cfg, 'aot_eager')
    torch._dynamo.reset()
    try:
        runner = launch.train(cfg)
    finally:
        torch._dynamo.reset()
    assert runner.iter == 2
    assert hasattr(runner.model.train_step, '_torchdynamo_orig_callable')  # mmengine compiled it
    # torch 2.1 crashes tracing the step's two ends; they run eagerly there (graph breaks)
    eager_ends = [h for h in runner.hooks if isinstance(h, EagerStepEndsHook)]
    assert len(eager_ends) == (TORCH_VERSION < WHOLE_STEP_COMPILE_MIN_TORCH)
    assert not torch._dynamo.config.suppress_errors  # restored after training
    loss = runner.message_hub.get_scalar('train/loss').data[0]
    assert len(loss) == 2 and all(torch.isfinite(torch.tensor(loss)).tolist())
