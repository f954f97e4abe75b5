"""What needs a CUDA device: no host syncs inside SN/SSN, AMP, speed against BN and GN.

    python tools/gpu_check.py [--config configs/demo/mask-rcnn_r18-ssn_fpn_demo.py]
        [--out outputs/gpu_check.json] [--batches 2 8] [--repeats 20] [--size 128]

Prints one markdown table; exits with status 1 when a check fails, and with
a message (status 1) when no CUDA device is available.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.realpath(__file__))))  # lab/ beside the package
from lab import gpu_check  # noqa: E402
from lab.benchmark import RESNET50_NORM_SHAPES  # noqa: E402
from ssn_plugins.demo.run import DEMO_CONFIG  # noqa: E402
from ssn_plugins.fileio import check_destination, replacing  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='SN/SSN checks and timings on a CUDA device')
    parser.add_argument('--config', default=DEMO_CONFIG, help='Mask R-CNN config with SN/SSN')
    parser.add_argument('--out', default=None, help='also write the report as JSON here')
    parser.add_argument('--batches', type=int, nargs='+', default=[2, 8],
                        help='batch sizes of the per-layer timing')
    parser.add_argument('--repeats', type=int, default=20, help='timed calls per layer')
    parser.add_argument('--size', type=int, default=128, help='square image size of Mask R-CNN')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.out:
        try:
            check_destination(args.out)  # before the checks
        except ValueError as err:
            raise SystemExit(f'gpu_check: --out: {err}')
    gpu_check.require_cuda()
    report = gpu_check.run_checks(args.config, args.batches, RESNET50_NORM_SHAPES, args.repeats,
                                  args.size, print)
    print(gpu_check.format_table(report))
    if args.out:
        with replacing(args.out) as (tmp, ):
            with open(tmp, 'w') as f:
                json.dump(report, f, indent=1)
        print(f'wrote {args.out}')
    if not gpu_check.passed(report):
        raise SystemExit(1)


if __name__ == '__main__':
    main()
