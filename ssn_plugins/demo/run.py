"""The embedded demo: synthetic shapes -> SSN Mask R-CNN from scratch -> COCO AP.

``run_demo`` generates the data, evaluates the untrained model (the
baseline), trains the demo config with the SparsestMax radius growing to 1,
evaluates the trained checkpoint with mmdet's ``CocoMetric`` (bbox and segm
AP, pycocotools), and reports which normalizer every SSN layer selected.
"""
from __future__ import annotations

import copy
import json
import os
import os.path as osp
import time
from typing import Optional

from mmengine.config import Config

from ..engine import launch
from ..extras import TOOLKIT_MODULES, require
from ..fileio import replacing
from ..mim import config_path
from .shapes import make_demo_dataset

__all__ = ['DEMO_CONFIG', 'demo_config', 'run_demo', 'format_metrics']

# the copy shipped in the package (ssn_plugins/.mim/configs), found as
# 'ssn_plugins::demo/...' is: in a checkout, an editable or a plain install
DEMO_CONFIG = config_path('demo/mask-rcnn_r18-ssn_fpn_demo.py')
_SHOWN = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'segm_mAP', 'segm_mAP_50', 'segm_mAP_75')


def demo_config(data_root: str, work_dir: str, iters: int, config: str = DEMO_CONFIG,
                workers: int = 1) -> Config:
    """The demo config pointed at ``data_root``, with a schedule of ``iters`` iterations."""
    if iters < 1:
        raise ValueError(f'iters must be >= 1, got {iters}')
    cfg = launch.load_config(config, work_dir=work_dir)
    data_root = data_root.rstrip('/') + '/'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root
        cfg[loader].num_workers = workers
        cfg[loader].persistent_workers = workers > 0
    for evaluator in ('val_evaluator', 'test_evaluator'):
        cfg[evaluator].ann_file = osp.join(data_root, 'annotations', 'instances_val.json')
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    cfg.default_hooks.checkpoint.interval = iters
    for sched in cfg.param_scheduler:
        if sched.type == 'MultiStepLR':
            sched.end = iters
            sched.milestones = [int(iters * 0.75), int(iters * 0.9)]
        elif sched.type == 'LinearLR':
            sched.end = min(sched.end, max(iters // 10, 1))
    return cfg


def format_metrics(before: dict, after: dict) -> str:
    """A two-column table of the COCO APs of the untrained and the trained model."""
    lines = [f"{'metric':<14}{'untrained':>10}{'trained':>10}"]
    for key in _SHOWN:
        full = f'coco/{key}'
        lines.append(f'{key:<14}{before.get(full, float("nan")):>10.3f}'
                     f'{after.get(full, float("nan")):>10.3f}')
    return '\n'.join(lines)


def run_demo(out: str, iters: int = 1500, num_train: int = 300, num_val: int = 50,
             size: int = 128, seed: int = 0, workers: int = 1,
             config: Optional[str] = None) -> dict:
    """Run the whole demo under ``out``; returns the summary written to ``out/results.json``."""
    from ..analysis import collect_ratios, format_summary, write_ratios

    require(*TOOLKIT_MODULES['mmdet'], purpose='the demo (SSN Mask R-CNN)')
    out = osp.abspath(out)
    os.makedirs(out, exist_ok=True)
    data_root = osp.join(out, 'data')
    make_demo_dataset(data_root, num_train, num_val, size, seed)
    cfg = demo_config(data_root, osp.join(out, 'work_dir'), iters, config or DEMO_CONFIG, workers)
    cfg.randomness = dict(seed=seed)

    untrained_cfg = copy.deepcopy(cfg)
    untrained_cfg.work_dir = osp.join(out, 'untrained')
    before = launch.test(untrained_cfg, None)

    start = time.time()
    runner = launch.train(cfg)
    train_minutes = (time.time() - start) / 60
    checkpoint = osp.join(cfg.work_dir, f'iter_{iters}.pth')
    after = launch.test(copy.deepcopy(cfg), checkpoint)

    records = collect_ratios(runner.model)
    json_path, png_path = write_ratios(records, out)
    summary = format_summary(records)
    result = dict(iters=iters, num_train=num_train, num_val=num_val, size=size, seed=seed,
                  train_minutes=round(train_minutes, 2), untrained=before, trained=after,
                  checkpoint=checkpoint, ratios_json=json_path, ratios_png=png_path,
                  latched_layers=sum(bool(r['latched']) for r in records), ssn_layers=len(records))
    with replacing(osp.join(out, 'results.json')) as (tmp, ):
        with open(tmp, 'w') as f:
            json.dump(result, f, indent=1)
    print('\n== Which normalizer each SSN layer selected (IN / LN / BN) ==')
    print(summary)
    print(f'\n== COCO AP on {num_val} synthetic val images (CocoMetric, pycocotools) ==')
    print(format_metrics(before, after))
    print(f'\ntrained {iters} iterations in {train_minutes:.1f} min; '
          f"{result['latched_layers']}/{result['ssn_layers']} SSN layers latched; "
          f'ratios plot: {png_path}; results: {osp.join(out, "results.json")}')
    return result
