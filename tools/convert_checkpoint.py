"""Convert a PoolFormer checkpoint (timm, mmpretrain, a whole mmdet/mmseg
model, DDP-prefixed, ...) into the official layout that PoolFormer loads.

    python tools/convert_checkpoint.py SRC DST [--prefix backbone.]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmpoolformer.checkpoint import CheckpointError, convert_to_official  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='checkpoint path or URL')
    parser.add_argument('dst', help='where to write the converted state dict')
    parser.add_argument('--prefix', help='take only keys under this prefix '
                        '(default: backbone. when the file holds a whole model)')
    parser.add_argument('--trust', action='store_true',
                        help='allow pickled Python objects (weights_only=False)')
    args = parser.parse_args(argv)
    try:
        layout, count = convert_to_official(args.src, args.dst, args.prefix,
                                            weights_only=not args.trust)
    except CheckpointError as error:
        sys.exit(f'error: {error}')
    print(f'{args.src} ({layout} layout) -> {args.dst}: {count} tensors in '
          'the official layout')


if __name__ == '__main__':
    main()
