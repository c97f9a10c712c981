"""What ``tools/train.py`` and ``tools/test.py`` share.

The config's ``default_scope`` (``mmdet`` or ``mmseg``, inherited from the
``mmdet::`` / ``mmseg::`` base) decides the library; this module checks the
dataset is where the config says before anything heavy starts, applies the
usual command-line switches and builds an mmengine ``Runner``.
"""
import copy
import datetime
import gc
import importlib
import json
import logging
import os
import os.path as osp
import uuid
from typing import Iterable, List, Optional, Tuple

import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log
from mmengine.runner import Runner

# registers the backbone, datasets, hooks and the CPU AMP wrapper
import mmpoolformer  # noqa: F401
from mmpoolformer.checkpoint import CheckpointError, use_safe_loader

SUPPORTED_SCOPES = ('mmdet', 'mmseg')
AMP_WRAPPERS = ('AmpOptimWrapper', 'CPUAmpOptimWrapper')
# Datasets that create themselves on first use need no check.
SELF_GENERATING = ('ShapesDataset', 'ShapesSegDataset')
DEMO_CONFIGS = dict(
    mmdet='configs/detection/retinanet_poolformer_s12_shapes.py',
    mmseg='configs/segmentation/fpn_poolformer_s12_shapes.py')


def add_launch_arguments(parser, example: str):
    """The flags tools/train.py and tools/test.py share (as in mmdet):
    ``--cfg-options``, ``--launcher`` and torch.distributed.launch's
    ``--local_rank``."""
    from mmengine.config import DictAction
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help=f'override config entries, e.g. {example}')
    parser.add_argument(
        '--trust-checkpoint', action='store_true',
        help='load the checkpoint with torch.load(weights_only=False). '
        'Unpickling can run code hidden in the file: only for files you '
        'trust. Without it, files holding more than what mmengine writes '
        'are refused')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_launch_arguments(parser, argv=None):
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


class DatasetNotFoundError(FileNotFoundError):
    """The config's dataset is not on disk; the message says what to do."""


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """The config file ``path``; where no such file exists, the config of
    that name that comes with mmpoolformer
    (``'detection/retinanet_poolformer_s12'``, see
    :func:`mmpoolformer.get_config_path`), from any working directory."""
    if not osp.isfile(path):
        from mmpoolformer.utils import get_config_path
        try:
            path = get_config_path(path)
        except FileNotFoundError as error:  # the tools print one line
            raise ConfigError(str(error)) from None
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in SUPPORTED_SCOPES:
        raise ValueError(
            f'{path}: default_scope is {scope!r}; expected one of '
            f'{SUPPORTED_SCOPES} (inherit an mmdet:: or mmseg:: base config).')
    return cfg


def _datasets(cfg: Config, loaders: Iterable[str]):
    for loader in loaders:
        loader_cfg = cfg.get(loader)
        if not loader_cfg:
            continue
        dataset = loader_cfg.get('dataset', {})
        # wrappers (RepeatDataset, ConcatDataset, ...) hold the real ones
        while 'dataset' in dataset:
            dataset = dataset['dataset']
        for item in dataset.get('datasets', [dataset]):
            yield loader, item


def _expected_paths(dataset: ConfigDict) -> List[str]:
    root = dataset.get('data_root') or ''
    paths = []
    if dataset.get('ann_file'):
        paths.append(osp.join(root, dataset['ann_file']))
    prefix = dataset.get('data_prefix') or {}
    for key in ('img', 'img_path', 'seg_map_path'):
        if prefix.get(key):
            paths.append(osp.join(root, prefix[key]))
    return paths or ([root] if root else [])


def _evaluator_files(cfg: Config, loader: str):
    """``ann_file`` of the evaluator(s) that go with ``loader`` (CocoMetric
    reads its own copy of the annotations)."""
    evaluators = cfg.get(loader.replace('_dataloader', '_evaluator')) or []
    for evaluator in (evaluators if isinstance(evaluators, list)
                      else [evaluators]):
        if evaluator.get('ann_file'):
            yield evaluator['ann_file']


def _demo_config(cfg: Config, config_path: str) -> str:
    """The built-in demo of the same model family, if there is one."""
    default = DEMO_CONFIGS[cfg.default_scope]
    family = osp.basename(config_path).split('_poolformer')[0]
    demo = osp.join(osp.dirname(default), f'{family}_poolformer_s12_shapes.py')
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    return demo if osp.isfile(osp.join(repo, demo)) else default


def check_datasets(cfg: Config, loaders: Iterable[str], config_path: str):
    """Raise :class:`DatasetNotFoundError` naming each missing path, how to
    point the config elsewhere and how to run the built-in demo instead."""
    missing, options, generated = [], [], set()
    for loader, dataset in _datasets(cfg, loaders):
        if dataset.get('type') in SELF_GENERATING:
            generated.add(loader)
            continue
        root = dataset.get('data_root')
        lost = [p for p in _expected_paths(dataset) if not osp.exists(p)]
        missing += [f'{loader}: {path}' for path in lost]
        if lost and root and _has_plain_dataset(cfg, loader):
            options.append(f'{loader}.dataset.data_root=/path/to/copy/')
    for loader in loaders:
        if loader in generated:  # its annotations appear on first use
            continue
        for ann_file in _evaluator_files(cfg, loader):
            if not osp.exists(ann_file):
                evaluator = loader.replace('_dataloader', '_evaluator')
                missing.append(f'{evaluator}: {ann_file}')
                root = cfg.get('data_root') or ''
                relative = (ann_file[len(root):] if root and
                            ann_file.startswith(root) else ann_file)
                options.append(
                    f'{evaluator}.ann_file=/path/to/copy/{relative}')
    if not missing:
        return
    root = (cfg.get('data_root') or 'the data_root of the config').rstrip('/')
    demo = _demo_config(cfg, config_path)
    raise DatasetNotFoundError(
        f'The dataset of {config_path} is not where the config expects it '
        f'(relative paths are from {os.getcwd()}):\n  ' +
        '\n  '.join(missing) +
        f'\nPut it there (a symlink will do: ln -s /path/to/copy {root}), or '
        'point the config at your copy:\n  --cfg-options ' +
        ' '.join(options or ['<loader>.dataset.data_root=/path/to/copy/'])
        + '\nTo try mmpoolformer without it, run the '
        f'built-in demo: python tools/train.py {demo}')


def _has_plain_dataset(cfg: Config, loader: str) -> bool:
    """True when ``loader.dataset`` is the dataset itself (no wrapper)."""
    return 'dataset' not in cfg[loader].dataset


class ConfigError(ValueError):
    """Parts of the config disagree (backbone and neck, dataset and head);
    the message names the config keys and the values that fit."""


class AnnotationFormatError(ValueError):
    """An annotation file is not in the format its dataset reads."""


# what tools/train.py and tools/test.py report as one line, no traceback
USER_ERRORS = (DatasetNotFoundError, ConfigError, AnnotationFormatError,
               CheckpointError)


def _our_backbone(model_type):
    """The class of one of this package's dense backbones named by
    ``model_type`` (a class or a registered name), else None."""
    from mmpoolformer.models import DenseBackbone
    from mmpoolformer.registry import MODELS
    if isinstance(model_type, str):
        model_type = MODELS.module_dict.get(
            model_type[len('mmpoolformer.'):]
            if model_type.startswith('mmpoolformer.') else model_type)
    if isinstance(model_type, type) and issubclass(model_type, DenseBackbone):
        return model_type
    return None


def check_model(cfg: Config):
    """Check that the neck takes the feature widths the backbone (one of
    this package's) produces, from the config alone (nothing is built): the
    arch's ``embed_dims`` at the backbone's ``out_indices``. Raise
    :class:`ConfigError` naming the widths and the key to set; an unknown
    ``arch`` or a bad ``out_indices`` raises the backbone's own error."""
    from mmpoolformer.models.backbones.base import normalize_out_indices
    model = cfg.get('model') or {}
    backbone, neck = model.get('backbone'), model.get('neck')
    backbone_cls = _our_backbone(backbone.get('type')) \
        if isinstance(backbone, dict) else None
    if backbone_cls is None or not backbone.get('fork_feat', True):
        return
    arch = backbone.get('arch', backbone_cls.default_arch)
    dims = backbone_cls.arch_embed_dims(arch)
    indices = normalize_out_indices(
        backbone.get('out_indices', (0, 1, 2, 3)), backbone_cls.__name__)
    widths = [dims[i] for i in indices]
    if isinstance(neck, (list, tuple)):  # a chain of necks: the first
        neck = neck[0] if neck else None
    in_channels = neck.get('in_channels') if isinstance(neck, dict) else None
    if (not isinstance(in_channels, (list, tuple))
            or list(in_channels) == widths):
        return
    name = repr(arch) if isinstance(arch, str) else f'embed_dims {dims}'
    raise ConfigError(
        f'model.neck.in_channels is {list(in_channels)}, but the '
        f'{backbone_cls.__name__} backbone (arch {name}, out_indices '
        f'{indices}) produces features '
        f'of widths {widths}. Set model.neck.in_channels={widths} (on the '
        'command line: --cfg-options model.neck.in_channels=['
        f'{",".join(map(str, widths))}]), or change the backbone arch or '
        'out_indices.')


# Larger annotation files are scanned for their keys, not parsed: the
# dataset parses them again anyway (COCO train2017 is 450 MB).
_JSON_PARSE_LIMIT = 64 << 20
_COCO_KEYS = ('images', 'annotations', 'categories')


def _coco_keys(path: str) -> Tuple[Optional[str], List[str]]:
    """(what is wrong or None, top-level COCO keys found) for a JSON
    annotation file."""
    with open(path, 'rb') as file:
        head = file.read(4096)
    start = head.lstrip()[:1]
    if not head.strip():
        return 'it is empty', []
    if start != b'{':
        if start == b'[':
            return 'it is a JSON list, not an object', []
        text = head.decode('utf-8', 'replace').strip().splitlines()[0]
        return f'it is not JSON (it starts with {text[:40]!r})', []
    if osp.getsize(path) <= _JSON_PARSE_LIMIT:
        try:
            with open(path, encoding='utf-8') as file:
                data = json.load(file)
        except (ValueError, UnicodeDecodeError) as error:
            return f'it is not valid JSON ({error})', []
        wrong = [k for k in _COCO_KEYS
                 if k in data and not isinstance(data[k], list)]
        if wrong:
            return f'its {wrong} are not lists', []
        found = [k for k in _COCO_KEYS if k in data]
        if len(found) < len(_COCO_KEYS):
            return f'its top-level keys are {sorted(data)[:10]}', found
        return None, found
    found, tail = set(), b''
    with open(path, 'rb') as file:
        while len(found) < len(_COCO_KEYS):
            chunk = file.read(16 << 20)
            if not chunk:
                break
            window = tail + chunk
            found.update(k for k in _COCO_KEYS
                         if f'"{k}"'.encode() in window)
            tail = chunk[-16:]
    found = [k for k in _COCO_KEYS if k in found]
    if len(found) < len(_COCO_KEYS):
        return f'it has only the keys {found}', found
    return None, found


def _check_coco_file(path: str, key: str, need_annotations: bool):
    """Raise :class:`AnnotationFormatError` unless ``path`` (the config's
    ``key``) is COCO JSON: an object with ``images``, ``categories`` and,
    where ground truth is read, ``annotations``."""
    problem, found = _coco_keys(path)
    needed = [k for k in _COCO_KEYS
              if need_annotations or k != 'annotations']
    if problem is None or (found and all(k in found for k in needed)):
        return
    raise AnnotationFormatError(
        f'{key}: {path} is not a COCO annotation file: {problem}. COCO JSON '
        f'is one object with the lists {", ".join(map(repr, needed))} (see '
        'https://cocodataset.org/#format-data). Convert the annotations to '
        f'COCO, or point {key} at the COCO file.')


def _library_class(cfg: Config, registry_name: str, type_):
    """The class a config ``type`` names in the config's library, or
    None (nothing is built)."""
    if isinstance(type_, type):
        return type_
    if not isinstance(type_, str):
        return None
    try:
        registry = getattr(importlib.import_module(
            f'{cfg.default_scope}.registry'), registry_name)
        return registry.get(type_)
    except (ImportError, AttributeError, KeyError):
        return None


def _is_coco_dataset(cfg: Config, dataset_cls) -> bool:
    if dataset_cls is None or cfg.default_scope != 'mmdet':
        return False
    from mmdet.datasets import CocoDataset
    return issubclass(dataset_cls, CocoDataset)


def _dataset_key(cfg: Config, loader: str, name: str) -> str:
    return (f'{loader}.dataset.{name}' if _has_plain_dataset(cfg, loader)
            else f"the dataset's {name} in {loader}")


def _check_annotations(cfg: Config, loaders: Iterable[str]):
    for loader, dataset in _datasets(cfg, loaders):
        if dataset.get('type') in SELF_GENERATING or not dataset.get(
                'ann_file'):
            continue
        path = osp.join(dataset.get('data_root') or '', dataset['ann_file'])
        dataset_cls = _library_class(cfg, 'DATASETS', dataset.get('type'))
        if osp.isfile(path) and _is_coco_dataset(cfg, dataset_cls):
            _check_coco_file(path, _dataset_key(cfg, loader, 'ann_file'),
                             loader != 'test_dataloader')
    if cfg.default_scope != 'mmdet':
        return
    for loader in loaders:
        name = loader.replace('_dataloader', '_evaluator')
        evaluators = cfg.get(name) or []
        if not isinstance(evaluators, list):
            evaluators = [evaluators]
        for evaluator in evaluators:
            path = evaluator.get('ann_file')
            if (evaluator.get('type') == 'CocoMetric' and path
                    and osp.isfile(path)):
                _check_coco_file(path, f'{name}.ann_file',
                                 not evaluator.get('format_only', False))


def _dataset_classes(cfg: Config, dataset) -> Optional[Tuple[tuple, str]]:
    """(class names, where they come from) of a dataset config, from its
    ``metainfo`` or its class's ``METAINFO``; None if unknown."""
    metainfo = dataset.get('metainfo')
    if isinstance(metainfo, dict) and metainfo.get('classes'):
        return tuple(metainfo['classes']), 'its metainfo in the config'
    dataset_cls = _library_class(cfg, 'DATASETS', dataset.get('type'))
    classes = (getattr(dataset_cls, 'METAINFO', None) or {}).get('classes')
    if classes:
        return tuple(classes), f'{dataset_cls.__name__}.METAINFO'
    return None


def _class_heads(cfg: Config):
    """(config key, num_classes) of each classifying head: mmdet's
    bbox/roi heads, mmseg's decode and auxiliary heads."""
    model = cfg.get('model') or {}
    roi_head = model.get('roi_head') or {}
    candidates = [('model.bbox_head', model.get('bbox_head')),
                  ('model.roi_head.bbox_head', roi_head.get('bbox_head')),
                  ('model.roi_head.mask_head', roi_head.get('mask_head')),
                  ('model.decode_head', model.get('decode_head')),
                  ('model.auxiliary_head', model.get('auxiliary_head'))]
    for key, head in candidates:
        heads = (list(enumerate(head)) if isinstance(head, (list, tuple))
                 else [(None, head)])
        for index, one in heads:
            if isinstance(one, dict) and isinstance(
                    one.get('num_classes'), int):
                name = key if index is None else f'{key}.{index}'
                yield f'{name}.num_classes', one['num_classes']


def _check_num_classes(cfg: Config, loaders: Iterable[str]):
    mismatches = {}  # (head key, its num_classes, dataset facts) -> loaders
    for loader, dataset in _datasets(cfg, loaders):
        found = _dataset_classes(cfg, dataset)
        if found is None:
            continue
        for key, num_classes in _class_heads(cfg):
            if num_classes != len(found[0]):
                facts = (key, num_classes, dataset.get('type')) + found
                mismatches.setdefault(facts, []).append(loader)
    if not mismatches:
        return
    problems, fixes, datasets = [], {}, []
    for (key, num_classes, type_, classes, source), where in (
            mismatches.items()):
        shown = classes if len(classes) <= 8 else classes[:8] + ('...', )
        plural = len(where) > 1
        problems.append(
            f'{key} is {num_classes}, but the dataset{"s" * plural} of '
            f'{" and ".join(where)} ({type_}) '
            f'{"have" if plural else "has"} {len(classes)} classes '
            f'{shown} (from {source})')
        fixes.setdefault(key, len(classes))
        datasets += [loader for loader in where if loader not in datasets]
    raise ConfigError(
        'The head and the dataset disagree on the number of classes:\n  '
        + '\n  '.join(problems) + '\nSet the head to the dataset: '
        '--cfg-options ' + ' '.join(f'{k}={v}' for k, v in fixes.items())
        + '\nor, if the head is right, list its classes in the dataset '
        'config (metainfo=dict(classes=(...)) in '
        + ', '.join(f'{loader}.dataset' for loader in datasets) + ').')


def check_data(cfg: Config, loaders: Iterable[str]):
    """Before the Runner starts: annotation files of COCO datasets are
    COCO JSON (:class:`AnnotationFormatError` otherwise), and each head's
    ``num_classes`` equals the number of classes of every dataset
    (:class:`ConfigError` otherwise). Nothing is built or loaded beyond
    the annotation files' keys."""
    _check_annotations(cfg, loaders)
    _check_num_classes(cfg, loaders)


def setup_work_dir(cfg: Config, work_dir: Optional[str], config_path: str):
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


def enable_amp(cfg: Config):
    """--amp: mmengine's ``AmpOptimWrapper`` (float16 with loss scaling) on
    an accelerator, :class:`CPUAmpOptimWrapper` in bfloat16 on a CPU (see
    :func:`amp_on_cpu`). A config that already names an AMP wrapper keeps
    it."""
    wrapper = cfg.optim_wrapper
    if wrapper.get('type', 'OptimWrapper') not in AMP_WRAPPERS:
        wrapper.type = 'AmpOptimWrapper'
        if torch.cuda.is_available():
            wrapper.loss_scale = 'dynamic'
    amp_on_cpu(cfg)


def amp_on_cpu(cfg: Config):
    """mmengine's ``AmpOptimWrapper`` asserts an accelerator: on a CPU-only
    machine the tools run such a config with :class:`CPUAmpOptimWrapper`
    (bfloat16, the only CPU autocast type) and say so."""
    wrapper = cfg.get('optim_wrapper') or {}
    if torch.cuda.is_available() or wrapper.get('type') != 'AmpOptimWrapper':
        return
    wrapper.type = 'CPUAmpOptimWrapper'
    wrapper.dtype = 'bfloat16'
    wrapper.pop('loss_scale', None)
    print_log('No GPU: optim_wrapper AmpOptimWrapper runs as '
              'CPUAmpOptimWrapper (bf16 autocast where the CPU has bf16 '
              'kernels, else float32).', logger='current')


def fused_optimizer_fallback(cfg: Config):
    """A config may ask for a fused optimizer step
    (``optim_wrapper.optimizer.fused=True``: one kernel per parameter
    instead of a Python loop over parameters and ops; the shapes demos do,
    about 9 ms a step less on 2 CPU cores). torch before 2.4 has no fused
    Adam/AdamW for CPU tensors: there the tools drop the option, say so and
    run the optimizer's default implementation, which computes the same
    update."""
    optimizer = (cfg.get('optim_wrapper') or {}).get('optimizer') or {}
    if not optimizer.get('fused'):
        return
    from mmengine.device import get_device
    from mmengine.registry import OPTIMIZERS
    kind = optimizer.get('type')
    optim_cls = OPTIMIZERS.get(kind) if isinstance(kind, str) else kind
    if not isinstance(optim_cls, type):
        return  # not a class we can try; the Runner reports it
    device = get_device()
    probe = [torch.nn.Parameter(torch.zeros(1, device=device))]
    try:
        optim_cls(probe, lr=optimizer.get('lr', 1e-3), fused=True)
        return
    except (TypeError, RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
    optimizer.pop('fused')
    print_log(f'optim_wrapper.optimizer.fused=True is not available with '
              f'torch {torch.__version__} on {device} ({reason}); running '
              f"{optim_cls.__name__}'s default implementation (the same "
              'update, a little slower).', logger='current',
              level=logging.WARNING)


def add_default_hooks(cfg: Config):
    """Every training run stops at the first NaN/inf loss or gradient
    (:class:`NonFiniteCheckHook`) and saves its random state in checkpoints
    for an exact ``--resume`` (:class:`RandomStateHook`), unless the config
    lists them already."""
    hooks = list(cfg.get('custom_hooks') or [])
    listed = {str(h.get('type', '')).split('.')[-1] for h in hooks}
    for name in ('NonFiniteCheckHook', 'RandomStateHook'):
        if name not in listed:
            hooks.append(dict(type=name))
    cfg.custom_hooks = hooks


def build_train_runner(config: str, work_dir: Optional[str] = None,
                       resume: Optional[str] = None, amp: bool = False,
                       cfg_options: Optional[dict] = None,
                       launcher: str = 'none',
                       auto_scale_lr: bool = False,
                       trust_checkpoint: bool = False) -> Runner:
    """The Runner ``tools/train.py`` runs; ``resume`` is 'auto' or a path.

    Checkpoints (``resume``, ``load_from``) load with ``weights_only=True``
    unless ``trust_checkpoint`` (see
    :mod:`mmpoolformer.checkpoint.safe_load`)."""
    cfg = load_config(config, cfg_options)
    check_model(cfg)
    cfg.launcher = launcher
    check_datasets(cfg, ('train_dataloader', 'val_dataloader'), config)
    check_data(cfg, ('train_dataloader', 'val_dataloader'))
    setup_work_dir(cfg, work_dir, config)
    if amp:
        enable_amp(cfg)
    amp_on_cpu(cfg)
    fused_optimizer_fallback(cfg)
    if auto_scale_lr:
        enable_auto_scale_lr(cfg)
    add_default_hooks(cfg)
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume
    return _build_runner(cfg, trust_checkpoint)


def build_test_runner(config: str, checkpoint: str,
                      work_dir: Optional[str] = None,
                      out: Optional[str] = None,
                      show_dir: Optional[str] = None,
                      cfg_options: Optional[dict] = None,
                      launcher: str = 'none', show: bool = False,
                      wait_time: float = 2., tta: bool = False,
                      trust_checkpoint: bool = False) -> Runner:
    """The Runner ``tools/test.py`` runs on ``checkpoint`` (loaded with
    ``weights_only=True`` unless ``trust_checkpoint``)."""
    cfg = load_config(config, cfg_options)
    check_model(cfg)
    cfg.launcher = launcher
    check_datasets(cfg, ('test_dataloader', ), config)
    check_data(cfg, ('test_dataloader', ))
    setup_work_dir(cfg, work_dir, config)
    cfg.load_from = checkpoint
    if show_dir or show:
        _enable_visualization(cfg, show_dir, show, wait_time)
    if tta:
        enable_tta(cfg)
    if out:
        _dump_results(cfg, out)
    return _build_runner(cfg, trust_checkpoint)


def _enable_visualization(cfg: Config, show_dir: Optional[str],
                          show: bool = False, wait_time: float = 2.):
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise ValueError('--show-dir needs a visualization hook in '
                         'default_hooks (the mmdet/mmseg bases have one).')
    hook.draw = True
    if show:  # a window per image; needs a display
        hook.show = True
        hook.wait_time = wait_time
    if not show_dir:
        return
    if cfg.default_scope == 'mmdet':
        hook.test_out_dir = show_dir  # relative paths land in the work dir
    else:
        hook.interval = 1
        cfg.visualizer.save_dir = show_dir  # (a fresh one: own_visualizer)
        cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]


def _dump_results(cfg: Config, out: str):
    if cfg.default_scope == 'mmdet':
        if not out.endswith(('.pkl', '.pickle')):
            raise ValueError('--out must be a .pkl/.pickle file for mmdet '
                             f'configs, got {out}')
        evaluators = cfg.test_evaluator
        if not isinstance(evaluators, list):
            evaluators = [evaluators]
        cfg.test_evaluator = evaluators + [
            dict(type='DumpDetResults', out_file_path=out)]
    else:  # mmseg writes prediction maps into a folder
        cfg.test_evaluator.output_dir = out
        cfg.test_evaluator.keep_results = True


def enable_auto_scale_lr(cfg: Config):
    """--auto-scale-lr: scale the lr by the real total batch size over
    ``auto_scale_lr.base_batch_size``."""
    if not cfg.get('auto_scale_lr', {}).get('base_batch_size'):
        raise ValueError('--auto-scale-lr needs auto_scale_lr = dict('
                         'base_batch_size=...) in the config (the batch size '
                         'its lr was tuned for).')
    cfg.auto_scale_lr.enable = True


def enable_tta(cfg: Config):
    """--tta: wrap the model in the config's ``tta_model`` and test with its
    ``tta_pipeline``, as mmdet's and mmseg's test tools do. mmdet configs
    without them get mmdet's default: horizontal flip, boxes merged by NMS."""
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:
        dataset = dataset.dataset
    if cfg.default_scope == 'mmdet':
        cfg.setdefault('tta_model', dict(
            type='DetTTAModel',
            tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5),
                         max_per_img=100)))
        if 'tta_pipeline' not in cfg:
            pipeline = copy.deepcopy(dataset.pipeline)
            pipeline[-1] = dict(
                type='TestTimeAug',
                transforms=[[dict(type='RandomFlip', prob=1.),
                             dict(type='RandomFlip', prob=0.)],
                            [dict(pipeline[-1], meta_keys=(
                                'img_id', 'img_path', 'ori_shape',
                                'img_shape', 'scale_factor', 'flip',
                                'flip_direction'))]])
            cfg.tta_pipeline = pipeline
    elif 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise ValueError('--tta needs tta_model and tta_pipeline in the '
                         'config (the mmseg dataset bases define them).')
    dataset.pipeline = cfg.tta_pipeline
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)


def setup_cpu_distributed(cfg: Config):
    """Let torchrun-launched runs (``--launcher pytorch``) work without CUDA.

    mmengine's pytorch launcher calls ``torch.cuda.set_device`` and its DDP
    wrapper passes ``device_ids=[LOCAL_RANK]``; both fail on a CPU. Here the
    process group starts with gloo from torchrun's environment (mmengine
    then skips its own init) and DDP gets ``device_ids=None``.
    """
    if cfg.launcher != 'pytorch' or torch.cuda.is_available():
        return
    import torch.distributed as torch_dist
    if not torch_dist.is_initialized():
        timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout')
        kwargs = ({} if timeout is None else
                  dict(timeout=datetime.timedelta(seconds=timeout)))
        torch_dist.init_process_group(backend='gloo', **kwargs)
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper.setdefault('device_ids', None)
    cfg.model_wrapper_cfg = wrapper


def close_distributed():
    """Destroy the process group, if any, before the interpreter exits.

    mmengine leaves it open. Gloo work still referenced at interpreter
    shutdown (by DDP's reducer, kept alive by the Runner's reference cycles)
    can abort a finished, successful CPU run with "terminate called without
    an active exception" (seen in about a third of 2-process runs with
    ``OMP_NUM_THREADS=1``). Callers drop their Runner first; the collection
    here frees it while the interpreter is whole.
    """
    import torch.distributed as torch_dist
    gc.collect()
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def own_visualizer(cfg: Config):
    """Give the config's visualizer a name no earlier Runner used.

    mmdet's and mmseg's bases name it 'visualizer', and mmengine hands an
    existing instance of a name back, with its first save_dir and backends:
    a second Runner in one process (a notebook, tests, a sweep) would write
    its scalars and images into the first run's work dir. Hooks find the
    visualizer as the newest instance, so the name matters nowhere else."""
    visualizer = cfg.get('visualizer')
    if visualizer is not None:
        name = visualizer.get('name') or 'visualizer'
        visualizer['name'] = f'{name}_{uuid.uuid4().hex[:12]}'


def _build_runner(cfg: Config, trust_checkpoint: bool = False) -> Runner:
    setup_cpu_distributed(cfg)
    own_visualizer(cfg)
    if 'runner_type' in cfg:
        from mmengine.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    use_safe_loader(runner, trust=trust_checkpoint)
    return runner
