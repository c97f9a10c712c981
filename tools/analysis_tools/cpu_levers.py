"""Where a CPU demo's time goes: a short run of a demo config under each
CPU setting in turn, with the time per training step and what the OS
counted (user and system time, page faults, context switches).

    python tools/analysis_tools/cpu_levers.py \\
        [--config configs/detection/retinanet_poolformer_s12_shapes.py] \\
        [--levers defaults malloc omp-passive no-amx thp] [--repeats 2] \\
        [--out levers.md] [-- --cfg-options k=v ...]

Each run is ``python tools/train.py CONFIG`` in a fresh process for one
epoch (``train_cfg.max_epochs=1``; an iteration-based config takes
``--iters``, default 150), no validation and no checkpoint; the levers are
environment settings of that process:

* ``defaults``: glibc's malloc as it comes (``CPUMallocHook``, which the
  RetinaNet demo lists, sees ``GLIBC_TUNABLES`` set and leaves it alone);
* ``malloc``: ``CPUMallocHook``'s setting (freed memory kept for reuse),
  through glibc's own variables so that it holds whether or not the config
  lists the hook;
* ``omp-passive``: ``malloc`` plus ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP
  threads sleep between parallel regions instead of spinning);
* ``no-amx``: ``malloc`` plus ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``
  (oneDNN without AMX; on a CPU without AMX it changes nothing);
* ``thp``: ``malloc`` plus ``THP_MEM_ALLOC_ENABLE=1`` (torch's CPU
  allocator asks for transparent huge pages for tensors of 2 MiB and more:
  one page fault per 2 MiB instead of 512, fewer TLB misses; the kernel
  must allow it, ``/sys/kernel/mm/transparent_hugepage/enabled`` at
  ``madvise`` or ``always``).

Runs are interleaved (every lever once per round). The step time is the
median of the ``time:`` figures mmengine logs (the first logged interval,
with its warm-up, left out); user/system time, minor page faults and
context switches are the process's and its data workers'
(``RUSAGE_CHILDREN``). Prints a markdown table with the CPU's name and
flags; Linux only (``resource``).
"""
import argparse
import os
import os.path as osp
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)
from mmpoolformer.benchmark import describe_cpu  # noqa: E402
from mmpoolformer.engine.hooks.cpu_malloc_hook import \
    MAX_TRIM_THRESHOLD  # noqa: E402

TRAIN = osp.join(ROOT, 'tools', 'train.py')
DEFAULT_CONFIG = 'configs/detection/retinanet_poolformer_s12_shapes.py'
# glibc spellings of CPUMallocHook's setting (engine/hooks/cpu_malloc_hook)
MALLOC = ('glibc.malloc.mmap_max=0:'
          f'glibc.malloc.trim_threshold={MAX_TRIM_THRESHOLD}')
LEVERS = {
    # a glibc.malloc tunable that changes nothing makes the hook stand back
    'defaults': {'GLIBC_TUNABLES': 'glibc.malloc.check=0'},
    'malloc': {'GLIBC_TUNABLES': MALLOC},
    'omp-passive': {'GLIBC_TUNABLES': MALLOC, 'OMP_WAIT_POLICY': 'PASSIVE'},
    'no-amx': {'GLIBC_TUNABLES': MALLOC,
               'ONEDNN_MAX_CPU_ISA': 'AVX512_CORE_BF16'},
    'thp': {'GLIBC_TUNABLES': MALLOC, 'THP_MEM_ALLOC_ENABLE': '1'},
}
# a logged training interval of an epoch- or iteration-based loop
STEP_TIME = re.compile(
    r'(?:Epoch|Iter)\(train\).*?\]\s+.*?\btime: ([0-9.]+)')


def step_times(log: str) -> list:
    """The ``time:`` of every logged training interval, in order."""
    return [float(t) for t in STEP_TIME.findall(log)]


def run_options(config_text: str, iters: int) -> list:
    """``--cfg-options`` for a short run without validation or checkpoints,
    epoch- or iteration-based as the config is."""
    if re.search(r'\bmax_iters\b', config_text):
        return [f'train_cfg.max_iters={iters}',
                'train_cfg.val_interval=100000',
                'default_hooks.checkpoint.interval=100000',
                'default_hooks.checkpoint.save_last=False']
    return ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1000',
            'default_hooks.checkpoint.interval=1000',
            'default_hooks.checkpoint.save_last=False']


def run_once(config: str, lever: str, options: list, extra: list,
             work_dir: str) -> dict:
    env = dict(os.environ)
    for name in {name for lever in LEVERS.values() for name in lever}:
        env.pop(name, None)
    env.update(LEVERS[lever])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, TRAIN, config, '--work-dir', work_dir,
         '--cfg-options', *options, *extra],
        env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = done.stdout + done.stderr
    if done.returncode:
        raise SystemExit(f'{lever}: tools/train.py failed '
                         f'(exit {done.returncode}):\n{log[-3000:]}')
    times = step_times(log)
    if len(times) < 2:
        raise SystemExit(f'{lever}: fewer than two logged intervals; give '
                         'more iterations (--iters) or a smaller '
                         'default_hooks.logger.interval')
    return dict(
        step=statistics.median(times[1:]), wall=wall,
        user=after.ru_utime - before.ru_utime,
        system=after.ru_stime - before.ru_stime,
        faults=after.ru_minflt - before.ru_minflt,
        switches=(after.ru_nvcsw - before.ru_nvcsw) +
        (after.ru_nivcsw - before.ru_nivcsw))


def table(config: str, results: dict) -> str:
    lines = [f'CPU: {describe_cpu()}; config: {config}', '',
             '| lever | step s (median) | vs defaults | wall s | user s | '
             'system s | minor faults | context switches |',
             '|---|---|---|---|---|---|---|---|']
    base = None
    for lever, runs in results.items():
        row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        base = base or row['step']
        lines.append(
            f"| {lever} | {row['step']:.4f} | {base / row['step']:.2f}x | "
            f"{row['wall']:.1f} | {row['user']:.1f} | {row['system']:.1f} | "
            f"{row['faults']:.0f} | {row['switches']:.0f} |")
    return '\n'.join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = []
    if '--' in argv:
        cut = argv.index('--')
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--levers', nargs='+', default=list(LEVERS),
                        choices=list(LEVERS))
    parser.add_argument('--repeats', type=int, default=1,
                        help='rounds (every lever once per round)')
    parser.add_argument('--iters', type=int, default=150,
                        help='iterations of an iteration-based config')
    parser.add_argument('--out', help='also write the table here')
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.iters < 1:
        parser.error('--repeats and --iters must be at least 1')
    config = args.config if osp.isabs(args.config) else osp.join(
        ROOT, args.config)
    if not osp.isfile(config):
        parser.error(f'no config file {args.config}')
    with open(config) as f:
        options = run_options(f.read(), args.iters)
    results = {lever: [] for lever in args.levers}
    with tempfile.TemporaryDirectory(prefix='cpu_levers_') as work:
        for round_ in range(args.repeats):
            for lever in args.levers:
                print(f'round {round_ + 1}/{args.repeats}: {lever} ...',
                      file=sys.stderr, flush=True)
                results[lever].append(run_once(
                    config, lever, options, extra, osp.join(work, lever)))
    text = table(args.config, results)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    return results


if __name__ == '__main__':
    main()
