"""SN/SSN against BatchNorm on this machine: layer train time and memory, host reads,
kernels and graph breaks per layer, torch.compile'd layers, network latency.

    python tools/benchmark.py --out outputs/benchmark.json [--threads 2] [--repeats 10]
        [--skip-networks] [--train-iteration] [--latched bn in ln in-bn]
        [--skip-counts] [--compile [--compile-backend inductor]]

Prints markdown tables (ratios are medians over the ResNet-50 norm shapes at
batch 2 and 8) and writes every measurement as JSON.
"""
import argparse
import json
import os.path as osp
import sys
from typing import Tuple

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.realpath(__file__))))  # lab/ beside the package
from lab import benchmark  # noqa: E402
from ssn_plugins import config_path  # noqa: E402
from ssn_plugins.fileio import check_destination, replacing  # noqa: E402

# the shipped configs, found from any working directory (also as ssn_plugins/.mim/tools)
MMDET_CONFIG = config_path('mmdet/mask-rcnn_r50-ssn_fpn_1x_coco.py')
MMSEG_CONFIG = config_path('mmseg/pspnet_r50-ssn-d8_4xb4-80k_ade20k-512x512.py')


def _shape(text: str) -> Tuple[int, int]:
    """'256x14' -> (256, 14)."""
    c, h = (int(v) for v in text.split('x'))
    return c, h


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Benchmark SN/SSN against BatchNorm')
    parser.add_argument('--out', default='outputs/benchmark.json', help='JSON file to write')
    parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
    parser.add_argument('--clock', choices=['wall', 'cpu'], default='wall',
                        help="'cpu': process CPU time, robust to other load (use with --threads 1)")
    parser.add_argument('--batches', type=int, nargs='+', default=[2, 8])
    parser.add_argument('--repeats', type=int, default=10, help='timed calls per layer candidate')
    parser.add_argument('--shapes', nargs='+', default=None,
                        help='CxH norm input shapes (default: the distinct ones of ResNet-50)')
    parser.add_argument('--latched', nargs='+', default=['bn', 'in-bn'],
                        help="latched SSN choices to time: 'bn', 'in', 'ln' or 'MEAN-VAR' (e.g. in-bn)")
    parser.add_argument('--skip-layers', action='store_true')
    parser.add_argument('--skip-counts', action='store_true',
                        help='no host-read, kernel and graph-break counts')
    parser.add_argument('--count-batch', type=int, default=2, help='batch of the counted step')
    parser.add_argument('--count-shape', default='256x14', help='CxH of the counted step')
    parser.add_argument('--compile', action='store_true',
                        help="also time torch.compile'd layers against eager and compiled BN2d "
                             '(inductor: about 9 min on 2 cores for the default shapes)')
    parser.add_argument('--compile-backend', default='inductor', help='torch.compile backend')
    parser.add_argument('--skip-networks', action='store_true')
    parser.add_argument('--net-size', type=int, default=256, help='square input of the networks')
    parser.add_argument('--net-repeats', type=int, default=3)
    parser.add_argument('--mmdet-config', default=MMDET_CONFIG)
    parser.add_argument('--mmseg-config', default=MMSEG_CONFIG)
    parser.add_argument('--train-iteration', action='store_true',
                        help='also time a Mask R-CNN training iteration with SSN/SN/BN/GN (slow)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        check_destination(args.out)  # before the minutes of measuring
    except ValueError as err:
        raise SystemExit(f'benchmark: --out: {err}')
    torch.set_num_threads(args.threads)
    result = dict(device='cpu', threads=args.threads, clock=args.clock,
                  torch=torch.__version__,
                  memory_measure='bytes saved by autograd for backward (saved_tensors_hooks)')
    shapes = benchmark.RESNET50_NORM_SHAPES if args.shapes is None else [
        _shape(shape) for shape in args.shapes]
    if not args.skip_layers:
        result['layers'] = benchmark.layer_benchmark(args.batches, shapes, args.repeats,
                                                     args.latched, print, args.clock)
    if not args.skip_counts:
        result['counts'] = benchmark.count_benchmark(args.count_batch, _shape(args.count_shape),
                                                     args.latched)
    if args.compile:
        result['compiled'] = benchmark.compile_benchmark(args.batches, shapes, args.repeats,
                                                         args.latched, args.compile_backend,
                                                         print, args.clock)
    if not args.skip_networks:
        result['networks'] = [
            benchmark.network_benchmark(config, scope, args.net_size, args.net_repeats,
                                        clock=args.clock)
            for config, scope in ((args.mmdet_config, 'mmdet'), (args.mmseg_config, 'mmseg'))]
    if args.train_iteration:
        result['train_iteration'] = benchmark.train_iteration_benchmark(
            args.mmdet_config, clock=args.clock)
    print(benchmark.format_tables(result))
    with replacing(args.out) as (tmp, ):
        with open(tmp, 'w') as f:
            json.dump(result, f, indent=1)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
