"""Semantic FPN configs, the shapes segmentation demo and the mmseg paths of
the tools: real models, real Runner runs on a tiny shapes set (64 px)."""
import functools
import importlib.util
import json
import os.path as osp
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.hooks import Hook

import mmpoolformer  # noqa: F401  registers PoolFormer and the datasets
from coco_check import OutputRecorder
from mmpoolformer.models import ARCH_SETTINGS
from mmpoolformer.runner import (DatasetNotFoundError, build_test_runner,
                                 build_train_runner, load_config)

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / 'configs' / 'segmentation'
DEMO = str(CONFIG_DIR / 'fpn_poolformer_s12_shapes.py')
TINY = dict(num_train=16, num_val=8, img_size=64)
# Paper Table (ADE20K, Semantic FPN); S24's 23.2M in the paper is a typo.
PARAMS_M = dict(s12=15.7, s24=25.1, s36=34.6, m36=59.8, m48=77.1)
ADE_URL = ('https://github.com/sail-sg/poolformer/releases/download/v1.0/'
           'poolformer_{}.pth.tar')


def _build_model(cfg):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    return MODELS.build(cfg.model)


def _read_label(path) -> np.ndarray:
    import cv2
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(
        f'tool_{name}', REPO / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------
# ADE20K configs
# --------------------------------------------------------------------------


@pytest.mark.parametrize('arch', list(PARAMS_M))
def test_ade20k_config_recipe_and_params(arch):
    cfg = load_config(str(CONFIG_DIR / f'fpn_poolformer_{arch}.py'))
    model = cfg.model
    assert cfg.default_scope == 'mmseg'
    assert model.backbone.type == 'PoolFormer' and model.backbone.arch == arch
    assert model.backbone.init_cfg == dict(type='Pretrained',
                                           checkpoint=ADE_URL.format(arch))
    assert model.neck.in_channels == list(ARCH_SETTINGS[arch]['embed_dims'])
    assert (model.neck.out_channels, model.neck.num_outs) == (256, 4)
    head = model.decode_head
    assert (head.type, head.channels, head.dropout_ratio,
            head.num_classes) == ('FPNHead', 128, 0.1, 150)
    assert head.norm_cfg.type == 'SyncBN'
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=2e-4,
                                               weight_decay=1e-4)
    [poly] = cfg.param_scheduler
    assert (poly.type, poly.power, poly.eta_min, poly.end,
            poly.by_epoch) == ('PolyLR', 0.9, 0.0, 40000, False)
    assert (cfg.train_cfg.max_iters,
            cfg.train_cfg.val_interval) == (40000, 4000)
    assert cfg.train_dataloader.batch_size == 4  # x 8 GPUs = 32
    assert cfg.val_evaluator.type == 'IoUMetric'
    train = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    assert train['RandomResize'].scale == (2048, 512)
    assert train['RandomResize'].ratio_range == (0.5, 2.0)
    assert train['RandomCrop'].crop_size == (512, 512)
    assert train['RandomCrop'].cat_max_ratio == 0.75
    assert 'RandomFlip' in train and 'PhotoMetricDistortion' in train
    test = [t.type for t in cfg.test_dataloader.dataset.pipeline]
    assert test.index('Resize') + 1 == test.index('ResizeToMultiple')
    resize = cfg.test_dataloader.dataset.pipeline[test.index('Resize')]
    assert resize.scale == (2048, 512) and resize.keep_ratio
    assert cfg.test_dataloader.dataset.pipeline[
        test.index('ResizeToMultiple')].size_divisor == 32

    model.backbone.init_cfg = None  # no download
    built = _build_model(cfg)
    params = sum(p.numel() for p in built.parameters()) / 1e6
    assert abs(params - PARAMS_M[arch]) <= 0.1, params


# UperNet with ConvFormer/CAFormer-S18: the paper's ADE20K figures as quoted
# by a third party (the configs' headers): 54M parameters each.
UPERNET = dict(ConvFormer='upernet_convformer_s18.py',
               CAFormer='upernet_caformer_s18.py')
METAFORMER_URL = 'https://huggingface.co/sail/dl/resolve/main/{0}/{0}_s18.pth'


@pytest.mark.parametrize('family', list(UPERNET))
def test_upernet_metaformer_config_recipe_and_params(family):
    cfg = load_config(str(CONFIG_DIR / UPERNET[family]))
    model = cfg.model
    assert (model.backbone.type, model.backbone.arch) == (family, 's18')
    assert model.backbone.init_cfg == dict(
        type='Pretrained', checkpoint=METAFORMER_URL.format(family.lower()))
    assert not model.backbone.fork_last3 and model.pretrained is None
    head, aux = model.decode_head, model.auxiliary_head
    assert (head.type, head.in_channels, head.channels, head.num_classes,
            head.pool_scales) == ('UPerHead', [64, 128, 320, 512], 512, 150,
                                  (1, 2, 3, 6))
    # the auxiliary head reads stage 3, whose width is 320 here
    assert (aux.type, aux.in_index, aux.in_channels,
            aux.num_classes) == ('FCNHead', 2, 320, 150)
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs = 16
    assert cfg.train_cfg.max_iters == 160000
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.end, poly.type, poly.begin, poly.end,
            poly.power) == ('LinearLR', 1500, 'PolyLR', 1500, 160000, 1.0)
    assert cfg.optim_wrapper.optimizer.lr == 1e-4

    model.backbone.init_cfg = None  # no download
    built = _build_model(cfg)
    params = sum(p.numel() for p in built.parameters()) / 1e6
    assert abs(params - 54) <= 0.5, params


def test_upernet_metaformer_config_trains_with_its_recipe(tmp_path):
    """The CAFormer-S18 UperNet config with the shapes set in place of
    ADE20K, through the real Runner: both heads' losses, the warm-up, and
    no weight decay on 1-D parameters (norms, biases, scales)."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(CONFIG_DIR / UPERNET['CAFormer']))
    data = Config.fromfile(
        str(REPO / 'configs/_base_/datasets/shapes_segmentation.py'))
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader',
                'val_evaluator', 'test_evaluator'):
        cfg[key] = data[key]
    cfg.model.backbone.init_cfg = None  # no download
    cfg.model.decode_head.num_classes = 4
    cfg.model.auxiliary_head.num_classes = 4
    config = tmp_path / 'upernet_caformer_s18_shapes.py'
    cfg.dump(str(config))
    work_dir = tmp_path / 'work'
    options = _tiny_options(tmp_path / 'shapes', iters=7)
    options['default_hooks.logger.interval'] = 1
    runner = build_train_runner(str(config), work_dir=str(work_dir),
                                cfg_options=options)
    runner.train()

    scalars = [json.loads(line) for line in
               next(work_dir.glob('*/vis_data/scalars.json')).open()]
    train = [s for s in scalars if 'loss' in s]
    assert len(train) == 7 and all(np.isfinite([s['loss'] for s in train]))
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(train[-1])
    assert any('mIoU' in s for s in scalars)
    # linear warm-up from 1e-10 to 1e-4 (5 iterations here), then poly
    # decay to 0
    lrs = [s['lr'] for s in train]
    assert lrs[0] < 1e-9
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5]))
    assert lrs[4] == pytest.approx(1e-4) and lrs[-1] < lrs[4]
    decays = {id(p): group['weight_decay']
              for group in runner.optim_wrapper.optimizer.param_groups
              for p in group['params']}
    flat = []
    for name, param in runner.model.named_parameters():
        assert decays[id(param)] == (0.0 if param.ndim == 1 else 0.05), name
        if param.ndim == 1:
            flat.append(name)
    for part in ('res_scale', 'mlp.act.scale', 'norm1.weight', 'norm3.bias',
                 'decode_head.conv_seg.bias'):
        assert any(part in name for name in flat), part


def test_missing_ade20k_stops_with_clear_message(tmp_path, capsys):
    config = str(CONFIG_DIR / 'fpn_poolformer_s12.py')
    root = tmp_path / 'ADEChallengeData2016'
    options = {f'{loader}.dataset.data_root': str(root)
               for loader in ('train_dataloader', 'val_dataloader',
                              'test_dataloader')}
    with pytest.raises(DatasetNotFoundError) as error:
        build_train_runner(config, work_dir=str(tmp_path / 'work'),
                           cfg_options=options)
    message = str(error.value)
    for expected in (osp.join(root, 'images/training'),
                     osp.join(root, 'annotations/training'),
                     osp.join(root, 'images/validation'),
                     osp.join(root, 'annotations/validation'),
                     '--cfg-options', 'data_root=',
                     'configs/segmentation/fpn_poolformer_s12_shapes.py'):
        assert expected in message
    assert not (tmp_path / 'work').exists()  # stopped before the Runner

    # Half a dataset: only what is missing is named.
    for sub in ('images/training', 'annotations/training',
                'images/validation'):
        (root / sub).mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as error:
        build_test_runner(config, 'unused.pth', cfg_options=options)
    assert 'annotations/validation' in str(error.value)
    assert 'images/validation' not in str(error.value)

    # The tool turns it into a one-line exit, no traceback.
    with pytest.raises(SystemExit) as exit_:
        _load_tool('train').main([config, '--cfg-options'] + _cli(options))
    assert 'annotations/validation' in str(exit_.value.code)


def test_a_second_runner_in_one_process_logs_into_its_own_work_dir(
        tmp_path):
    """mmseg's base names its visualizer 'visualizer' and mmengine hands an
    existing instance of a name back: without a name of its own, the second
    Runner would log its scalars into the first one's work dir."""
    runners = [
        build_train_runner(DEMO, work_dir=str(tmp_path / name),
                           cfg_options=_tiny_options(tmp_path / 'shapes'))
        for name in ('first', 'second')
    ]
    assert runners[0].visualizer is not runners[1].visualizer
    for runner, name in zip(runners, ('first', 'second')):
        [backend] = runner.visualizer._vis_backends.values()
        assert Path(backend._save_dir).parent.parent == tmp_path / name
        assert Path(runner.log_dir).parent == tmp_path / name


# --------------------------------------------------------------------------
# Demo data
# --------------------------------------------------------------------------


def test_demo_dataset_is_deterministic(tmp_path):
    from mmseg.registry import DATASETS
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations')]

    def build(root, **generate):
        return DATASETS.build(dict(
            type='ShapesSegDataset', data_root=str(root),
            data_prefix=dict(img_path='train', seg_map_path='seg/train'),
            pipeline=pipeline, generate=dict(TINY, **generate)))

    first, again = build(tmp_path / 'a'), build(tmp_path / 'b')
    other = build(tmp_path / 'c', seed=1)
    assert len(first) == len(again) == TINY['num_train']
    assert first.metainfo['classes'] == ('background', 'circle', 'square',
                                         'triangle')
    seen = set()
    for i in range(len(first)):
        a, b = first[i], again[i]
        assert np.array_equal(a['img'], b['img'])
        assert np.array_equal(a['gt_seg_map'], b['gt_seg_map'])
        assert a['img'].shape == (64, 64, 3)
        seen |= set(np.unique(a['gt_seg_map']).tolist())
    assert seen == {0, 1, 2, 3}  # no zero-label reduction, no 255s
    assert not np.array_equal(first[0]['img'], other[0]['img'])


# --------------------------------------------------------------------------
# Training, evaluation and the tools on the demo config
# --------------------------------------------------------------------------


def _tiny_options(root, iters=40):
    """Flat ``--cfg-options`` for a short run on the tiny set."""
    options = {
        'model.data_preprocessor.size': (TINY['img_size'], ) * 2,
        'train_cfg.max_iters': iters,
        'train_cfg.val_interval': iters,
        'default_hooks.checkpoint.interval': iters,
        'default_hooks.logger.interval': 10,
        'param_scheduler.0.end': 5,
        'param_scheduler.1.begin': 5,
        'param_scheduler.1.end': iters,
        'train_dataloader.batch_size': 4,
        'randomness.seed': 0,
    }
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options[f'{loader}.num_workers'] = 0
        options[f'{loader}.persistent_workers'] = False
        options[f'{loader}.dataset.data_root'] = str(root)
        for key, value in TINY.items():
            options[f'{loader}.dataset.generate.{key}'] = value
    return options


def _cli(options):
    return [f'{k}={v}'.replace(' ', '') for k, v in options.items()]


class BackboneWatch(Hook):
    """The backbone's weights when training starts (after their init) and
    the size of each parameter's gradient at every iteration."""

    def __init__(self):
        self.initial, self.grads = {}, defaultdict(list)

    def before_train(self, runner):
        backbone = runner.model.backbone
        for name, param in backbone.named_parameters():
            self.initial[name] = param.detach().clone()
            if param.requires_grad:  # (a frozen one gets no gradient)
                param.register_post_accumulate_grad_hook(functools.partial(
                    self._record, name))

    def _record(self, name, param):
        self.grads[name].append(param.grad.abs().sum().item())


def _miou(outputs, root, split):
    """mIoU and aAcc (%) of the predicted maps against the label files on
    disk: IoU per class over the whole split, classes absent from both
    ignored."""
    inter, union = np.zeros(4), np.zeros(4)
    correct = total = 0
    for sample in outputs:
        pred = sample.pred_sem_seg.data[0].cpu().numpy()
        gt = _read_label(root / 'seg' / split / Path(sample.img_path).name)
        assert pred.shape == gt.shape
        for c in range(4):
            inter[c] += np.sum((pred == c) & (gt == c))
            union[c] += np.sum((pred == c) | (gt == c))
        correct += np.sum(pred == gt)
        total += gt.size
    with np.errstate(invalid='ignore'):
        return np.nanmean(inter / union) * 100, correct / total * 100


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """40 iterations of the demo recipe on 16 images of 64 px."""
    tmp = tmp_path_factory.mktemp('seg')
    work_dir = tmp / 'work'
    runner = build_train_runner(DEMO, work_dir=str(work_dir),
                                cfg_options=_tiny_options(tmp / 'shapes'))
    watch, val_outputs = BackboneWatch(), []
    runner.register_hook(watch)
    runner.register_hook(OutputRecorder(val_outputs))
    runner.train()
    scalars = [json.loads(line) for line in
               next(work_dir.glob('*/vis_data/scalars.json')).open()]
    return dict(root=tmp / 'shapes', work_dir=work_dir, tmp=tmp,
                checkpoint=work_dir / 'iter_40.pth', scalars=scalars,
                watch=watch, val_outputs=val_outputs,
                final={n: p.detach().clone() for n, p in
                       runner.model.backbone.named_parameters()})


def test_demo_training_learns_and_evaluates(trained):
    losses = [s['loss'] for s in trained['scalars'] if 'loss' in s]
    assert len(losses) >= 4 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    # the backbone takes part: every parameter got a finite, non-zero
    # gradient at each of the 40 steps, and every tensor moved by more than
    # weight decay alone could move it (|w| x lr x decay x steps, lr <=
    # 2e-3, decay 1e-4): AdamW's steps of up to the lr add up to 1e-4 or
    # more even where gradient signs alternate (2e-4 for a bias trained in
    # float32 on an AVX2 CPU, over 1e-3 under bf16 autocast)
    watch = trained['watch']
    assert watch.initial.keys() == trained['final'].keys()
    assert len(watch.initial) > 100
    for name, initial in watch.initial.items():
        grads = watch.grads[name]
        assert len(grads) == 40 and np.isfinite(grads).all(), name
        # avg_pool(y + b) - (y + b) does not depend on norm1's bias b
        if name.endswith('norm1.bias'):
            continue
        assert min(grads) > 0, name
        decay_only = float(initial.abs().max()) * 2e-3 * 1e-4 * 40
        moved = float((trained['final'][name] - initial).abs().max())
        assert moved > 10 * decay_only + 2e-5, (name, moved)
    # the reported numbers are those of the val predictions against the
    # label files
    [val] = [s for s in trained['scalars'] if 'mIoU' in s]
    assert set(val) >= {'aAcc', 'mIoU', 'mAcc'}
    outputs = trained['val_outputs']
    assert len(outputs) == TINY['num_val']
    miou, acc = _miou(outputs, trained['root'], 'val')
    assert val['mIoU'] == pytest.approx(miou, abs=0.005 + 1e-9)
    assert val['aAcc'] == pytest.approx(acc, abs=0.005 + 1e-9)
    assert trained['checkpoint'].is_file()


def test_tools_test_reproduces_and_writes_maps_and_overlays(trained):
    [val] = [s for s in trained['scalars'] if 'mIoU' in s]
    out, show = trained['tmp'] / 'pred', trained['tmp'] / 'show'
    options = _tiny_options(trained['root'])
    metrics = _load_tool('test').main([
        DEMO, str(trained['checkpoint']), '--work-dir',
        str(trained['tmp'] / 'test'), '--out', str(out), '--show-dir',
        str(show), '--cfg-options'] + _cli(
            # mmseg's visualization hook builds the train loop (and so the
            # train set) too: keep its data in tmp, not in the cwd
            {k: v for k, v in options.items()
             if not k.startswith('train_cfg')}))
    assert metrics['mIoU'] == pytest.approx(val['mIoU'], abs=0.01)

    # The prediction maps give back the reported mIoU (IoU per class over
    # the whole split, classes absent from both ignored as NaN).
    preds = sorted(out.glob('*.png'))
    assert len(preds) == TINY['num_val']
    inter, union = np.zeros(4), np.zeros(4)
    for pred_file in preds:
        pred = _read_label(pred_file)
        gt = _read_label(trained['root'] / 'seg' / 'val' / pred_file.name)
        assert pred.shape == gt.shape == (64, 64)
        for c in range(4):
            inter[c] += np.sum((pred == c) & (gt == c))
            union[c] += np.sum((pred == c) | (gt == c))
    with np.errstate(invalid='ignore'):
        miou = np.nanmean(inter / union) * 100
    assert miou == pytest.approx(metrics['mIoU'], abs=0.01)

    overlays = list(show.rglob('*.png'))
    assert len(overlays) == TINY['num_val']
    import cv2
    drawn = cv2.imread(str(overlays[0]))
    assert drawn.ndim == 3 and drawn.shape[0] == 64  # gt | prediction


# Windows (top, left, height, width) on a 75x97 input: whole mode takes it
# at once; slide mode with 48x48 crops at stride 32 takes 2 rows x 3
# columns, the last row and column moved back to end at the border, so
# neighbours overlap (by 16 or 31 pixels).
WINDOWS = dict(
    whole=[(0, 0, 75, 97)],
    slide=[(top, left, 48, 48) for top in (0, 27) for left in (0, 32, 49)])


@pytest.mark.parametrize('mode', ['whole', 'slide'])
def test_inference_modes_on_odd_sizes(trained, mode):
    """Both inference modes through the Runner on images of an odd size:
    the windows the backbone sees, and the logits against the windows'
    logits averaged here."""
    test_cfg = (dict(mode='whole') if mode == 'whole' else
                dict(mode='slide', crop_size=(48, 48), stride=(32, 32)))
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(97, 75), keep_ratio=False),
        dict(type='LoadAnnotations'),
        dict(type='PackSegInputs')
    ]
    options = {k: v for k, v in _tiny_options(trained['root']).items()
               if not k.startswith('train')}
    options.update({'model.test_cfg': test_cfg,
                    'test_dataloader.dataset.pipeline': pipeline})
    runner = build_test_runner(DEMO, str(trained['checkpoint']),
                               work_dir=str(trained['tmp'] / mode),
                               cfg_options=options)
    model = runner.model
    seen = []  # the backbone's input of every call
    model.backbone.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach().clone()))
    outputs = []
    runner.register_hook(OutputRecorder(outputs))
    metrics = runner.test()
    windows = WINDOWS[mode]
    # one batch of the 8 images, one backbone call per window
    assert [tuple(x.shape) for x in seen] == [
        (TINY['num_val'], 3, h, w) for _, _, h, w in windows]
    miou, acc = _miou(outputs, trained['root'], 'val')
    assert metrics['mIoU'] == pytest.approx(miou, abs=0.005 + 1e-9)
    assert metrics['aAcc'] == pytest.approx(acc, abs=0.005 + 1e-9)

    model.eval()
    batch = next(iter(runner.test_dataloader))
    data = model.data_preprocessor(batch, False)
    inputs = data['inputs'][:1]
    assert inputs.shape[-2:] == (75, 97)
    seen.clear()
    with torch.no_grad():
        [result] = model.predict(inputs, data['data_samples'][:1])
        # the windows' logits, each at its crop size, summed where they
        # overlap and divided by the overlap count, then resized back to
        # the 64x64 image (bilinear, as the head and segmentor resize)
        total = torch.zeros(1, 4, 75, 97)
        count = torch.zeros(1, 1, 75, 97)
        for (top, left, h, w), x in zip(windows, seen):
            crop = inputs[:, :, top:top + h, left:left + w]
            assert torch.equal(x, crop)
            logits = model.decode_head(model.neck(model.backbone(crop)))
            total[..., top:top + h, left:left + w] += F.interpolate(
                logits, (h, w), mode='bilinear', align_corners=False)
            count[..., top:top + h, left:left + w] += 1
    assert len(seen) == 2 * len(windows)  # predict's own, then ours
    assert count.min() == 1 and count.max() == (4 if mode == 'slide' else 1)
    expected = F.interpolate(total / count, (64, 64), mode='bilinear',
                             align_corners=False)[0]
    logits = result.seg_logits.data
    assert logits.shape == (4, 64, 64)  # back at the original size
    assert torch.isfinite(logits).all()
    scale = expected.abs().max().item()
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4 * scale)
    if mode == 'slide':
        model.test_cfg = ConfigDict(mode='whole')
        with torch.no_grad():
            [whole] = model.predict(inputs, data['data_samples'][:1])
        assert not torch.allclose(logits, whole.seg_logits.data,
                                  atol=1e-2 * scale)
