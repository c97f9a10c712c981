"""Draw the backbone's stage outputs for an image.

    python tools/analysis_tools/feature_maps.py CONFIG IMAGE --out FILE.png
        [--checkpoint CKPT] [--reduce mean|max|pca] [--max-size 512]

One row: the input image, then one heat map per stage output (strides 4,
8, 16, 32), each reduced over its channels (``--reduce``: channel mean,
channel max, or the first principal component), scaled to [0, 1] per
stage and laid over the image. The image is normalized as the config's
data preprocessor does and scaled down so its longer side is at most
``--max-size``. ``--checkpoint`` takes a whole-model checkpoint
(tools/train.py; its ``backbone.`` weights) or an ImageNet backbone one;
without it the weights are fresh (untrained) and nothing downloads.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
from mmpoolformer.analysis import (  # noqa: E402
    build_backbone, normalize_map, preprocess_image, reduce_channels)

PANEL_INCHES = 3.0
DPI = 100


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='mmdet or mmseg config file')
    parser.add_argument('image', help='image file')
    parser.add_argument('--checkpoint', help='whole-model or backbone '
                        'checkpoint (default: fresh weights)')
    parser.add_argument('--out', required=True, help='the .png to write')
    parser.add_argument('--reduce', default='mean',
                        choices=['mean', 'max', 'pca'],
                        help='how each stage\'s channels become one map')
    parser.add_argument('--max-size', type=int, default=512,
                        help='scale the image so its longer side is at most '
                        'this (0: keep)')
    parser.add_argument('--alpha', type=float, default=0.6,
                        help='opacity of the heat maps over the image')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import mmcv
    import torch

    image = mmcv.imread(args.image)  # BGR
    if image is None:
        sys.exit(f'cannot read the image {args.image}')
    if args.max_size and max(image.shape[:2]) > args.max_size:
        image = mmcv.imrescale(image, args.max_size / max(image.shape[:2]))
    backbone, cfg = build_backbone(args.config, args.checkpoint,
                                   args.cfg_options)
    with torch.no_grad():
        outputs = backbone(preprocess_image(cfg, image))
    stages = [f'stage {i}' for i in backbone.out_indices]
    height, width = image.shape[:2]
    panels = 1 + len(outputs)
    figure, axes = plt.subplots(
        1, panels, dpi=DPI,
        figsize=(PANEL_INCHES * panels, PANEL_INCHES * height / width + 0.6))
    rgb = image[..., ::-1]
    axes[0].imshow(rgb)
    axes[0].set_title(f'input {height}x{width}', fontsize=9)
    weights = args.checkpoint and os.path.basename(args.checkpoint) or \
        'fresh weights'
    print(f'{args.image} ({height}x{width}) through the '
          f'{backbone.arch} backbone of {args.config} ({weights}), '
          f'channels reduced by {args.reduce}:')
    for axis, name, feature in zip(axes[1:], stages, outputs):
        channels, h, w = feature.shape[1:]
        heat = normalize_map(reduce_channels(feature[0], args.reduce))
        heat = mmcv.imresize(heat, (width, height), interpolation='bilinear')
        axis.imshow(rgb)
        axis.imshow(heat, cmap='jet', alpha=args.alpha, vmin=0, vmax=1)
        stride = round(height / h)
        axis.set_title(f'{name}: {channels}x{h}x{w} (stride {stride})',
                       fontsize=9)
        print(f'  {name}: {channels} channels, {h}x{w}, stride {stride}, '
              f'values {feature.min():.3g} to {feature.max():.3g}')
    for axis in axes:
        axis.axis('off')
    figure.tight_layout()
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    figure.savefig(args.out)
    plt.close(figure)
    print(f'wrote {args.out} ({panels} panels: input and '
          f'{len(outputs)} stages)')


if __name__ == '__main__':
    main()
