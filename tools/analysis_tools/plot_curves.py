"""Plot training loss and validation mAP/mIoU over iterations.

    python tools/analysis_tools/plot_curves.py WORK_DIR --out FILE.png
        [--keys loss loss_cls ...] [--metrics coco/bbox_mAP ...]

Reads the ``<timestamp>/vis_data/scalars.json`` files that mmengine's
``LocalVisBackend`` (the default of mmdet/mmseg configs) writes under
WORK_DIR, every run in time order (a resumed run continues the curve), or
one such file given directly. Left panel: the losses (default: every key
with ``loss`` in its name) over training iterations; right panel: the
validation metrics (default: COCO/VOC mAPs and mIoU) at the iteration
they were evaluated (mmengine logs them by epoch for epoch-based loops).
Prints what it plotted.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
from mmpoolformer.analysis import (  # noqa: E402
    find_scalars, loss_keys, metric_keys, read_scalars, series)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('work_dir', help='a work dir, or a scalars.json')
    parser.add_argument('--out', required=True, help='the .png to write')
    parser.add_argument('--keys', nargs='+',
                        help='training scalars to plot (default: losses)')
    parser.add_argument('--metrics', nargs='+',
                        help='validation scalars to plot (default: mAP '
                        'and mIoU keys)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    paths = find_scalars(args.work_dir)
    train, val = read_scalars(paths)
    losses = args.keys or loss_keys(train)
    metrics = args.metrics or metric_keys(val)
    if not train and not val:
        sys.exit(f'{", ".join(paths)}: no scalars logged yet')
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    print(f'{len(train)} training and {len(val)} validation records from '
          f'{", ".join(paths)}')
    for axis, records, keys, label in ((left, train, losses, 'loss'),
                                       (right, val, metrics, 'metric')):
        for key in keys:
            iters, values = series(records, key)
            if not iters:
                print(f'  {key}: not logged')
                continue
            axis.plot(iters, values, marker='o' if len(iters) < 30 else
                      None, markersize=3, label=key)
            best, word = ((max(values), 'best') if label == 'metric' else
                          (min(values), 'lowest'))
            print(f'  {key}: {len(values)} points, iterations {iters[0]}-'
                  f'{iters[-1]}, first {values[0]:.4g}, last '
                  f'{values[-1]:.4g}, {word} {best:.4g}')
        axis.set_xlabel('iteration')
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
        else:
            axis.text(0.5, 0.5, f'no {label} logged', ha='center',
                      va='center', transform=axis.transAxes)
    left.set_title('training')
    right.set_title('validation')
    figure.tight_layout()
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    figure.savefig(args.out)
    plt.close(figure)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
