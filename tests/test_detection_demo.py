"""The CPU detection demo configs (RetinaNet and Mask R-CNN on the shapes
set): they run as configured (bf16 autocast, channels_last, COCO metric) on a
tiny shapes set, for one short epoch with a real Runner."""
import ast
from pathlib import Path

import pytest
import torch

import mmpoolformer  # noqa: F401  registers PoolFormer and ShapesDataset
from coco_check import OutputRecorder, assert_runner_metrics_are_pycocotools
from mmpoolformer.utils import cpu_bf16_supported
from mmpoolformer.runner import build_train_runner, load_config

# pycocotools 2.0.x + numpy 2 warn on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    'ignore:__array__ implementation:DeprecationWarning')

DET_CONFIGS = Path(__file__).resolve().parents[1] / 'configs' / 'detection'
TINY_SET = dict(num_train=8, num_val=4, img_size=64)
# demo: (its COCO config, its dataset base, metrics, test options)
DEMOS = {
    'retinanet_poolformer_s12_shapes.py': (
        'retinanet_poolformer_s12.py', 'shapes_detection.py', ['bbox'],
        # an untrained head scores below the usual threshold
        {'model.test_cfg.score_thr': 0.0}),
    'mask_rcnn_poolformer_s12_shapes.py': (
        'mask_rcnn_poolformer_s12.py', 'shapes_instance.py',
        ['bbox', 'segm'], {'model.test_cfg.rcnn.score_thr': 0.0}),
}


def _tiny_options(data_root):
    options = {'train_cfg.max_epochs': 1, 'train_cfg.val_interval': 1,
               'default_hooks.logger.interval': 1}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options.update({
            f'{loader}.batch_size': 4,
            f'{loader}.num_workers': 0,
            f'{loader}.persistent_workers': False,
            f'{loader}.dataset.data_root': data_root,
            f'{loader}.dataset.generate': TINY_SET})
    for evaluator in ('val_evaluator', 'test_evaluator'):
        options[f'{evaluator}.ann_file'] = (
            data_root + 'annotations/instances_val.json')
    return options


def _bases(path: Path) -> list:
    """The ``_base_`` list of a config file, as written."""
    for node in ast.parse(path.read_text()).body:
        if (isinstance(node, ast.Assign)
                and [t.id for t in node.targets] == ['_base_']):
            bases = ast.literal_eval(node.value)
            return [bases] if isinstance(bases, str) else bases
    return []


@pytest.mark.parametrize('config', list(DEMOS))
def test_demo_is_the_coco_config_on_the_shapes_dataset_base(config):
    """The demo inherits its COCO config's bases (model, schedule, runtime)
    with the shapes dataset base in place of mmdet's COCO one."""
    coco, dataset_base, _, _ = DEMOS[config]
    coco_bases = _bases(DET_CONFIGS / coco)
    coco_data = [b for b in coco_bases if '/datasets/' in b]
    assert len(coco_data) == 1 and coco_data[0].startswith('mmdet::')
    assert _bases(DET_CONFIGS / config) == [
        f'../_base_/datasets/{dataset_base}' if b in coco_data else b
        for b in coco_bases]
    cfg = load_config(str(DET_CONFIGS / config))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.type == 'ShapesDataset'
    assert cfg.model.backbone.type == 'PoolFormer'
    # from scratch and offline: nothing to download
    assert cfg.model.backbone.init_cfg == dict(type='Kaiming', layer='Conv2d')
    assert cfg.optim_wrapper.dtype == 'bfloat16'
    assert cfg.train_cfg.val_interval == cfg.train_cfg.max_epochs


@pytest.mark.parametrize('config', list(DEMOS))
def test_demo_runs_with_bf16_channels_last_and_coco_metric(tmp_path,
                                                           config):
    _, _, metrics, test_options = DEMOS[config]
    data_root = str(tmp_path / 'shapes') + '/'
    runner = build_train_runner(
        str(DET_CONFIGS / config), work_dir=str(tmp_path / 'work'),
        cfg_options=dict(_tiny_options(data_root), **test_options))
    outputs = []
    runner.register_hook(OutputRecorder(outputs))
    runner.train()
    assert runner.iter == 2  # 8 images, 4 a batch
    # the recipe's speed-ups were really in effect: bf16 autocast where
    # the CPU has bf16 kernels, float32 on an AVX2-only one
    assert runner.optim_wrapper.cast_dtype == (
        torch.bfloat16 if cpu_bf16_supported() else torch.float32)
    conv = runner.model.backbone.patch_embed.proj.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    # the reported numbers are pycocotools' on the model's val predictions
    assert len(outputs) == TINY_SET['num_val']
    assert_runner_metrics_are_pycocotools(runner, outputs, metrics)
    assert (tmp_path / 'work' / 'epoch_1.pth').is_file()
    if config.startswith('retinanet'):  # its CPUMallocHook said what it did
        log = next((tmp_path / 'work').glob('*/*.log')).read_text()
        assert 'malloc: every block from the heap' in log or \
            'malloc left as it is' in log
