"""What the analysis, demo and export tools share.

* models from a config, with fresh weights (nothing downloads) or a
  checkpoint: :func:`build_model`, :func:`build_backbone`;
* an image as the backbone sees it: :func:`preprocess_image`, and stage
  outputs as heat maps: :func:`reduce_channels`;
* parameters and MACs: :func:`count_complexity`;
* ONNX export and the check against PyTorch: :func:`export_onnx`,
  :func:`compare_onnx`, :class:`SegmentorLogits`;
* training curves from mmengine's ``scalars.json``: :func:`find_scalars`,
  :func:`read_scalars`;
* where a training step's time goes, by op class:
  :func:`profile_training_steps`, :func:`format_step_profile`.

Used by ``tools/image_demo.py``, ``tools/analysis_tools/feature_maps.py``,
``tools/analysis_tools/get_flops.py``, ``tools/analysis_tools/plot_curves.py``,
``tools/analysis_tools/step_profile.py`` and
``tools/deployment/pytorch2onnx.py``.
"""
import copy
import glob
import json
import logging
import os.path as osp
import re
import statistics
import tempfile
import time
import types
import warnings
from collections import Counter, OrderedDict
from contextlib import contextmanager
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.hooks import Hook

from mmpoolformer.runner import build_train_runner, load_config

# ------------------------------------------------------------------ models


@contextmanager
def quiet_mmengine():
    """Keep mmengine's logger to warnings (``init_weights`` logs one line
    per parameter)."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def model_config(config, cfg_options: Optional[dict] = None) -> Config:
    """The config (a path or a loaded :class:`Config`, scope checked) with
    the backbone's ``init_cfg`` and the model's ``pretrained`` removed, so
    building the model downloads nothing."""
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
    else:
        cfg = load_config(config, cfg_options)
    cfg.model.backbone.init_cfg = None
    cfg.model.pop('pretrained', None)
    return cfg


def load_model_checkpoint(model: nn.Module, checkpoint: str) -> dict:
    """Load a whole-model checkpoint (what ``tools/train.py`` writes) into
    ``model`` through :func:`mmpoolformer.checkpoint.read_whole_checkpoint`
    (a local file with ``weights_only=True``, mmengine's types allowed; a
    URL with mmengine's loader). Missing and unexpected keys are logged.
    Returns the file's content (its ``meta`` holds the dataset's
    classes)."""
    from mmengine.runner.checkpoint import _load_checkpoint_to_model

    from mmpoolformer.checkpoint import read_whole_checkpoint
    loaded = read_whole_checkpoint(checkpoint)
    if not isinstance(loaded, dict):
        raise TypeError(f'{checkpoint} holds a {type(loaded).__name__}, '
                        'not a checkpoint dict.')
    _load_checkpoint_to_model(model, loaded, strict=False)
    return loaded


def build_model(config, checkpoint: Optional[str] = None,
                cfg_options: Optional[dict] = None) -> Tuple[nn.Module,
                                                             Config]:
    """The config's whole model (detector or segmentor) on the CPU, in eval
    mode, SyncBN turned into BN. Without ``checkpoint``: fresh weights (the
    heads' own init; the backbone's ``init_cfg`` is dropped, nothing
    downloads). Returns the model and the config it was built from."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    cfg = model_config(config, cfg_options)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    with quiet_mmengine():
        model.init_weights()
    model = revert_sync_batchnorm(model)
    if checkpoint:
        load_model_checkpoint(model, checkpoint)
    return model.eval(), cfg


def build_backbone(config, checkpoint: Optional[str] = None,
                   cfg_options: Optional[dict] = None) -> Tuple[nn.Module,
                                                                Config]:
    """Only the config's backbone, eval mode. ``checkpoint`` may hold a
    whole model (its ``backbone.`` keys are used) or a backbone in any
    layout :func:`mmpoolformer.checkpoint.load_pretrained` reads (the
    official ImageNet files included); without it the weights are fresh."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    cfg = model_config(config, cfg_options)
    init_default_scope(cfg.default_scope)
    backbone = revert_sync_batchnorm(MODELS.build(cfg.model.backbone))
    if checkpoint:
        from mmpoolformer.checkpoint import load_pretrained
        load_pretrained(backbone, checkpoint)
    return backbone.eval(), cfg


def preprocess_image(cfg: Config, image_bgr: np.ndarray) -> torch.Tensor:
    """A ``(1, 3, H, W)`` float tensor as the config's data preprocessor
    makes it (channel order, mean, std), without resizing or padding."""
    pre = cfg.model.get('data_preprocessor') or {}
    image = image_bgr[..., ::-1] if pre.get('bgr_to_rgb') else image_bgr
    x = torch.from_numpy(np.ascontiguousarray(image)).float()
    x = x.permute(2, 0, 1)[None]
    mean = torch.tensor(pre.get('mean') or (0., 0., 0.)).view(1, -1, 1, 1)
    std = torch.tensor(pre.get('std') or (1., 1., 1.)).view(1, -1, 1, 1)
    return (x - mean) / std


def reduce_channels(feature: torch.Tensor, method: str = 'mean'
                    ) -> np.ndarray:
    """One ``(C, H, W)`` stage output as an ``(H, W)`` map: ``'mean'``
    (channel mean), ``'max'`` (channel maximum) or ``'pca'`` (projection
    on the first principal component of the C-dim pixel vectors, signed so
    that it correlates positively with the channel mean)."""
    feature = feature.detach().float()
    if method == 'mean':
        return feature.mean(0).numpy()
    if method == 'max':
        return feature.amax(0).numpy()
    if method != 'pca':
        raise ValueError(f'unknown reduction {method!r}: use mean, max, pca')
    channels, height, width = feature.shape
    pixels = feature.reshape(channels, -1).T
    pixels = pixels - pixels.mean(0, keepdim=True)
    if pixels.shape[0] < 2:
        return np.zeros((height, width), np.float32)
    _, _, v = torch.linalg.svd(pixels, full_matrices=False)
    component = pixels @ v[0]
    mean = feature.mean(0).reshape(-1)
    if torch.dot(component, mean - mean.mean()) < 0:
        component = -component
    return component.reshape(height, width).numpy()


def normalize_map(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] (a constant map becomes zeros)."""
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def config_dataset_meta(cfg: Config) -> dict:
    """Classes and palette of the config's test dataset, read from its
    class's ``METAINFO`` and the config's ``metainfo`` (the dataset is not
    built: nothing is read or generated). Empty if unknown."""
    from mmengine.registry import DATASETS
    dataset = (cfg.get('test_dataloader') or {}).get('dataset') or {}
    while 'dataset' in dataset:  # wrappers
        dataset = dataset['dataset']
    meta = {}
    try:
        with DATASETS.switch_scope_and_registry(
                cfg.get('default_scope')) as registry:
            cls = registry.get(dataset.get('type'))
    except Exception:  # noqa: BLE001  (not registered in this scope)
        cls = None
    if cls is not None:
        meta.update(copy.deepcopy(getattr(cls, 'METAINFO', {})))
    meta.update(copy.deepcopy(dict(dataset.get('metainfo') or {})))
    return {k: v for k, v in meta.items() if k in ('classes', 'palette')}


def checkpoint_dataset_meta(checkpoint: dict, cfg: Config) -> dict:
    """The classes (and palette) a model was trained with: the
    checkpoint's ``meta.dataset_meta`` (mmdet 3 / mmseg 1) or
    ``meta.CLASSES``/``PALETTE`` (older files), else the config's test
    dataset's; a palette missing from the file comes from the config when
    the classes agree, else it is ``'random'``."""
    meta = (checkpoint or {}).get('meta') or {}
    found = {k.lower(): v for k, v in (meta.get('dataset_meta') or {}).items()
             if k.lower() in ('classes', 'palette')}
    if not found and 'CLASSES' in meta:
        found = dict(classes=meta['CLASSES'])
        if meta.get('PALETTE'):
            found['palette'] = meta['PALETTE']
    from_config = config_dataset_meta(cfg)
    if not found.get('classes'):
        found = dict(from_config)
    if not found.get('palette'):
        same = list(from_config.get('classes') or []) == list(
            found.get('classes') or [None])
        found['palette'] = (from_config['palette'] if same
                            and from_config.get('palette') else 'random')
    return found


# -------------------------------------------------------------- complexity

# What mmengine's FlopAnalyzer (fvcore's rules) counts: one multiply-add per
# conv/linear/matmul weight use, norms 4-5 operations per element (5 with an
# affine), bilinear upsampling 4 per output element.
MAC_OPERATORS = ('conv', 'linear', 'addmm', 'matmul', 'mm', 'bmm',
                 'einsum', 'batch_norm', 'group_norm', 'layer_norm',
                 'instance_norm', 'upsample_nearest2d', 'upsample_bilinear2d',
                 'adaptive_avg_pool2d', 'grid_sampler',
                 'scaled_dot_product_attention')
_POOLS = ('aten::avg_pool2d', 'aten::max_pool2d')
# (aten::pow: StarReLU's square)
_ACTIVATIONS = ('aten::gelu', 'aten::relu', 'aten::relu_', 'aten::sigmoid',
                'aten::sigmoid_', 'aten::silu', 'aten::silu_', 'aten::pow')
_ELEMENTWISE = ('aten::add', 'aten::add_', 'aten::sub', 'aten::sub_',
                'aten::mul', 'aten::mul_', 'aten::div', 'aten::div_')
COUNTING_NOTE = (
    'MACs: mmengine.analysis.FlopAnalyzer (fvcore rules, as the paper): '
    'one multiply-add per conv/linear weight use, plus GroupNorm/BatchNorm '
    'at 4-5 and upsampling at 1 (nearest) or 4 (bilinear) operations per '
    'element; fused attention at the two products fvcore counts when they '
    'are written out (q k^T and the weights times v; softmax not counted). '
    'Counted apart and not in the MACs ("other ops"): pooling '
    '(k*k adds or compares per output element), activations, element-wise '
    'add/sub/mul/div and mean (one per element).')


def _numel(shape) -> int:
    return int(np.prod(shape)) if shape is not None else 0


def _pool_ops(inputs, outputs) -> int:
    from mmengine.analysis.jit_handles import get_shape
    kernel = inputs[1].toIValue()
    kernel = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel]
    if None in kernel:  # a list built in the graph: read its constants
        kernel = [v.toIValue() for v in inputs[1].node().inputs()]
    area = int(np.prod(kernel * (2 if len(kernel) == 1 else 1)))
    return _numel(get_shape(outputs[0])) * area


def _output_ops(inputs, outputs) -> int:
    from mmengine.analysis.jit_handles import get_shape
    return _numel(get_shape(outputs[0]))


def _input_ops(inputs, outputs) -> int:
    from mmengine.analysis.jit_handles import get_shape
    return _numel(get_shape(inputs[0]))


def _attention_macs(inputs, outputs) -> int:
    """``scaled_dot_product_attention(q, k, v)``: the multiply-adds of
    ``q @ k^T`` and ``softmax(.) @ v``, as fvcore counts those two matmuls
    in code that writes them out (the official MetaFormer's attention)."""
    from mmengine.analysis.jit_handles import get_shape
    query, key, value = (get_shape(v) for v in inputs[:3])
    queries = _numel(query[:-1])  # batch x heads x Nq
    return queries * key[-2] * (query[-1] + value[-1])


def count_complexity(module: nn.Module, inputs: Tuple) -> dict:
    """Trace ``module(*inputs)`` once and count, per submodule (``''`` is
    the whole), the MACs by operator and the other operations (see
    :data:`COUNTING_NOTE`).

    Returns ``dict(macs=Counter(module -> MACs), by_operator={module:
    Counter(op -> count)}, other=Counter(module -> ops),
    uncounted=Counter(op -> calls))``."""
    from mmengine.analysis import FlopAnalyzer
    analyzer = FlopAnalyzer(module, inputs)
    handles = {name: _pool_ops for name in _POOLS}
    handles.update({name: _output_ops for name in
                    _ACTIVATIONS + _ELEMENTWISE})
    handles['aten::mean'] = _input_ops
    handles['aten::scaled_dot_product_attention'] = _attention_macs
    # dropout is the identity in eval mode
    handles.update({name: None for name in ('aten::dropout',
                                            'aten::feature_dropout')})
    analyzer.set_op_handle(**handles)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        by_module_op = analyzer.by_module_and_operator()
        uncounted = analyzer.unsupported_ops()
    macs, other = Counter(), Counter()
    for name, counts in by_module_op.items():
        for op, count in counts.items():
            if op in MAC_OPERATORS:
                macs[name] += count
            else:
                other[name] += count
    return dict(macs=macs, by_operator=by_module_op, other=other,
                uncounted=uncounted)


def count_parameters(module: nn.Module) -> int:
    """All parameters (trainable or frozen), as ``sum(p.numel())``."""
    return sum(p.numel() for p in module.parameters())


class TensorForward(nn.Module):
    """``model(x, data_samples, mode='tensor')`` as a one-input module: the
    network up to the raw head outputs, without post-processing (what
    mmdet's and mmseg's own ``get_flops`` tools count)."""

    def __init__(self, model: nn.Module, data_samples=None):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, x):
        return self.model(x, self.data_samples, mode='tensor')


def tensor_forward(model: nn.Module, scope: str,
                   shape: Sequence[int]) -> TensorForward:
    """Wrap a detector or segmentor for inputs of ``shape`` (H, W); mmdet
    models get one data sample with that image size (two-stage detectors
    need it for their proposals)."""
    samples = None
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        sample = DetDataSample()
        size = tuple(int(s) for s in shape)
        sample.set_metainfo(dict(img_shape=size, ori_shape=size,
                                 pad_shape=size, batch_input_shape=size,
                                 scale_factor=(1., 1.)))
        samples = [sample]
    return TensorForward(model, samples)


# -------------------------------------------------------------------- ONNX


def _upsample_by_scale(self, x):
    return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode,
                         align_corners=self.align_corners)


def dynamic_upsampling(model: nn.Module) -> int:
    """Make mmseg's ``Upsample`` modules (the FPN head's scale heads)
    upsample by their ``scale_factor`` instead of a size computed with
    ``int()``, which a trace records as a constant (the exported graph
    would then only be right at the export shape). Same output for
    integer sizes. Changes the instances only; returns how many."""
    try:
        from mmseg.models.utils import Upsample
    except ImportError:
        return 0
    changed = 0
    for module in model.modules():
        if isinstance(module, Upsample) and not module.size \
                and module.scale_factor:
            module.forward = types.MethodType(_upsample_by_scale, module)
            changed += 1
    return changed


class SegmentorLogits(nn.Module):
    """An mmseg ``EncoderDecoder`` as ``img -> logits``: backbone, neck and
    decode head, then bilinear upsampling to the input size (as
    ``encode_decode`` does), with the size taken from the input so the
    exported graph keeps dynamic height and width (see also
    :func:`dynamic_upsampling`, applied to ``segmentor``). The input is the
    normalized batch the data preprocessor makes; auxiliary heads are not
    part of inference and are left out."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor
        dynamic_upsampling(segmentor)

    def forward(self, img):
        logits = self.segmentor.decode_head(self.segmentor.extract_feat(img))
        return F.interpolate(logits, size=img.shape[2:], mode='bilinear',
                             align_corners=self.segmentor.align_corners)


def _output_list(outputs) -> List[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [t for item in outputs for t in _output_list(item)]


def export_onnx(module: nn.Module, shape: Sequence[int], path: str,
                output_names: Sequence[str], opset: int = 17,
                seed: int = 0) -> None:
    """Export ``module`` traced on a ``(1, 3, H, W)`` input with torch's
    TorchScript exporter (``dynamo=False``: needs no onnxscript), batch,
    height and width dynamic on the input and on every output, then check
    the file with ``onnx.checker``."""
    import onnx
    x = torch.randn(1, 3, *shape,
                    generator=torch.Generator().manual_seed(seed))
    dynamic = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
    for i, name in enumerate(output_names):
        dynamic[name] = {0: 'batch', 2: f'height_{i}', 3: f'width_{i}'}
    with warnings.catch_warnings():
        # the TorchScript exporter announces its deprecation on each call
        warnings.simplefilter('ignore', DeprecationWarning)
        with torch.no_grad():
            torch.onnx.export(module, (x, ), path, dynamo=False,
                              opset_version=opset, input_names=['input'],
                              output_names=list(output_names),
                              dynamic_axes=dynamic, do_constant_folding=True)
    onnx.checker.check_model(path)


def compare_onnx(module: nn.Module, path: str,
                 shapes: Sequence[Tuple[int, int, int]],
                 output_names: Sequence[str], seed: int = 1) -> List[dict]:
    """Run the ONNX file with onnxruntime (CPU) and ``module`` with PyTorch
    on random inputs of each ``(N, H, W)`` in ``shapes``. One row per shape
    and output: its shape, the max absolute difference and the max
    relative difference (max absolute difference / max absolute PyTorch
    value)."""
    import onnxruntime as ort
    module.eval()
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for batch, height, width in shapes:
        x = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = _output_list(module(x))
        got = session.run(list(output_names), {'input': x.numpy()})
        for name, ref, out in zip(output_names, expected, got):
            ref = ref.numpy()
            if ref.shape != out.shape:
                raise AssertionError(
                    f'{name}: onnxruntime gives {out.shape}, PyTorch '
                    f'{ref.shape} for input {tuple(x.shape)}')
            diff = float(np.abs(out - ref).max())
            scale = float(np.abs(ref).max())
            rows.append(dict(input=tuple(x.shape), output=name,
                             shape=tuple(ref.shape), max_abs=diff,
                             max_rel=diff / scale if scale else diff))
    return rows


# ------------------------------------------------------------------ curves


def find_scalars(work_dir: str) -> List[str]:
    """``scalars.json`` files that mmengine's ``LocalVisBackend`` wrote
    under ``work_dir`` (``<timestamp>/vis_data/scalars.json``, one per run,
    oldest first); ``work_dir`` may also be such a file."""
    if osp.isfile(work_dir):
        return [work_dir]
    found = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                      'scalars.json')))
    if not found:
        found = sorted(glob.glob(osp.join(work_dir, 'vis_data',
                                          'scalars.json')))
    if not found:
        raise FileNotFoundError(
            f'No */vis_data/scalars.json under {work_dir}: give the work '
            'dir of a run whose visualizer has a LocalVisBackend (the '
            'default of mmdet/mmseg configs).')
    return found


def read_scalars(paths: Sequence[str]) -> Tuple[List[dict], List[dict]]:
    """Training and validation records from ``scalars.json`` files, in
    order, each with ``iter``: the global training iteration.

    mmengine logs training scalars with ``step`` = iteration, and
    validation metrics with ``step`` = iteration in iteration-based loops
    but = epoch in epoch-based ones (training records then have an
    ``epoch``): there a validation record gets the training iteration
    logged last before it, i.e. the end of its epoch to within the logging
    interval. A run resumed into a new timestamp folder continues the same
    iteration axis."""
    train, val = [], []
    last_iter, by_epoch = 0, False
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                record = json.loads(line)
                if 'lr' in record or any('loss' in k for k in record):
                    last_iter = int(record.get('step',
                                               record.get('iter', 0)))
                    by_epoch = 'epoch' in record
                    train.append(dict(record, iter=last_iter))
                else:
                    step = int(record.get('step', last_iter))
                    val.append(dict(record,
                                    iter=last_iter if by_epoch else step))
    return train, val


def loss_keys(train: Sequence[dict]) -> List[str]:
    """``loss`` first, then the loss terms, as they appear."""
    keys = OrderedDict()
    for record in train:
        for key in record:
            if 'loss' in key:
                keys[key] = None
    return sorted(keys, key=lambda k: (k != 'loss', list(keys).index(k)))


METRIC_KEYS = ('mAP', 'mIoU')


def metric_keys(val: Sequence[dict]) -> List[str]:
    """The main metrics: COCO/VOC mAP (``coco/bbox_mAP``,
    ``coco/segm_mAP``, ...) and mIoU, as they appear."""
    keys = OrderedDict()
    for record in val:
        for key in record:
            if key.split('/')[-1].split('_')[-1] in METRIC_KEYS:
                keys[key] = None
    return list(keys)


def series(records: Sequence[dict], key: str) -> Tuple[List[int],
                                                       List[float]]:
    """(iterations, values) of ``key`` where it was logged."""
    points = [(r['iter'], float(r[key])) for r in records if key in r]
    return [p[0] for p in points], [p[1] for p in points]


# ------------------------------------------------------ training-step profile
# Op classes of a training-step profile: the first class whose pattern
# (a regular expression on the aten op's name) matches takes the op's self
# CPU time. Self times do not overlap, so the classes add up to the time
# the main thread spent in aten ops.
OP_CLASSES = (
    ('convolution backward', r'^convolution_backward'),
    ('convolution forward', r'convolution|^conv\d'),
    ('matrix multiply', r'^(mm|bmm|addmm|addbmm|baddbmm|matmul|linear)$'),
    ('activation', r'gelu|relu|silu|sigmoid|tanh|hardswish'),
    ('norm', r'batch_norm|group_norm|layer_norm'),
    ('pooling', r'pool'),
    ('copy and cast', r'^(copy_|_to_copy|clone|contiguous)$'),
    ('optimizer', r'^_fused_adam|^_foreach_|^addcdiv_|^addcmul_|^lerp_'),
    ('elementwise arithmetic',
     r'^(add|sub|mul|div|neg|exp|log|sqrt|rsqrt|pow|abs|clamp|where)_?$'),
    ('other aten ops', r''),
)


class StopProfiling(Exception):
    """Raised by :func:`profile_training_steps`'s hook once its steps are
    profiled: it ends the run there."""


def op_class(name: str) -> str:
    """The :data:`OP_CLASSES` class of an aten op (``aten::`` optional)."""
    bare = name.split('::', 1)[-1]
    return next(label for label, pattern in OP_CLASSES
                if re.search(pattern, bare))


def summarize_profile(events, steps: int, top: int = 15) -> dict:
    """Milliseconds a step by op class and the ``top`` aten ops by self
    time (with their first input's shape) from torch profiler events."""
    classes = {label: 0.0 for label, _ in OP_CLASSES}
    ops = Counter()
    for event in events:
        if not event.name.startswith('aten::'):
            continue
        ms = event.self_cpu_time_total / 1e3 / steps
        classes[op_class(event.name)] += ms
        shapes = getattr(event, 'input_shapes', None) or [[]]
        ops[(event.name, str(list(shapes[0])))] += ms
    return dict(classes=classes, top=[
        dict(op=name, shape=shape, ms=ms)
        for (name, shape), ms in ops.most_common(top)])


def profile_training_steps(config: str, start: int = 30, steps: int = 10,
                           cfg_options: Optional[dict] = None,
                           work_dir: Optional[str] = None,
                           top: int = 15) -> dict:
    """Train ``config`` with its own runner (``tools/train.py``'s build)
    for ``start + steps`` iterations, without validation or checkpoints;
    time every step, profile the last ``steps`` (torch profiler, CPU) and
    say where their time went (:func:`summarize_profile`)."""
    if start < 1 or steps < 1:
        raise ValueError(f'start ({start}) and steps ({steps}) must be at '
                         'least 1: the first step warms up')

    class StepProfileHook(Hook):
        """Times each iteration from the end of the one before (the data
        fetch included, as mmengine's logged ``time``) and profiles
        iterations ``start`` .. ``start + steps - 1`` whole."""
        priority = 'LOWEST'

        def __init__(self):
            self.times, self.profiler, self.result = [], None, None
            self.last = None

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            if self.last is None:
                self.last = time.perf_counter()

        def after_train_iter(self, runner, batch_idx, data_batch=None,
                             outputs=None):
            now = time.perf_counter()
            self.times.append(now - self.last)
            self.last = now
            done = runner.iter + 1  # iterations finished
            if done == start:
                self.profiler = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU],
                    record_shapes=True)
                self.profiler.__enter__()
                self.last = time.perf_counter()
            elif done == start + steps:
                self.profiler.__exit__(None, None, None)
                self.result = summarize_profile(self.profiler.events(),
                                                steps, top)
                raise StopProfiling

    options = {'train_cfg.val_interval': 100000,
               'default_hooks.checkpoint.interval': 100000,
               'default_hooks.checkpoint.save_last': False}
    options.update(cfg_options or {})
    with tempfile.TemporaryDirectory(prefix='step_profile_') as tmp:
        runner = build_train_runner(config, work_dir=work_dir or tmp,
                                    cfg_options=options)
        hook = StepProfileHook()
        runner.register_hook(hook)
        try:
            runner.train()
        except StopProfiling:
            pass
        finally:
            del runner
            if hook.profiler is not None and hook.result is None:
                # the run ended (or failed) between start and start + steps
                hook.profiler.__exit__(None, None, None)
    if hook.result is None:
        raise ValueError(
            f'the run ended after {len(hook.times)} iterations, before '
            f'iteration {start + steps}: lower start/steps or lengthen the '
            'schedule (--cfg-options train_cfg.max_epochs=... or max_iters)')
    unprofiled = hook.times[1:start]
    profiled = hook.times[start:start + steps]
    return dict(
        config=config, start=start, steps=steps,
        step_s=statistics.median(unprofiled) if unprofiled else None,
        profiled_step_s=statistics.median(profiled), **hook.result)


def format_step_profile(result: dict, cpu: str = '') -> str:
    """A markdown report of :func:`profile_training_steps`'s result."""
    first, last = result['start'] + 1, result['start'] + result['steps']
    step = result['step_s']
    unprofiled = (f'median step {step * 1e3:.0f} ms (iterations '
                  f'2-{first - 1}, unprofiled); ' if step else '')
    lines = [
        f"{cpu + '; ' if cpu else ''}config: {result['config']}",
        f"{unprofiled}iterations {first}-{last} profiled: median step "
        f"{result['profiled_step_s'] * 1e3:.0f} ms", '',
        '| op class (self CPU time) | ms a step | share of the step |',
        '|---|---|---|']
    for label, ms in result['classes'].items():
        lines.append(f"| {label} | {ms:.1f} | "
                     f"{ms / 1e3 / result['profiled_step_s']:.0%} |")
    rest = result['profiled_step_s'] * 1e3 - sum(result['classes'].values())
    lines += [f'| not in aten ops (Python, hooks, data, waiting) | '
              f"{rest:.1f} | {rest / 1e3 / result['profiled_step_s']:.0%} |",
              '', '| op | first input | ms a step |', '|---|---|---|']
    lines += [f"| {t['op']} | {t['shape']} | {t['ms']:.1f} |"
              for t in result['top']]
    return '\n'.join(lines)
