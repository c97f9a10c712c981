"""Detection configs (paper recipe, parameter counts) and short real runs of
RetinaNet and Mask R-CNN on a tiny shapes set with COCO evaluation."""
import copy
import os.path as osp
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import init_default_scope

import mmpoolformer  # noqa: F401  registers PoolFormer and ShapesDataset
from coco_check import OutputRecorder, assert_runner_metrics_are_pycocotools
from mmpoolformer.runner import build_train_runner

# pycocotools 2.0.x + numpy 2 warn on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    'ignore:__array__ implementation:DeprecationWarning')

REPO = Path(__file__).resolve().parents[1]
DET_CONFIGS = REPO / 'configs' / 'detection'
CHECKPOINT_URL = ('https://github.com/sail-sg/poolformer/releases/download/'
                  'v1.0/poolformer_{}.pth.tar')
# paper Table (COCO), millions of parameters
PAPER_PARAMS = {
    ('retinanet', 's12'): 21.7, ('retinanet', 's24'): 31.1,
    ('retinanet', 's36'): 40.6, ('mask_rcnn', 's12'): 31.6,
    ('mask_rcnn', 's24'): 41.0, ('mask_rcnn', 's36'): 50.5,
}
TINY_SET = dict(num_train=16, num_val=8, img_size=64)

# The shapes dataset bases the demo configs inherit
DATASET_BASES = REPO / 'configs' / '_base_' / 'datasets'
SHAPES_DATA = dict(retinanet='shapes_detection.py',
                   mask_rcnn='shapes_instance.py')
TINY_IMG_SCALE = (64, 64)
# An untrained detector scores below the usual 0.05 threshold; keep every
# box so COCO evaluation has predictions to score.
RETINA_HEADS = dict(bbox_head=dict(num_classes=3),
                    test_cfg=dict(score_thr=0.0))
MASK_RCNN_HEADS = dict(
    roi_head=dict(bbox_head=dict(num_classes=3),
                  mask_head=dict(num_classes=3)),
    # fewer proposals and RoIs: a 64 px image holds < 7 objects, and
    # RoIAlign on a CPU is the slow part
    train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100),
                   rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100),
                  rcnn=dict(score_thr=0.0, max_per_img=20)))


def use_dataset_base(cfg: Config, dataset_base) -> Config:
    """Swap ``cfg``'s dataset for the one of the dataset base file
    ``dataset_base``: each of its top-level keys replaces ``cfg``'s, as
    listing it in ``_base_`` instead of the COCO dataset base does."""
    for key, value in Config.fromfile(str(dataset_base)).items():
        cfg[key] = copy.deepcopy(value)
    return cfg


def tiny_config(folder, detector='retinanet', max_epochs=1,
                backbone_extra='') -> Config:
    """``{detector}_poolformer_s12.py`` (the COCO config) on the shapes
    dataset base of its demo, shrunk to a tiny set under ``folder/shapes``:
    64 px, 4 images a batch, no worker processes, a log line every
    iteration. Only data, classes and schedule change; model, optimizer and
    hooks are the config's own. ``backbone_extra`` adds backbone arguments
    (``', drop_path_rate=0.1'``)."""
    cfg = use_dataset_base(
        Config.fromfile(str(DET_CONFIGS / f'{detector}_poolformer_s12.py')),
        DATASET_BASES / SHAPES_DATA[detector])
    data_root = str(Path(folder) / 'shapes') + '/'
    cfg.img_scale = TINY_IMG_SCALE
    loaders = ('train_dataloader', 'val_dataloader', 'test_dataloader')
    for pipeline in [cfg.train_pipeline, cfg.test_pipeline] + [
            cfg[loader].dataset.pipeline for loader in loaders]:
        for step in pipeline:
            if step.type == 'Resize':
                step.scale = TINY_IMG_SCALE
    backbone = Config.fromstring(
        f'backbone = dict(init_cfg=None{backbone_extra})', '.py').backbone
    cfg.merge_from_dict(dict(
        model=dict(backbone=backbone.to_dict(),
                   **(RETINA_HEADS if detector == 'retinanet'
                      else MASK_RCNN_HEADS)),
        data_root=data_root,
        train_cfg=dict(max_epochs=max_epochs, val_interval=1),
        default_hooks=dict(logger=dict(interval=1))))
    for loader in loaders:
        cfg.merge_from_dict({
            f'{loader}.batch_size': 4, f'{loader}.num_workers': 0,
            f'{loader}.persistent_workers': False,
            f'{loader}.dataset.data_root': data_root,
            f'{loader}.dataset.generate': TINY_SET})
    for evaluator in ('val_evaluator', 'test_evaluator'):
        cfg[evaluator].ann_file = data_root + 'annotations/instances_val.json'
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1,
                                by_epoch=False, begin=0, end=4)]
    return cfg


def write_tiny_config(folder, detector='retinanet', max_epochs=1,
                      backbone_extra='') -> str:
    """Write :func:`tiny_config` (data under ``folder/shapes``) into
    ``folder`` as a plain config file; return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f'tiny_{detector}.py'
    tiny_config(folder, detector, max_epochs, backbone_extra).dump(str(path))
    return str(path)


def _config(detector, arch):
    return Config.fromfile(
        str(DET_CONFIGS / f'{detector}_poolformer_{arch}.py'))


@pytest.mark.parametrize('detector,arch', sorted(PAPER_PARAMS))
def test_param_count_matches_paper(detector, arch):
    cfg = _config(detector, arch)
    init_default_scope('mmdet')
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None  # nothing downloads
    from mmdet.registry import MODELS
    model = MODELS.build(model_cfg)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - PAPER_PARAMS[(detector, arch)]) < 0.1, params


@pytest.mark.parametrize('detector,arch', sorted(PAPER_PARAMS))
def test_config_follows_paper_recipe(detector, arch):
    cfg = _config(detector, arch)
    assert cfg.default_scope == 'mmdet'
    backbone, neck = cfg.model.backbone, cfg.model.neck
    assert backbone.type == 'PoolFormer' and backbone.arch == arch
    assert backbone.init_cfg == dict(type='Pretrained',
                                     checkpoint=CHECKPOINT_URL.format(arch))
    assert neck.in_channels == [64, 128, 320, 512]
    assert neck.out_channels == 256 and neck.num_outs == 5
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer == dict(type='AdamW', weight_decay=1e-4,
                             lr=1e-4 if detector == 'retinanet' else 2e-4)
    assert cfg.train_cfg.max_epochs == 12
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.by_epoch,
            warmup.end) == ('LinearLR', 0.001, False, 500)
    assert steps.type == 'MultiStepLR' and steps.milestones == [8, 11]
    assert cfg.train_dataloader.batch_size == 2
    # mmdet's way: the paper's lr as is; --auto-scale-lr opts in
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16)
    if detector == 'retinanet':
        assert backbone.fork_last3 is True
        assert neck.start_level == 1 and neck.add_extra_convs == 'on_input'
    else:  # all four levels are used: norm0 must stay
        assert not backbone.get('fork_last3')
        assert neck.get('start_level', 0) == 0


@pytest.mark.parametrize('arch', ['s24', 's36'])
@pytest.mark.parametrize('detector', ['retinanet', 'mask_rcnn'])
def test_larger_configs_only_change_arch(detector, arch):
    """S24/S36 differ from S12 in the backbone arch and checkpoint only."""
    small = _config(detector, 's12').to_dict()
    large = _config(detector, arch).to_dict()
    for cfg in (small, large):
        cfg['model']['backbone'].pop('arch')
        cfg['model']['backbone'].pop('init_cfg')
        cfg.pop('checkpoint')
    assert small == large


def test_shapes_load_in_mmdet_with_masks(tmp_path):
    init_default_scope('mmdet')
    from mmdet.registry import DATASETS
    root = str(tmp_path / 'shapes') + '/'
    dataset = DATASETS.build(dict(
        type='ShapesDataset', data_root=root, generate=TINY_SET,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations', with_bbox=True,
                       with_mask=True),
                  dict(type='PackDetInputs')]))
    assert len(dataset) == TINY_SET['num_train']
    assert dataset.metainfo['classes'] == ('circle', 'square', 'triangle')
    sample = dataset[0]
    assert sample['inputs'].shape == (3, 64, 64)
    instances = sample['data_samples'].gt_instances
    masks = instances.masks.to_ndarray()
    assert len(instances) > 0 and masks.shape == (len(instances), 64, 64)
    # each mask lies inside its box and is not empty
    for mask, box in zip(masks, instances.bboxes.tensor):
        ys, xs = mask.nonzero()
        assert len(xs) > 0
        x1, y1, x2, y2 = box.tolist()
        assert x1 - 1 <= xs.min() and xs.max() <= x2 + 1
        assert y1 - 1 <= ys.min() and ys.max() <= y2 + 1


@pytest.mark.parametrize('detector,metrics', [
    ('retinanet', ('bbox', )),
    ('mask_rcnn', ('bbox', 'segm')),
])
def test_short_run_with_coco_evaluation(tmp_path, detector, metrics):
    config = write_tiny_config(tmp_path, detector)
    runner = build_train_runner(config, work_dir=str(tmp_path / 'work'))
    losses, outputs = [], []
    runner.register_hook(LossRecorder(losses))
    runner.register_hook(OutputRecorder(outputs))
    runner.train()
    assert runner.iter == 4  # 16 images, 4 a batch, 1 epoch
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    # the reported numbers are pycocotools' on the model's val predictions
    dataset = runner.val_dataloader.dataset
    assert sorted(o.img_id for o in outputs) == sorted(
        dataset.get_data_info(i)['img_id'] for i in range(len(dataset)))
    assert_runner_metrics_are_pycocotools(
        runner, outputs, metrics, keys=('mAP', 'mAP_50', 'mAP_75'))
    assert osp.isfile(tmp_path / 'work' / 'epoch_1.pth')


class LossRecorder(Hook):
    """Keeps the total loss of every training iteration."""

    def __init__(self, losses):
        self.losses = losses

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.losses.append(outputs['loss'].item())
