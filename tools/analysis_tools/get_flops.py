"""Parameters and MACs of a config's model and of its backbone.

    python tools/analysis_tools/get_flops.py CONFIG [--shape H W]
    python tools/analysis_tools/get_flops.py CONFIG --classifier

The whole detector/segmentor runs in mmdet's/mmseg's ``tensor`` mode
(backbone, neck and heads up to their raw outputs, no post-processing) on a
1x3xHxW input (mmdet: padded to the data preprocessor's size divisor, as in
inference). ``--classifier`` counts instead the ImageNet classifier of the
config's backbone type and arch (e.g. ``PoolFormer(arch, fork_feat=False)``,
family defaults otherwise), at 224x224 by default: the papers' setting.
Weights are fresh (counts do not depend on them) and nothing downloads. What
is counted:
:data:`mmpoolformer.analysis.COUNTING_NOTE`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
from mmpoolformer.analysis import (  # noqa: E402
    COUNTING_NOTE, build_model, count_complexity, count_parameters,
    model_config, tensor_forward)

DEFAULT_SHAPES = dict(classifier=(224, 224), mmdet=(800, 1333),
                      mmseg=(512, 512))


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='mmdet or mmseg config file')
    parser.add_argument(
        '--shape', type=int, nargs=2, metavar=('H', 'W'),
        help='input height and width (default: 224 224 with --classifier, '
        '800 1333 for mmdet, 512 512 for mmseg)')
    parser.add_argument(
        '--classifier', action='store_true',
        help='count the ImageNet classifier of the backbone arch instead')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries')
    return parser.parse_args(argv)


def _size(value: int) -> str:
    for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if value >= scale:
            return f'{value / scale:.2f}{unit}'
    return str(value)


def _module_rows(model, prefix: str):
    """(label, module name in the trace, module) for the whole model and
    each top-level part with parameters."""
    rows = [('whole model', prefix.rstrip('.'), model)]
    for name, child in model.named_children():
        if count_parameters(child):
            rows.append((f'  {name}', prefix + name, child))
    return rows


# what defines a backbone's classifier; the rest of a config's backbone
# (demo norms, outputs, freezing, init) is left at the family's defaults
ARCH_KEYS = ('arch', 'in_channels', 'token_mixers', 'norm', 'mlp_head')


def _classifier(backbone):
    """The ImageNet classifier (``fork_feat=False``) of the config's
    backbone type, built from its architecture keys only."""
    from mmpoolformer.registry import MODELS
    cls = MODELS.get(backbone.type)
    if cls is None:
        sys.exit(f'--classifier counts the classifiers of this project\'s '
                 f'backbones; {backbone.type!r} is not one of them '
                 f'({", ".join(sorted(MODELS.module_dict))})')
    kwargs = {key: backbone[key] for key in ARCH_KEYS if key in backbone}
    model = cls(**kwargs, fork_feat=False).eval()
    args = ', '.join(f'{k}={v!r}' for k, v in kwargs.items())
    return model, (f'ImageNet classifier {cls.__name__}({args}, '
                   'fork_feat=False, 1000 classes)')


def main(argv=None):
    args = parse_args(argv)
    import torch
    cfg = model_config(args.config, args.cfg_options)
    scope = cfg.default_scope
    shape = tuple(args.shape or DEFAULT_SHAPES[
        'classifier' if args.classifier else scope])
    if args.classifier:
        model, what = _classifier(cfg.model.backbone)
        module, prefix, padded = model, '', shape
    else:
        model, cfg = build_model(cfg)
        divisor = (cfg.model.get('data_preprocessor') or {}).get(
            'pad_size_divisor', 1) if scope == 'mmdet' else 1
        padded = tuple(-(-s // divisor) * divisor for s in shape)
        module, prefix = tensor_forward(model, scope, padded), 'model.'
        what = (f'{type(model).__name__} ({scope}) with '
                f"{cfg.model.backbone.type}(arch="
                f"{cfg.model.backbone.get('arch')!r}), tensor mode")
    counts = count_complexity(module, (torch.zeros(1, 3, *padded), ))
    print(f'{args.config}: {what}')
    note = (f' ({shape[0]}x{shape[1]} padded to a multiple of {divisor})'
            if padded != shape else '')
    print(f'input 1x3x{padded[0]}x{padded[1]}{note}')
    print(f'{"":14}{"parameters":>21}{"MACs":>27}{"other ops":>11}')
    for label, name, part in _module_rows(model, prefix):
        params, macs = count_parameters(part), counts['macs'][name]
        print(f'{label:14}{params:>12,} {_size(params):>8}'
              f'{macs:>18,} {_size(macs):>8}'
              f'{_size(counts["other"][name]):>11}')
    whole = counts['by_operator'][prefix.rstrip('.')]
    print('by operator (whole model): ' + ', '.join(
        f'{op} {_size(n)}' for op, n in whole.most_common()))
    if counts['uncounted']:
        print('not counted at all: ' + ', '.join(
            f'{op} ({n} calls)' for op, n in counts['uncounted'].items()))
    print(COUNTING_NOTE)


if __name__ == '__main__':
    main()
