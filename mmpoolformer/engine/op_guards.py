"""Per-model fixes for CPU ops under bf16 autocast (and one slow CPU kernel).

Nothing here touches a class or a function of mmcv or mmdet: each guard is a
forward hook or a ``forward`` attribute on one module *instance* of the
model it is given, so other models in the same process keep mmcv's
behaviour.

* ``roi_align``: mmcv's CPU kernel indexes features as NCHW whatever their
  memory layout, so channels_last features (:class:`ChannelsLastHook`) give
  scrambled RoI features in the forward pass (the backward is right, so
  training runs but the RoI heads cannot learn); and it accepts float32
  only, so under CPU bf16 autocast it stops with "expected scalar type Float
  but found BFloat16". :func:`guard_roi_align` hands every ``RoIAlign``
  of the model contiguous float32 inputs and casts its output back to the
  features' dtype (mmdet's RoI extractors write it into a tensor of that
  dtype). On a CPU the average RoIAlign (mmdet's) on maps of up to 96 x 96
  cells is computed instead by :func:`mmpoolformer.ops.roi_align_separable`,
  the same samples and weights as two matrix products, which reads any
  layout and dtype: mmcv's one-thread CPU backward was 28% of a Mask R-CNN
  demo step. On larger maps mmcv's kernel is the faster one.
* ``nms``: float32 only as well. Under autocast the dense heads' outputs are
  bf16 and reach ``batched_nms`` when proposals are made during training
  (two-stage detectors). :func:`guard_dense_heads` casts the outputs of
  the model's dense heads to float32 while CPU autocast is on.
* bf16 ``conv2d`` backward: oneDNN's weight gradient of a *strided*
  convolution whose input is smaller than its kernel in height or width
  (RetinaNet's P7 conv on a 1x1 P6 map, for one) reads uninitialized memory:
  ``weight.grad`` is NaN or garbage whenever freed memory held NaN, while the
  forward pass, the input gradient and the bias gradient are right. It
  happens on the AMD (AVX-512 BF16) and the Intel (AMX) machines alike, in
  bf16 only (float32 and oneDNN-off are right), and it made a training step
  go NaN in about two runs in five. :func:`guard_small_strided_convs` runs
  such a convolution in float32 (it is tiny by definition) and hands back
  bf16, as autocast would.
* ``group_norm`` with several groups: CPU autocast runs it in bf16 (CUDA
  autocast runs it in float32), and torch's CPU kernel for bf16
  channels_last input (the layout :class:`ChannelsLastHook` gives) is slow:
  GroupNorm(32, 128) on 8x128x20x20, forward and backward, took 2.4 ms in
  bf16 channels_last against 0.6 ms in float32 (2 cores of an AMD EPYC,
  torch 2.13); in NCHW the two are alike. :func:`guard_group_norms` runs
  the model's multi-group ``nn.GroupNorm`` layers in float32 under CPU
  autocast (as CUDA autocast does) and hands back the input's dtype, so
  the layers after it see what they saw before. One-group norms
  (PoolFormer's) are left alone: their bf16 channels_last kernel is the
  faster one.
* depthwise ``conv2d`` (ConvFormer's and CAFormer's 7x7 token mixer): the
  bf16 backward is slow, most of all on the small maps of the late stages.
  Forward and backward of a 7x7 depthwise conv on 8 x C x H x W,
  channels_last: 12.7 against 11.0 ms in float32 at 128x40x40, 18.3
  against 4.3 ms at 640x10x10, 23.8 ms at 1024x5x5 against 5.8 ms in
  float32 NCHW (2 cores of an AMD EPYC, torch 2.13).
  :func:`guard_depthwise_convs` runs them in float32 (NCHW where the map is
  smaller than the kernel) and hands back bf16.
"""
import types
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpoolformer.ops import roi_align_separable, separable_pays

__all__ = ['guard_roi_align', 'guard_dense_heads', 'float32_outputs',
           'guard_small_strided_convs', 'guard_group_norms',
           'guard_depthwise_convs']

_GUARDED = '_mmpoolformer_guarded'


def _cpu_autocast() -> bool:
    return torch.is_autocast_enabled('cpu')


def float32_outputs(value: Any) -> Any:
    """``value`` with every floating tensor in it (nested in lists, tuples
    and dicts) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        items = [float32_outputs(v) for v in value]
        return type(value)(*items) if hasattr(value, '_fields') else \
            type(value)(items)
    if isinstance(value, dict):
        return type(value)((k, float32_outputs(v)) for k, v in value.items())
    return value


def _roi_align_forward(self, features, rois):
    """The forward of a guarded mmcv ``RoIAlign`` instance."""
    dtype = features.dtype
    if features.device.type == 'cpu' and self.pool_mode == 'avg' \
            and not self.use_torchvision and separable_pays(features) \
            and _positive_sizes(self, rois):
        out = roi_align_separable(features, rois, self.output_size,
                                  self.spatial_scale, self.sampling_ratio,
                                  self.aligned)
    else:  # mmcv's kernel, on the contiguous float32 input it reads right
        out = type(self).forward(self, features.float().contiguous(),
                                 rois.float())
    return out.to(dtype)


def _positive_sizes(layer, rois) -> bool:
    """mmcv refuses aligned RoIs of negative size; leave those to it."""
    if not layer.aligned:
        return True
    return bool((rois[:, 3:5] >= rois[:, 1:3]).all())


def _mark(module: nn.Module, name: str) -> bool:
    """True the first time ``name`` is installed on ``module``."""
    done = module.__dict__.setdefault(_GUARDED, set())
    if name in done:
        return False
    done.add(name)
    return True


def guard_roi_align(model: nn.Module) -> int:
    """Make every mmcv ``RoIAlign`` in ``model`` read channels_last and bf16
    features right, and compute average RoIAlign on CPUs with
    :func:`~mmpoolformer.ops.roi_align_separable` (idempotent). Returns how
    many modules were guarded."""
    from mmcv.ops import RoIAlign
    count = 0
    for module in model.modules():
        if isinstance(module, RoIAlign) and _mark(module, 'roi_align'):
            module.forward = types.MethodType(_roi_align_forward, module)
            count += 1
    return count


def _dense_head_output(module, args, output):
    return float32_outputs(output) if _cpu_autocast() else None


def guard_dense_heads(model: nn.Module) -> int:
    """Cast the outputs of the model's dense heads (modules with mmdet's
    ``predict_by_feat``) to float32 inside CPU autocast, so that mmcv's
    float32-only ``nms`` gets float32 boxes and scores (idempotent).
    Returns how many heads were guarded."""
    count = 0
    for module in model.modules():
        if callable(getattr(module, 'predict_by_feat', None)) \
                and _mark(module, 'dense_head'):
            module.register_forward_hook(_dense_head_output)
            count += 1
    return count


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels \
        == conv.out_channels


def _smaller_than_kernel(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    return (x.shape[-2] < conv.kernel_size[0]
            or x.shape[-1] < conv.kernel_size[1])


def _needs_float32(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Under CPU autocast: a depthwise convolution (see above), or the
    oneDNN bf16 weight-gradient case above (training, a stride > 1 and an
    input smaller than the kernel)."""
    if not (x.dim() == 4 and _cpu_autocast()):
        return False
    if _is_depthwise(conv):
        return True
    return (max(conv.stride) > 1 and torch.is_grad_enabled()
            and conv.weight.requires_grad and _smaller_than_kernel(conv, x))


def _float32_conv_forward(conv: nn.Conv2d, x: torch.Tensor):
    if not _needs_float32(conv, x):
        return type(conv).forward(conv, x)
    dtype = torch.get_autocast_dtype('cpu')
    with torch.autocast('cpu', enabled=False):
        x = x.float()
        if _is_depthwise(conv) and _smaller_than_kernel(conv, x):
            # NCHW: oneDNN's channels_last depthwise backward is slow on
            # maps smaller than the kernel (7x7 on 5x5: 19 against 6 ms)
            # (a clone: a (C, 1, k, k) weight counts as contiguous in
            # either layout, and the convolution would follow its strides)
            weight = conv.weight.clone(memory_format=torch.contiguous_format)
            out = conv._conv_forward(x.contiguous(), weight, conv.bias)
        else:
            out = type(conv).forward(conv, x)
    return out.to(dtype)


def guard_small_strided_convs(model: nn.Module) -> int:
    """Run the model's strided ``nn.Conv2d`` layers in float32 when, under
    CPU autocast, their input is smaller than the kernel (idempotent; only
    this model's modules change, through their ``forward`` attribute).
    Returns how many convolutions were guarded."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and max(module.stride) > 1 \
                and _mark(module, 'small_strided_conv'):
            module.forward = types.MethodType(_float32_conv_forward, module)
            count += 1
    return count


def guard_depthwise_convs(model: nn.Module) -> int:
    """Run the model's depthwise ``nn.Conv2d`` layers (one group per
    channel) in float32 under CPU autocast, handing back bf16 (idempotent;
    only this model's modules change, through their ``forward`` attribute).
    Returns how many convolutions were guarded."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and _is_depthwise(module) \
                and _mark(module, 'depthwise_conv'):
            module.forward = types.MethodType(_float32_conv_forward, module)
            count += 1
    return count


def _group_norm_forward(norm: nn.GroupNorm, x: torch.Tensor):
    if not (_cpu_autocast() and x.dtype != torch.float32):
        return type(norm).forward(norm, x)
    with torch.autocast('cpu', enabled=False):
        out = F.group_norm(x.float(), norm.num_groups, norm.weight,
                           norm.bias, norm.eps)
    return out.to(x.dtype)


def guard_group_norms(model: nn.Module) -> int:
    """Run the model's ``nn.GroupNorm`` layers of more than one group in
    float32 under CPU autocast, handing back the input's dtype (idempotent;
    only this model's modules change, through their ``forward`` attribute).
    Returns how many norms were guarded."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.GroupNorm) and module.num_groups > 1 \
                and _mark(module, 'group_norm'):
            module.forward = types.MethodType(_group_norm_forward, module)
            count += 1
    return count
