"""Bad input gets a clear error (or documented behaviour) and changes
nothing: configs, checkpoints, input tensors, data and a leftover
``FORK_LAST3`` variable. docs/reliability.md lists the messages."""
import json
import logging
import threading
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.logging import MMLogger

from mmpoolformer.checkpoint import CheckpointError, load_pretrained
from mmpoolformer.models import PoolFormer
from mmpoolformer.runner import (AnnotationFormatError, ConfigError,
                                 DatasetNotFoundError, build_test_runner,
                                 build_train_runner, check_data, check_model,
                                 load_config)
from reference_poolformer import randomize_

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / 'configs'
ALL_CONFIGS = sorted(str(p.relative_to(REPO))
                     for p in CONFIGS.glob('*/*.py'))
# Configs whose neck reads level 0: they need norm0.
NORM0_CONFIGS = sorted(
    str(p.relative_to(REPO)) for pattern in (
        'detection/mask_rcnn_poolformer_*.py',
        'segmentation/fpn_poolformer_*.py') for p in CONFIGS.glob(pattern))
TINY = dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 24, 32], mlp_ratios=2)
RETINA_SHAPES = str(CONFIGS / 'detection' /
                    'retinanet_poolformer_s12_shapes.py')
FPN_SHAPES = str(CONFIGS / 'segmentation' / 'fpn_poolformer_s12_shapes.py')
RETINA_COCO = str(CONFIGS / 'detection' / 'retinanet_poolformer_s12.py')


class Records(logging.Handler):
    """Collects what mmengine's current logger emits."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        MMLogger.get_current_instance().addHandler(self)
        return self

    def __exit__(self, *exc):
        MMLogger.get_current_instance().removeHandler(self)

    def warnings(self, text):
        return [r.getMessage() for r in self.records
                if r.levelno == logging.WARNING and text in r.getMessage()]


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------


@pytest.mark.parametrize('kwargs,message', [
    (dict(arch='s18'), r"Unknown PoolFormer arch 's18'\. Valid names: s12, "
                       r's24, s36, m36, m48'),
    (dict(out_indices=()), r'out_indices \(\) is empty.*e\.g\. '
                           r'out_indices=\(0, 1, 2, 3\)'),
    (dict(out_indices=(0, 4)), r'out_indices \(0, 4\) names stage 4, but '
                               r'PoolFormer has 4 stages: use 0-3'),
    (dict(out_indices=(-5, )), r'names stage -5.*-4 to -1 from the end'),
    (dict(frozen_stages=5), r'frozen_stages=5 is out of range.*integer '
                            r'from -1 to 4'),
    (dict(frozen_stages=-2), r'frozen_stages=-2 is out of range'),
    (dict(fork_last3=True, out_indices=(1, 2, 3)),
     r'fork_last3=True only changes the stage-0 output.*out_indices '
     r'\(1, 2, 3\) has no stage 0.*add 0 to out_indices'),
])
def test_bad_backbone_arguments(kwargs, message):
    kwargs = dict(dict(arch=TINY), **kwargs)
    with pytest.raises(ValueError, match=message):
        PoolFormer(**kwargs)


def test_valid_edges_still_build():
    assert PoolFormer(TINY, frozen_stages=4).frozen_stages == 4
    assert PoolFormer(TINY, out_indices=(-4, 3)).out_indices == (0, 3)
    assert PoolFormer(TINY, fork_last3=True, out_indices=(0, 3)).fork_last3
    # an explicit False needs no stage 0
    PoolFormer(TINY, fork_last3=False, out_indices=(2, ))


def test_neck_in_channels_that_do_not_fit_the_backbone(tmp_path):
    work = tmp_path / 'work'
    with pytest.raises(ConfigError) as error:
        build_train_runner(FPN_SHAPES, work_dir=str(work),
                           cfg_options={'model.backbone.arch': 'm36'})
    assert str(error.value) == (
        'model.neck.in_channels is [64, 128, 320, 512], but the PoolFormer '
        "backbone (arch 'm36', out_indices (0, 1, 2, 3)) produces features "
        'of widths [96, 192, 384, 768]. Set model.neck.in_channels='
        '[96, 192, 384, 768] (on the command line: --cfg-options '
        'model.neck.in_channels=[96,192,384,768]), or change the backbone '
        'arch or out_indices.')
    assert not work.exists()  # stopped before the Runner
    # out_indices select the widths; the test tool checks too
    with pytest.raises(ConfigError, match=r'widths \[128, 320, 512\]'):
        build_test_runner(RETINA_SHAPES, 'unused.pth', work_dir=str(work),
                          cfg_options={'model.backbone.out_indices': [1, 2, 3],
                                       'model.backbone.fork_last3': False})
    # a custom arch and the fix the message gives
    cfg = load_config(FPN_SHAPES)
    cfg.model.backbone.arch = TINY
    with pytest.raises(ConfigError, match=r'embed_dims \(8, 16, 24, 32\)'):
        check_model(cfg)
    cfg.merge_from_dict({'model.neck.in_channels': [8, 16, 24, 32]})
    check_model(cfg)
    with pytest.raises(ValueError, match="Unknown PoolFormer arch 's18'"):
        check_model(load_config(FPN_SHAPES, {'model.backbone.arch': 's18'}))
    assert not work.exists()


@pytest.mark.parametrize('config', ALL_CONFIGS)
def test_shipped_configs_pass_the_checks(config):
    cfg = load_config(str(REPO / config))
    check_model(cfg)
    check_data(cfg, ('train_dataloader', 'val_dataloader',
                     'test_dataloader'))


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def imagenet_file(tmp_path, arch=TINY, name='good.pth'):
    path = tmp_path / name
    torch.save(randomize_(PoolFormer(arch, fork_feat=False)).state_dict(),
               path)
    return path


def refused(path, match):
    """Loading ``path`` raises CheckpointError matching ``match`` and
    leaves the model as it was; returns the message."""
    model = PoolFormer(TINY)
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=match) as error:
        load_pretrained(model, str(path))
    assert_unchanged(model, before)
    return str(error.value)


def test_missing_and_other_arch_checkpoints(tmp_path):
    refused(tmp_path / 'nope.pth', r"Checkpoint file '.*nope\.pth' does not "
                                   r'exist\. Give a local path or an')
    other = imagenet_file(tmp_path, dict(TINY, layers=[2, 1, 2, 1]))
    refused(other, r'does not fit PoolFormer\(layers \(1, 1, 2, 1\).*the '
                   r'file looks like layers \(2, 1, 2, 1\).*Pick the '
                   r'matching `arch`')


def test_truncated_and_corrupted_checkpoints(tmp_path):
    data = imagenet_file(tmp_path).read_bytes()
    path = tmp_path / 'bad.pth'
    path.write_bytes(data[:len(data) // 2])
    message = refused(path, 'is truncated or corrupted')
    assert f"Checkpoint file '{path}'" in message
    assert 'Download it again' in message and 'torch.save' in message
    # a flipped byte in the tensor data: torch.load alone reads no checksum
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    refused(path, r'is corrupted: its entry good/data/\d+ fails the '
                  r'checksum')
    # ... and in the pickled structure (which torch.load would refuse as
    # "Python objects besides tensors")
    with zipfile.ZipFile(tmp_path / 'good.pth') as archive:
        info = archive.getinfo('good/data.pkl')
    header = info.header_offset  # local header: name, extra lengths at 26
    start = header + 30 + int.from_bytes(data[header + 26:header + 28],
                                         'little') + int.from_bytes(
        data[header + 28:header + 30], 'little') + 8
    damaged = bytearray(data)
    damaged[start] ^= 0xFF
    path.write_bytes(bytes(damaged))
    refused(path, r'is corrupted: its entry good/data.pkl fails')
    path.write_bytes(b'')
    refused(path, r'is empty \(0 bytes\)')
    # torch's old (non-zip) format
    sd = PoolFormer(TINY, fork_feat=False).state_dict()
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    refused(path, r'is truncated or corrupted: torch.load could not read it')


def test_files_that_are_not_checkpoints(tmp_path):
    png = tmp_path / 'cat.png'
    png.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(200))
    message = refused(png, r"Checkpoint file '.*cat\.png' is not a torch "
                           r'checkpoint: it looks like a PNG image\.')
    assert 'torch.save' in message
    text = tmp_path / 'weights.pth'
    text.write_text('version https://git-lfs.github.com/spec/v1\n'
                    'oid sha256:1234\n')
    refused(text, r"a text file \(it starts with 'version https://git-lfs")
    html = tmp_path / 'page.pth.tar'
    html.write_text('<!DOCTYPE html><html><body>Sign in</body></html>')
    refused(html, 'an HTML/XML page')
    archive = tmp_path / 'images.zip'
    with zipfile.ZipFile(archive, 'w') as out:
        out.writestr('img/0.png', b'\x89PNG')
    refused(archive, r"a zip archive but not a torch checkpoint \(no "
                     r"data.pkl inside; first entries: \['img/0.png'\]")


def test_unreachable_url_names_it_and_the_offline_way(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    for proxy in ('http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(proxy, raising=False)
    url = 'http://127.0.0.1:9/poolformer_s12.pth.tar'  # nothing listens
    cached = tmp_path / 'torch' / 'hub' / 'checkpoints' / \
        'poolformer_s12.pth.tar'
    result = {}

    def load():
        try:
            refused(url, 'Could not download')
        except BaseException as error:  # reported below
            result['error'] = error
        else:
            result['ok'] = True

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(60)
    assert result.get('ok'), result or 'no answer within 60 s'
    model = PoolFormer(TINY)
    with pytest.raises(CheckpointError) as error:
        load_pretrained(model, url)
    message = str(error.value)
    assert message.startswith(f'Could not download the checkpoint {url} (')
    for expected in ('download the file elsewhere', f'wget {url}',
                     'set init_cfg.checkpoint to the local path',
                     'model.backbone.init_cfg.checkpoint=/path/to/'
                     'poolformer_s12.pth.tar', str(cached)):
        assert expected in message
    assert not cached.parent.exists() or not any(cached.parent.iterdir())
    # The local path the message suggests works ...
    local = imagenet_file(tmp_path, name='poolformer_s12.pth.tar')
    assert load_pretrained(PoolFormer(TINY), str(local)).loaded
    # ... and so does the cache it names, with no network.
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(local.read_bytes())
    assert load_pretrained(PoolFormer(TINY), url).loaded
    # A damaged cached copy is named as such.
    cached.write_bytes(local.read_bytes()[:100])
    message = refused(url, 'truncated or corrupted')
    assert f'The cached download {cached} of {url}' in message


# --------------------------------------------------------------------------
# Input tensors
# --------------------------------------------------------------------------


@pytest.mark.parametrize('shape,message', [
    ((3, 32, 32), r'expects a batch of images shaped \(N, C, H, W\); got a '
                  r'3-D tensor of shape \(3, 32, 32\)\. For a single image, '
                  r'add the batch dimension: x\.unsqueeze\(0\)'),
    ((2, 3, 32, 32, 1), r'got a 5-D tensor'),
    ((1, 1, 32, 32), r'built for 3-channel images \(in_channels=3\) but got '
                     r'1 channels.*grayscale to RGB.*in_channels=1'),
    ((1, 32, 32, 3), r'got 32 channels.*x\.permute\(0, 3, 1, 2\)'),
    ((0, 3, 32, 32), r'empty batch \(input shape \(0, 3, 32, 32\)\)'),
    ((1, 3, 3, 64), r'at least 4x4 pixels \(the stride of its stem\), got '
                    r'3x64.*Resize or pad'),
    ((1, 3, 64, 2), r'got 64x2'),
])
def test_bad_input_shapes(shape, message):
    model = PoolFormer(TINY).eval()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(shape))


def test_smallest_accepted_input_and_other_channel_counts():
    outs = PoolFormer(TINY).eval()(torch.randn(1, 3, 4, 4))
    assert [tuple(o.shape[2:]) for o in outs] == [(1, 1)] * 4
    grey = PoolFormer(TINY, in_channels=1).eval()
    assert len(grey(torch.randn(2, 1, 8, 8))) == 4
    with pytest.raises(ValueError, match='built for 1-channel images'):
        grey(torch.randn(1, 3, 32, 32))


def test_checks_do_not_break_compile():
    model = PoolFormer(TINY).eval()
    x = torch.randn(2, 3, 40, 48)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0
    traced = torch.jit.trace(model, x, check_trace=False)
    with torch.no_grad():
        for a, b in zip(traced(x), model(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
@pytest.mark.parametrize('norm_cfg', [None, dict(type='BN')])
def test_non_finite_input_propagates_and_never_hangs(bad, norm_cfg):
    """Documented behaviour: no error, no hang; the image with the bad
    pixel gets NaN features (GroupNorm: that image only)."""
    model = randomize_(PoolFormer(TINY, norm_cfg=norm_cfg)).train()
    x = torch.randn(2, 3, 32, 32)
    x[0, 1, 5, 7] = bad
    result = {}
    thread = threading.Thread(target=lambda: result.update(outs=model(x)),
                              daemon=True)
    thread.start()
    thread.join(60)
    assert 'outs' in result, 'forward did not return within 60 s'
    for out in result['outs']:
        assert torch.isnan(out[0]).all()
        if norm_cfg is None:  # one-group GroupNorm is per image
            assert torch.isfinite(out[1]).all()


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def coco_root(tmp_path, train_text=None, train_json=None):
    root = tmp_path / 'coco'
    for sub in ('train2017', 'val2017', 'annotations'):
        (root / sub).mkdir(parents=True, exist_ok=True)
    coco = dict(images=[], annotations=[], categories=[])
    train = root / 'annotations' / 'instances_train2017.json'
    if train_text is not None:
        train.write_text(train_text)
    else:
        train.write_text(json.dumps(train_json or coco))
    (root / 'annotations' / 'instances_val2017.json').write_text(
        json.dumps(coco))
    options = {f'{loader}.dataset.data_root': f'{root}/'
               for loader in ('train_dataloader', 'val_dataloader')}
    options['val_evaluator.ann_file'] = \
        f'{root}/annotations/instances_val2017.json'
    return root, options


def test_missing_dataset_root(tmp_path):
    with pytest.raises(DatasetNotFoundError, match='train2017'):
        build_train_runner(RETINA_COCO, work_dir=str(tmp_path / 'work'),
                           cfg_options={
                               'train_dataloader.dataset.data_root':
                               str(tmp_path / 'none') + '/'})
    assert not (tmp_path / 'work').exists()


@pytest.mark.parametrize('content,found', [
    (dict(train_text='img.jpg 10 10 50 50 cat\n'),
     r"it is not JSON \(it starts with 'img.jpg 10 10 50 50 cat'\)"),
    (dict(train_json=dict(images=[], labels=[])),
     r"its top-level keys are \['images', 'labels'\]"),
    (dict(train_text='[{"file": "a.jpg"}]'), 'it is a JSON list'),
    (dict(train_text='{"images": [], "annotations": ['),
     r'it is not valid JSON \(Expecting value'),
    (dict(train_text=''), 'it is empty'),
])
def test_annotation_file_that_is_not_coco(tmp_path, content, found):
    root, options = coco_root(tmp_path, **content)
    work = tmp_path / 'work'
    with pytest.raises(AnnotationFormatError, match=found) as error:
        build_train_runner(RETINA_COCO, work_dir=str(work),
                           cfg_options=options)
    message = str(error.value)
    path = root / 'annotations' / 'instances_train2017.json'
    assert message.startswith(f'train_dataloader.dataset.ann_file: {path} '
                              'is not a COCO annotation file: ')
    assert "'images', 'annotations', 'categories'" in message
    assert not work.exists()


def test_coco_checks_accept_coco_and_test_sets_without_annotations(
        tmp_path):
    root, options = coco_root(tmp_path)
    cfg = load_config(RETINA_COCO, options)
    check_data(cfg, ('train_dataloader', 'val_dataloader'))
    # test-dev style: image info only, no ground truth
    info = root / 'annotations' / 'image_info_test.json'
    info.write_text(json.dumps(dict(images=[], categories=[])))
    cfg = load_config(RETINA_COCO, {
        'test_dataloader.dataset.data_root': f'{root}/',
        'test_dataloader.dataset.ann_file': 'annotations/image_info_test.json',
        'test_evaluator.ann_file': str(info),
        'test_evaluator.format_only': True})
    check_data(cfg, ('test_dataloader', ))
    # the evaluator's copy is checked too
    bad = root / 'annotations' / 'bad.json'
    bad.write_text('{"info": {}}')
    cfg.merge_from_dict({'test_evaluator.ann_file': str(bad)})
    with pytest.raises(AnnotationFormatError,
                       match=rf"test_evaluator.ann_file: {bad} is not"):
        check_data(cfg, ('test_dataloader', ))


def test_large_annotation_files_are_scanned(tmp_path, monkeypatch):
    import mmpoolformer.runner as runner
    monkeypatch.setattr(runner, '_JSON_PARSE_LIMIT', 10)
    root, options = coco_root(tmp_path)
    check_data(load_config(RETINA_COCO, options), ('train_dataloader', ))
    root, options = coco_root(tmp_path, train_json=dict(images=[], x=[]))
    with pytest.raises(AnnotationFormatError,
                       match=r"it has only the keys \['images'\]"):
        check_data(load_config(RETINA_COCO, options), ('train_dataloader', ))


def test_detector_head_and_dataset_class_counts_disagree(tmp_path):
    work = tmp_path / 'work'
    with pytest.raises(ConfigError) as error:
        build_train_runner(RETINA_SHAPES, work_dir=str(work),
                           cfg_options={'model.bbox_head.num_classes': 5})
    assert str(error.value) == (
        'The head and the dataset disagree on the number of classes:\n'
        '  model.bbox_head.num_classes is 5, but the datasets of '
        'train_dataloader and val_dataloader (ShapesDataset) have 3 classes '
        "('circle', 'square', 'triangle') (from ShapesDataset.METAINFO)\n"
        'Set the head to the dataset: --cfg-options '
        'model.bbox_head.num_classes=3\n'
        'or, if the head is right, list its classes in the dataset config '
        '(metainfo=dict(classes=(...)) in train_dataloader.dataset, '
        'val_dataloader.dataset).')
    assert not work.exists()
    # Mask R-CNN's two heads, and classes from the config's metainfo
    mask_rcnn = str(CONFIGS / 'detection' /
                    'mask_rcnn_poolformer_s12_shapes.py')
    with pytest.raises(ConfigError) as error:
        build_test_runner(mask_rcnn, 'unused.pth', work_dir=str(work),
                          cfg_options={
                              'test_dataloader.dataset.metainfo':
                              dict(classes=('circle', 'square'))})
    message = str(error.value)
    for line in ('model.roi_head.bbox_head.num_classes is 3, but the dataset'
                 ' of test_dataloader (ShapesDataset) has 2 classes',
                 'model.roi_head.mask_head.num_classes is 3',
                 'its metainfo in the config',
                 '--cfg-options model.roi_head.bbox_head.num_classes=2 '
                 'model.roi_head.mask_head.num_classes=2'):
        assert line in message
    assert not work.exists()


def test_segmentor_head_and_dataset_class_counts_disagree(tmp_path):
    with pytest.raises(ConfigError) as error:
        build_train_runner(FPN_SHAPES, work_dir=str(tmp_path / 'work'),
                           cfg_options={'model.decode_head.num_classes': 3})
    message = str(error.value)
    assert ('model.decode_head.num_classes is 3, but the datasets of '
            'train_dataloader and val_dataloader (ShapesSegDataset) have 4 '
            "classes ('background', 'circle', 'square', 'triangle')"
            in message)
    assert '--cfg-options model.decode_head.num_classes=4' in message
    assert not (tmp_path / 'work').exists()


# --------------------------------------------------------------------------
# A leftover FORK_LAST3
# --------------------------------------------------------------------------


def build_backbone(config):
    """The config's backbone, shrunk to TINY (fork_last3, norms and
    out_indices stay the config's) and without its download."""
    backbone = dict(load_config(str(REPO / config)).model.backbone)
    assert backbone.pop('type') == 'PoolFormer'
    backbone.update(arch=TINY, init_cfg=None)
    return PoolFormer(**backbone)


@pytest.mark.parametrize('config', NORM0_CONFIGS)
def test_leftover_fork_last3_keeps_norm0(config, monkeypatch):
    monkeypatch.setenv('FORK_LAST3', '1')
    with Records() as records:
        backbone = build_backbone(config)
    assert not backbone.fork_last3
    assert isinstance(backbone.norm0, (nn.GroupNorm, nn.BatchNorm2d))
    assert any(k.startswith('norm0.') for k in backbone.state_dict())
    assert not records.warnings('FORK_LAST3')  # nothing changed


def test_all_norm0_configs_are_covered():
    assert len(NORM0_CONFIGS) == 10
    assert any(c.endswith('_shapes.py') and 'mask_rcnn' in c
               for c in NORM0_CONFIGS)


def test_leftover_fork_last3_is_logged_when_it_changes_a_model(monkeypatch):
    monkeypatch.setenv('FORK_LAST3', '1')
    with Records() as records:
        model = PoolFormer(TINY)
    assert isinstance(model.norm0, nn.Identity)
    [message] = records.warnings('FORK_LAST3')
    assert message.startswith(
        'FORK_LAST3=1 in the environment makes this PoolFormer return its '
        'stage-0 (stride 4) feature without norm0 (fork_last3=True).')
    assert 'unset FORK_LAST3' in message
    # nothing to log where the variable changes nothing
    with Records() as records:
        PoolFormer(TINY, out_indices=(1, 2, 3))
        PoolFormer(TINY, fork_last3=True)
    assert not records.warnings('FORK_LAST3')
    monkeypatch.setenv('FORK_LAST3', '0')
    with Records() as records:
        assert not PoolFormer(TINY).fork_last3
    assert not records.warnings('FORK_LAST3')


def test_retinanet_configs_still_fork(monkeypatch):
    monkeypatch.delenv('FORK_LAST3', raising=False)
    for config in ('detection/retinanet_poolformer_s12.py',
                   'detection/retinanet_poolformer_s12_shapes.py'):
        assert isinstance(build_backbone('configs/' + config).norm0,
                          nn.Identity)


def test_tools_report_config_errors_in_one_line(tmp_path):
    """tools/train.py ends a ConfigError with `error: ...`, no traceback,
    before a work directory exists."""
    import subprocess
    import sys

    from test_detection import write_tiny_config
    config = write_tiny_config(tmp_path, 'retinanet')
    result = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'train.py'), config,
         '--work-dir', 'work', '--cfg-options',
         'model.neck.in_channels=[64,128,320,500]'],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr
    assert 'error: model.neck.in_channels is [64, 128, 320, 500]' in \
        result.stderr
    assert not (tmp_path / 'work').exists()
