"""Show which normalizer (IN, LN, BN) each SN/SSN layer of a checkpoint selected.

    python tools/analyze_ratios.py CHECKPOINT --out DIR
    python tools/analyze_ratios.py CONFIG CHECKPOINT --out DIR

Writes DIR/ratios.json (per layer: name, mean and var ratios, latched) and
DIR/ratios.png (stacked bars per layer, network order) and prints a table
with how many layers chose IN, LN and BN for the mean and for the variance.
Alone, the checkpoint's logits and buffers are turned into ratios directly;
with a config the model is built, the checkpoint loaded strictly and each
layer's ratios() used.
"""
import argparse
import os
import sys

from ssn_plugins.analysis import format_summary, ratios_from_checkpoint, write_ratios
from ssn_plugins.fileio import check_destination


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Analyse the SN/SSN importance ratios of a checkpoint')
    parser.add_argument('paths', nargs='+', metavar='[CONFIG] CHECKPOINT',
                        help='a checkpoint, or an mmdet/mmseg config and a checkpoint')
    parser.add_argument('--out', required=True, help='directory for ratios.json and ratios.png')
    parser.add_argument('--mode', choices=('paper', 'official'), default='paper',
                        help='SparsestMax rule for unlatched SSN layers of a checkpoint given alone')
    args = parser.parse_args(argv)
    if len(args.paths) > 2:
        parser.error(f'expected CHECKPOINT or CONFIG CHECKPOINT, got {len(args.paths)} paths')
    return args


def main(argv=None):
    args = parse_args(argv)
    config, checkpoint = args.paths if len(args.paths) == 2 else (None, args.paths[0])
    inputs = {checkpoint: 'the checkpoint to analyse'}
    if config is not None:
        inputs[config] = 'the config'
    try:
        for name in ('ratios.json', 'ratios.png'):  # before any work
            check_destination(os.path.join(args.out, name), inputs)
        records = ratios_from_checkpoint(checkpoint, config=config, mode=args.mode)
        json_path, png_path = write_ratios(records, args.out)
    except (ValueError, OSError) as err:
        sys.exit(f'analyze_ratios: {err}')
    print(format_summary(records))
    print(f'wrote {json_path} and {png_path}')


if __name__ == '__main__':
    sys.exit(main())
