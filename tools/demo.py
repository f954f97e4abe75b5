"""The embedded demo (`make demo`): synthetic shapes, SSN Mask R-CNN from scratch, COCO AP.

    python tools/demo.py --out outputs/demo [--iters 1500] [--num-train 300] [--num-val 50]
"""
import argparse
import sys

from ssn_plugins.demo.run import run_demo
from ssn_plugins.extras import MissingExtraError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='outputs/demo', help='output folder')
    parser.add_argument('--iters', type=int, default=1500,
                        help='training iterations (batch 4; about 8.5 min on 2 CPU cores)')
    parser.add_argument('--num-train', type=int, default=300)
    parser.add_argument('--num-val', type=int, default=50)
    parser.add_argument('--size', type=int, default=128, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workers', type=int, default=1, help='data loader workers')
    args = parser.parse_args(argv)
    run_demo(args.out, args.iters, args.num_train, args.num_val, args.size, args.seed,
             args.workers)


if __name__ == '__main__':
    try:
        main()
    except MissingExtraError as err:  # one line naming the extra, not a traceback
        sys.exit(f'demo: {err}')
