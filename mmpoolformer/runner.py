"""What ``tools/train.py`` and ``tools/test.py`` share.

The config's ``default_scope`` (``mmdet`` or ``mmseg``, inherited from the
``mmdet::`` / ``mmseg::`` base) decides the library; this module checks the
dataset is where the config says before anything heavy starts, applies the
usual command-line switches and builds an mmengine ``Runner``.
"""
import copy
import datetime
import gc
import os
import os.path as osp
from typing import Iterable, List, Optional

import torch
from mmengine.config import Config, ConfigDict
from mmengine.runner import CheckpointLoader, Runner

# --amp on CPU-only machines: bf16 autocast, mmcv ops kept in fp32
import mmpoolformer.cpu_amp  # noqa: F401,E402

SUPPORTED_SCOPES = ('mmdet', 'mmseg')
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


def trust_local_checkpoints():
    """Load local files given to --resume / load_from with
    ``weights_only=False``.

    torch >= 2.6 defaults to ``weights_only=True``, which refuses the
    message hub and optimizer state that mmengine pickles into its own
    checkpoints, so resuming would fail. The tools only load files the user
    names on the command line or in the config.
    """
    def load_from_local(filename, map_location):
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        return torch.load(filename, map_location=map_location,
                          weights_only=False)

    CheckpointLoader.register_scheme(prefixes='', force=True)(load_from_local)


def setup_work_dir(cfg: Config, work_dir: Optional[str], config_path: str):
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


def enable_amp(cfg: Config):
    """--amp: float16 on CUDA, bfloat16 on CPU (the only type CPU autocast
    supports)."""
    wrapper = cfg.optim_wrapper
    if wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
        return
    wrapper.type = 'AmpOptimWrapper'
    if torch.cuda.is_available():
        wrapper.loss_scale = 'dynamic'
    else:
        wrapper.dtype = 'bfloat16'


def build_train_runner(config: str, work_dir: Optional[str] = None,
                       resume: Optional[str] = None, amp: bool = False,
                       cfg_options: Optional[dict] = None,
                       launcher: str = 'none',
                       auto_scale_lr: bool = False) -> Runner:
    """The Runner ``tools/train.py`` runs; ``resume`` is 'auto' or a path."""
    cfg = load_config(config, cfg_options)
    cfg.launcher = launcher
    check_datasets(cfg, ('train_dataloader', 'val_dataloader'), config)
    setup_work_dir(cfg, work_dir, config)
    if amp:
        enable_amp(cfg)
    if auto_scale_lr:
        enable_auto_scale_lr(cfg)
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume
    trust_local_checkpoints()
    return _build_runner(cfg)


def build_test_runner(config: str, checkpoint: str,
                      work_dir: Optional[str] = None,
                      out: Optional[str] = None,
                      show_dir: Optional[str] = None,
                      cfg_options: Optional[dict] = None,
                      launcher: str = 'none', show: bool = False,
                      wait_time: float = 2., tta: bool = False) -> Runner:
    """The Runner ``tools/test.py`` runs on ``checkpoint``."""
    cfg = load_config(config, cfg_options)
    cfg.launcher = launcher
    check_datasets(cfg, ('test_dataloader', ), config)
    setup_work_dir(cfg, work_dir, config)
    cfg.load_from = checkpoint
    if show_dir or show:
        _enable_visualization(cfg, show_dir, show, wait_time)
    if tta:
        enable_tta(cfg)
    if out:
        _dump_results(cfg, out)
    trust_local_checkpoints()
    return _build_runner(cfg)


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
        cfg.visualizer.save_dir = show_dir
        # mmseg names its visualizer 'visualizer'; mmengine would hand back
        # an earlier instance of that name (with its old save_dir) when a
        # process builds a second Runner. The Runner's default name is the
        # run's own.
        cfg.visualizer.pop('name', None)
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


def _build_runner(cfg: Config) -> Runner:
    setup_cpu_distributed(cfg)
    if 'runner_type' in cfg:
        from mmengine.registry import RUNNERS
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
