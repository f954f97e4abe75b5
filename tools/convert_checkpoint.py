"""Convert a released SN/SSN, a BN or an mmpretrain SN/SSN ResNet v1 checkpoint for mmdet/mmseg ResNet.

    python tools/convert_checkpoint.py SRC DST [--target ssn|sn]

SRC: a released ResNet-50 v1 + SSN or SN file (with or without 'module.', bare
or {'state_dict': ...}), a torchvision / mmcv / mmcls BN ResNet, or a
checkpoint trained with this package's layers, e.g. an mmpretrain
ImageClassifier from configs/mmpretrain (its backbone is kept with the logits,
radius and latched choices; the stem pool is read from the training config
in the file).  DST loads with
init_cfg=dict(type='SwitchNormPretrained', checkpoint=DST).
"""
import argparse
import json
import sys

from ssn_plugins.checkpoint import convert_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='source checkpoint (.pth)')
    parser.add_argument('dst', help='converted checkpoint to write')
    parser.add_argument('--target', choices=('ssn', 'sn'), default=None,
                        help="layer type of the model: default the source's kind ('ssn' for BN "
                             "sources); --target ssn on an SN file initialises SSN logits from SN")
    args = parser.parse_args(argv)
    try:
        meta = convert_checkpoint(args.src, args.dst, args.target)
    except (ValueError, OSError) as err:
        sys.exit(f'convert_checkpoint: {err}')
    print(json.dumps(meta, indent=2))
    print(f'wrote {args.dst}: {meta["arch"]} {meta["source_kind"].upper()} -> {meta["norm_type"]}, '
          f'{meta["num_norm_layers"]} norm layers, latched mean/var {meta["latched"]["mean"]}/'
          f'{meta["latched"]["var"]}')


if __name__ == '__main__':
    main()
