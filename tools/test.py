"""Evaluate a checkpoint of an mmdet, mmseg or mmpretrain config; prints the metrics as JSON.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...]
                        [--launcher none|pytorch|slurm|mpi] [--out-metrics FILE.json]
"""
import argparse
import pickle
import json
import sys

from mmengine.config import DictAction

from ssn_plugins.engine import launch
from ssn_plugins.fileio import check_destination, replacing
from ssn_plugins.extras import MissingExtraError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument('--out-metrics', help='also write the metrics to this json file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. test_dataloader.batch_size=1')
    parser.add_argument('--launcher', choices=launch.LAUNCHERS, default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=None)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.out_metrics:  # before the test, not after it
        try:
            check_destination(args.out_metrics, {args.config: 'the config to test',
                                                 args.checkpoint: 'the checkpoint to test'})
        except ValueError as err:
            sys.exit(f'test: --out-metrics: {err}')
    launch.local_rank_env(args.local_rank)
    cfg = launch.load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    metrics = launch.test(cfg, args.checkpoint)
    print(json.dumps(metrics))
    if args.out_metrics:
        with replacing(args.out_metrics) as (tmp, ):
            with open(tmp, 'w') as f:
                json.dump(metrics, f, indent=1)


if __name__ == '__main__':
    try:
        main()
    except (MissingExtraError, pickle.UnpicklingError) as err:  # one line, not a traceback
        sys.exit(f'test: {err}')
