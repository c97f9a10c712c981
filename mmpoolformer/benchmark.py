"""Speed, accuracy and memory of every PoolFormer execution path, in one run.

Everything is measured in one process on the same weights and inputs (memory
in fresh subprocesses, see below):

* backbone paths: ``plain`` (the backbone exactly as written: NCHW, eager,
  fp32) is the baseline; every faster path reports the max abs / relative
  difference of each output level to it and the cosine similarity per level;
  latency at batch 1 and throughput at a larger batch;
* the backbone against the official model (``tests/reference_poolformer.py``,
  eager, NCHW, fp32, as its code runs) on the same weights and input, at
  batch 1, interleaved (one call of each per round), best and median of
  ``repeats`` rounds: by default the ``deploy`` and ``deploy_compile``
  paths;
* whole models (RetinaNet, Mask R-CNN, Semantic FPN) with the plain backbone
  and with the fast paths, ``predict`` latency and throughput;
* a backbone training step (forward, backward, AdamW): the official model
  (``tests/reference_poolformer.py``, eager) and this project's backbone
  eager, with ``compile=True``, with ``with_cp`` selective and full (and
  channels_last), timed interleaved (one step of each variant per round),
  with each step's peak memory;
* the effective GFLOP/s of each path (FLOPs counted by
  ``torch.utils.flop_counter`` on the plain model) next to the measured fp32
  (and bf16) matrix-multiply rate of this machine, the practical ceiling.

Timings are the median over ``repeats`` runs after ``warmup`` runs, with the
minimum, maximum and interquartile range. Relative difference of a level is
``max|fast - plain| / max|plain|``.

Peak training memory: each variant runs in a fresh Python subprocess with
glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so large
tensors are returned to the system when freed and the resident set tracks live
memory. After one warm-up step (gradients and optimizer state exist), the
kernel's resident high-water mark is reset (``/proc/self/clear_refs``) and the
step's peak is ``VmHWM - VmRSS`` read from ``/proc/self/status``: the memory
the step itself needs on top of weights, gradients and optimizer state.
"""
import contextlib
import copy
import functools
import json
import logging
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

DET_SIZE = (800, 1216)
SEG_SIZE = (512, 512)
BACKBONE_PATHS = ('plain', 'channels_last', 'deploy', 'deploy_compile',
                  'channels_last_bf16', 'deploy_bf16', 'deploy_compile_bf16')
# timed only when named (--paths / --vs-official): 'plain_atenpool' is the
# plain path with eager pooling by avg_pool2d (layers.pooling.
# EAGER_POOL_FORMULATION 'native') instead of the CPU's convolution of ones
EXTRA_BACKBONE_PATHS = ('plain_atenpool',)
MODEL_PATHS = ('plain', 'fast', 'fast_bf16')
# backbone paths timed against the official model (bench_vs_official)
VS_OFFICIAL_PATHS = ('deploy', 'deploy_compile')
# 'with_cp' is selective checkpointing (with_cp=True), 'with_cp_full' the
# whole-block recompute (with_cp='full'); 'compile' the backbone's
# compile=dict(fullgraph=True, dynamic=False) option; 'official' the
# reference model of tests/reference_poolformer.py; 'stats' / 'native' /
# 'autograd' ('stats_autograd') force that one-group GroupNorm formulation
# (layers.norms.GN1_FORMULATION; default: the device's); 'convpool' /
# 'sumpool' / 'avgpool' the compiled pooling's (layers.mixers.
# POOL_FORMULATION), 'apartbias' / 'fusedbias' the compiled convolutions'
# bias (layers.conv.CONV_BIAS_FORMULATION),
# 'rowsgrad' / 'directgrad' how the compiled backward sums per-channel
# parameters' gradients (layers.conv.CHANNEL_GRAD_FORMULATION); 'sac'
# eager with_cp through torch's selective checkpointing instead of the
# blocks' hand-written recompute (backbones.base.SELECTIVE_CP_FORMULATION);
# 'atenpool' eager pooling by avg_pool2d (layers.pooling.
# EAGER_POOL_FORMULATION 'native'; CPUs: a depthwise convolution).
TRAIN_VARIANTS = ('plain', 'official', 'with_cp', 'with_cp_full', 'compile',
                  'channels_last', 'channels_last_with_cp',
                  'channels_last_compile', 'stats', 'stats_compile',
                  'stats_with_cp', 'avgpool_compile',
                  'channels_last_avgpool_compile', 'sumpool_compile',
                  'fusedbias_compile', 'sumpool_fusedbias_compile',
                  'directgrad_compile', 'sac_with_cp',
                  'channels_last_sac_with_cp', 'atenpool', 'atenpool_with_cp')
# Compiling forward+backward takes minutes on a few cores: opt-in (--train).
DEFAULT_TRAIN_VARIANTS = ('plain', 'official', 'with_cp', 'with_cp_full',
                          'channels_last', 'channels_last_with_cp')
# Whole models: (config in this repo, mmdet::/mmseg:: fallback, scope, size).
MODELS = dict(
    retinanet=('configs/detection/retinanet_poolformer_s12.py',
               'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 'mmdet',
               DET_SIZE),
    mask_rcnn=('configs/detection/mask_rcnn_poolformer_s12.py',
               'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', 'mmdet',
               DET_SIZE),
    semantic_fpn=('configs/segmentation/fpn_poolformer_s12.py',
                  'mmseg::_base_/models/fpn_r50.py', 'mmseg', SEG_SIZE))
# Submodules whose forward runs under bf16 autocast in a model's bf16 path;
# post-processing (NMS, RoIAlign, resizing) stays fp32.
AUTOCAST_PARTS = ('backbone', 'neck', 'bbox_head', 'rpn_head',
                  'roi_head.bbox_head', 'roi_head.mask_head', 'decode_head')


# ----------------------------------------------------------------- helpers
def machine_info(cpuinfo: str = '/proc/cpuinfo') -> dict:
    """The machine, named well enough to tell its kind: 2-core AMD EPYCs
    here all say "AMD EPYC" but differ in family/model, clock and ISA
    (AVX2 only; AVX-512 at 2.6 GHz with about 200 fp32 GFLOP/s; AVX-512
    with about 470)."""
    from mmpoolformer.utils import cpu_bf16_supported
    fields = {}
    with contextlib.suppress(OSError):
        with open(cpuinfo) as f:
            for line in f:  # the first processor's block
                key, _, value = line.partition(':')
                fields.setdefault(key.strip(), value.strip())
                if key.strip() == 'flags':
                    break
    flags = fields.get('flags', '')
    return dict(
        torch=torch.__version__, python=platform.python_version(),
        threads=torch.get_num_threads(),
        cpu=fields.get('model name') or platform.processor() or 'unknown',
        cpu_family=fields.get('cpu family'), cpu_model=fields.get('model'),
        cpu_mhz=fields.get('cpu MHz'), logical_cpus=os.cpu_count(),
        avx512_bf16='avx512_bf16' in flags, amx='amx_bf16' in flags,
        mkldnn_bf16=cpu_bf16_supported())


def summarize(times: Sequence[float]) -> dict:
    ordered = sorted(times)
    q = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else \
        [ordered[0]] * 3
    return dict(median=statistics.median(ordered), min=ordered[0],
                max=ordered[-1], iqr=q[2] - q[0], n=len(ordered))


def time_it(fn: Callable[[], object], warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return summarize(times)


def time_interleaved(fns: Dict[str, Callable[[], object]],
                     repeats: int) -> Dict[str, List[float]]:
    """Seconds of each call of every function in ``fns``, ``repeats``
    rounds of one call each, so drifting machine load hits all alike."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def matmul_rate(dtype=torch.float32, n: int = 2048, repeats: int = 5,
                backend: str = 'torch.mm') -> dict:
    """GFLOP/s of an n x n x n matrix multiply at the current thread count
    (median of ``repeats``), through ``torch.mm`` (MKL here) or oneDNN's
    matmul (``mkldnn._linear_pointwise``; the deploy blocks' oneDNN 1x1
    convolutions reach about the same rate)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    if backend == 'onednn':
        def fn():
            return torch.ops.mkldnn._linear_pointwise(
                a, b, None, 'none', [], '')
    else:
        def fn():
            return a @ b
    stats = time_it(fn, 2, repeats)
    return dict(dtype=str(dtype).replace('torch.', ''), n=n, backend=backend,
                gflops=2 * n ** 3 / stats['median'] / 1e9)


def count_flops(fn: Callable[[], object]) -> Optional[int]:
    """FLOPs of ``fn()`` by torch's counter (convolutions and matmuls),
    with the pooling as ``avg_pool2d`` (not counted), as graphs see it,
    not as the CPU's eager depthwise convolution (layers.pooling)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mmpoolformer.models.layers.pooling import EAGER_POOL_FORMULATION
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad(), \
                use_formulation(EAGER_POOL_FORMULATION, 'cpu', 'native'):
            fn()
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - a model the counter cannot trace
        return None


def as_float_tuple(outs):
    if isinstance(outs, torch.Tensor):
        return (outs.float(), )
    return tuple(o.float() for o in outs)


def compare(ref: Sequence[torch.Tensor], out: Sequence[torch.Tensor]
            ) -> dict:
    """Per-level max abs / relative difference and cosine similarity."""
    abs_diff, rel_diff, cosine = [], [], []
    for a, b in zip(ref, out):
        a, b = a.detach().double(), b.detach().double()
        diff = (a - b).abs().max().item()
        abs_diff.append(diff)
        rel_diff.append(diff / max(a.abs().max().item(), 1e-30))
        cosine.append(F.cosine_similarity(a.flatten(), b.flatten(),
                                          dim=0).item())
    return dict(max_abs=max(abs_diff), max_rel=max(rel_diff),
                abs_per_level=abs_diff, rel_per_level=rel_diff,
                cosine_per_level=cosine, min_cosine=min(cosine))


def _autocast(enabled: bool):
    return (torch.autocast('cpu', dtype=torch.bfloat16) if enabled else
            contextlib.nullcontext())


@contextlib.contextmanager
def _freezing():
    """Inductor freezing folds weights into the graph and lets it pick
    oneDNN-packed GEMMs (inference only)."""
    import torch._inductor.config as inductor_config
    with inductor_config.patch(freezing=True):
        yield


# ------------------------------------------------------------ backbone paths
class BackbonePath:
    """One way to run the backbone: a model plus how its input is laid out
    and whether it runs compiled and/or under bf16 autocast."""

    def __init__(self, name: str, plain_model: torch.nn.Module):
        self.name = name
        self.channels_last = not name.startswith('plain')
        self.eager_pool = 'native' if 'atenpool' in name else None
        self.bf16 = name.endswith('bf16')
        self.compiled = 'compile' in name
        model = copy.deepcopy(plain_model).eval()
        if name.startswith('deploy'):
            model.switch_to_deploy()
        elif self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compiled:
            model = torch.compile(model, fullgraph=True, dynamic=False)
        self.model = model
        self.compile_s: Dict[str, float] = {}

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return (x.contiguous(memory_format=torch.channels_last)
                if self.channels_last else x.contiguous())

    @torch.no_grad()
    def __call__(self, x: torch.Tensor):
        from mmpoolformer.models.layers.pooling import EAGER_POOL_FORMULATION
        with _autocast(self.bf16), (_freezing() if self.compiled else
                                    contextlib.nullcontext()), \
                use_formulation(EAGER_POOL_FORMULATION, x.device,
                                self.eager_pool):
            return as_float_tuple(self.model(x))

    def first_call(self, x: torch.Tensor):
        """Run once (compiling, if compiled) and record how long it took."""
        start = time.perf_counter()
        out = self(x)
        self.compile_s[tuple(x.shape).__repr__()] = \
            time.perf_counter() - start
        return out


def bench_backbone(arch: str, size, batch: int, paths: Sequence[str],
                   warmup: int, repeats: int, seed: int = 0,
                   log=print) -> dict:
    from mmpoolformer.models import PoolFormer
    torch.manual_seed(seed)
    plain = randomized(PoolFormer(arch, init_cfg=None), seed).eval()
    x1 = torch.randn(1, 3, *size)
    xb = torch.randn(batch, 3, *size)
    flops = count_flops(lambda: plain(x1))
    results = {}
    reference = None
    for name in paths:
        log(f'  backbone {arch} {name} ...')
        path = BackbonePath(name, plain)
        inp1, inpb = path.prepare(x1), path.prepare(xb)
        out = path.first_call(inp1)
        if reference is None:
            reference = out
        entry = dict(accuracy=compare(reference, out))
        lat = time_it(lambda: path(inp1), warmup, repeats)
        path.first_call(inpb)
        thr = time_it(lambda: path(inpb), max(warmup - 1, 0),
                      max(repeats // 2, 2))
        entry.update(
            latency_s=lat, throughput_img_s=batch / thr['median'],
            batch_time_s=thr, batch=batch,
            gflops_per_s=(flops / lat['median'] / 1e9) if flops else None)
        if path.compiled:
            entry['compile_s'] = path.compile_s
        results[name] = entry
    base = results[paths[0]]['latency_s']['median']
    base_thr = results[paths[0]]['throughput_img_s']
    for entry in results.values():
        entry['speedup_latency'] = base / entry['latency_s']['median']
        entry['speedup_throughput'] = entry['throughput_img_s'] / base_thr
    return dict(arch=arch, input=[1, 3, *size], gflops=(flops or 0) / 1e9,
                paths=results)


def bench_vs_official(arch, size, paths: Sequence[str], rounds: int,
                      seed: int = 0, log=print) -> dict:
    """The official model (eager, NCHW, fp32) and each backbone path on the
    same weights and one image, interleaved: after each path's first call
    (compilation) and one warm-up round, every round calls each once, so
    drifting machine load hits all alike. Reports the best and the median
    of ``rounds`` and the speed-up of each over the official model by both,
    with each path's output differences to the official outputs."""
    from mmpoolformer.models import PoolFormer, resolve_arch
    torch.manual_seed(seed)
    plain = randomized(PoolFormer(arch, init_cfg=None), seed).eval()
    x = torch.randn(1, 3, *size)
    reference = load_reference()
    weights = {k: v.detach().clone() for k, v in plain.state_dict().items()}
    layers = resolve_arch(arch)['layers']

    @torch.no_grad()
    def official():
        return as_float_tuple(reference.reference_forward(weights, x, layers))
    expected = official()
    fns, results = dict(official=official), dict(official={})
    for name in paths:
        log(f'  backbone {arch} {name} against the official model ...')
        path = BackbonePath(name, plain)
        inp = path.prepare(x)
        results[name] = dict(accuracy=compare(expected, path.first_call(inp)))
        if path.compiled:
            results[name]['compile_s'] = path.compile_s
        fns[name] = functools.partial(path, inp)
    time_interleaved(fns, 1)  # warm-up round
    times = time_interleaved(fns, rounds)
    for name, entry in results.items():
        entry['time_s'] = summarize(times[name])
        entry['speedup_best'] = min(times['official']) / min(times[name])
        entry['speedup_median'] = (statistics.median(times['official']) /
                                   statistics.median(times[name]))
    return dict(arch=arch, input=[1, 3, *size], rounds=rounds,
                interleaved=True, paths=results)


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """O(1) random values everywhere (norm weights and layer scales
    included), so folding mistakes cannot hide behind init values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'layer_scale' in name or 'norm' in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            else:
                fan_in = max(p[0].numel(), 1) if p.ndim > 1 else 10
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
    return model


# ------------------------------------------------------------- whole models
def build_model(kind: str, arch: str, root: str = '.', size=None):
    """A whole model from this repo's config (the fallback base with the
    backbone swapped if that config is missing), backbone set to ``arch``,
    no checkpoint."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    import mmpoolformer  # noqa: F401 - registers PoolFormer
    from mmpoolformer.models import resolve_arch
    config, fallback, scope, default_size = MODELS[kind]
    dims = list(resolve_arch(arch)['embed_dims'])
    path = osp.join(root, config)
    if osp.isfile(path):
        cfg = Config.fromfile(path)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_cfg = osp.join(tmp, 'fallback.py')
            with open(tmp_cfg, 'w') as f:
                f.write(f'_base_ = {fallback!r}\n')
            cfg = Config.fromfile(tmp_cfg)
        if kind == 'retinanet':
            cfg.model.neck.update(start_level=1,
                                  add_extra_convs='on_input')
    cfg.model.backbone = dict(type='PoolFormer', arch=arch, init_cfg=None,
                              fork_last3=kind == 'retinanet')
    cfg.model.neck.in_channels = dims
    cfg.model.pop('pretrained', None)
    if scope == 'mmseg':
        # One process: SyncBN would need a process group.
        cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)
    init_default_scope(scope)
    from mmengine.registry import MODELS as ROOT_MODELS
    model = ROOT_MODELS.build(cfg.model)
    # The heads' own init (e.g. RetinaNet's prior-probability bias) keeps
    # random-weight detections at realistic counts for post-processing.
    # mmengine logs one line per parameter while doing it: keep it quiet.
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model.eval(), scope, tuple(size or default_size)


def _model_inputs(scope: str, batch: int, size, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch, 3, *size, generator=gen)
    if scope == 'mmseg':
        return inputs, None
    from mmdet.structures import DetDataSample
    samples = []
    for _ in range(batch):
        sample = DetDataSample()
        sample.set_metainfo(dict(img_shape=size, ori_shape=size,
                                 pad_shape=size, batch_input_shape=size,
                                 scale_factor=(1., 1.)))
        samples.append(sample)
    return inputs, samples


def _autocast_parts(model: torch.nn.Module):
    """Run the network parts of ``model`` under bf16 autocast, handing fp32
    to post-processing."""
    def wrap(module):
        forward = module.forward

        def autocast_forward(*args, **kwargs):
            with torch.autocast('cpu', dtype=torch.bfloat16):
                out = forward(*args, **kwargs)
            return _to_float(out)
        module.forward = autocast_forward

    for name in AUTOCAST_PARTS:
        module = model
        for part in name.split('.'):
            module = getattr(module, part, None)
            if module is None:
                break
        if module is not None:
            wrap(module)


def _to_float(out):
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float(v) for k, v in out.items()}
    return out


def model_path(plain_model, name: str):
    model = copy.deepcopy(plain_model).eval()
    if name != 'plain':
        model.backbone.switch_to_deploy()
        model.to(memory_format=torch.channels_last)
    if name.endswith('bf16'):
        _autocast_parts(model)
    return model


def bench_model(kind: str, arch: str, batch: int, warmup: int, repeats: int,
                paths: Sequence[str] = MODEL_PATHS, root: str = '.',
                size=None, log=print) -> dict:
    torch.manual_seed(0)
    plain, scope, size = build_model(kind, arch, root, size)
    results = {}
    reference = None
    x1, samples1 = _model_inputs(scope, 1, size)
    xb, samplesb = _model_inputs(scope, batch, size, seed=1)
    for name in paths:
        log(f'  {kind} {arch} {name} ...')
        model = model_path(plain, name)
        layout = (torch.channels_last if name != 'plain' else
                  torch.contiguous_format)
        inp1 = x1.contiguous(memory_format=layout)
        inpb = xb.contiguous(memory_format=layout)
        with torch.no_grad():
            feats = as_float_tuple(model.extract_feat(inp1))
            if reference is None:
                reference = feats

            def run1():
                return model.predict(inp1, copy.deepcopy(samples1))

            def runb():
                return model.predict(inpb, copy.deepcopy(samplesb))
            lat = time_it(run1, warmup, repeats)
            thr = time_it(runb, max(warmup - 1, 0), max(repeats // 2, 2))
        results[name] = dict(
            neck_features=compare(reference, feats), latency_s=lat,
            batch_time_s=thr, batch=batch,
            throughput_img_s=batch / thr['median'])
    base = results[paths[0]]
    for entry in results.values():
        entry['speedup_latency'] = (base['latency_s']['median'] /
                                    entry['latency_s']['median'])
        entry['speedup_throughput'] = (entry['throughput_img_s'] /
                                       base['throughput_img_s'])
    return dict(model=kind, arch=arch, input=[1, 3, *size], paths=results)


# ------------------------------------------------------------------ training
def load_reference():
    """The official model's math (``tests/reference_poolformer.py``), as a
    module (the tests folder is not a package)."""
    import importlib.util
    if 'reference_poolformer' in sys.modules:
        return sys.modules['reference_poolformer']
    path = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                    'tests', 'reference_poolformer.py')
    spec = importlib.util.spec_from_file_location('reference_poolformer',
                                                  path)
    module = importlib.util.module_from_spec(spec)
    # registered: torch.compile looks traced functions' modules up by name
    sys.modules['reference_poolformer'] = module
    spec.loader.exec_module(module)
    return module


# torch.compile arguments of compiled variants (a test may swap the backend)
COMPILE_KWARGS = dict(fullgraph=True, dynamic=False)


@contextlib.contextmanager
def use_formulation(table: dict, device, value: Optional[str]):
    """Set a per-device formulation table (``GN1_FORMULATION`` of the
    one-group GroupNorms, ``FORMULATION`` of the deploy blocks, the compiled
    graphs' ``POOL_FORMULATION``, ``CONV_BIAS_FORMULATION`` and
    ``CHANNEL_GRAD_FORMULATION``) for
    ``device``'s type, and restore it on exit; None leaves it as it is."""
    if value is None:
        yield
        return
    from mmpoolformer.models.layers.formulations import formulation_key
    key = formulation_key(table, torch.device(device).type)
    old = table[key]
    table[key] = value
    try:
        yield
    finally:
        table[key] = old


def _compile_kwargs(variant: str) -> dict:
    kwargs = dict(COMPILE_KWARGS)
    if 'cudagraphs' in variant and 'backend' not in kwargs:
        kwargs['mode'] = 'reduce-overhead'  # inductor + CUDA graphs
    return kwargs


def train_variant_options(variant: str) -> dict:
    """Backbone options of a training variant name."""
    options = {}
    if 'with_cp_full' in variant:
        options['with_cp'] = 'full'
    elif 'with_cp' in variant:
        options['with_cp'] = True
    if 'compile' in variant:
        options['compile'] = _compile_kwargs(variant)
    return options


def family_of(arch) -> Optional[str]:
    """'ConvFormer' for ``arch='ConvFormer-s18'`` (a MetaFormer-family
    backbone and its size, training variants only); None for PoolFormer's
    own archs ('s12', a dict)."""
    if not isinstance(arch, str) or '-' not in arch:
        return None
    from mmpoolformer.models.backbones.metaformer import FAMILIES
    family = arch.rpartition('-')[0]
    if family not in FAMILIES:
        raise ValueError(f'arch {arch!r}: {family!r} is not one of the '
                         f'MetaFormer families {sorted(FAMILIES)}; give '
                         "PoolFormer's arch ('s12') or 'Family-size' "
                         "('ConvFormer-s18')")
    return family


def training_backbone(arch, **options) -> torch.nn.Module:
    """PoolFormer ``arch``, or the family backbone ``'Family-size'`` names,
    without weights."""
    import mmpoolformer.models as models
    family = family_of(arch)
    if family is None:
        return models.PoolFormer(arch, init_cfg=None, **options)
    return getattr(models, family)(arch.rpartition('-')[2], init_cfg=None,
                                   **options)


def _train_setup(arch: str, variant: str, batch: int, size, seed: int = 0,
                 device='cpu', bf16: bool = False):
    from mmpoolformer.models import resolve_arch
    torch.manual_seed(seed)
    if variant.startswith('official') and family_of(arch):
        raise ValueError(f'the official model is PoolFormer\'s: variant '
                         f'{variant!r} needs a PoolFormer arch, not {arch!r}')
    model = randomized(training_backbone(arch,
                                         **train_variant_options(variant)),
                       seed).to(device).train()
    x = torch.randn(batch, 3, *size, device=device)
    if variant.startswith('channels_last'):
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if variant.startswith('official'):
        reference = load_reference()
        layers = resolve_arch(arch)['layers']
        params = {k: torch.nn.Parameter(v.detach().clone())
                  for k, v in model.state_dict().items()}
        del model

        def forward(inp):
            return reference.reference_forward(params, inp, layers)
        if 'compile' in variant:  # torch.compile of the official model
            forward = torch.compile(forward, **_compile_kwargs(variant))
        parameters = list(params.values())
    else:
        forward = model
        parameters = list(model.parameters())
    for p in parameters:
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=1e-4)
    autocast = (torch.autocast(torch.device(device).type,
                               dtype=torch.bfloat16) if bf16 else
                contextlib.nullcontext())

    # formulation tokens in the variant name (listed above TRAIN_VARIANTS)
    # force their table's value, forward and backward (with_cp recomputes
    # in the backward); without one, each table has the device's default
    from mmpoolformer.models.backbones.base import SELECTIVE_CP_FORMULATION
    from mmpoolformer.models.layers.conv import (CHANNEL_GRAD_FORMULATION,
                                                 CONV_BIAS_FORMULATION)
    from mmpoolformer.models.layers.mixers import POOL_FORMULATION
    from mmpoolformer.models.layers.norms import GN1_FORMULATION
    from mmpoolformer.models.layers.pooling import EAGER_POOL_FORMULATION
    tokens = ((GN1_FORMULATION, dict(autograd='stats_autograd',
                                     stats='stats', native='native')),
              (POOL_FORMULATION, dict(convpool='conv', sumpool='sum',
                                      avgpool='native')),
              (CONV_BIAS_FORMULATION, dict(apartbias='apart',
                                           fusedbias='fused')),
              (CHANNEL_GRAD_FORMULATION, dict(rowsgrad='rows',
                                              directgrad='direct')),
              (SELECTIVE_CP_FORMULATION, dict(sac='torch')),
              (EAGER_POOL_FORMULATION, dict(atenpool='native')))
    forced = [(table, next((v for k, v in names.items() if k in variant),
                           None)) for table, names in tokens]

    def step():
        # as mmengine's OptimWrapper.zero_grad(): gradients set to None, so
        # the backward writes them instead of accumulating into zeros
        optimizer.zero_grad()
        with contextlib.ExitStack() as formulations:
            for table, value in forced:
                formulations.enter_context(
                    use_formulation(table, device, value))
            with autocast:
                loss = sum(o.float().square().mean() for o in forward(x))
            loss.backward()
        optimizer.step()
        return loss
    return step


def _proc_status(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def train_memory_worker(arch: str, variant: str, batch: int, size) -> dict:
    """Run in a fresh subprocess: peak bytes one training step needs on top
    of weights, gradients and optimizer state (see the module docstring)."""
    torch.manual_seed(0)
    step = _train_setup(arch, variant, batch, size)
    step()  # warm-up: optimizer state, compilation, allocator pools
    import ctypes
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    before = _proc_status('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current resident size
    step()
    peak = _proc_status('VmHWM')
    return dict(peak_step_bytes=peak - before, rss_before_bytes=before)


def train_memory(arch: str, variant: str, batch: int, size) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536',
               MALLOC_TRIM_THRESHOLD_='65536')
    code = ('import json, sys; from mmpoolformer.benchmark import '
            'train_memory_worker as w; print("RESULT " + json.dumps(w('
            f'{arch!r}, {variant!r}, {batch}, {tuple(size)!r})))')
    proc = subprocess.run([sys.executable, '-c', code], env=env,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith('RESULT '):
            return json.loads(line[len('RESULT '):])
    return dict(error=(proc.stderr or proc.stdout).strip()[-2000:])


def bench_training(arch: str, batch: int, size, variants: Sequence[str],
                   warmup: int, repeats: int, memory: bool = True,
                   log=print) -> dict:
    """Every variant's training step, interleaved: after each variant's
    first step (compilation) and warm-up, each round times one step of
    every variant, so drifting machine load hits all alike. Peak memory in
    fresh subprocesses (not for compiled variants: they would compile
    again)."""
    results, steps = {}, {}
    for variant in variants:
        log(f'  training {arch} {variant} (first step) ...')
        steps[variant] = _train_setup(arch, variant, batch, size)
        start = time.perf_counter()
        steps[variant]()
        results[variant] = dict(first_step_s=time.perf_counter() - start)
        for _ in range(max(warmup - 1, 0)):
            steps[variant]()
    times = time_interleaved(steps, repeats)
    steps.clear()
    for variant in variants:
        results[variant]['step_s'] = summarize(times[variant])
        if memory and 'compile' not in variant:
            log(f'  training {arch} {variant} (memory) ...')
            results[variant]['memory'] = train_memory(arch, variant, batch,
                                                      size)
    base = results[variants[0]]
    for entry in results.values():
        entry['speedup'] = base['step_s']['median'] / entry['step_s']['median']
        mem, base_mem = entry.get('memory', {}), base.get('memory', {})
        if 'peak_step_bytes' in mem and 'peak_step_bytes' in base_mem:
            entry['peak_memory_ratio'] = (mem['peak_step_bytes'] /
                                          base_mem['peak_step_bytes'])
        if 'official' in results:
            entry['speedup_vs_official'] = (
                results['official']['step_s']['median'] /
                entry['step_s']['median'])
    return dict(arch=arch, input=[batch, 3, *size], optimizer='AdamW',
                baseline=variants[0], interleaved=True, variants=results)


# -------------------------------------------------------------------- report
def _ms(stats: dict) -> str:
    return (f"{stats['median'] * 1e3:8.1f} ms (min {stats['min'] * 1e3:.0f},"
            f" max {stats['max'] * 1e3:.0f}, iqr {stats['iqr'] * 1e3:.0f})")


def cpu_kind(info: dict) -> str:
    """'family 25 model 17, 2596 MHz; ' from :func:`machine_info`'s dict
    ('' where /proc/cpuinfo said nothing)."""
    kind = ' '.join(f'{name} {info[key]}' for name, key in (
        ('family', 'cpu_family'), ('model', 'cpu_model')) if info.get(key))
    if info.get('cpu_mhz'):
        kind += f"{', ' if kind else ''}{float(info['cpu_mhz']):.0f} MHz"
    return f'{kind}; ' if kind else ''


def describe_cpu(info: Optional[dict] = None) -> str:
    """One line for a report: 'AMD EPYC (family 25 model 17, 2596 MHz; 2
    logical CPUs; avx512_bf16 True, amx False; torch 2.13.0+cpu)'."""
    info = info or machine_info()
    return (f"{info['cpu']} ({cpu_kind(info)}{info['logical_cpus']} "
            f"logical CPUs; avx512_bf16 {info['avx512_bf16']}, amx "
            f"{info['amx']}; torch {info['torch']})")


def format_report(result: dict) -> str:
    info = result['machine']
    lines = [
        f"PoolFormer benchmark  torch {info['torch']}  threads "
        f"{info['threads']}  CPU {info['cpu']} ({cpu_kind(info)}"
        f"{info['logical_cpus']} logical)  avx512_bf16 "
        f"{info['avx512_bf16']}  amx {info['amx']}"
        + (f"\nbf16 paths {result['settings']['bf16_paths']}"
           if 'bf16_paths' in result['settings'] else ''),
        'matmul ceiling: ' + ', '.join(
            f"{m['dtype']} {m['backend']} {m['gflops']:.0f} GFLOP/s "
            f"(n={m['n']})"
            for m in result['matmul']),
        f"repeats {result['settings']['repeats']} after "
        f"{result['settings']['warmup']} warm-up; times are medians "
        '(min, max, interquartile range)',
        result['settings'].get('malloc', 'malloc: as the process started'),
        '']
    for bb in result.get('backbones', []):
        lines.append(f"Backbone {bb['arch']} input {bb['input']} "
                     f"({bb['gflops']:.1f} GFLOP at batch 1)")
        lines.append(f"{'path':22s} {'latency b1':44s} {'x':>5s} "
                     f"{'img/s':>7s} {'x':>5s} {'GFLOP/s':>8s} "
                     f"{'max rel':>9s} {'max abs':>9s} {'min cos':>9s}")
        for name, e in bb['paths'].items():
            acc = e['accuracy']
            gf = e['gflops_per_s']
            lines.append(
                f"{name:22s} {_ms(e['latency_s']):44s} "
                f"{e['speedup_latency']:5.2f} "
                f"{e['throughput_img_s']:7.2f} {e['speedup_throughput']:5.2f}"
                f" {gf if gf else 0:8.1f} {acc['max_rel']:9.2e} "
                f"{acc['max_abs']:9.2e} {acc['min_cosine']:9.6f}")
            if 'compile_s' in e:
                lines.append(f"{'':22s} compile (first call) s: " + ', '.join(
                    f'{k} {v:.1f}' for k, v in e['compile_s'].items()))
        lines.append(f"(throughput at batch {e['batch']})")
        lines.append('')
    vs = result.get('vs_official')
    if vs:
        lines.append(f"Backbone {vs['arch']} against the official model "
                     f"(eager, NCHW, fp32), input {vs['input']}, "
                     f"{vs['rounds']} interleaved rounds: best (median)")
        for name, e in vs['paths'].items():
            t = e['time_s']
            acc = (f"  max rel {e['accuracy']['max_rel']:.1e} min cos "
                   f"{e['accuracy']['min_cosine']:.6f}"
                   if 'accuracy' in e else '')
            lines.append(
                f"  {name:20s} {t['min'] * 1e3:8.1f} ms "
                f"({t['median'] * 1e3:.1f} ms)  x{e['speedup_best']:.2f} "
                f"(x{e['speedup_median']:.2f}){acc}")
        lines.append('')
    for mm in result.get('models', []):
        if 'error' in mm:
            lines.append(f"{mm['model']}: ERROR {mm['error']}")
            continue
        lines.append(f"{mm['model']} ({mm['arch']}) input {mm['input']}")
        for name, e in mm['paths'].items():
            acc = e['neck_features']
            lines.append(
                f"  {name:12s} {_ms(e['latency_s']):44s} "
                f"x{e['speedup_latency']:.2f}  batch {e['batch']}: "
                f"{e['throughput_img_s']:.2f} img/s "
                f"x{e['speedup_throughput']:.2f}  neck max rel "
                f"{acc['max_rel']:.1e} min cos {acc['min_cosine']:.6f}")
        lines.append('')
    tr = result.get('training')
    if tr:
        lines.append(f"Training step {tr['arch']} input {tr['input']} "
                     f"({tr['optimizer']}, fwd+bwd+step)")
        for name, e in tr['variants'].items():
            mem = e.get('memory', {})
            mib = mem.get('peak_step_bytes', 0) / 2 ** 20
            mem_txt = (f"peak step memory {mib:7.0f} MiB"
                       f" (x{e.get('peak_memory_ratio', 1):.2f})"
                       if 'peak_step_bytes' in mem else
                       f"memory: {mem.get('error', 'not measured')[-200:]}")
            official = (f"  x{e['speedup_vs_official']:.2f} vs official"
                        if 'speedup_vs_official' in e else '')
            lines.append(f"  {name:24s} {_ms(e['step_s'])}  "
                         f"x{e['speedup']:.2f}{official}  first step "
                         f"{e['first_step_s']:.1f} s  {mem_txt}")
        lines.append('')
    lines.append(f"total benchmark time {result['total_s']:.0f} s")
    return '\n'.join(lines)


def run(arch: str = 's12', quick: bool = False,
        backbone_paths: Sequence[str] = BACKBONE_PATHS,
        models: Sequence[str] = tuple(MODELS),
        model_paths: Sequence[str] = MODEL_PATHS,
        train_variants: Sequence[str] = DEFAULT_TRAIN_VARIANTS,
        warmup: Optional[int] = None, repeats: Optional[int] = None,
        det_size=DET_SIZE, seg_size=SEG_SIZE, batch: Optional[int] = None,
        compile: bool = True, root: str = '.', log=print,
        train_only: bool = False, train_size=None,
        official_paths: Sequence[str] = VS_OFFICIAL_PATHS) -> dict:
    """Run the whole benchmark; returns the JSON-ready result."""
    start = time.perf_counter()
    warmup = warmup if warmup is not None else (1 if quick else 2)
    repeats = repeats if repeats is not None else (2 if quick else 5)
    batch = batch or (2 if quick else 4)
    if not compile:
        backbone_paths = [p for p in backbone_paths if 'compile' not in p]
        train_variants = [v for v in train_variants if 'compile' not in v]
        official_paths = [p for p in official_paths if 'compile' not in p]
    result = dict(machine=machine_info(), settings=dict(
        arch=arch, quick=quick, warmup=warmup, repeats=repeats, batch=batch,
        det_size=list(det_size), seg_size=list(seg_size),
        memory_method='fresh subprocess, MALLOC_MMAP_THRESHOLD_=65536, '
                      'VmHWM - VmRSS around one step after a warm-up step'))
    log('matmul ceiling ...')
    result['matmul'] = [matmul_rate(torch.float32)]
    if torch.backends.mkldnn.is_available():
        result['matmul'].append(matmul_rate(torch.float32, backend='onednn'))
        if result['machine']['avx512_bf16'] or result['machine']['amx']:
            result['matmul'].append(matmul_rate(torch.bfloat16,
                                                backend='onednn'))
    result['backbones'] = []
    if train_only:
        backbone_paths, models, official_paths = [], [], []
    # Compiling costs ~30 s per path and shape here: compiled paths run at
    # the detection size only.
    for size, paths in ((det_size, list(backbone_paths)),
                        (seg_size, [p for p in backbone_paths
                                    if 'compile' not in p])):
        if paths:
            result['backbones'].append(bench_backbone(
                arch, size, batch, paths, warmup, repeats, log=log))
    if official_paths:
        result['vs_official'] = bench_vs_official(
            arch, det_size, official_paths, repeats, log=log)
    result['models'] = []
    for kind in models:
        try:
            result['models'].append(bench_model(
                kind, arch, max(batch // 2, 2), max(warmup - 1, 1),
                max(repeats - 2, 2), model_paths, root,
                det_size if MODELS[kind][2] == 'mmdet' else seg_size,
                log=log))
        except Exception as error:  # noqa: BLE001 - report, go on
            result['models'].append(dict(model=kind, arch=arch,
                                         error=repr(error)[:500]))
    if train_variants:
        result['training'] = bench_training(
            arch, 2, tuple(train_size or seg_size), train_variants, warmup,
            max(repeats - 2, 2), log=log)
    result['total_s'] = time.perf_counter() - start
    return result


def default_paths(paths: Optional[Sequence[str]],
                  model_paths: Optional[Sequence[str]], log=print):
    """The backbone and model paths to time: those named, or all; on a CPU
    without bf16 kernels (AVX2 only: :func:`cpu_bf16_supported`) the
    default leaves out the bf16 paths, which would time oneDNN's slow
    reference code there (a 1x1 conv 7x slower than in float32). Returns
    them with a line saying what was chosen."""
    from mmpoolformer.utils import cpu_bf16_supported
    if paths is not None and model_paths is not None:
        return list(paths), list(model_paths), 'as named'
    bf16 = cpu_bf16_supported()
    if bf16:
        chosen = 'run: this CPU has bf16 kernels'
    else:
        chosen = ('left out by default: this CPU has no bf16 kernels '
                  '(AVX2 only); name them with --paths / --model-paths '
                  'to time them anyway')
        log(f'bf16 paths {chosen}')

    def pick(named, every):
        if named is not None:
            return list(named)
        return [p for p in every if bf16 or not p.endswith('bf16')]
    return pick(paths, BACKBONE_PATHS), pick(model_paths, MODEL_PATHS), chosen


def main(argv: Optional[List[str]] = None):
    import argparse
    parser = argparse.ArgumentParser(
        description='PoolFormer benchmark: every execution path against '
        'the plain backbone, on the same weights and inputs.')
    parser.add_argument(
        '--arch', default='s12',
        help="PoolFormer's arch, or with --train-only a MetaFormer-family "
        "backbone as 'Family-size' (ConvFormer-s18, CAFormer-s18, "
        'PoolFormerV2-s12, ...)')
    parser.add_argument('--quick', action='store_true',
                        help='fewer repeats, smaller batch, no compile')
    named_paths = BACKBONE_PATHS + EXTRA_BACKBONE_PATHS
    parser.add_argument('--paths', nargs='+', choices=named_paths,
                        help='backbone paths (the first is the baseline; '
                        'default: all, the bf16 ones only on a CPU with '
                        'bf16 kernels)')
    parser.add_argument('--vs-official', nargs='*',
                        default=list(VS_OFFICIAL_PATHS),
                        choices=named_paths,
                        help='backbone paths timed against the official '
                        'model, interleaved (none: skip)')
    parser.add_argument('--models', nargs='*', default=list(MODELS),
                        choices=list(MODELS))
    parser.add_argument('--model-paths', nargs='+', choices=MODEL_PATHS,
                        help='default: all, fast_bf16 only on a CPU with '
                        'bf16 kernels')
    parser.add_argument('--train', nargs='*', choices=TRAIN_VARIANTS,
                        help='training variants (the first is the baseline; '
                        'default: ' + ' '.join(DEFAULT_TRAIN_VARIANTS) +
                        ', without official for the MetaFormer family)')
    parser.add_argument('--no-compile', action='store_true')
    parser.add_argument('--train-only', action='store_true',
                        help='only the training-step comparison')
    parser.add_argument('--train-size', type=int, nargs=2,
                        help='training input size (default: --seg-size)')
    parser.add_argument('--warmup', type=int)
    parser.add_argument('--repeats', type=int)
    parser.add_argument('--batch', type=int,
                        help='batch size for throughput')
    parser.add_argument('--det-size', type=int, nargs=2, default=DET_SIZE)
    parser.add_argument('--seg-size', type=int, nargs=2, default=SEG_SIZE)
    parser.add_argument('--threads', type=int,
                        help='torch threads (default: torch decides)')
    parser.add_argument(
        '--reuse-freed-memory', action='store_true',
        help="glibc malloc as CPUMallocHook sets it (freed memory kept for "
        "reuse); default: the process's malloc as it is")
    parser.add_argument('--out', default='work_dirs/benchmark.json')
    args = parser.parse_args(argv)
    try:
        family = family_of(args.arch)
    except ValueError as error:
        parser.error(str(error))
    if family and not args.train_only:
        parser.error(f'--arch {args.arch}: the MetaFormer family is timed in '
                     'training only; add --train-only')
    if args.train is None:
        args.train = [v for v in DEFAULT_TRAIN_VARIANTS
                      if not (family and v.startswith('official'))]
    if family and any(v.startswith('official') for v in args.train):
        parser.error("--train official: the official model is PoolFormer's;"
                     f' leave it out for --arch {args.arch}')
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = 'malloc: as the process started'
    if args.reuse_freed_memory:
        from mmpoolformer.engine.hooks.cpu_malloc_hook import \
            reuse_freed_memory
        malloc = reuse_freed_memory()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    args.paths, args.model_paths, bf16 = default_paths(
        args.paths, args.model_paths, log)
    if 'plain' in args.paths:
        args.paths.remove('plain')
    paths = ['plain'] + args.paths
    result = run(args.arch, args.quick, paths, args.models,
                 args.model_paths, args.train, args.warmup, args.repeats,
                 tuple(args.det_size), tuple(args.seg_size), args.batch,
                 compile=not (args.no_compile or args.quick), log=log,
                 train_only=args.train_only, train_size=args.train_size,
                 official_paths=args.vs_official)
    result['settings']['malloc'] = malloc
    result['settings']['bf16_paths'] = bf16
    report = format_report(result)
    print(report)
    result['report'] = report
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    print(f'JSON: {args.out}')
    return result
