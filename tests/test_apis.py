"""mmdet's and mmseg's own inference APIs as clients of our configs and of
checkpoints our tools wrote: ``init_detector`` + ``inference_detector``,
``DetInferencer``, ``init_model`` + ``inference_model`` and
``MMSegInferencer``.

They run in a fresh process with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``, so
every ``torch.load`` in it is ``weights_only=True`` whatever its caller
asks: the checkpoints load through torch's allowlist, never by unpickling
arbitrary objects.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_detection import write_tiny_config

REPO = Path(__file__).resolve().parents[1]
SEG_DEMO = REPO / 'configs' / 'segmentation' / 'fpn_poolformer_s12_shapes.py'

SEG_TINY = '''
_base_ = {base!r}
data_root = {root!r}
crop_size = (64, 64)
model = dict(data_preprocessor=dict(size=crop_size))
# the set the detection run generated (same parameters, same folder)
_data = dict(data_root=data_root,
             generate=dict(num_train=16, num_val=8, img_size=64))
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=_data)
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=_data)
test_dataloader = val_dataloader
train_cfg = dict(max_iters=4, val_interval=100)
param_scheduler = [dict(type='LinearLR', start_factor=0.5, begin=0, end=4,
                        by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval=4), logger=dict(interval=1))
'''

CLIENTS = r'''
import json, sys
import numpy as np, torch
det_config, det_ckpt, det_image, seg_config, seg_ckpt, seg_image, out = \
    sys.argv[1:8]
result = {}

from mmdet.apis import DetInferencer, inference_detector, init_detector
model = init_detector(det_config, det_ckpt, device='cpu')
saved = torch.load(det_ckpt)['state_dict']
result['det_weights_equal'] = all(
    torch.equal(v, saved[k]) for k, v in model.state_dict().items())
det = inference_detector(model, det_image).pred_instances
result['det_boxes'] = det.bboxes.shape[1]
inferencer = DetInferencer(model=det_config, weights=det_ckpt, device='cpu')
preds = inferencer(det_image, out_dir=out + '/det', no_save_pred=False,
                   pred_score_thr=0.0)['predictions'][0]
result['det_inferencer_scores_equal'] = bool(np.allclose(
    preds['scores'], det.scores.numpy(), atol=1e-5))

from mmseg.apis import MMSegInferencer, inference_model, init_model
model = init_model(seg_config, seg_ckpt, device='cpu')
saved = torch.load(seg_ckpt)['state_dict']
result['seg_weights_equal'] = all(
    torch.equal(v, saved[k]) for k, v in model.state_dict().items())
seg = inference_model(model, seg_image).pred_sem_seg.data[0]
result['seg_shape'] = list(seg.shape)
inferencer = MMSegInferencer(model=seg_config, weights=seg_ckpt,
                             device='cpu')
maps = inferencer(seg_image, out_dir=out + '/seg')['predictions']
result['seg_inferencer_equal'] = bool(np.array_equal(maps, seg.numpy()))
print('RESULT ' + json.dumps(result))
'''


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """A tiny RetinaNet and a tiny Semantic FPN, each trained for 4
    iterations by tools/train.py."""
    folder = tmp_path_factory.mktemp('apis')
    det_config = write_tiny_config(folder, 'retinanet')
    seg_config = folder / 'tiny_fpn.py'
    seg_config.write_text(SEG_TINY.format(base=str(SEG_DEMO),
                                          root=str(folder / 'shapes') + '/'))
    for config, work in ((det_config, 'det_work'), (seg_config, 'seg_work')):
        result = subprocess.run(
            [sys.executable, str(REPO / 'tools' / 'train.py'), str(config),
             '--work-dir', work], cwd=folder, capture_output=True,
            text=True, timeout=300)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return dict(
        folder=folder, det_config=det_config,
        det_checkpoint=folder / 'det_work' / 'epoch_1.pth',
        det_image=next((folder / 'shapes' / 'val').glob('*.png')),
        seg_config=seg_config,
        seg_checkpoint=folder / 'seg_work' / 'iter_4.pth',
        seg_image=next((folder / 'shapes' / 'val').glob('*.png')))


def test_mmdet_and_mmseg_apis_load_and_run_our_checkpoints(checkpoints,
                                                           tmp_path):
    c = checkpoints
    script = tmp_path / 'clients.py'
    script.write_text(CLIENTS)
    result = subprocess.run(
        [sys.executable, str(script), str(c['det_config']),
         str(c['det_checkpoint']), str(c['det_image']), str(c['seg_config']),
         str(c['seg_checkpoint']), str(c['seg_image']), str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TORCH_FORCE_WEIGHTS_ONLY_LOAD='1'))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    found = json.loads(output.split('RESULT ')[1].splitlines()[0])
    assert found == dict(
        det_weights_equal=True, det_boxes=4, det_inferencer_scores_equal=True,
        seg_weights_equal=True, seg_shape=[64, 64],
        seg_inferencer_equal=True)
    # the inferencers drew their pictures
    assert list((tmp_path / 'det' / 'vis').glob('*.png'))
    assert list((tmp_path / 'seg' / 'vis').glob('*.png'))


def test_checkpoints_really_need_the_allowlist(checkpoints):
    """The same files in a process that never imported mmpoolformer: torch
    refuses them (so the test above did go through the allowlist)."""
    probe = 'import sys, torch; torch.load(sys.argv[1])'
    for checkpoint in (checkpoints['det_checkpoint'],
                       checkpoints['seg_checkpoint']):
        result = subprocess.run([sys.executable, '-c', probe,
                                 str(checkpoint)], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode != 0
        assert 'Weights only load failed' in result.stderr
    assert torch.load(checkpoints['seg_checkpoint'])['meta']['iter'] == 4
