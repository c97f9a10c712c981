"""Convert a backbone checkpoint (timm, mmpretrain, a whole mmdet/mmseg
model, DDP-prefixed, ...) into the layout the backbone loads.

    python tools/convert_checkpoint.py SRC DST [--model PoolFormer]
        [--to official] [--prefix backbone.] [--trust]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmpoolformer.checkpoint import CheckpointError, convert_checkpoint  # noqa: E402,E501
from mmpoolformer.registry import MODELS, register_all_modules  # noqa: E402


def main(argv=None):
    register_all_modules()
    models = sorted(name for name, cls in MODELS.module_dict.items()
                    if getattr(cls, 'checkpoint_layout', None) is not None)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='checkpoint path or URL')
    parser.add_argument('dst', help='where to write the converted state dict')
    parser.add_argument('--model', default='PoolFormer', choices=models,
                        help='the backbone family the file holds')
    parser.add_argument('--to', help='target layout (default: the one the '
                        'backbone loads)')
    parser.add_argument('--prefix', help='take only keys under this prefix '
                        '(default: backbone. when the file holds a whole model)')
    parser.add_argument('--trust', action='store_true',
                        help='allow pickled Python objects (weights_only=False)')
    args = parser.parse_args(argv)
    layout = MODELS.get(args.model).checkpoint_layout
    to = args.to or layout.model_layout
    if to not in layout.target_layouts:
        parser.error(f'--to {to!r}: {args.model} files convert to '
                     f'{", ".join(layout.target_layouts)}')
    try:
        found, count = convert_checkpoint(args.src, args.dst, layout, to,
                                          args.prefix,
                                          weights_only=not args.trust)
    except CheckpointError as error:
        sys.exit(f'error: {error}')
    print(f'{args.src} ({found} layout) -> {args.dst}: {count} tensors in '
          f'the {to} layout')


if __name__ == '__main__':
    main()
