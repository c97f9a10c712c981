"""Whole models other libraries released, loaded into our configs:

* the official PoolFormer RetinaNet / Mask R-CNN COCO models
  (sail-sg/poolformer ``detection/``, mmdet 2.19, mmcv 1.x Runner;
  RetinaNet with FORK_LAST3=1);
* mmseg's Semantic FPN PoolFormer ADE20K models (mmseg 0.x era files; the
  backbone is mmcls 0.23's / mmpretrain's ``PoolFormer``).

The released files cannot be downloaded here (Google Drive / OpenMMLab
servers), so files are synthesized in their key layouts, written down below
from the libraries' code, not from this package.
"""
import logging
import math
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmpoolformer  # noqa: F401
from mmpoolformer.checkpoint import CheckpointError
from mmpoolformer.checkpoint.whole_model import (convert_whole_model, identify,
                                                 needs_conversion)
from mmpoolformer.runner import build_test_runner
from test_checkpoint import official_layout, official_to_timm
from test_detection import TINY_SET, use_dataset_base, write_tiny_config

REPO = Path(__file__).resolve().parents[1]
S12 = 's12'


def backbone_table(fork_last3=False):
    """The official ``poolformer_s12_feat`` (sail-sg/poolformer
    models/poolformer.py: ``patch_embed.proj``, ``network``, output norms
    ``norm{0,2,4,6}``, ``norm0`` an Identity under FORK_LAST3) and mmcls
    0.23 / mmpretrain ``PoolFormer(out_indices=(0, 2, 4, 6))``
    (mmpretrain/models/backbones/poolformer.py: the same names; its
    ``PatchEmbed.norm`` is an Identity; downsampling appended when the
    widths change, i.e. at every stage of the named archs)."""
    return {'backbone.' + k: v for k, v in official_layout(
        S12, dense=True, fork_last3=fork_last3).items()}


def conv_module(prefix, cin, cout, k, norm=None):
    """mmcv's ``ConvModule`` (1.x and 2.x): ``conv`` (bias only without a
    norm) and the norm under ``bn`` / ``gn``."""
    table = {f'{prefix}.conv.weight': (cout, cin, k, k)}
    if norm is None:
        table[f'{prefix}.conv.bias'] = (cout, )
    else:
        table.update({f'{prefix}.{norm}.weight': (cout, ),
                      f'{prefix}.{norm}.bias': (cout, )})
        if norm == 'bn':
            table.update({f'{prefix}.bn.running_mean': (cout, ),
                          f'{prefix}.bn.running_var': (cout, ),
                          f'{prefix}.bn.num_batches_tracked': ()})
    return table


def fpn_table(in_channels, out, start_level, extra_on_input, num_outs):
    """mmdet 2.19 / mmseg 0.19 ``FPN`` (mmdet/models/necks/fpn.py:117-160):
    ``lateral_convs``/``fpn_convs`` from ``start_level``, then extra
    ``fpn_convs`` ('on_input': the first takes the last input width)."""
    table = {}
    levels = range(start_level, len(in_channels))
    for i, level in enumerate(levels):
        table.update(conv_module(f'neck.lateral_convs.{i}',
                                 in_channels[level], out, 1))
        table.update(conv_module(f'neck.fpn_convs.{i}', out, out, 3))
    if extra_on_input:
        for j in range(num_outs - len(levels)):
            table.update(conv_module(
                f'neck.fpn_convs.{len(levels) + j}',
                in_channels[-1] if j == 0 else out, out, 3))
    return table


def mmdet2_retinanet(num_classes, fork_last3=True, channels=256):
    """sail-sg retinanet_poolformer_s12_fpn_1x_coco.py on mmdet 2.19's
    retinanet_r50_fpn.py: FPN start_level=1, 'on_input', 5 outs;
    ``RetinaHead`` (mmdet/models/dense_heads/retina_head.py:64-93): 4
    ``cls_convs``/``reg_convs``, ``retina_cls``/``retina_reg``, 9 anchors."""
    table = backbone_table(fork_last3)
    table.update(fpn_table([64, 128, 320, 512], channels, 1, True, 5))
    for i in range(4):
        for branch in ('cls_convs', 'reg_convs'):
            table.update(conv_module(f'bbox_head.{branch}.{i}', channels,
                                     channels, 3))
    table.update({
        'bbox_head.retina_cls.weight': (9 * num_classes, channels, 3, 3),
        'bbox_head.retina_cls.bias': (9 * num_classes, ),
        'bbox_head.retina_reg.weight': (36, channels, 3, 3),
        'bbox_head.retina_reg.bias': (36, )})
    return table


def mmdet2_mask_rcnn(num_classes):
    """sail-sg mask_rcnn_poolformer_s12_fpn_1x_coco.py on mmdet 2.19's
    mask_rcnn_r50_fpn.py: FPN 5 outs (extra by max pooling); ``RPNHead``
    (dense_heads/rpn_head.py:52-60: ``rpn_conv``, ``rpn_cls`` 3 anchors x
    sigmoid, ``rpn_reg``); ``Shared2FCBBoxHead``
    (roi_heads/bbox_heads/convfc_bbox_head.py: ``shared_fcs``, ``fc_cls``
    num_classes + 1, ``fc_reg`` 4 x num_classes); ``FCNMaskHead``
    (roi_heads/mask_heads/fcn_mask_head.py:67-111: 4 ``convs``, deconv
    ``upsample``, ``conv_logits``)."""
    table = backbone_table()
    table.update(fpn_table([64, 128, 320, 512], 256, 0, False, 5))
    table.update(conv_module('rpn_head.rpn_conv', 256, 256, 3))
    table = {k.replace('rpn_conv.conv.', 'rpn_conv.'): v
             for k, v in table.items()}  # a plain nn.Conv2d, not ConvModule
    table.update({'rpn_head.rpn_cls.weight': (3, 256, 1, 1),
                  'rpn_head.rpn_cls.bias': (3, ),
                  'rpn_head.rpn_reg.weight': (12, 256, 1, 1),
                  'rpn_head.rpn_reg.bias': (12, )})
    box = 'roi_head.bbox_head.'
    table.update({box + 'shared_fcs.0.weight': (1024, 256 * 7 * 7),
                  box + 'shared_fcs.0.bias': (1024, ),
                  box + 'shared_fcs.1.weight': (1024, 1024),
                  box + 'shared_fcs.1.bias': (1024, ),
                  box + 'fc_cls.weight': (num_classes + 1, 1024),
                  box + 'fc_cls.bias': (num_classes + 1, ),
                  box + 'fc_reg.weight': (4 * num_classes, 1024),
                  box + 'fc_reg.bias': (4 * num_classes, )})
    for i in range(4):
        table.update(conv_module(f'roi_head.mask_head.convs.{i}', 256, 256,
                                 3))
    table.update({'roi_head.mask_head.upsample.weight': (256, 256, 2, 2),
                  'roi_head.mask_head.upsample.bias': (256, ),
                  'roi_head.mask_head.conv_logits.weight': (num_classes, 256,
                                                            1, 1),
                  'roi_head.mask_head.conv_logits.bias': (num_classes, )})
    return table


def mmseg0_fpn(num_classes):
    """mmseg's fpn_poolformer_s12_8xb4-40k_ade20k-512x512.py (its model
    base fpn_poolformer_s12.py): FPN 256 x 4 outs; ``FPNHead``
    (mmseg/models/decode_heads/fpn_head.py:31-52: ``scale_heads.i`` of
    1, 1, 2, 3 ConvModules, each but the first followed by an Upsample
    without weights, so at indices 0, 2, 4), channels 128, SyncBN;
    ``conv_seg`` (decode_head.py:102)."""
    table = backbone_table()
    table.update(fpn_table([64, 128, 320, 512], 256, 0, False, 4))
    for i, length in enumerate((1, 1, 2, 3)):
        for k in range(length):
            table.update(conv_module(
                f'decode_head.scale_heads.{i}.{2 * k if i else k}',
                256 if k == 0 else 128, 128, 3, norm='bn'))
    table.update({'decode_head.conv_seg.weight': (num_classes, 128, 1, 1),
                  'decode_head.conv_seg.bias': (num_classes, )})
    return table


def random_tensors(table, seed):
    gen = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for key, shape in table.items():
        if key.endswith('num_batches_tracked'):
            out[key] = torch.tensor(7)
        elif key.endswith('running_var'):
            out[key] = 0.5 + torch.rand(shape, generator=gen)
        else:
            fan_in = max(math.prod(shape[1:]), 1)
            out[key] = torch.randn(shape, generator=gen) / fan_in ** 0.5
    return out


def mmcv1_file(state_dict, library, classes):
    """As the mmcv 1.x Runner saves it (mmcv/runner/checkpoint.py
    ``save_checkpoint``: meta with mmcv_version/time, the training script's
    ``{mmdet,mmseg}_version``, ``CLASSES`` (mmseg: ``PALETTE``), epoch/iter;
    plus the optimizer state)."""
    meta = dict(mmcv_version='1.4.0', time='Sun May  1 11:51:54 2022',
                epoch=12, iter=87948, config='model = dict(...)',
                CLASSES=tuple(classes))
    if library == 'mmdet':
        meta['mmdet_version'] = '2.19.0'
    else:
        meta.update(mmseg_version='0.24.0',
                    PALETTE=[[i, i, i] for i in range(len(classes))])
    return {'meta': meta, 'state_dict': state_dict,
            'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-4}]}}


def build(cfg, scope):
    from mmengine.registry import MODELS
    init_default_scope(scope)
    return MODELS.build(cfg.model)


def own_table(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------
# The layouts themselves: our COCO / ADE20K configs against the tables


@pytest.mark.parametrize('config, table', [
    ('detection/retinanet_poolformer_s12.py',
     lambda: mmdet2_retinanet(80, fork_last3=True)),
    ('detection/mask_rcnn_poolformer_s12.py', lambda: mmdet2_mask_rcnn(80)),
    ('segmentation/fpn_poolformer_s12.py', lambda: mmseg0_fpn(150)),
])
def test_our_configs_have_the_released_layouts(config, table):
    cfg = Config.fromfile(str(REPO / 'configs' / config))
    cfg.model.backbone.init_cfg = None
    model = build(cfg, 'mmseg' if 'segmentation' in config else 'mmdet')
    assert own_table(model) == {k: tuple(v) for k, v in table().items()}


# ---------------------------------------------------------------------------
# Runner loading (tools/test.py's path) of synthesized files


def seg_config(folder):
    """configs/segmentation/fpn_poolformer_s12.py (the ADE20K model, GN
    backbone) on a tiny shapes set, 4 classes."""
    cfg = use_dataset_base(
        Config.fromfile(str(REPO / 'configs/segmentation/'
                            'fpn_poolformer_s12.py')),
        REPO / 'configs/_base_/datasets/shapes_segmentation.py')
    root = str(folder / 'shapes') + '/'
    cfg.model.backbone.init_cfg = None
    cfg.model.decode_head.num_classes = 4
    cfg.model.data_preprocessor.size = (64, 64)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg.merge_from_dict({f'{loader}.batch_size': 2,
                             f'{loader}.num_workers': 0,
                             f'{loader}.persistent_workers': False,
                             f'{loader}.dataset.data_root': root,
                             f'{loader}.dataset.generate': TINY_SET})
    path = folder / 'tiny_fpn.py'
    cfg.dump(str(path))
    return str(path)


CASES = {
    # name: (config writer, table, library, classes, expected drops)
    'retinanet': (lambda f: write_tiny_config(f, 'retinanet'),
                  lambda: mmdet2_retinanet(3, fork_last3=True), 'mmdet'),
    # trained without FORK_LAST3 (a single-GPU run): norm0 is in the file
    'retinanet_norm0': (lambda f: write_tiny_config(f, 'retinanet'),
                        lambda: mmdet2_retinanet(3, fork_last3=False),
                        'mmdet'),
    'mask_rcnn': (lambda f: write_tiny_config(f, 'mask_rcnn'),
                  lambda: mmdet2_mask_rcnn(3), 'mmdet'),
    'fpn': (seg_config, lambda: mmseg0_fpn(4), 'mmseg'),
}


def to_ours(key):
    """The foreign -> our name map, written independently of the package:
    the same names (see the tables' sources)."""
    return key


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp('foreign')


@pytest.mark.parametrize('case', list(CASES))
def test_runner_loads_foreign_whole_models(case, folder):
    writer, table, library = CASES[case]
    sub = folder / case
    sub.mkdir()
    config = writer(sub)
    foreign = random_tensors(table(), seed=1)
    classes = [f'class{i}' for i in range(3 if library == 'mmdet' else 4)]
    foreign_path, native_path = sub / 'foreign.pth', sub / 'native.pth'
    torch.save(mmcv1_file(foreign, library, classes), foreign_path)
    runners, logged = {}, {}
    for name, path in (('native', native_path), ('foreign', foreign_path)):
        runner = build_test_runner(config, str(path),
                                   work_dir=str(sub / f'work_{name}'))
        if name == 'native':
            ours = runner.model.state_dict()
            native = OrderedDict((to_ours(k), v) for k, v in foreign.items()
                                 if to_ours(k) in ours)
            torch.save({'state_dict': native,
                        'meta': dict(mmengine_version='0.10.7',
                                     dataset_meta=dict(classes=classes))},
                       native_path)
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        runner.logger.addHandler(handler)
        try:
            runner.load_checkpoint(str(path))
        finally:
            runner.logger.removeHandler(handler)
        runners[name] = runner
        logged[name] = '\n'.join(r.getMessage() for r in records)
    native = runners['native'].model.state_dict()
    loaded = runners['foreign'].model.state_dict()
    assert list(native) == list(loaded)
    for key in native:
        assert torch.equal(native[key], loaded[key]), key
    # the same weights give the same outputs
    models = [runners[n].model.eval() for n in ('native', 'foreign')]
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = [m.extract_feat(image) for m in models]
    for a, b in zip(*feats):
        assert torch.equal(a, b)
    # the report: source, renames (none exist), drops, meta
    text = logged['foreign']
    assert 'Converted' not in logged['native']
    source = 'mmdet 2.x' if library == 'mmdet' else 'mmseg 0.x'
    assert f'Converted {foreign_path} ({source}): {len(native)} tensors ' \
           'load, 0 renamed.' in text
    assert 'meta: CLASSES -> dataset_meta.classes' in text
    assert "dropped the training state ['optimizer']" in text
    if case == 'retinanet_norm0':
        assert ('dropped backbone.norm0.weight: not in this model '
                '(fork_last3=True: level 0 is unused)') in text
    else:
        assert 'dropped backbone' not in text
    assert 'left at init' not in text


def test_tools_test_runs_a_foreign_retinanet(folder):
    """tools/test.py CONFIG FOREIGN_FILE end to end."""
    sub = folder / 'retinanet_cli'
    sub.mkdir()
    config = write_tiny_config(sub, 'retinanet')
    path = sub / 'foreign.pth'
    torch.save(mmcv1_file(random_tensors(mmdet2_retinanet(3), seed=2),
                          'mmdet', ['circle', 'square', 'triangle']), path)
    result = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'test.py'), config, str(path),
         '--work-dir', str(sub / 'work')], cwd=sub, capture_output=True,
        text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f'Converted {path} (mmdet 2.x)' in output
    assert 'coco/bbox_mAP' in output


# ---------------------------------------------------------------------------
# Conversion details without a Runner


@pytest.fixture(scope='module')
def retinanet(folder):
    sub = folder / 'model'
    sub.mkdir()
    cfg = Config.fromfile(write_tiny_config(sub, 'retinanet'))
    return build(cfg, 'mmdet')


def test_renamed_keys_are_reported(retinanet):
    """A whole model whose backbone is in timm's layout: the renamed keys
    are listed (mmdet 2.x -> 3.x itself renames nothing)."""
    foreign = random_tensors(mmdet2_retinanet(3), seed=3)
    backbone = {k[len('backbone.'):]: v for k, v in foreign.items()
                if k.startswith('backbone.')}
    timm = {'backbone.' + k: v for k, v in official_to_timm(backbone).items()}
    heads = {k: v for k, v in foreign.items()
             if not k.startswith('backbone.')}
    checkpoint = mmcv1_file({**timm, **heads}, 'mmdet', ['a', 'b', 'c'])
    converted, report = convert_whole_model(checkpoint, retinanet)
    assert report.source == 'mmdet 2.x, backbone in the timm layout'
    assert ('backbone.stem.conv.weight',
            'backbone.patch_embed.proj.weight') in report.renamed
    assert ('backbone.stages.2.blocks.1.layer_scale2.scale',
            'backbone.network.4.1.layer_scale_2') in report.renamed
    # all but the output norms norm2/4/6, which timm names alike
    assert len(report.renamed) == len([k for k in timm if k not in foreign])
    summary = report.summary('x.pth')
    assert ('renamed backbone.stages.1.downsample.conv.weight -> '
            'backbone.network.1.proj.weight') in summary
    for key, value in foreign.items():
        assert torch.equal(converted['state_dict'][key], value), key
    assert converted['meta']['dataset_meta'] == dict(classes=('a', 'b', 'c'))
    assert 'optimizer' not in converted


def test_a_file_of_another_arch_is_refused(retinanet, folder):
    """An S24 RetinaNet into the S12 config; a FORK_LAST3 file into a
    model that needs norm0."""
    table = mmdet2_retinanet(3)
    s24 = {'backbone.' + k: v for k, v in official_layout(
        's24', dense=True, fork_last3=True).items()}
    table = {**{k: v for k, v in table.items()
                if not k.startswith('backbone.')}, **s24}
    checkpoint = mmcv1_file(random_tensors(table, 4), 'mmdet', 'abc')
    with pytest.raises(CheckpointError, match=r'does not fit the model\'s '
                       r'backbone PoolFormer-s12\. The file\'s backbone looks '
                       r'like PoolFormer-s24 .*nothing was loaded'):
        convert_whole_model(checkpoint, retinanet)
    # through a Runner, the same error
    sub = folder / 'refused'
    sub.mkdir()
    config = write_tiny_config(sub, 'retinanet')
    path = sub / 's24.pth'
    torch.save(checkpoint, path)
    runner = build_test_runner(config, str(path), work_dir=str(sub / 'w'))
    with pytest.raises(CheckpointError, match='PoolFormer-s24'):
        runner.load_checkpoint(str(path))
    # a FORK_LAST3 RetinaNet file into a model that outputs norm0
    cfg = Config.fromfile(config)
    cfg.model.backbone.fork_last3 = False
    model = build(cfg, 'mmdet')
    checkpoint = mmcv1_file(random_tensors(mmdet2_retinanet(3), 5), 'mmdet',
                            'abc')
    with pytest.raises(CheckpointError, match='FORK_LAST3=1.*'
                       'fork_last3=True'):
        convert_whole_model(checkpoint, model)


def test_identify():
    assert identify(mmcv1_file({}, 'mmdet', 'a')) == 'mmdet 2.x'
    assert identify(mmcv1_file({}, 'mmseg', 'a')) == 'mmseg 0.x'
    assert identify({'meta': {'CLASSES': ('a', )}, 'state_dict': {}}) == \
        'mmcv 1.x'
    # files of tools/train.py (mmengine's Runner) are left alone
    assert identify({'meta': {'mmengine_version': '0.10.7'},
                     'state_dict': {}}) is None
    assert identify({'state_dict': {}}) is None


def test_convert_tool_round_trip(folder, retinanet):
    sub = folder / 'tool'
    sub.mkdir()
    config = write_tiny_config(sub, 'retinanet')
    foreign = random_tensors(mmdet2_retinanet(3, fork_last3=False), seed=6)
    src, dst = sub / 'foreign.pth', sub / 'converted.pth'
    torch.save(mmcv1_file(foreign, 'mmdet', ['circle', 'square',
                                             'triangle']), src)
    result = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'convert_checkpoint.py'),
         str(src), str(dst), '--whole-model', config], capture_output=True,
        text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert 'mmdet 2.x' in output and 'dropped backbone.norm0.weight' in output
    written = torch.load(dst, weights_only=True)
    assert set(written) == {'state_dict', 'meta'}
    assert written['meta']['dataset_meta'] == dict(
        classes=('circle', 'square', 'triangle'))
    own = retinanet.state_dict()
    assert list(written['state_dict']) == list(own)
    for key, value in written['state_dict'].items():
        assert torch.equal(value, foreign[key]), key
    # the written file is a native one now: loads as it is, nothing converted
    runner = build_test_runner(config, str(dst), work_dir=str(sub / 'w'))
    runner.load_checkpoint(str(dst))
    for key, value in runner.model.state_dict().items():
        assert torch.equal(value, foreign[key]), key
    assert runner.model.state_dict().keys() == own.keys()
    assert needs_conversion(written, runner.model) is None
    # and mmdet's own init_detector reads it (weights_only)
    from mmdet.apis import init_detector
    detector = init_detector(config, str(dst), device='cpu')
    assert detector.dataset_meta['classes'] == ('circle', 'square',
                                                'triangle')
    assert torch.equal(detector.state_dict()['bbox_head.retina_cls.weight'],
                       foreign['bbox_head.retina_cls.weight'])


def test_convert_tool_names_an_unknown_config(tmp_path):
    """--whole-model takes config names as tools/train.py does; a wrong one
    is a one-line error with suggestions, and nothing is written."""
    dst = tmp_path / 'converted.pth'
    result = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'convert_checkpoint.py'),
         str(tmp_path / 'missing.pth'), str(dst), '--whole-model',
         'retinanet_poolformer_s21'], capture_output=True, text=True,
        timeout=300)
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()
    assert error[-1].startswith('error: No config')
    assert 'retinanet_poolformer_s12' in error[-1]
    assert 'Traceback' not in result.stderr and not dst.exists()
