"""Write the synthetic shapes data set of the demo (COCO json, label maps, classification crops).

    python tools/make_demo_data.py data/ssn_demo [--num-train 300] [--num-val 50] [--size 128]
                                   [--seed 0] [--overwrite]

ROOT must be new, empty or an earlier demo set (ROOT/meta.json); --overwrite
replaces an earlier set made with other arguments, removing its files.
"""
import argparse
import sys

from ssn_plugins.demo import make_demo_dataset


def _int_at_least(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f'must be an integer >= {low}, got {text!r}')
        return value
    return parse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', help='output folder')
    parser.add_argument('--num-train', type=_int_at_least(1), default=300)
    parser.add_argument('--num-val', type=_int_at_least(1), default=50)
    parser.add_argument('--size', type=_int_at_least(32), default=128, help='image side in pixels')
    parser.add_argument('--seed', type=_int_at_least(0), default=0)
    parser.add_argument('--varied', action='store_true',
                        help='per-image brightness, contrast and colour cast on textured, cluttered '
                             'backgrounds (the small-batch study data)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an earlier demo set made with other arguments')
    args = parser.parse_args(argv)
    try:
        out = make_demo_dataset(args.root, args.num_train, args.num_val, args.size, args.seed,
                                overwrite=args.overwrite, varied=args.varied)
    except (ValueError, OSError, ImportError) as err:
        sys.exit(f'make_demo_data: {err}')
    print(f"{args.root}: {len(out['train']['images'])} train / {len(out['val']['images'])} val "
          f"images, {len(out['train']['annotations'])} train instances "
          f"(also {args.root}/cls/{{train,val}} for classification)")


if __name__ == '__main__':
    main()
