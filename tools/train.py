"""Train an mmdet or mmseg config (the config's scope decides).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                                 [--auto-scale-lr] [--cfg-options k=v ...]
                                 [--launcher ...]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmpoolformer.runner import (  # noqa: E402
    USER_ERRORS, add_launch_arguments, build_train_runner,
    close_distributed, parse_launch_arguments)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        'config', help='train config file, or the name of a config that comes '
        'with mmpoolformer (detection/retinanet_poolformer_s12)')
    parser.add_argument('--work-dir', help='where logs and checkpoints go')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint, or, with no value, from the '
        'latest checkpoint in the work dir')
    parser.add_argument(
        '--amp', action='store_true',
        help='mixed precision (fp16 on CUDA, bf16 on a CPU with AVX-512 or '
        'AMX, float32 on an AVX2-only one)')
    parser.add_argument(
        '--auto-scale-lr', action='store_true',
        help='scale the lr by the total batch size over the config\'s '
        'auto_scale_lr.base_batch_size')
    add_launch_arguments(parser, 'train_cfg.max_epochs=1')
    return parse_launch_arguments(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        runner = build_train_runner(
            args.config, work_dir=args.work_dir, resume=args.resume,
            amp=args.amp, cfg_options=args.cfg_options,
            launcher=args.launcher, auto_scale_lr=args.auto_scale_lr,
            trust_checkpoint=args.trust_checkpoint)
    except USER_ERRORS as error:
        sys.exit(f'error: {error}')
    try:
        runner.train()
    except (FloatingPointError,  # NonFiniteCheckHook
            *USER_ERRORS) as error:  # a checkpoint that cannot be loaded
        sys.exit(f'error: {error}')
    finally:
        del runner  # see close_distributed
        close_distributed()


if __name__ == '__main__':
    main()
