"""The pieces the CPU demo recipes add: mmcv ops under bf16 autocast and the
channels_last hook, on real mmcv ops and a real mmengine Runner. The op
guards are hooks on one model's modules (mmpoolformer.engine.op_guards)."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner

import mmpoolformer  # noqa: F401  registers ChannelsLastHook
from mmpoolformer.engine.op_guards import guard_dense_heads, guard_roi_align
from mmpoolformer.runner import load_config


def _boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator) * 100
    wh = torch.rand(n, 2, generator=generator) * 40 + 5
    return torch.cat([xy, xy + wh], dim=1)


def _guarded_roi_align_and_inputs():
    """A guarded mmcv RoIAlign, features for 2 images and 3 RoIs on them."""
    from mmcv.ops import RoIAlign
    layer = RoIAlign(7, spatial_scale=0.25, sampling_ratio=0)
    assert guard_roi_align(layer) == 1
    assert guard_roi_align(layer) == 0  # idempotent
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 16, 24, 24, generator=generator)
    rois = torch.cat([torch.tensor([[0.], [1.], [1.]]),
                      _boxes(3, generator) * 0.8], dim=1)
    return layer, feats, rois


def _mask_rcnn(channels_last=False):
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    cfg = load_config(str(Path(__file__).parents[1] / 'configs' / 'detection'
                          / 'mask_rcnn_poolformer_s12_shapes.py'))
    torch.manual_seed(0)
    return MODELS.build(cfg.model)


def _det_batch():
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    samples = []
    for _ in range(2):
        sample = DetDataSample(metainfo=dict(img_shape=(96, 96),
                                             pad_shape=(96, 96),
                                             batch_input_shape=(96, 96)))
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[8., 8., 50., 60.], [40., 30., 90., 80.]]),
            labels=torch.tensor([0, 2]),
            masks=__import__('mmdet.structures.mask', fromlist=['x'])
            .BitmapMasks(torch.zeros(2, 96, 96, dtype=torch.uint8).numpy(),
                         96, 96))
        samples.append(sample)
    return torch.randn(2, 3, 96, 96), samples


def test_two_stage_training_step_under_cpu_amp_wrapper():
    """RPN proposals (mmcv nms) and RoIAlign under bf16 autocast: the CPU
    AMP wrapper's guards make a real Mask R-CNN loss step run; without them
    mmcv's float32-only kernels stop it."""
    from mmengine.optim import build_optim_wrapper
    model = _mask_rcnn().train()
    images, samples = _det_batch()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match='(?i)float'):
            model.loss(images, samples)  # mmcv's ops as they are
    wrapper = build_optim_wrapper(model, dict(
        type='CPUAmpOptimWrapper', dtype='bfloat16', cpu_bf16=True,
        optimizer=dict(type='SGD', lr=0.01)))
    with wrapper.optim_context(model):  # installs the guards
        pass
    dtypes = []  # what the RPN hands on, after the guard's cast
    model.rpn_head.register_forward_hook(
        lambda module, args, output: dtypes.append(output[0][0].dtype))
    with wrapper.optim_context(model):
        losses = model.loss(images, samples)
        assert torch.is_autocast_enabled('cpu')
    assert dtypes == [torch.float32]  # handed on as float32 to nms
    total = sum(v.sum() for k, v in losses.items() if 'loss' in k
                for v in (v if isinstance(v, list) else [v]))
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    # the guard on the dense head is what changes the dtype
    assert guard_dense_heads(model) == 0  # already installed, once


def test_roi_align_under_bf16_autocast_keeps_dtype_and_gradient():
    layer, feats, rois = _guarded_roi_align_and_inputs()
    feats_bf16 = feats.bfloat16().requires_grad_()
    rois_bf16 = rois.bfloat16()
    # the float32 kernel on the very same (bf16-rounded) inputs
    expected = layer(feats_bf16.detach().float(), rois_bf16.float())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(feats_bf16, rois_bf16)
    # mmdet's RoI extractors write it into a tensor of the features' dtype
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)
    out.float().sum().backward()
    assert feats_bf16.grad is not None and feats_bf16.grad.abs().sum() > 0
    # outside autocast nothing changes
    assert layer(feats, rois).dtype == torch.float32


class _TinyConvNet(BaseModel):

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.seen_channels_last = []

    def forward(self, inputs, mode='tensor'):
        out = self.conv(inputs)
        self.seen_channels_last.append(
            out.is_contiguous(memory_format=torch.channels_last))
        if mode == 'loss':
            return dict(loss=out.square().mean())
        return [out]


def test_channels_last_hook_in_a_real_runner(tmp_path):
    model = _TinyConvNet()
    data = [dict(inputs=torch.randn(3, 16, 16)) for _ in range(4)]
    runner = Runner(
        model=model, work_dir=str(tmp_path),
        train_dataloader=dict(
            dataset=data, batch_size=2, num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        custom_hooks=[dict(type='ChannelsLastHook')],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                           interval=100)),
        default_scope='mmengine')
    weight_before = model.conv.weight
    runner.train()
    assert model.conv.weight is weight_before  # optimizer still holds it
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.seen_channels_last == [True, True]


def test_roi_align_reads_channels_last_features_right():
    """mmcv's kernel indexes NCHW whatever the layout; the patch fixes it."""
    layer, feats, rois = _guarded_roi_align_and_inputs()
    nhwc = feats.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(layer(nhwc, rois), layer(feats, rois))


def test_mask_rcnn_roi_heads_same_in_channels_last():
    """The demo's ChannelsLastHook layout must not change what the RoI
    heads of a real Mask R-CNN see."""
    from mmdet.structures.bbox import bbox2roi
    model = _mask_rcnn().eval()
    # one RoIAlign per FPN level in the bbox and the mask extractor
    extractor = model.roi_head.bbox_roi_extractor
    assert guard_roi_align(model) == 2 * len(extractor.roi_layers)
    images = torch.randn(2, 3, 96, 128)
    boxes = [torch.tensor([[4., 6., 60., 70.], [30., 20., 90., 50.]]),
             torch.tensor([[10., 10., 40., 90.]])]
    rois = bbox2roi(boxes)

    def roi_outputs(x):
        with torch.no_grad():
            feats = model.extract_feat(x)
            bbox = model.roi_head._bbox_forward(feats, rois)
            mask = model.roi_head._mask_forward(feats, rois)
        return bbox['cls_score'], bbox['bbox_pred'], mask['mask_preds']

    expected = roi_outputs(images)
    model.to(memory_format=torch.channels_last)
    actual = roi_outputs(images.contiguous(memory_format=torch.channels_last))
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('kernel,stride,padding,height,width', [
    (3, 2, 1, 1, 1),  # RetinaNet's P7 conv on a 1x1 P6 map
    (7, 2, 3, 2, 1),
    (5, 4, 2, 5, 3),
])
def test_strided_conv_on_small_input_gets_a_right_weight_gradient(
        kernel, stride, padding, height, width):
    """oneDNN's bf16 weight gradient of a strided conv whose input is
    smaller than its kernel reads uninitialized memory (NaN here once
    freed memory held NaN: the root cause of the NaN --amp runs). Under
    the CPU AMP wrapper such a conv runs in float32."""
    from mmengine.optim import build_optim_wrapper
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, kernel, stride, padding)
    x = torch.randn(4, 64, height, width)
    expected = nn.Conv2d(64, 64, kernel, stride, padding).double()
    expected.load_state_dict(conv.state_dict())
    expected(x.double()).sum().backward()
    wrapper = build_optim_wrapper(conv, dict(
        type='CPUAmpOptimWrapper', dtype='bfloat16', cpu_bf16=True,
        optimizer=dict(type='SGD', lr=0.1)))
    with wrapper.optim_context(conv):
        out = conv(x)
    assert out.dtype == torch.bfloat16  # what autocast would hand on
    junk = [torch.full((1 << 20, ), float('nan')) for _ in range(8)]
    del junk  # freed memory now holds NaN, as after a real step
    out.float().sum().backward()
    assert torch.isfinite(conv.weight.grad).all()
    torch.testing.assert_close(conv.weight.grad.double(),
                               expected.weight.grad, rtol=0, atol=1e-3)


def test_strided_conv_guard_only_takes_inputs_smaller_than_the_kernel():
    from mmengine.optim import build_optim_wrapper
    conv = nn.Conv2d(8, 8, 3, 2, 1)
    wrapper = build_optim_wrapper(conv, dict(
        type='CPUAmpOptimWrapper', dtype='bfloat16', cpu_bf16=True,
        optimizer=dict(type='SGD', lr=0.1)))
    with wrapper.optim_context(conv):
        normal = conv(torch.randn(2, 8, 8, 8))
        small = conv(torch.randn(2, 8, 2, 1))
    assert normal.dtype == small.dtype == torch.bfloat16
    # 8x8: autocast's own bf16 convolution; 2x1: float32, then cast
    assert normal.grad_fn.name() == 'ConvolutionBackward0'
    assert small.grad_fn.name() == 'ToCopyBackward0'
    assert small.grad_fn.next_functions[0][0].name() == \
        'ConvolutionBackward0'


def test_multi_group_norms_run_in_float32_under_the_cpu_amp_wrapper():
    """CPU autocast runs group_norm in bf16, whose channels_last kernel is
    slow; under the CPU AMP wrapper the model's multi-group GroupNorms run
    in float32 (as CUDA autocast runs them) with the same gradients. The
    one-group norm and the modules of another model are left alone."""
    from mmengine.optim import build_optim_wrapper
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 64, 3, padding=1),
                          nn.GroupNorm(32, 64), nn.GroupNorm(1, 64))
    model.to(memory_format=torch.channels_last)
    other = nn.GroupNorm(32, 64)
    x = torch.randn(2, 8, 10, 10).contiguous(
        memory_format=torch.channels_last)
    wrapper = build_optim_wrapper(model, dict(
        type='CPUAmpOptimWrapper', dtype='bfloat16', cpu_bf16=True,
        optimizer=dict(type='SGD', lr=0.1)))
    conv, many, one = model
    with wrapper.optim_context(model):
        y = conv(x)
        normed, single, untouched = many(y), one(y), other(y)
    assert y.dtype == normed.dtype == torch.bfloat16  # as autocast hands on
    assert normed.grad_fn.name() == 'ToCopyBackward0'  # computed in float32
    assert single.grad_fn.name() == untouched.grad_fn.name() == \
        'NativeGroupNormBackward0'  # autocast's own bf16 group_norm
    # exactly float32 group_norm of the bf16 input, and its gradients
    expected_norm = nn.GroupNorm(32, 64)
    expected_norm.load_state_dict(many.state_dict())
    y_ref = y.detach().float().requires_grad_()
    expected = expected_norm(y_ref).to(torch.bfloat16)
    torch.testing.assert_close(normed, expected, rtol=0, atol=0)
    grad = torch.randn_like(expected)
    normed.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(many.weight.grad, expected_norm.weight.grad)
    torch.testing.assert_close(many.bias.grad, expected_norm.bias.grad)
    # outside autocast the guarded norm is nn.GroupNorm as before
    plain = many(x.float().repeat(1, 8, 1, 1))
    assert plain.dtype == torch.float32
    from mmpoolformer.engine.op_guards import guard_group_norms
    assert guard_group_norms(model) == 0  # idempotent


def test_fused_optimizer_fallback_keeps_what_torch_has():
    """The shapes demos ask for fused AdamW; tools/train.py keeps it where
    this torch has it on this device, and drops it, saying so, where the
    optimizer has no fused implementation (Adamax never has one)."""
    from mmengine.config import Config

    from mmpoolformer.runner import fused_optimizer_fallback
    for config in ('detection/retinanet_poolformer_s12_shapes.py',
                   'detection/mask_rcnn_poolformer_s12_shapes.py',
                   'segmentation/fpn_poolformer_s12_shapes.py'):
        cfg = load_config(str(Path(__file__).parents[1] / 'configs' /
                              config))
        assert cfg.optim_wrapper.optimizer.fused is True
        fused_optimizer_fallback(cfg)
        assert cfg.optim_wrapper.optimizer.fused is True  # torch >= 2.4
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(
        type='Adamax', lr=1e-3, fused=True))))
    import logging

    from mmengine.logging import MMLogger
    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        fused_optimizer_fallback(cfg)
    finally:
        logger.removeHandler(handler)
    assert 'fused' not in cfg.optim_wrapper.optimizer
    assert cfg.optim_wrapper.optimizer.lr == 1e-3
    said = ' '.join(said)
    assert 'fused=True is not available' in said
    assert "running Adamax's default implementation" in said
    untouched = Config(dict(optim_wrapper=dict(optimizer=dict(
        type='AdamW', lr=1e-3))))
    fused_optimizer_fallback(untouched)
    assert 'fused' not in untouched.optim_wrapper.optimizer


@pytest.mark.parametrize('size', [12, 5])  # 5: smaller than the 7x7 kernel
def test_depthwise_convs_run_in_float32_under_the_cpu_amp_wrapper(size):
    """oneDNN's bf16 depthwise backward is slow; under the CPU AMP wrapper
    depthwise convs compute in float32 (NCHW on maps smaller than the
    kernel) and hand back bf16, with float32's gradients. Other convs keep
    autocast's bf16."""
    from mmengine.optim import build_optim_wrapper
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 16, 1),
                          nn.Conv2d(16, 16, 7, padding=3, groups=16))
    model.to(memory_format=torch.channels_last)
    pointwise, depthwise = model
    x = torch.randn(2, 16, size, size).contiguous(
        memory_format=torch.channels_last)
    wrapper = build_optim_wrapper(model, dict(
        type='CPUAmpOptimWrapper', dtype='bfloat16', cpu_bf16=True,
        optimizer=dict(type='SGD', lr=0.1)))
    with wrapper.optim_context(model):
        y = pointwise(x)
        out = depthwise(y)
    assert y.dtype == out.dtype == torch.bfloat16
    assert y.grad_fn.name() == 'ConvolutionBackward0'  # autocast's own
    assert out.grad_fn.name() == 'ToCopyBackward0'  # computed in float32
    # NCHW on the map smaller than the kernel, channels_last otherwise
    assert out.is_contiguous(memory_format=torch.channels_last) == (size > 7)
    expected_conv = nn.Conv2d(16, 16, 7, padding=3, groups=16)
    expected_conv.load_state_dict(depthwise.state_dict())
    y_ref = y.detach().float().requires_grad_()
    expected = expected_conv(y_ref).to(torch.bfloat16)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-2)
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(depthwise.weight.grad,
                               expected_conv.weight.grad,
                               rtol=1e-4, atol=1e-4)
    from mmpoolformer.engine.op_guards import guard_depthwise_convs
    assert guard_depthwise_convs(model) == 0  # idempotent


def test_star_relu_keeps_the_autocast_dtype():
    """StarReLU's float32 scalars would promote a bf16 input to float32
    (and the next layer would cast it back); it stays in the input's dtype,
    with the same value as float32 math rounded."""
    from mmpoolformer.models.layers.activations import StarReLU
    act = StarReLU(scale_value=0.8944, bias_value=-0.4472)
    x = torch.randn(2, 8, 5, 5)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = act(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), act(x.bfloat16().float()),
                               rtol=2e-2, atol=2e-2)
    assert act(x).dtype == torch.float32
    out.float().sum().backward()
    assert act.scale.grad is not None and act.bias.grad is not None


# ----------------------------------------------- CPUs without bf16 kernels


def test_cpu_bf16_supported_is_torchs_check_of_the_cpu_flags():
    """oneDNN has bf16 kernels on x86 CPUs with AVX-512 (BW, VL, DQ) or
    AVX-NE-CONVERT (the two ways torch's error message names); the AMD EPYC
    (AVX-512) and Intel Xeon (AMX) machines have them, AVX2-only ones
    not."""
    from mmpoolformer.utils import cpu_bf16_supported
    cpuinfo = Path('/proc/cpuinfo')
    if not cpuinfo.is_file() or 'avx2' not in cpuinfo.read_text():
        pytest.skip('reads the x86 flags of Linux /proc/cpuinfo')
    flags = set(next(line for line in cpuinfo.read_text().splitlines()
                     if line.startswith('flags')).split(':')[1].split())
    assert cpu_bf16_supported() == (
        {'avx512bw', 'avx512vl', 'avx512dq'} <= flags
        or 'avx_ne_convert' in flags)


@pytest.mark.parametrize('has_kernels', [True, False])
def test_cpu_amp_wrapper_autocasts_only_where_the_cpu_has_bf16_kernels(
        monkeypatch, has_kernels):
    """'auto' (the default): bf16 autocast and the op guards where oneDNN
    has bf16 kernels; float32, no guards and one warning where it has not
    (bf16 there is 5-80x slower). True/False force it either way."""
    from mmengine.optim import build_optim_wrapper

    from mmpoolformer.engine.optim_wrappers import cpu_amp_optim_wrapper
    from test_bad_input import Records
    monkeypatch.setattr(cpu_amp_optim_wrapper, 'cpu_bf16_supported',
                        lambda: has_kernels)

    def step(**options):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))
        wrapper = build_optim_wrapper(model, dict(
            type='CPUAmpOptimWrapper', dtype='bfloat16',
            optimizer=dict(type='SGD', lr=0.1), **options))
        with wrapper.optim_context(model):
            out = model(torch.randn(1, 3, 8, 8))
        wrapper.update_params(out.float().sum())
        assert wrapper.cast_dtype == out.dtype
        guarded = bool(model[1]._forward_pre_hooks or model[1]._forward_hooks
                       or 'forward' in vars(model[1]))
        return out.dtype, guarded

    with Records() as log:
        auto = step()
    warnings = log.warnings('no bfloat16 kernels')
    if has_kernels:
        assert auto == (torch.bfloat16, True) and not warnings
    else:
        assert auto == (torch.float32, False)
        [message] = warnings
        assert 'training in float32' in message
        assert 'optim_wrapper.cpu_bf16=True' in message
    assert step(cpu_bf16=True)[0] == torch.bfloat16
    assert step(cpu_bf16=False) == (torch.float32, False)
    with pytest.raises(ValueError, match="cpu_bf16 must be 'auto'"):
        step(cpu_bf16='yes')
