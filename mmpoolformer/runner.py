"""What ``tools/train.py`` and ``tools/test.py`` share.

The config's ``default_scope`` (``mmdet`` or ``mmseg``, inherited from the
``mmdet::`` / ``mmseg::`` base) decides the library; this module checks the
dataset is where the config says before anything heavy starts, applies the
usual command-line switches and builds an mmengine ``Runner``.
"""
import os
import os.path as osp
from typing import Iterable, List, Optional

import torch
from mmengine.config import Config, ConfigDict
from mmengine.runner import CheckpointLoader, Runner

SUPPORTED_SCOPES = ('mmdet', 'mmseg')
# Datasets that create themselves on first use need no check.
SELF_GENERATING = ('ShapesDataset', 'ShapesSegDataset')
DEMO_CONFIGS = dict(
    mmdet='configs/detection/retinanet_poolformer_s12_shapes.py',
    mmseg='configs/segmentation/fpn_poolformer_s12_shapes.py')


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


def check_datasets(cfg: Config, loaders: Iterable[str], config_path: str):
    """Raise :class:`DatasetNotFoundError` naming each missing path, how to
    point the config elsewhere and how to run the built-in demo instead."""
    missing = []
    for loader, dataset in _datasets(cfg, loaders):
        if dataset.get('type') in SELF_GENERATING:
            continue
        for path in _expected_paths(dataset):
            if not osp.exists(path):
                missing.append((loader, dataset.get('data_root'), path))
    if not missing:
        return
    lines = [f'{loader}: {path}' for loader, _, path in missing]
    loader, root, _ = missing[0]
    demo = DEMO_CONFIGS[cfg.default_scope]
    raise DatasetNotFoundError(
        f'The dataset of {config_path} is not where the config expects it '
        f'(relative paths are from {os.getcwd()}):\n  ' + '\n  '.join(lines) +
        '\nDownload it there (or symlink it), or point the config at your '
        f'copy, e.g. --cfg-options {loader}.dataset.data_root=/path/to/data/ '
        '(for every dataloader). To try mmpoolformer without it, run the '
        f'built-in demo: python tools/train.py {demo}')


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
                       launcher: str = 'none') -> Runner:
    """The Runner ``tools/train.py`` runs; ``resume`` is 'auto' or a path."""
    cfg = load_config(config, cfg_options)
    cfg.launcher = launcher
    check_datasets(cfg, ('train_dataloader', 'val_dataloader'), config)
    setup_work_dir(cfg, work_dir, config)
    if amp:
        enable_amp(cfg)
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
                      launcher: str = 'none') -> Runner:
    """The Runner ``tools/test.py`` runs on ``checkpoint``."""
    cfg = load_config(config, cfg_options)
    cfg.launcher = launcher
    check_datasets(cfg, ('test_dataloader', ), config)
    setup_work_dir(cfg, work_dir, config)
    cfg.load_from = checkpoint
    if show_dir:
        _enable_visualization(cfg, show_dir)
    if out:
        _dump_results(cfg, out)
    trust_local_checkpoints()
    return _build_runner(cfg)


def _enable_visualization(cfg: Config, show_dir: str):
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise ValueError('--show-dir needs a visualization hook in '
                         'default_hooks (the mmdet/mmseg bases have one).')
    hook.draw = True
    if cfg.default_scope == 'mmdet':
        hook.test_out_dir = show_dir  # relative paths land in the work dir
    else:
        hook.interval = 1
        cfg.visualizer.save_dir = show_dir
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


def _build_runner(cfg: Config) -> Runner:
    if 'runner_type' in cfg:
        from mmengine.registry import RUNNERS
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
