"""Collapse a trained SN/SSN checkpoint into plain norms folded into convs.

    python tools/deploy.py CONFIG CHECKPOINT OUT [--no-fuse-conv]

Writes OUT (the deployed state_dict) and OUT with suffix .py (its config);
evaluate it with ``python tools/test.py OUT.py OUT``.
"""
import argparse

from ssn_plugins.deploy import deploy_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Collapse latched SN/SSN layers for deployment')
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='trained checkpoint (state_dict or Runner checkpoint)')
    parser.add_argument('out', help='where to write the deployed checkpoint (e.g. deployed.pth)')
    parser.add_argument('--no-fuse-conv', action='store_true',
                        help='keep BatchNorm layers instead of folding them into the convs')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    checkpoint, config = deploy_checkpoint(args.config, args.checkpoint, args.out,
                                           fuse_conv=not args.no_fuse_conv)
    print(f'deployed checkpoint: {checkpoint}\ndeployed config: {config}')


if __name__ == '__main__':
    main()
