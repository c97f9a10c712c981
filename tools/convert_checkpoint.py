"""Convert a backbone checkpoint (timm, mmpretrain, a whole mmdet/mmseg
model, DDP-prefixed, ...) into the layout the backbone loads.

    python tools/convert_checkpoint.py SRC DST [--model PoolFormer]
        [--to official] [--prefix backbone.] [--trust]

With ``--whole-model CONFIG``, convert a whole detector / segmentor another
library released (mmdet 2.x, mmseg 0.x) for the model of CONFIG and write
``{'state_dict', 'meta'}``, loadable by tools/test.py and init_detector:

    python tools/convert_checkpoint.py SRC DST --whole-model CONFIG
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
                        '(default: backbone. when the file holds a whole '
                        'model)')
    parser.add_argument('--trust', action='store_true',
                        help='allow pickled Python objects '
                        '(weights_only=False)')
    parser.add_argument('--whole-model', metavar='CONFIG',
                        help='convert a whole model (mmdet 2.x / mmseg 0.x) '
                        'for the model of this config (a file or a config '
                        'name, e.g. retinanet_poolformer_s12)')
    args = parser.parse_args(argv)
    if args.whole_model:
        from mmpoolformer.runner import ConfigError
        try:
            report = convert_whole_model(
                args.src, args.dst, args.whole_model,
                weights_only=not args.trust)
        except (CheckpointError, ConfigError) as error:
            sys.exit(f'error: {error}')
        print(report.summary(args.src))
        print(f'-> {args.dst}: {report.loaded} tensors, state_dict + meta')
        return
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


def convert_whole_model(src, dst, config, weights_only=True):
    """Build the model of ``config`` (a file, or the name of a config that
    comes with mmpoolformer; no weights loaded) and write ``src`` converted
    for it to ``dst``."""
    from mmengine.registry import MODELS as ROOT_MODELS
    from mmengine.registry import init_default_scope

    from mmpoolformer.checkpoint.whole_model import convert_whole_model_file
    from mmpoolformer.runner import load_config
    cfg = load_config(config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = ROOT_MODELS.build(cfg.model)
    return convert_whole_model_file(src, dst, model, weights_only)


if __name__ == '__main__':
    main()
