"""Where a training step's time goes: a config's own runner, a few
profiled steps, self CPU time by op class.

    python tools/analysis_tools/step_profile.py [CONFIG] \\
        [--start 30] [--steps 10] [--top 15] [--out profile.md] \\
        [--cfg-options k=v ...]

CONFIG defaults to the README's demo (RetinaNet-S12 on the shapes data).
Builds the runner as ``tools/train.py`` does (hooks, CPU AMP wrapper, op
guards, data generated if missing), trains ``start + steps`` iterations
without validation or checkpoints, times every step and profiles the last
``steps`` with torch's CPU profiler. Prints, in markdown, the CPU (family,
model and clock: the 2-core kinds here differ 2-3x in GEMM rate), the
median step before and during profiling, the self CPU time a step of each
op class (convolutions forward and backward, matrix multiplies,
activations, norms, pooling, copies and casts, the optimizer, other aten
ops, and what is left: Python, hooks, data loading, waiting) and the
``top`` aten ops by self time with their first input's shape. The
profiler adds a few percent to the profiled steps.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
from mmpoolformer.analysis import (  # noqa: E402
    format_step_profile, profile_training_steps)
from mmpoolformer.benchmark import describe_cpu  # noqa: E402

DEFAULT_CONFIG = 'configs/detection/retinanet_poolformer_s12_shapes.py'


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG)
    parser.add_argument('--start', type=int, default=30,
                        help='iterations before the profiled ones')
    parser.add_argument('--steps', type=int, default=10,
                        help='iterations profiled')
    parser.add_argument('--top', type=int, default=15)
    parser.add_argument('--out', help='also write the report here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.config):
        sys.exit(f'error: no config file {args.config}')
    try:
        result = profile_training_steps(
            args.config, args.start, args.steps, args.cfg_options,
            top=args.top)
    except ValueError as error:
        sys.exit(f'error: {error}')
    report = format_step_profile(result, f'CPU: {describe_cpu()}')
    print(report)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(report + '\n')
    return result


if __name__ == '__main__':
    main()
