"""Convert an mmdet, mmseg or mmpretrain config to SN/SSN and write it as an editable file.

    python tools/convert_config.py IN --norm SSN -o OUT.py

IN: a config file, or an upstream one by name (mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py).
OUT holds the whole resolved config (no _base_), with what was changed besides
the layer types listed at the top.  Train it with tools/train.py OUT.py, or
skip the file with tools/train.py IN --norm SSN.
"""
import argparse
import sys

from ssn_plugins.convert import NORM_TYPES, convert_config, upstream_config_path
from ssn_plugins.extras import MissingExtraError
from ssn_plugins.fileio import check_destination, replacing


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file, or scope::path of an upstream one')
    parser.add_argument('--norm', choices=NORM_TYPES, default='SSN', help='layer type (default SSN)')
    parser.add_argument('-o', '--out', required=True, help='converted config to write (.py)')
    args = parser.parse_args(argv)
    try:
        source = upstream_config_path(args.config)
        if not args.out.endswith('.py'):
            raise ValueError(f'--out {args.out}: a config file name ending in .py')
        out = check_destination(args.out, {source: 'the input config'})
        notes = []
        cfg = convert_config(source, args.norm, notes)
        header = [f'# {args.config} converted to {args.norm} by ssn_plugins (tools/convert_config.py).',
                  '# Besides the layer types:'] + [f'# - {note}' for note in notes]
        with replacing(out) as (tmp, ):
            with open(tmp, 'w', encoding='utf-8') as f:
                f.write('\n'.join(header) + '\n' + cfg.pretty_text + '\n')
    except (ValueError, OSError, SyntaxError, MissingExtraError) as err:
        sys.exit(f'convert_config: {err}')
    print(f'wrote {out}: {notes[0]}')


if __name__ == '__main__':
    main()
