"""Collapse a trained SN/SSN checkpoint into plain norms folded into convs.

    python tools/deploy.py CONFIG CHECKPOINT OUT [--no-fuse-conv] [--onnx OUT.onnx [--onnx-shape H W]]

Writes OUT (the deployed state_dict) and OUT with suffix .py (its config);
evaluate it with ``python tools/test.py OUT.py OUT``.  With --onnx, also the
collapsed model as ONNX (segmentors: image to logits; detectors: image to
backbone/neck features and RPN outputs), run in onnxruntime against PyTorch.
"""
import argparse
import sys

from ssn_plugins.deploy import deploy_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Collapse latched SN/SSN layers for deployment')
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='trained checkpoint (state_dict or Runner checkpoint)')
    parser.add_argument('out', help='where to write the deployed checkpoint (e.g. deployed.pth)')
    parser.add_argument('--no-fuse-conv', action='store_true',
                        help='keep BatchNorm layers instead of folding them into the convs')
    parser.add_argument('--onnx', metavar='OUT.onnx', help='also export the collapsed model to ONNX')
    parser.add_argument('--onnx-shape', type=int, nargs=2, metavar=('H', 'W'),
                        help="ONNX input size (default: the data preprocessor's size, else 256 256)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        done = deploy_checkpoint(args.config, args.checkpoint, args.out, fuse_conv=not args.no_fuse_conv,
                                 onnx=args.onnx, onnx_shape=args.onnx_shape)
    except (ValueError, OSError, ImportError) as err:
        sys.exit(f'deploy: {err}')
    print(f'deployed checkpoint: {done.checkpoint}\ndeployed config: {done.config}')
    if done.onnx:
        report = done.onnx_report
        print(f'ONNX ({report["kind"]}, input {report["input_shape"]}, {report["outputs"]} outputs): '
              f'{done.onnx}\nonnxruntime vs PyTorch: largest absolute difference '
              f'{report["max_abs_diff"]:.3g}')
        if report['fixed_mixtures']:
            print(f'ONNX: {report["fixed_mixtures"]} SN/SSN layers have not latched; they are exported '
                  'with their eval-mode ratios as constants (exact in eval; the deployed checkpoint '
                  'keeps them trainable)')


if __name__ == '__main__':
    main()
