"""The small-batch study: BN, GN, SN and SSN at 1, 2 and 8 images per process.

    python tools/small_batch_study.py [--quick] [--out DIR] [--seeds N]

Trains the demo FCN (half-width ResNet-18) on the varied shapes data once
per norm, batch and seed, with the same images seen and the learning rate
scaled linearly with the batch; writes DIR/study.json and DIR/study.png and
prints the table.  Full: 1600 images per run, 2 seeds (under an hour on a
shared 2-core CPU); --quick: 640 images, 1 seed (under 10 minutes).  A rerun with
the same setting and DIR skips the runs already in DIR/study.json.
"""
import argparse
import dataclasses
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.realpath(__file__))))  # lab/ beside the package
from lab.study import BATCHES, FULL, NORMS, QUICK, run_study  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='fewer images per run, one seed')
    parser.add_argument('--out', help='output folder (default outputs/small_batch_study[_quick])')
    parser.add_argument('--seeds', type=int, help='seeds per setting (default 2, --quick 1)')
    parser.add_argument('--norms', nargs='+', choices=NORMS, default=list(NORMS))
    parser.add_argument('--batches', nargs='+', type=int, default=list(BATCHES),
                        help='images per process')
    parser.add_argument('--images', type=int, help='images seen by every run (overrides the setting)')
    parser.add_argument('--num-train', type=int, help='training images in the data set')
    parser.add_argument('--num-val', type=int, help='val images in the data set')
    parser.add_argument('--size', type=int, help='image side in pixels')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (default 1: these small batches gain little from more, and '
                             'on a shared CPU one thread ran several times faster than two)')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setting = QUICK if args.quick else FULL
    overrides = {k: v for k, v in (('images', args.images), ('num_train', args.num_train),
                                   ('num_val', args.num_val), ('size', args.size)) if v is not None}
    setting = dataclasses.replace(setting, **overrides)
    out = args.out or ('outputs/small_batch_study_quick' if args.quick else 'outputs/small_batch_study')
    seeds = args.seeds or (1 if args.quick else 2)
    try:
        run_study(out, setting, seeds, args.norms, args.batches)
    except (ValueError, OSError) as err:
        sys.exit(f'small_batch_study: {err}')


if __name__ == '__main__':
    main()
