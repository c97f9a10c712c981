"""Check and time the backbone's paths on a CUDA GPU, in one run (issue 12).

    python tools/check_cuda.py [--out DIR] [--budget 420] [--profile ROWS]
    python tools/check_cuda.py --dry-run      # tiny sizes on the CPU

On the GPU it checks, for every arch at odd input sizes, the deploy path
(both formulations), the 'stats' one-group GroupNorm and channels_last
against plain with the native GroupNorm in fp32, bf16 cosine per level, and
the gradients of ``with_cp`` (selective and full), ``compile`` and both
GroupNorm formulations; then it times, side by side on the same weights,
PoolFormer-S12 at 3x800x1216:

* a training step (forward, backward, AdamW with gradients set to None;
  bf16 autocast; batch 2 at 800x1216): the official model
  (``tests/reference_poolformer.py``) eager and compiled, the project
  eager (the device's GroupNorm formulation, and native), channels_last,
  ``with_cp`` selective / full, ``compile=True`` with and without CUDA
  graphs, ``with_cp`` + ``compile``; each with its peak memory
  (``torch.cuda.max_memory_allocated`` over the step) and first step
  (compile) time; ``--profile`` rows also get their top kernels
  (``DIR/profiles.txt``) and kernel time per step;
* inference, bf16 autocast, batch 1 and 8 (compiled paths at batch 8
  only): official eager and ``torch.compile``d, timm's ``poolformer_s12``
  (features_only, if timm imports), the project's plain (both GroupNorm
  formulations), deploy (``folded`` and ``conv``, see
  ``poolformer_deploy.FORMULATION``), ``compile=True`` (plain, CUDA graphs,
  channels_last, channels_last with the pooling by sums of
  ``mixers.POOL_FORMULATION``) and deploy compiled (both formulations).

Medians of ``--repeats`` with CUDA events. Everything after the checks runs
in order of importance; when ``--budget`` seconds have passed, the remaining
compiled rows are skipped (and listed). Results are written as they come to
``DIR/cuda_check.json`` and ``DIR/cuda_check.md`` (a markdown table for
docs/benchmark.md) and printed at the end. Exits non-zero if an equivalence
check fails.
"""
import argparse
import copy
import datetime
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mmpoolformer.benchmark as bench  # noqa: E402
from mmpoolformer.benchmark import compare, randomized  # noqa: E402
from mmpoolformer.models import (ARCH_SETTINGS, PoolFormer,  # noqa: E402
                                 resolve_arch)
from mmpoolformer.models.backbones import \
    poolformer_deploy as deploy_module  # noqa: E402
from mmpoolformer.models.backbones.base import \
    SELECTIVE_CP_FORMULATION  # noqa: E402
from mmpoolformer.models.layers.mixers import POOL_FORMULATION  # noqa: E402
from mmpoolformer.models.layers.norms import GN1_FORMULATION  # noqa: E402

TINY = dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 24, 32], mlp_ratios=2)


class Settings:
    def __init__(self, dry_run: bool, repeats: int, budget: float,
                 out: str = '.', infer=None, train=None, profile=None):
        self.dry_run = dry_run
        self.out = out
        # row filters (None: every row): --infer matches parts of row
        # names, --train and --profile whole variant names
        self.infer, self.train, self.profile = infer, train, profile or ()
        self.device = 'cpu' if dry_run else 'cuda'
        self.arch = TINY if dry_run else 's12'
        self.size = (64, 96) if dry_run else (800, 1216)
        self.batches = (1, 2) if dry_run else (1, 8)
        self.train_batch = 2
        self.repeats = 2 if dry_run else repeats
        self.warmup = 1 if dry_run else 3
        self.budget = budget
        self.compile_kwargs = dict(fullgraph=True, dynamic=False)
        if dry_run:  # no C++/Triton build: dynamo + AOTAutograd only
            self.compile_kwargs['backend'] = 'aot_eager'
        self.start = time.perf_counter()

    def over_budget(self) -> bool:
        return time.perf_counter() - self.start > self.budget

    def sync(self):
        if self.device == 'cuda':
            torch.cuda.synchronize()

    def autocast(self):
        return torch.autocast(self.device, dtype=torch.bfloat16)


def time_ms(settings, fn):
    for _ in range(settings.warmup):
        fn()
    times = []
    for _ in range(settings.repeats):
        if settings.device == 'cuda':
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - begin))
    return sorted(times)[len(times) // 2]


def first_call_s(settings, fn):
    settings.sync()
    begin = time.perf_counter()
    fn()
    settings.sync()
    return time.perf_counter() - begin


# ------------------------------------------------------------- equivalence
def check_equivalence(settings, arch, size, failures):
    dev = settings.device
    plain = randomized(PoolFormer(arch)).to(dev).eval()
    fast = copy.deepcopy(plain).switch_to_deploy()
    x = torch.randn(2, 3, *size, device=dev)
    with torch.no_grad():
        with gn1(dev, 'native'):
            ref = plain(x)
        deploy = fast(x)
        with formulation(dev, 'conv'):
            deploy_conv = fast(x)
        with gn1(dev, 'stats'):
            stats = plain(x)
        cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last))
        with settings.autocast():
            bf16 = fast(x)
    name = arch if isinstance(arch, str) else 'custom'
    row = dict(arch=name, size=list(size), deploy=compare(ref, deploy),
               deploy_conv=compare(ref, deploy_conv),
               stats=compare(ref, stats),
               channels_last=compare(ref, cl),
               deploy_bf16=compare(ref, [b.float() for b in bf16]))
    for key in ('deploy', 'deploy_conv', 'stats', 'channels_last'):
        if row[key]['max_rel'] > 1e-4:
            failures.append(f'{name} {size}: {key} differs beyond 1e-4')
    if row['deploy_bf16']['min_cosine'] < 0.999:
        failures.append(f'{name} {size}: bf16 cosine below 0.999')
    return row


def formulation(device, value):
    """Deploy blocks' formulation ('folded' or 'conv') on ``device``."""
    return bench.use_formulation(deploy_module.FORMULATION, device, value)


def gn1(device, value):
    """One-group GroupNorm formulation ('native' or 'stats'; None: the
    device's)."""
    return bench.use_formulation(GN1_FORMULATION, device, value)


def pooling(device, value):
    """Compiled pooling formulation ('native', 'sum' or 'conv'; None: the
    device's)."""
    return bench.use_formulation(POOL_FORMULATION, device, value)


def check_training_equivalence(settings, failures):
    """with_cp (selective, full), compile and both GroupNorm formulations
    give the same gradients. norm1.bias is left out: its true gradient is
    exactly zero (the token mixer cancels it), so 'native' gives rounding
    noise there and 'stats' zero."""
    dev = settings.device
    arch = TINY if settings.dry_run else 's12'
    x = torch.randn(2, 3, 129, 161, device=dev)
    # aot_eager: the traced joint graph, without minutes of kernel
    # compilation at this shape
    traced = dict(compile=dict(backend='aot_eager', fullgraph=True))
    # drop_path off: compiled code draws other random numbers on CUDA
    # ('sac': torch's selective checkpointing instead of the blocks'
    # hand-written recompute)
    variants = (('native', {}, 'native'),
                ('native_with_cp', dict(with_cp=True), 'native'),
                ('stats', {}, 'stats'),
                ('stats_with_cp', dict(with_cp=True), 'stats'),
                ('stats_sac_with_cp', dict(with_cp=True), 'stats'),
                ('stats_with_cp_full', dict(with_cp='full'), 'stats'),
                ('stats_compile', traced, 'stats'))
    grads = {}
    for name, options, form in variants:
        torch.manual_seed(0)
        model = randomized(PoolFormer(arch, **options)).to(dev).train()
        with gn1(dev, form), bench.use_formulation(
                SELECTIVE_CP_FORMULATION, dev,
                'torch' if 'sac' in name else None):
            sum(o.float().square().mean() for o in model(x)).backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters()
                       if not n.endswith('norm1.bias')}
    worst = {}
    for name, _, form in variants[1:]:
        # 'stats' against 'native'; every other row against its own
        # formulation, where torch's checkpointing must not change a bit
        # (the hand-written recompute sums in another order)
        ref = 'native' if name == 'stats' else form
        worst[name] = max(
            ((grads[ref][n] - grads[name][n]).abs().max() /
             grads[ref][n].abs().max().clamp_min(1e-12)).item()
            for n in grads[ref])
        limit = (1e-3 if name == 'stats' or 'compile' in name else
                 1e-4 if name.endswith('_with_cp') and 'sac' not in name
                 else 1e-5)
        if worst[name] > limit:
            failures.append(f'{name} gradients differ by {worst[name]:.2e}')
    return worst


# --------------------------------------------------------------- inference
def inference_paths(settings):
    """(name, builder, compiled) in order of importance; a builder returns
    (fn(x), prepare(x))."""
    dev, arch = settings.device, settings.arch
    base = randomized(PoolFormer(arch, init_cfg=None)).eval()
    layers = resolve_arch(arch)['layers']
    reference = bench.load_reference()
    kwargs = settings.compile_kwargs

    def official(compiled):
        def build():
            sd = {k: v.to(dev) for k, v in base.state_dict().items()}

            def fn(x):
                return reference.reference_forward(sd, x, layers)
            return (torch.compile(fn, **kwargs) if compiled else fn,
                    lambda x: x)
        return build

    def timm_model():
        import timm
        model = timm.create_model('poolformer_s12', pretrained=False,
                                  features_only=True).to(dev).eval()
        return model, lambda x: x

    def project(deploy=False, compiled=False, form=None, norm=None,
                channels_last=None, mode=None, pool=None):
        def build():
            model = copy.deepcopy(base).to(dev)
            if deploy:
                model.switch_to_deploy()
            last = deploy if channels_last is None else channels_last
            if last:
                model.to(memory_format=torch.channels_last)
            if compiled:
                model.compile_cfg = dict(kwargs, **(
                    dict(mode=mode) if mode and not settings.dry_run
                    else {}))
            prepare = ((lambda x: x.contiguous(
                memory_format=torch.channels_last)) if last else
                (lambda x: x))
            if (deploy and form) or norm or pool:
                def fn(x, model=model):
                    with formulation(dev, form), gn1(dev, norm), \
                            pooling(dev, pool):
                        return model(x)
                return fn, prepare
            return model, prepare
        return build

    paths = [('official eager', official(False), False)]
    if not settings.dry_run:
        paths.append(('timm poolformer_s12 eager', timm_model, False))
    paths += [
        ('project plain eager', project(), False),
        ('project plain eager, native GroupNorm', project(norm='native'),
         False),
        ('project deploy eager (folded)', project(True, form='folded'),
         False),
        ('project deploy eager (conv)', project(True, form='conv'), False),
        # compiled: the fastest candidates of the last GPU run first
        ('project compile=True, channels_last, CUDA graphs',
         project(compiled=True, channels_last=True, mode='reduce-overhead'),
         True),
        ('project compile=True, channels_last',
         project(compiled=True, channels_last=True), True),
        ('official torch.compile', official(True), True),
        ('project compile=True', project(compiled=True), True),
        ('project compile=True, CUDA graphs',
         project(compiled=True, mode='reduce-overhead'), True),
        # the device's formulation (CUDA: 'folded_eager', i.e. 'conv' when
        # compiled) against the folded one compiled
        ('project deploy + compile', project(True, True), True),
        ('project deploy (folded) + compile', project(True, True, 'folded'),
         True),
        ('project compile=True, channels_last, pooling by sums',
         project(compiled=True, channels_last=True, pool='sum'), True),
    ]
    return paths


def fresh_compiler(compiled: bool):
    """Forget earlier rows' compiled code (one process builds many models
    whose forward shares a code object: dynamo's recompile limit would
    stop the later rows). The on-disk inductor caches stay."""
    if compiled:
        torch._dynamo.reset()


def selected(name, wanted, exact=False):
    """Whether a row name is one of ``wanted`` (None: all rows), or with
    ``exact=False`` contains one of them."""
    if wanted is None:
        return True
    return name in wanted if exact else any(w in name for w in wanted)


def run_inference(settings, record):
    rows = record.setdefault('inference', [])
    for name, build, compiled in inference_paths(settings):
        if not selected(name, settings.infer):
            continue
        if compiled and settings.over_budget():
            record['skipped'].append(f'inference: {name}')
            continue
        print(f'inference: {name} ...', flush=True)
        fresh_compiler(compiled)
        row = dict(path=name)
        try:
            fn, prepare = build()
            with torch.no_grad(), settings.autocast():
                # compiled: the large batch only (each shape compiles again)
                for batch in (settings.batches[-1:] if compiled
                              else settings.batches):
                    x = prepare(torch.randn(batch, 3, *settings.size,
                                            device=settings.device))
                    row[f'first_call_s_b{batch}'] = first_call_s(
                        settings, lambda: fn(x))
                    row[f'ms_b{batch}'] = time_ms(settings, lambda: fn(x))
            fn = None  # frees the model (and its compiled code) now
        except Exception as error:  # noqa: BLE001 - report, go on
            row['error'] = repr(error)[:300]
        row['elapsed_s'] = round(time.perf_counter() - settings.start, 1)
        rows.append(row)
        record.save()
        if settings.device == 'cuda':
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- training
# in order of importance: the eager rows, then the compiled ones (skipped
# once the budget is spent). 'native' / 'stats' / 'autograd': that one-group
# GroupNorm formulation ('autograd': 'stats_autograd', the formula without
# the hand-written backwards; default: the device's, see layers.norms.
# GN1_FORMULATION);
# 'channels_last': model and input in channels_last; 'cudagraphs':
# torch.compile mode='reduce-overhead'; 'convpool' / 'sumpool' / 'avgpool':
# that pooling formulation inside compiled graphs (layers.mixers.
# POOL_FORMULATION), 'apartbias': conv biases added apart from the
# convolutions there (layers.conv.CONV_BIAS_FORMULATION), 'rowsgrad':
# per-channel gradients summed by rows (layers.conv.
# CHANNEL_GRAD_FORMULATION); the CPU's choices, not yet timed on a GPU;
# 'sac': with_cp=True through torch's selective checkpointing instead of
# the blocks' hand-written recompute (backbones.base.
# SELECTIVE_CP_FORMULATION).
TRAIN_ROWS = ('official', 'plain', 'autograd', 'native', 'channels_last',
              'with_cp', 'sac_with_cp', 'with_cp_full',
              'native_with_cp',
              'cudagraphs_compile', 'compile', 'official_compile',
              'sumpool_cudagraphs_compile',
              'convpool_apartbias_rowsgrad_cudagraphs_compile',
              'with_cp_compile', 'with_cp_cudagraphs_compile',
              'channels_last_cudagraphs_compile')


def profile_step(settings, name, step, out):
    """Top CUDA kernels of one training step, appended to ``out``."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU]
    sort = 'cpu_time_total'
    if settings.device == 'cuda':
        activities.append(ProfilerActivity.CUDA)
        sort = 'cuda_time_total'
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
        settings.sync()
    events = prof.key_averages()
    table = events.table(sort_by=sort, row_limit=30,
                         max_name_column_width=70)
    with open(out, 'a') as f:
        f.write(f'## {name} (2 steps)\n{table}\n\n')
    # kernel time per step: far below the step time means the step waits
    # on the CPU (launches, Python, the autograd engine). Only the kernels'
    # own events count: an operator's event carries its kernels' time too
    # (the table's "Self CUDA time total" sums the same way).
    busy = sum(getattr(e, 'self_device_time_total',
                       getattr(e, 'self_cuda_time_total', 0)) or 0
               for e in events if e.device_type != DeviceType.CPU)
    return busy / 2 / 1000


def run_training(settings, record):
    bench.COMPILE_KWARGS.clear()
    bench.COMPILE_KWARGS.update(settings.compile_kwargs)
    rows = record.setdefault('training', [])
    for variant in TRAIN_ROWS:
        if not selected(variant, settings.train, exact=True):
            continue
        if 'compile' in variant and settings.over_budget():
            record['skipped'].append(f'training: {variant}')
            continue
        print(f'training: {variant} ...', flush=True)
        fresh_compiler('compile' in variant)
        row = dict(variant=variant)
        try:
            step = bench._train_setup(settings.arch, variant,
                                      settings.train_batch, settings.size,
                                      device=settings.device, bf16=True)
            row['first_step_s'] = first_call_s(settings, step)
            if settings.device == 'cuda':
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            row['step_ms'] = time_ms(settings, step)
            if settings.device == 'cuda':
                row['peak_step_mib'] = (torch.cuda.max_memory_allocated() -
                                        before) / 2 ** 20
            if selected(variant, settings.profile, exact=True):
                row['profiled_kernel_ms_per_step'] = profile_step(
                    settings, variant, step, os.path.join(settings.out,
                                                          'profiles.txt'))
            del step
        except Exception as error:  # noqa: BLE001 - report, go on
            row['error'] = repr(error)[:300]
        row['elapsed_s'] = round(time.perf_counter() - settings.start, 1)
        rows.append(row)
        record.save()
        if settings.device == 'cuda':
            torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------ report
def markdown(result) -> str:
    b1, b8 = result['batches']
    info = result.get('versions', {})
    lines = [f"{result['device']}, torch {result['torch']} (CUDA "
             f"{info.get('cuda')}, cuDNN {info.get('cudnn')}, Triton "
             f"{info.get('triton')}, timm {info.get('timm')}), "
             f"{result['date']}, {result['arch']} at 3x{result['size'][0]}x"
             f"{result['size'][1]}, bf16 autocast, cuDNN benchmark on, "
             f"medians of {result['repeats']}", '',
             f'| inference | batch {b1} ms | batch {b8} ms | vs official '
             f'eager (batch {b8}) | first call s (batch {b8}) |',
             '|---|---|---|---|---|']
    rows = result.get('inference', [])
    base = next((r.get(f'ms_b{b8}') for r in rows
                 if r['path'] == 'official eager'), None)
    for r in rows:
        if 'error' in r:
            lines.append(f"| {r['path']} | error: {r['error'][:80]} | | | |")
            continue
        ms = r.get(f'ms_b{b8}')
        ratio = f'{base / ms:.2f}x' if base and ms else ''
        small = r.get(f'ms_b{b1}')
        small = f'{small:.2f}' if small else '-'
        lines.append(f"| {r['path']} | {small} | "
                     f"{ms or 0:.2f} | {ratio} | "
                     f"{r.get(f'first_call_s_b{b8}', 0):.1f} |")
    lines += ['', f"| training step (batch {result['train_batch']}, AdamW) "
              '| ms | vs official eager | peak step MiB | first step s |',
              '|---|---|---|---|---|']
    rows = result.get('training', [])
    base = next((r.get('step_ms') for r in rows
                 if r['variant'] == 'official'), None)
    plain_mem = next((r.get('peak_step_mib') for r in rows
                      if r['variant'] == 'plain'), None)
    for r in rows:
        if 'error' in r:
            lines.append(f"| {r['variant']} | error: {r['error'][:80]} "
                         '| | | |')
            continue
        mem = r.get('peak_step_mib')
        mem_txt = (f'{mem:.0f}' + (f' ({mem / plain_mem:.2f}x)'
                                   if plain_mem else '')) if mem else '-'
        lines.append(f"| {r['variant']} | {r['step_ms']:.1f} | "
                     f"{base / r['step_ms']:.2f}x | {mem_txt} | "
                     f"{r['first_step_s']:.1f} |" if base else
                     f"| {r['variant']} | {r['step_ms']:.1f} | | {mem_txt} "
                     f"| {r['first_step_s']:.1f} |")
    if result.get('skipped'):
        lines += ['', 'skipped (time budget): ' + ', '.join(result['skipped'])]
    lines += ['', 'failures: ' + (', '.join(result['failures']) or 'none')]
    return '\n'.join(lines)


class Record(dict):
    def __init__(self, out_dir, **kwargs):
        super().__init__(**kwargs)
        self.out_dir = out_dir

    def save(self):
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, 'cuda_check.json'), 'w') as f:
            json.dump(self, f, indent=1)
        with open(os.path.join(self.out_dir, 'cuda_check.md'), 'w') as f:
            f.write(markdown(self) + '\n')


def _names(text: str) -> list:
    return [] if text == 'none' else [t for t in text.split(',') if t]


def versions() -> dict:
    info = dict(torch=torch.__version__, cuda=torch.version.cuda,
                cudnn=(torch.backends.cudnn.version()
                       if torch.backends.cudnn.is_available() else None))
    try:
        import timm
        info['timm'] = timm.__version__
    except Exception as error:  # noqa: BLE001 - optional
        info['timm'] = f'not importable: {error!r}'[:120]
    try:
        import triton
        info['triton'] = triton.__version__
    except ImportError:
        info['triton'] = None
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=os.environ.get('OUT', '.'),
                        help='folder for cuda_check.json/.md (default: '
                        '$OUT or .)')
    parser.add_argument('--dry-run', action='store_true',
                        help='tiny sizes on the CPU (aot_eager compile): '
                        'checks that the script runs')
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--budget', type=float, default=420,
                        help='seconds after which compiled rows are skipped')
    parser.add_argument('--skip-checks', action='store_true')
    parser.add_argument('--infer', type=_names, default=None,
                        help='comma-separated parts of the inference rows '
                        "to run ('none': no inference rows; default all)")
    parser.add_argument('--train', type=_names, default=None,
                        help='comma-separated training variants to run '
                        "('none': none; default all): "
                        + ', '.join(TRAIN_ROWS))
    parser.add_argument('--profile', type=_names, default=(),
                        help='training variants whose step is profiled '
                        '(top kernels appended to DIR/profiles.txt)')
    args = parser.parse_args(argv)
    settings = Settings(args.dry_run, args.repeats, args.budget, args.out,
                        args.infer, args.train, args.profile)
    if not args.dry_run:
        if not torch.cuda.is_available():
            sys.exit('error: no CUDA device visible to torch')
        torch.backends.cudnn.benchmark = True
    device_name = (torch.cuda.get_device_name() if settings.device == 'cuda'
                   else 'CPU dry run')
    record = Record(
        args.out, device=device_name, versions=versions(),
        torch=torch.__version__,
        arch='S12' if settings.arch == 's12' else 'tiny arch',
        date=datetime.date.today().isoformat(), size=list(settings.size),
        batches=list(settings.batches), train_batch=settings.train_batch,
        repeats=settings.repeats, failures=[], skipped=[],
        equivalence=[])
    if not args.skip_checks:
        # fp32 means fp32 here: TF32 would blur the comparison
        tf32 = (torch.backends.cudnn.allow_tf32,
                torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        archs = [TINY] if args.dry_run else list(ARCH_SETTINGS)
        sizes = ((45, 61), ) if args.dry_run else ((225, 333), (97, 131))
        for arch in archs:
            for size in sizes:
                record['equivalence'].append(check_equivalence(
                    settings, arch, size, record['failures']))
        record['training_max_rel_grad_diff'] = check_training_equivalence(
            settings, record['failures'])
        torch.backends.cudnn.allow_tf32, \
            torch.backends.cuda.matmul.allow_tf32 = tf32
        record.save()
    # training first: it is where users spend their GPU time
    run_training(settings, record)
    run_inference(settings, record)
    record['total_s'] = time.perf_counter() - settings.start
    record.save()
    print(markdown(record))
    print(f'total {record["total_s"]:.0f} s; written to {args.out}/'
          'cuda_check.{json,md}')
    sys.exit(1 if record['failures'] else 0)


if __name__ == '__main__':
    main()
