"""Train an mmdet, mmseg or mmpretrain config (SN/SSN or not) with mmengine's Runner.

    python tools/train.py CONFIG [--norm SN|SSN|SyncSN|SyncSSN] [--work-dir DIR] [--resume [CKPT]] [--amp]
                         [--compile] [--compile-backend NAME]
                         [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]
"""
import argparse
import pickle
import sys

from mmengine.config import DictAction

from ssn_plugins.convert import NORM_TYPES
from ssn_plugins.engine import launch
from ssn_plugins.extras import MissingExtraError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector, segmentor or classifier')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--norm', choices=NORM_TYPES, default=None,
                        help='convert every norm layer of the config (an upstream one too, e.g. '
                             'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py) to this type first; '
                             'the work dir keeps the converted config')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', help='mixed precision training (needs CUDA)')
    parser.add_argument('--compile', action='store_true',
                        help="torch.compile the train step (mmengine's compile=True)")
    parser.add_argument('--compile-backend', default=None,
                        help='torch.compile backend (implies --compile), e.g. aot_eager')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint in the work dir '
                             'when no path is given')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. train_cfg.max_iters=100')
    parser.add_argument('--launcher', choices=launch.LAUNCHERS, default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=None)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    launch.local_rank_env(args.local_rank)
    cfg = launch.load_config(args.config, args.cfg_options, args.work_dir, args.launcher, args.norm)
    if args.amp:
        launch.enable_amp(cfg)
    if args.compile or args.compile_backend:
        launch.enable_compile(cfg, args.compile_backend)
    try:
        launch.set_resume(cfg, args.resume)
    except (ValueError, FileNotFoundError) as err:  # before the model is built
        sys.exit(f'train: {err}')
    launch.train(cfg)


if __name__ == '__main__':
    try:
        main()
    except (MissingExtraError, pickle.UnpicklingError) as err:  # one line, not a traceback
        sys.exit(f'train: {err}')
