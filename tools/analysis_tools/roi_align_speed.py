"""mmcv's CPU RoIAlign against ``mmpoolformer.ops.roi_align_separable``.

    python tools/analysis_tools/roi_align_speed.py [--shape N C H W]
        [--rois K] [--box 64] [--bins 7] [--scale 0.25] [--rounds 20]

Forward and backward (a random upstream gradient) of both on the same
features and RoIs, timed interleaved (one call of each a round; median,
minimum, maximum and interquartile range in ms), then the largest
differences between their outputs and feature gradients. Defaults: the
Mask R-CNN shapes demo's finest level (8 images, 128 channels, 40x40 at 1/4
scale) and 512 RoIs of 7x7, boxes of 4 to ``--box`` (64) px in 160-px
images, images in order as mmdet's ``bbox2roi`` gives them. The separable
op reads the features as the demo holds them (bf16, channels_last); mmcv's
gets them float32 and contiguous, as the RoIAlign guard hands them to it.
The guard picks the separable op on maps of up to 96 x 96 cells
(``MAX_SEPARABLE_PIXELS`` in ``mmpoolformer/ops/roi_align.py``); this tool
runs both at any size.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
from mmpoolformer.benchmark import summarize, time_interleaved  # noqa: E402
from mmpoolformer.ops import roi_align_separable  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--shape', type=int, nargs=4, default=[8, 128, 40, 40],
                        metavar=('N', 'C', 'H', 'W'))
    parser.add_argument('--rois', type=int, default=512)
    parser.add_argument('--box', type=float, default=64,
                        help='largest box side in image pixels')
    parser.add_argument('--bins', type=int, default=7)
    parser.add_argument('--scale', type=float, default=0.25)
    parser.add_argument('--rounds', type=int, default=20)
    return parser.parse_args(argv)


def main(argv=None):
    from mmcv.ops import roi_align
    args = parse_args(argv)
    n, c, h, w = args.shape
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(n, c, h, w, generator=generator)
    extent = torch.tensor([w, h]) / args.scale
    xy = torch.rand(args.rois, 2, generator=generator) * extent
    wh = 4 + torch.rand(args.rois, 2, generator=generator) * (args.box - 4)
    image = torch.arange(args.rois) * n // args.rois
    rois = torch.cat([image[:, None].float(), xy, xy + wh], dim=1)
    bins = (args.bins, args.bins)
    upstream = torch.randn(args.rois, c, *bins, generator=generator)
    demo_layout = features.bfloat16().contiguous(
        memory_format=torch.channels_last)

    def separable():
        x = demo_layout.detach().requires_grad_()
        out = roi_align_separable(x, rois, bins, args.scale)
        out.backward(upstream)
        return out, x.grad

    def mmcv():
        x = demo_layout.detach().float().contiguous().requires_grad_()
        out = roi_align(x, rois, bins, args.scale, 0, 'avg', True)
        out.backward(upstream)
        return out, x.grad

    variants = dict(mmcv=mmcv, separable=separable)
    results = {name: fn() for name, fn in variants.items()}  # warm-up
    times = time_interleaved(variants, args.rounds)
    print(f'RoIAlign forward + backward, features {n}x{c}x{h}x{w}, '
          f'{args.rois} RoIs of {args.bins}x{args.bins}, {args.rounds} '
          f'rounds, {torch.get_num_threads()} threads')
    stats = {name: summarize(values) for name, values in times.items()}
    base = stats['mmcv']['median']
    for name, s in stats.items():
        print(f"  {name:10s} median {s['median'] * 1e3:8.2f} ms  min "
              f"{s['min'] * 1e3:8.2f}  max {s['max'] * 1e3:8.2f}  iqr "
              f"{s['iqr'] * 1e3:6.2f}  x{base / s['median']:.2f}")
    (out_a, grad_a), (out_b, grad_b) = results['mmcv'], results['separable']
    # relative to the largest value; the separable op's gradient is bf16
    # like the features it was given
    out_diff = (out_a - out_b).abs().max() / out_a.abs().max()
    grad_diff = (grad_a - grad_b.float()).abs().max() / grad_a.abs().max()
    print(f'  max |difference| / max |mmcv|: output {out_diff:.3g}, '
          f'feature gradient {grad_diff:.3g} (bf16)')


if __name__ == '__main__':
    main()
