"""Evaluate a checkpoint on an mmdet or mmseg config's test set.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE]
                         [--show] [--show-dir DIR] [--wait-time S] [--tta]
                         [--cfg-options k=v ...]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmpoolformer.runner import (  # noqa: E402
    USER_ERRORS, add_launch_arguments, build_test_runner,
    close_distributed, parse_launch_arguments)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        'config', help='test config file, or the name of a config that comes '
        'with mmpoolformer (detection/retinanet_poolformer_s12)')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the evaluation log goes')
    parser.add_argument(
        '--out', help='dump predictions: a .pkl file (mmdet) or a folder of '
        'prediction maps (mmseg)')
    parser.add_argument(
        '--show', action='store_true',
        help='show each image with its predictions in a window')
    parser.add_argument(
        '--wait-time', type=float, default=2,
        help='seconds each --show window stays open')
    parser.add_argument(
        '--tta', action='store_true',
        help='test-time augmentation (the config\'s tta_model and '
        'tta_pipeline; for mmdet configs without them, horizontal flip)')
    parser.add_argument(
        '--show-dir', help='write images with drawn predictions here '
        '(relative to the work dir for mmdet)')
    add_launch_arguments(parser, 'test_dataloader.batch_size=4')
    return parse_launch_arguments(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        runner = build_test_runner(
            args.config, args.checkpoint, work_dir=args.work_dir,
            out=args.out, show_dir=args.show_dir,
            cfg_options=args.cfg_options, launcher=args.launcher,
            show=args.show, wait_time=args.wait_time, tta=args.tta,
            trust_checkpoint=args.trust_checkpoint)
    except USER_ERRORS as error:
        sys.exit(f'error: {error}')
    try:
        return runner.test()
    except USER_ERRORS as error:  # a checkpoint that cannot be loaded
        sys.exit(f'error: {error}')
    finally:
        del runner  # see close_distributed
        close_distributed()


if __name__ == '__main__':
    main()
