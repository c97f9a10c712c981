"""tools/image_demo.py, tools/analysis_tools/{feature_maps,get_flops,
plot_curves,roi_align_speed}.py and tools/deployment/pytorch2onnx.py as
users run them (real subprocesses on tiny images, offline), plus the library
pieces they share (:mod:`mmpoolformer.analysis`)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mmpoolformer  # noqa: F401  registers PoolFormer and the datasets
from mmpoolformer.analysis import (SegmentorLogits, build_model,
                                   config_dataset_meta, count_complexity,
                                   read_scalars, reduce_channels)

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / 'tools'
DET = REPO / 'configs' / 'detection'
SEG = REPO / 'configs' / 'segmentation'
RETINANET = str(DET / 'retinanet_poolformer_s12.py')
FPN = str(SEG / 'fpn_poolformer_s12.py')
SHAPES_CONFIGS = dict(
    retinanet=str(DET / 'retinanet_poolformer_s12_shapes.py'),
    mask_rcnn=str(DET / 'mask_rcnn_poolformer_s12_shapes.py'),
    fpn=str(SEG / 'fpn_poolformer_s12_shapes.py'))
# class names that only the checkpoints' meta has: printed names prove the
# tools read them from there
DET_META = dict(classes=('disc', 'box', 'wedge'),
                palette=[(255, 0, 0), (0, 255, 0), (0, 0, 255)])
SEG_META = dict(classes=('void', 'disc', 'box', 'wedge'),
                palette=[(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)])
# any download would fail at once: the tools must work offline
OFFLINE = {name: 'http://127.0.0.1:9' for name in (
    'http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY')}
ROW = re.compile(r'^(\d+x3x\d+x\d+)\s+(\w+)\s+([\dx]+)\s+([\d.e+-]+)\s+'
                 r'([\d.e+-]+)$', re.M)


def run_tool(script, *args, cwd):
    env = dict(os.environ, **OFFLINE, TORCH_HOME=str(Path(cwd) / 'torch'))
    result = subprocess.run(
        [sys.executable, str(TOOLS / script), *map(str, args)], cwd=cwd,
        capture_output=True, text=True, timeout=600, env=env)
    return result.returncode, result.stdout, result.stderr


def ok(script, *args, cwd):
    code, out, err = run_tool(script, *args, cwd=cwd)
    assert code == 0, out[-3000:] + err[-3000:]
    return out


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """Two 64x64 PNGs (lossless, so an untouched copy reads back equal):
    a coloured disc and square on a grey gradient."""
    folder = tmp_path_factory.mktemp('images')
    for i in range(2):
        ramp = np.linspace(60, 180, 64, dtype=np.float32)
        image = np.stack([np.add.outer(ramp, ramp) / 2] * 3, -1)
        image = image.astype(np.uint8)
        cv2.circle(image, (20 + 8 * i, 22), 12, (40, 40, 220), -1)
        cv2.rectangle(image, (36, 34), (56, 56), (200, 120, 30), -1)
        cv2.imwrite(str(folder / f'img{i}.png'), image)
    return folder


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """mmengine-style checkpoints of freshly built shapes models (no
    training): ``state_dict`` plus ``meta.dataset_meta``."""
    folder = tmp_path_factory.mktemp('checkpoints')
    paths = {}
    for name, config in SHAPES_CONFIGS.items():
        model, _ = build_model(config)
        meta = SEG_META if name == 'fpn' else DET_META
        paths[name] = folder / f'{name}.pth'
        torch.save({'state_dict': model.state_dict(),
                    'meta': {'dataset_meta': meta}}, paths[name])
    return paths


# ------------------------------------------------------------- image_demo


@pytest.mark.parametrize('detector', ['retinanet', 'mask_rcnn'])
def test_image_demo_draws_detections(detector, images, checkpoints,
                                     tmp_path):
    image = images / 'img0.png'
    # fresh weights score low: keep every box the head gives
    drawn = ok('image_demo.py', image, SHAPES_CONFIGS[detector],
               checkpoints[detector], '--out-dir', tmp_path / 'drawn',
               '--score-thr', 0, '--cfg-options', 'model.test_cfg.score_thr=0'
               if detector == 'retinanet' else
               'model.test_cfg.rcnn.score_thr=0', cwd=tmp_path)
    boxes = re.search(r'img0\.png: (\d+) boxes( with masks)? scoring', drawn)
    assert boxes and int(boxes.group(1)) > 0, drawn
    assert bool(boxes.group(2)) == (detector == 'mask_rcnn'), drawn
    assert re.search(r'(disc|box|wedge) \d\.\d\d', drawn), drawn
    original = cv2.imread(str(image))
    picture = cv2.imread(str(tmp_path / 'drawn' / 'img0.png'))
    assert picture.shape == original.shape
    assert (picture != original).any(-1).mean() > 0.05
    # above every score nothing is drawn: the picture is the input
    empty = ok('image_demo.py', image, SHAPES_CONFIGS[detector],
               checkpoints[detector], '--out-dir', tmp_path / 'empty',
               '--score-thr', 1.01, cwd=tmp_path)
    assert 'img0.png: 0 boxes' in empty, empty
    assert np.array_equal(cv2.imread(str(tmp_path / 'empty' / 'img0.png')),
                          original)
    # nothing read, generated or downloaded for the config's dataset
    assert not (tmp_path / 'data').exists()


def test_image_demo_overlays_segmentation(images, checkpoints, tmp_path):
    out = ok('image_demo.py', images, SHAPES_CONFIGS['fpn'],
             checkpoints['fpn'], '--out-dir', tmp_path / 'out', cwd=tmp_path)
    for name in ('img0.png', 'img1.png'):
        original = cv2.imread(str(images / name))
        picture = cv2.imread(str(tmp_path / 'out' / name))
        assert picture.shape == original.shape
        # every pixel gets its class colour at opacity 0.5
        assert (picture != original).any(-1).mean() > 0.9
        line = re.search(rf'{name}: (.*) -> ', out)
        assert line, out
        shares = re.findall(r'(void|disc|box|wedge) ([\d.]+)%',
                            line.group(1))
        assert shares and abs(sum(float(s) for _, s in shares) - 100) < 0.5
    assert not (tmp_path / 'data').exists()


def test_dataset_meta_from_config_without_building_the_dataset(tmp_path):
    from mmpoolformer.runner import load_config
    meta = config_dataset_meta(load_config(SHAPES_CONFIGS['fpn']))
    assert meta['classes'] == ('background', 'circle', 'square', 'triangle')
    assert len(meta['palette']) == 4
    meta = config_dataset_meta(load_config(RETINANET))
    assert len(meta['classes']) == 80 and len(meta['palette']) == 80


# ----------------------------------------------------------- feature_maps


def _panels(png: Path) -> int:
    """Runs of non-white columns across the picture's middle row."""
    picture = cv2.imread(str(png))
    row = picture[picture.shape[0] // 2]
    inked = (row < 250).any(-1).astype(np.int8)
    return int((np.diff(np.concatenate([[0], inked])) == 1).sum())


def test_feature_maps_draws_input_and_four_stages(images, checkpoints,
                                                  tmp_path):
    out = ok('analysis_tools/feature_maps.py', SHAPES_CONFIGS['fpn'],
             images / 'img0.png', '--checkpoint', checkpoints['fpn'],
             '--out', tmp_path / 'maps.png', '--reduce', 'pca',
             cwd=tmp_path)
    stages = re.findall(r'stage (\d): (\d+) channels, (\d+)x(\d+), '
                        r'stride (\d+)', out)
    assert stages == [('0', '64', '16', '16', '4'),
                      ('1', '128', '8', '8', '8'),
                      ('2', '320', '4', '4', '16'),
                      ('3', '512', '2', '2', '32')], out
    picture = cv2.imread(str(tmp_path / 'maps.png'))
    # five 3-inch panels at 100 dpi, 3.6 inches high for a square image
    assert picture.shape == (360, 1500, 3)
    assert _panels(tmp_path / 'maps.png') == 5


def test_reduce_channels_finds_the_spatial_pattern():
    gen = torch.Generator().manual_seed(0)
    pattern = torch.zeros(8, 8)
    pattern[2:5, 3:7] = 1
    weights = torch.randn(16, generator=gen).abs() + 0.5
    feature = weights[:, None, None] * pattern + 0.01 * torch.randn(
        16, 8, 8, generator=gen)
    for method in ('mean', 'max', 'pca'):
        found = torch.from_numpy(reduce_channels(feature, method))
        assert found.shape == (8, 8)
        corr = torch.corrcoef(torch.stack([found.flatten(),
                                           pattern.flatten()]))[0, 1]
        assert corr > 0.99, (method, corr)


# -------------------------------------------------------------- get_flops


def _table(out: str) -> dict:
    rows = re.findall(r'^\s*(whole model|\w+)\s+([\d,]+)\s+\S+\s+([\d,]+)',
                      out, re.M)
    return {name: (int(p.replace(',', '')), int(m.replace(',', '')))
            for name, p, m in rows}


def test_get_flops_prints_the_exact_parameter_count(tmp_path):
    out = ok('analysis_tools/get_flops.py', RETINANET, '--shape', 64, 64,
             cwd=tmp_path)
    table = _table(out)
    model, _ = build_model(RETINANET)
    assert table['whole model'][0] == sum(
        p.numel() for p in model.parameters())
    for part in ('backbone', 'neck', 'bbox_head'):
        assert table[part][0] == sum(
            p.numel() for p in getattr(model, part).parameters())
    assert '21.65M' in out  # the paper's 21.7M
    assert table['whole model'][1] == sum(
        table[part][1] for part in ('backbone', 'neck', 'bbox_head'))
    assert 'input 1x3x64x64' in out


def test_get_flops_s12_classifier_reads_1_82_gmacs(tmp_path):
    out = ok('analysis_tools/get_flops.py', RETINANET, '--classifier',
             cwd=tmp_path)
    assert 'input 1x3x224x224' in out
    params, macs = _table(out)['whole model']
    assert 1.80e9 <= macs <= 1.84e9, out  # the paper's 1.8G
    assert params == 11_915_176  # the paper's 12M
    # 12 pooling layers of 3x3 windows over 1,028,608 outputs
    assert 'avg_pool2d 9.26M' in out


def test_get_flops_classifier_of_a_metaformer_config(tmp_path):
    """--classifier builds the config's backbone type (here CAFormer, whose
    attention counts through the fused-attention rule): the paper's 4.1G
    MACs and 26M parameters for CAFormer-S18 at 224 px."""
    out = ok('analysis_tools/get_flops.py',
             REPO / 'configs/segmentation/fpn_caformer_s18.py',
             '--classifier', cwd=tmp_path)
    assert "ImageNet classifier CAFormer(arch='s18'" in out
    params, macs = _table(out)['whole model']
    assert 4.05e9 <= macs <= 4.15e9, out
    assert 25.8e6 <= params <= 26.8e6, out
    assert 'scaled_dot_product_attention' in out
    assert 'not counted at all: aten::scaled' not in out


def test_count_complexity_counts_macs_and_pooling_apart():
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1),
                           nn.AvgPool2d(3, 1, 1, count_include_pad=False))
    counts = count_complexity(module, (torch.zeros(1, 3, 8, 8), ))
    assert counts['macs'][''] == 8 * 3 * 9 * 64
    assert counts['by_operator']['']['avg_pool2d'] == 9 * 8 * 64
    assert counts['other'][''] == 9 * 8 * 64


def test_count_complexity_counts_fused_attention_as_written_out():
    """CAFormer's attention runs F.scaled_dot_product_attention, which
    fvcore has no rule for: counted as the two products the official code
    writes out (and fvcore counts there), softmax left out."""

    class Attention(nn.Module):
        def __init__(self, fused):
            super().__init__()
            self.fused = fused

        def forward(self, q, k, v):
            if self.fused:
                return F.scaled_dot_product_attention(q, k, v)
            weights = (q @ k.transpose(-2, -1) * q.shape[-1]**-0.5)
            return weights.softmax(dim=-1) @ v

    q, k, v = torch.zeros(2, 3, 5, 4), torch.zeros(2, 3, 7, 4), torch.zeros(
        2, 3, 7, 6)
    fused = count_complexity(Attention(True), (q, k, v))
    written = count_complexity(Attention(False), (q, k, v))
    assert fused['macs'][''] == written['macs'][''] == 2 * 3 * 5 * 7 * (4 + 6)
    assert not fused['uncounted']


# ----------------------------------------------------------- pytorch2onnx


def _rows(out: str):
    rows = ROW.findall(out)
    assert rows, out
    return [dict(input=i, output=o, shape=s, max_abs=float(a),
                 max_rel=float(r)) for i, o, s, a, r in rows]


def _dynamic_input(path: Path):
    import onnx
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def test_pytorch2onnx_backbone_offline_two_shapes(tmp_path):
    out = ok('deployment/pytorch2onnx.py', RETINANET, '--shape', 64, 64,
             '--check-shape', 96, 128, '--out', tmp_path / 'backbone.onnx',
             cwd=tmp_path)
    rows = _rows(out)
    assert [(r['input'], r['output'], r['shape']) for r in rows] == [
        ('1x3x64x64', 'stage0', '1x64x16x16'),
        ('1x3x64x64', 'stage1', '1x128x8x8'),
        ('1x3x64x64', 'stage2', '1x320x4x4'),
        ('1x3x64x64', 'stage3', '1x512x2x2'),
        ('2x3x96x128', 'stage0', '2x64x24x32'),
        ('2x3x96x128', 'stage1', '2x128x12x16'),
        ('2x3x96x128', 'stage2', '2x320x6x8'),
        ('2x3x96x128', 'stage3', '2x512x3x4')]
    assert max(r['max_rel'] for r in rows) < 1e-4
    assert 'onnx.checker passed' in out and 'fresh weights' in out
    assert _dynamic_input(tmp_path / 'backbone.onnx') == [
        'batch', 3, 'height', 'width']


def test_pytorch2onnx_whole_segmentor_with_checkpoint(checkpoints, tmp_path):
    out = ok('deployment/pytorch2onnx.py', SHAPES_CONFIGS['fpn'],
             '--checkpoint', checkpoints['fpn'], '--whole', '--shape', 64,
             64, '--check-shape', 96, 128, '--out', tmp_path / 'fpn.onnx',
             cwd=tmp_path)
    rows = _rows(out)
    assert [(r['input'], r['shape']) for r in rows] == [
        ('1x3x64x64', '1x4x64x64'), ('2x3x96x128', '2x4x96x128')]
    assert max(r['max_rel'] for r in rows) < 1e-4, out
    assert _dynamic_input(tmp_path / 'fpn.onnx') == [
        'batch', 3, 'height', 'width']


def test_pytorch2onnx_refuses_detectors_whole(tmp_path):
    code, out, err = run_tool('deployment/pytorch2onnx.py', RETINANET,
                              '--whole', '--shape', 64, 64, '--out',
                              tmp_path / 'x.onnx', cwd=tmp_path)
    assert code != 0 and 'mmseg EncoderDecoder' in err
    assert not (tmp_path / 'x.onnx').exists()


def test_segmentor_logits_are_the_segmentors_own():
    """The exported module (with mmseg's Upsample made scale-based for
    dynamic shapes) computes what EncoderDecoder.encode_decode does."""
    model, _ = build_model(FPN)
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    metas = [dict(img_shape=(96, 128), ori_shape=(96, 128),
                  pad_shape=(96, 128))]
    with torch.no_grad():
        expected = model.encode_decode(x, metas)
        got = SegmentorLogits(model).eval()(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------ plot_curves


def _write_run(work_dir: Path, timestamp: str, records):
    """Scalars in order, as mmengine's LoggerHook hands them to
    LocalVisBackend (``step`` given apart)."""
    from mmengine.visualization import LocalVisBackend
    backend = LocalVisBackend(
        save_dir=str(work_dir / timestamp / 'vis_data'))
    for record in records:
        backend.add_scalars(record, step=record.pop('step'))


def test_plot_curves_epoch_based_resumed_run(tmp_path):
    work = tmp_path / 'work'

    def epoch(e, loss, mAP):
        train = [dict(lr=1e-3, loss=loss + 0.1 * i, loss_cls=loss / 2,
                      loss_bbox=loss / 2, epoch=e,
                      iter=(e - 1) * 10 + 5 * i, step=(e - 1) * 10 + 5 * i)
                 for i in (1, 2)]
        val = [{'coco/bbox_mAP': mAP, 'coco/bbox_mAP_50': mAP + 0.2,
                'data_time': 0.01, 'time': 0.1, 'step': e}]
        return train, val

    train1, val1 = epoch(1, 2.0, 0.1)
    train2, val2 = epoch(2, 1.0, 0.3)
    _write_run(work, '20240101_000000', train1 + val1 + train2 + val2)
    train3, val3 = epoch(3, 0.5, 0.25)  # resumed into a new folder
    _write_run(work, '20240101_010000', train3 + val3)
    out = ok('analysis_tools/plot_curves.py', work, '--out',
             tmp_path / 'curves.png', cwd=tmp_path)
    assert ('coco/bbox_mAP: 3 points, iterations 10-30, first 0.1, last '
            '0.25, best 0.3') in out, out
    assert 'loss: 6 points, iterations 5-30, first 2.1, last 0.7, ' \
        'lowest 0.6' in out, out
    assert 'loss_cls: 6 points' in out and 'loss_bbox: 6 points' in out
    # the main metric only, unless --metrics names others
    assert 'coco/bbox_mAP_50' not in out and 'data_time' not in out
    assert cv2.imread(str(tmp_path / 'curves.png')).shape == (450, 1200, 3)


def test_read_scalars_iteration_based_validation(tmp_path):
    """mmseg's iteration-based loops log validation at step = iteration."""
    work = tmp_path / 'work'
    # logged every 50 iterations, evaluated at 160
    train = [dict(lr=0.01, loss=1.0 / i, iter=i * 50, step=i * 50)
             for i in range(1, 4)]
    val = [dict(aAcc=90.0, mIoU=50.0, mAcc=60.0, step=160)]
    _write_run(work, '20240101_000000', train + val)
    records, evaluations = read_scalars(
        [str(work / '20240101_000000' / 'vis_data' / 'scalars.json')])
    assert [r['iter'] for r in records] == [50, 100, 150]
    assert [(r['iter'], r['mIoU']) for r in evaluations] == [(160, 50.0)]
    with open(work / '20240101_000000' / 'vis_data' / 'scalars.json') as f:
        assert json.loads(f.readline())['step'] == 50


def test_plot_curves_without_scalars_says_what_to_do(tmp_path):
    code, out, err = run_tool('analysis_tools/plot_curves.py', tmp_path,
                              '--out', tmp_path / 'x.png', cwd=tmp_path)
    assert code != 0 and 'LocalVisBackend' in err


def test_roi_align_speed_times_both_and_compares_them(tmp_path):
    out = ok('analysis_tools/roi_align_speed.py', '--shape', 2, 8, 10, 12,
             '--rois', 6, '--rounds', 2, cwd=tmp_path)
    assert re.search(r'features 2x8x10x12, 6 RoIs of 7x7, 2 rounds', out)
    rows = re.findall(r'^  (mmcv|separable) +median +[\d.]+ ms', out, re.M)
    assert rows == ['mmcv', 'separable']
    output, gradient = map(float, re.search(
        r'output (\S+), feature gradient (\S+) \(bf16\)', out).groups())
    assert output < 1e-5 and gradient < 1e-2  # bf16 gradient rounding


def test_step_profile_says_where_a_demo_step_goes(tmp_path, capsys,
                                                  monkeypatch):
    """tools/analysis_tools/step_profile.py: the RetinaNet demo's own
    runner (tiny shapes set), stopped after start + steps iterations; the
    op classes a RetinaNet step spends time in are all reported, and add up
    to no more than the step."""
    from mmpoolformer.analysis import OP_CLASSES, op_class
    monkeypatch.syspath_prepend(str(TOOLS / 'analysis_tools'))
    import step_profile
    data_root = str(tmp_path / 'shapes') + '/'
    options = {'train_cfg.max_epochs': 3}
    for key, value in (('batch_size', 2), ('num_workers', 0),
                       ('persistent_workers', False),
                       ('dataset.data_root', data_root),
                       ('dataset.generate.num_train', 4),
                       ('dataset.generate.num_val', 2),
                       ('dataset.generate.img_size', 64)):
        options[f'train_dataloader.{key}'] = value
    out = tmp_path / 'profile.md'
    argv = [str(REPO / 'configs/detection/retinanet_poolformer_s12_shapes.py'),
            '--start', '2', '--steps', '2', '--out', str(out),
            '--cfg-options'] + [f'{k}={v}' for k, v in options.items()]
    result = step_profile.main(argv)
    # 2 steps an epoch: the profiled steps 3-4 cross into the second
    # epoch, and the run stopped there, before the third
    assert (result['start'], result['steps']) == (2, 2)
    classes = result['classes']
    assert list(classes) == [label for label, _ in OP_CLASSES]
    for label in ('convolution backward', 'convolution forward',
                  'activation', 'norm', 'pooling', 'optimizer'):
        assert classes[label] > 0, label
    assert sum(classes.values()) < result['profiled_step_s'] * 1e3 * 1.05
    assert result['top'] and all(t['op'].startswith('aten::')
                                 for t in result['top'])
    report = out.read_text()
    assert report in capsys.readouterr().out
    assert 'iterations 3-4 profiled' in report
    assert '| convolution backward |' in report and 'CPU: ' in report
    assert op_class('aten::convolution_backward') == 'convolution backward'
    assert op_class('aten::mkldnn_convolution') == 'convolution forward'
    assert op_class('aten::_fused_adamw_') == 'optimizer'
    assert op_class('aten::gelu_backward') == 'activation'
    assert op_class('aten::native_batch_norm') == 'norm'
    assert op_class('aten::something_new') == 'other aten ops'
    # a schedule shorter than start + steps: said, not a silent empty table
    # (it ended within the profiled steps: the profiler is stopped, so the
    # next one can start)
    options['train_cfg.max_epochs'] = 1
    with pytest.raises(SystemExit, match='ended after 2 iterations, before '
                       'iteration 3'):
        step_profile.main(argv[:1] + ['--start', '1', '--steps', '2',
                                      '--cfg-options'] +
                          [f'{k}={v}' for k, v in options.items()])
    assert not torch.autograd._profiler_enabled()
