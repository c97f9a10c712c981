"""Loading checkpoints synthesized in the official (and other) layouts."""
import logging
import re

import pytest
import torch
from mmengine.logging import MMLogger

import mmpoolformer.checkpoint as ckpt_module
from mmpoolformer.checkpoint import CheckpointError, convert_checkpoint
from mmpoolformer.models import PoolFormer

TINY = dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 24, 32], mlp_ratios=2)
OUTPUT_NORMS = ['norm0', 'norm2', 'norm4', 'norm6']
# The released models, as (layers, embed_dims, mlp_ratio); paper Table 1.
OFFICIAL_ARCHS = dict(s12=((2, 2, 6, 2), (64, 128, 320, 512), 4),
                      s24=((4, 4, 12, 4), (64, 128, 320, 512), 4))


def official_layout(arch=TINY, dense=False, fork_last3=False,
                    num_classes=1000):
    """Key -> shape of the official code's state dict, written out from its
    module names (not from this package): the stem ``patch_embed.proj``;
    ``network`` = [stage, downsampling, stage, ...] with blocks
    ``network.{0,2,4,6}.{j}`` (``norm1``, ``token_mixer`` without
    parameters, ``norm2``, ``mlp.fc1``/``mlp.fc2`` as 1x1 convs,
    ``layer_scale_1``/``layer_scale_2``) and downsampling
    ``network.{1,3,5}.proj`` (3x3 convs); then ``norm``/``head`` (ImageNet
    classifier) or the output norms ``norm0/2/4/6`` (dense, ``norm0`` gone
    under FORK_LAST3)."""
    if isinstance(arch, str):
        layers, dims, ratio = OFFICIAL_ARCHS[arch]
    else:
        layers, dims, ratio = (arch['layers'], arch['embed_dims'],
                               arch['mlp_ratios'])
    shapes = {'patch_embed.proj.weight': (dims[0], 3, 7, 7),
              'patch_embed.proj.bias': (dims[0], )}
    for i, (depth, dim) in enumerate(zip(layers, dims)):
        hidden = int(dim * ratio)
        for j in range(depth):
            block = f'network.{2 * i}.{j}.'
            shapes.update({
                block + 'layer_scale_1': (dim, ),
                block + 'layer_scale_2': (dim, ),
                block + 'norm1.weight': (dim, ), block + 'norm1.bias': (dim, ),
                block + 'norm2.weight': (dim, ), block + 'norm2.bias': (dim, ),
                block + 'mlp.fc1.weight': (hidden, dim, 1, 1),
                block + 'mlp.fc1.bias': (hidden, ),
                block + 'mlp.fc2.weight': (dim, hidden, 1, 1),
                block + 'mlp.fc2.bias': (dim, )})
        if i < 3:
            shapes[f'network.{2 * i + 1}.proj.weight'] = (dims[i + 1], dim,
                                                          3, 3)
            shapes[f'network.{2 * i + 1}.proj.bias'] = (dims[i + 1], )
    if dense:
        for i, dim in enumerate(dims):
            if not (i == 0 and fork_last3):
                shapes[f'norm{2 * i}.weight'] = (dim, )
                shapes[f'norm{2 * i}.bias'] = (dim, )
    else:
        shapes.update({'norm.weight': (dims[-1], ), 'norm.bias': (dims[-1], ),
                       'head.weight': (num_classes, dims[-1]),
                       'head.bias': (num_classes, )})
    return shapes


def official_state_dict(arch=TINY, seed=0, dense=False):
    """A file's weights in the released layout, O(1) random values."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in official_layout(arch, dense).items():
        if 'norm' in key or 'layer_scale' in key:
            sd[key] = 0.5 + torch.rand(shape, generator=gen)
        else:
            fan_in = max(int(torch.tensor(shape[1:]).prod()), 1)
            sd[key] = torch.randn(shape, generator=gen) / fan_in ** 0.5
    return sd


def imagenet_state_dict(arch=TINY, seed=0):
    """An ImageNet classifier's weights in the released layout."""
    return official_state_dict(arch, seed)


def test_official_layout_table():
    """The table itself against the release's figures (paper Table 1: S12
    11.9M parameters with the classifier; 11.4M with the output norms)."""
    cls, dense = official_layout('s12'), official_layout('s12', dense=True)
    assert len(cls) == 2 + 12 * 10 + 3 * 2 + 4 == 132
    assert len(dense) == 2 + 12 * 10 + 3 * 2 + 8 == 136
    numel = {name: sum(int(torch.tensor(s).prod()) for s in table.values())
             for name, table in (('cls', cls), ('dense', dense))}
    assert numel['cls'] / 1e6 == pytest.approx(11.915, abs=0.0005)
    assert numel['dense'] / 1e6 == pytest.approx(11.40, abs=0.005)
    assert cls['network.4.5.mlp.fc1.weight'] == (1280, 320, 1, 1)
    assert cls['network.5.proj.weight'] == (512, 320, 3, 3)
    assert 'network.6.2.norm1.weight' not in cls  # S12's last stage: 2
    assert official_layout('s24')['network.4.11.layer_scale_2'] == (320, )


@pytest.mark.parametrize('arch', ['s12', TINY])
@pytest.mark.parametrize('options', [dict(fork_feat=False), {},
                                     dict(fork_last3=True)])
def test_model_state_dict_is_the_official_layout(arch, options):
    model = PoolFormer(arch, **options)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert own == official_layout(arch, dense=options.get('fork_feat', True),
                                  fork_last3=options.get('fork_last3', False))


def official_to_timm(sd):
    """Independent rename into timm >= 0.9's metaformer layout."""
    out = {}
    for k, v in sd.items():
        m = re.match(r'network\.(\d+)\.(.*)', k)
        if k.startswith('patch_embed.proj.'):
            k = k.replace('patch_embed.proj.', 'stem.conv.')
        elif m and int(m.group(1)) % 2 == 1:
            k = f'stages.{(int(m.group(1)) + 1) // 2}.downsample.conv.' + \
                m.group(2).split('proj.')[1]
        elif m:
            rest = re.sub(r'layer_scale_(\d)', r'layer_scale\1.scale',
                          m.group(2))
            k = f'stages.{int(m.group(1)) // 2}.blocks.{rest}'
        elif k.startswith('norm.'):
            k = 'head.' + k
        elif k.startswith('head.'):
            k = 'head.fc.' + k[len('head.'):]
        out[k] = v
    return out


def load(tmp_path, payload, model=None, **init):
    path = tmp_path / 'ckpt.pth.tar'
    torch.save(payload, path)
    model = model or PoolFormer(TINY)
    return model, ckpt_module.load_pretrained(model, str(path), **init)


def assert_backbone_loaded(model, sd):
    """Every official backbone tensor of ``sd`` (a TINY file) landed under
    its own name; only the four output norms are not from the file."""
    own = model.state_dict()
    shared = [k for k in official_layout() if not k.startswith(('norm.',
                                                                'head.'))]
    assert set(own) == set(shared) | {f'{norm}.{name}' for norm in
                                      OUTPUT_NORMS
                                      for name in ('weight', 'bias')}
    for key in shared:
        torch.testing.assert_close(own[key], sd[key], msg=key)


@pytest.mark.parametrize('wrap', ['bare', 'state_dict', 'model', 'module.',
                                  'backbone.', 'mmpretrain', 'timm'])
def test_load_layouts(tmp_path, wrap):
    sd = imagenet_state_dict()
    payload = {
        'bare': sd,
        'state_dict': {'state_dict': sd, 'meta': {'epoch': 300}},
        'model': {'model': sd},
        'module.': {'module.' + k: v for k, v in sd.items()},
        'backbone.': {'state_dict': {**{'backbone.' + k: v
                                        for k, v in sd.items()},
                                     'neck.lateral.weight': torch.ones(2)}},
        'mmpretrain': {'state_dict': {
            **{'backbone.' + k: v for k, v in sd.items()
               if not k.startswith('head.')},
            'head.fc.weight': sd['head.weight']}},
        'timm': official_to_timm(sd),
    }[wrap]
    model, report = load(tmp_path, payload)
    assert_backbone_loaded(model, sd)
    assert sorted({k.split('.')[0] for k in report.fresh}) == OUTPUT_NORMS
    assert report.layout == ('timm' if wrap == 'timm' else 'official')
    if wrap in ('backbone.', 'mmpretrain'):
        assert report.dropped_prefixed == 1
    else:
        assert {k.split('.')[0] for k in report.ignored} == {'norm', 'head'}
    summary = report.summary('PoolFormer-custom')
    assert 'norm0, norm2, norm4, norm6' in summary


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_init_cfg_loads_once_and_logs_report(tmp_path, monkeypatch):
    records = Records()
    MMLogger.get_current_instance().addHandler(records)
    sd = imagenet_state_dict()
    path = tmp_path / 'poolformer_tiny.pth.tar'
    torch.save(sd, path)
    reads = []
    real_load = torch.load
    monkeypatch.setattr(
        torch, 'load',
        lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    model = PoolFormer(TINY, init_cfg=dict(type='Pretrained',
                                           checkpoint=str(path)))
    model.init_weights()
    model.init_weights()  # a second call must not load again
    assert len(reads) == 1
    assert_backbone_loaded(model, sd)
    MMLogger.get_current_instance().removeHandler(records)
    out = '\n'.join(records.messages)
    n_loaded = len(model.state_dict()) - 2 * len(OUTPUT_NORMS)
    assert f'embed_dims (8, 16, 24, 32)): loaded {n_loaded} tensors' in out
    assert 'initialised fresh' in out
    assert 'norm, head' in out


def test_loads_full_official_detector_checkpoint(tmp_path):
    dense = official_state_dict(TINY, seed=3, dense=True)
    payload = {'meta': {'epoch': 12},
               'state_dict': {**{'backbone.' + k: v for k, v in dense.items()},
                              'bbox_head.retina_cls.weight': torch.ones(1)}}
    model, report = load(tmp_path, payload)
    assert model.state_dict().keys() == dense.keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, dense[key])
    assert report.fresh == [] and report.dropped_prefixed == 1
    # fork_last3 model: norm0 in the file is an expected extra
    model, report = load(tmp_path, payload, PoolFormer(TINY, fork_last3=True))
    assert [k.split('.')[0] for k in report.ignored] == ['norm0', 'norm0']


def test_arch_mismatch_is_named(tmp_path):
    bigger = dict(TINY, layers=[2, 1, 2, 1])
    with pytest.raises(CheckpointError, match=r'layers \(2, 1, 2, 1\).*'
                       r'file weights the model does not have'):
        load(tmp_path, imagenet_state_dict(bigger))
    wider = dict(TINY, embed_dims=[8, 16, 24, 40])
    with pytest.raises(CheckpointError, match='shape mismatches'):
        load(tmp_path, imagenet_state_dict(wider))


def test_batch_norm_model_refuses_official_file_and_says_why(tmp_path):
    model = PoolFormer(TINY, norm_cfg=dict(type='BN'))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError,
                       match=r"batch norms \(norm_cfg=\{'type': 'BN'\}\).*"
                       r'leave norm_cfg unset'):
        load(tmp_path, imagenet_state_dict(), model)
    assert all(torch.equal(v, before[k])
               for k, v in model.state_dict().items())


def test_real_arch_names_in_errors(tmp_path):
    sd = official_state_dict('s24')
    model = PoolFormer('s12')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError,
                       match=r'PoolFormer-s12: the file looks like '
                             r'PoolFormer-s24'):
        load(tmp_path, sd, model)
    for key, value in model.state_dict().items():  # nothing was loaded
        assert torch.equal(value, before[key])


def test_unknown_layout_missing_weights_and_bad_paths(tmp_path):
    with pytest.raises(CheckpointError, match='Unknown checkpoint layout'):
        load(tmp_path,
             {'conv1.weight': torch.ones(3), 'fc.bias': torch.ones(2)})
    sd = imagenet_state_dict()
    partial = {k: v for k, v in sd.items() if not k.startswith('network.2')}
    with pytest.raises(CheckpointError, match='missing from the file'):
        load(tmp_path, partial)
    with pytest.raises(CheckpointError, match='does not exist'):
        ckpt_module.load_pretrained(PoolFormer(TINY), str(tmp_path / 'no.pth'))
    with pytest.raises(CheckpointError, match="prefix 'detector.'"):
        load(tmp_path, sd, prefix='detector.')


class NotATensor:
    pass


def test_weights_only_refusal_explains_the_switch(tmp_path):
    payload = {'state_dict': imagenet_state_dict(), 'meta': NotATensor()}
    with pytest.raises(CheckpointError, match='weights_only=False'):
        load(tmp_path, payload)
    model, report = load(tmp_path, payload, weights_only=False)
    assert len(report.loaded) > 0


def test_convert_checkpoint_to_official(tmp_path):
    sd = imagenet_state_dict()
    src, dst = tmp_path / 'timm.pth', tmp_path / 'official.pth'
    torch.save(official_to_timm(sd), src)
    layout, count = convert_checkpoint(str(src), str(dst),
                                       PoolFormer.checkpoint_layout)
    converted = torch.load(dst)
    assert layout == 'timm' and count == len(sd)
    assert converted.keys() == sd.keys()
    for key in sd:
        torch.testing.assert_close(converted[key], sd[key])


def test_conversion_writes_whole_files_or_nothing(tmp_path):
    """Written atomically: converting in place works (the source was read
    first); a write that fails midway leaves the old file as it was and no
    temporary file behind."""
    from mmpoolformer.checkpoint import save_checkpoint_file
    sd = imagenet_state_dict()
    path = tmp_path / 'weights.pth'
    torch.save(official_to_timm(sd), path)
    layout, _ = convert_checkpoint(str(path), str(path),
                                   PoolFormer.checkpoint_layout)
    assert layout == 'timm' and torch.load(path).keys() == sd.keys()
    before = path.read_bytes()
    # the tensors are written first, then pickling the lambda fails
    with pytest.raises(Exception, match='lambda|pickle'):
        save_checkpoint_file(dict(sd, broken=lambda: None), str(path))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['weights.pth']
    save_checkpoint_file({'x': torch.ones(2)}, str(tmp_path / 'new' / 'a'))
    assert torch.load(tmp_path / 'new' / 'a')['x'].sum() == 2
    # the permissions of a file torch.save would have created
    plain = tmp_path / 'plain.pth'
    torch.save({}, plain)
    assert (tmp_path / 'new' / 'a').stat().st_mode == plain.stat().st_mode


def test_convert_tool_command_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    sd = imagenet_state_dict()
    src, dst = tmp_path / 'timm.pth', tmp_path / 'official.pth'
    torch.save({'state_dict': official_to_timm(sd)}, src)
    tool = Path(__file__).parents[1] / 'tools' / 'convert_checkpoint.py'
    done = subprocess.run([sys.executable, str(tool), str(src), str(dst)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'timm layout' in done.stdout
    assert torch.load(dst).keys() == sd.keys()
    bad = subprocess.run([sys.executable, str(tool), str(tmp_path / 'x.pth'),
                          str(dst)], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and 'does not exist' in bad.stderr
    assert 'Traceback' not in bad.stderr


def test_detector_init_weights_loads_backbone_once(tmp_path, monkeypatch):
    """Through a real mmdet RetinaNet: the official code loaded twice."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    sd = official_state_dict('s12', seed=1)
    path = tmp_path / 'poolformer_s12.pth.tar'
    torch.save(sd, path)
    reads = []
    real_load = torch.load
    monkeypatch.setattr(
        torch, 'load',
        lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    cfg = Config(dict(model=dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor'),
        backbone=dict(type='PoolFormer', arch='s12', fork_last3=True,
                      init_cfg=dict(type='Pretrained', checkpoint=str(path))),
        neck=dict(type='FPN', in_channels=[64, 128, 320, 512],
                  out_channels=32, start_level=1, add_extra_convs='on_input',
                  num_outs=5),
        bbox_head=dict(
            type='RetinaHead', num_classes=3, in_channels=32, feat_channels=32,
            stacked_convs=1,
            anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                  scales_per_octave=1, ratios=[1.0],
                                  strides=[8, 16, 32, 64, 128]),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True),
            loss_bbox=dict(type='L1Loss')))))
    init_default_scope('mmdet')
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    assert reads == [str(path)]
    own = detector.backbone.state_dict()
    torch.testing.assert_close(own['network.4.5.mlp.fc1.weight'],
                               sd['network.4.5.mlp.fc1.weight'])
    assert 'norm0.weight' not in own  # fork_last3
