"""OpenMMLab's ``mim`` runs our configs with mmdet's own tools.

``mim train mmdet CONFIG`` runs ``mmdet/.mim/tools/train.py`` (mmdet's, not
ours) on the config; its ``custom_imports=dict(imports=['mmpoolformer'])``
is all mmdet needs to build PoolFormer, the shapes dataset, our hooks and
``CPUAmpOptimWrapper``. ``mim test mmdet CONFIG --checkpoint CKPT`` loads
the checkpoint that run wrote and evaluates it. One real (tiny) run of each,
in subprocesses, in a folder of their own.
"""
import re
import subprocess
import sys
from pathlib import Path

import mim  # noqa: F401  requirements/tests.txt (openmim)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / 'configs' / 'detection' / 'retinanet_poolformer_s12_shapes.py'
TINY_SET = dict(num_train=8, num_val=4, img_size=64)
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def tiny_options(loaders=LOADERS):
    """--cfg-options that shrink a shapes demo to 8 + 4 images of 64 px
    (generated under ./data/shapes/), 4 a batch, no worker processes, one
    epoch, keeping every box of the untrained head."""
    options = ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
               'default_hooks.logger.interval=1',
               'model.test_cfg.score_thr=0.0']
    for loader in loaders:
        options += [f'{loader}.batch_size=4', f'{loader}.num_workers=0',
                    f'{loader}.persistent_workers=False']
        options += [f'{loader}.dataset.generate.{key}={value}'
                    for key, value in TINY_SET.items()]
    return options


def run_mim(args, cwd, env=None):
    result = subprocess.run(
        [sys.executable, '-m', 'mim'] + [str(a) for a in args], cwd=cwd,
        env=env, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


def test_mim_train_and_test_mmdet(tmp_path):
    code, output = run_mim(
        ['train', 'mmdet', DEMO, '--gpus', '0', '--work-dir', 'work',
         '--cfg-options'] + tiny_options(LOADERS[:2]), tmp_path)
    assert code == 0, output[-3000:]
    # mim ran mmdet's train.py, not ours
    assert re.search(r'Training command is \S+ \S*mmdet/\.mim/tools/train\.py',
                     output), output[-3000:]
    checkpoint = tmp_path / 'work' / 'epoch_1.pth'
    assert checkpoint.is_file()
    assert (tmp_path / 'data' / 'shapes' / 'annotations').is_dir()

    code, output = run_mim(
        ['test', 'mmdet', DEMO, '--checkpoint', checkpoint, '--gpus', '0',
         '--work-dir', 'test', '--cfg-options'] + tiny_options(LOADERS[2:]),
        tmp_path)
    assert code == 0, output[-3000:]
    assert re.search(r'Testing command is \S+ \S*mmdet/\.mim/tools/test\.py',
                     output), output[-3000:]
    # the COCO metric of the 4 test images came out
    metric = re.search(r'Epoch\(test\) \[1/1\].*coco/bbox_mAP: (-?[\d.]+)',
                       output)
    assert metric, output[-3000:]
    assert -1 <= float(metric.group(1)) <= 1
