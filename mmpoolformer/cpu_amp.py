"""Mixed precision on CPU-only machines: bf16 autocast through mmengine.

Three pieces; the first two are no-ops on a GPU or outside a CPU autocast
region, the third holds everywhere:

* ``AmpOptimWrapper`` (re-registered under mmengine's name): mmengine's
  asserts an accelerator; on a CPU this one autocasts to bfloat16 (the only
  CPU autocast type) without loss scaling, which bfloat16 does not need (it
  keeps float32's exponent range). Configs and ``--amp`` work unchanged.
* mmcv's CPU ``nms`` and ``roi_align`` kernels accept float32 only, so a
  two-stage detector under CPU autocast stops with "expected scalar type
  Float but found BFloat16". Their autograd functions are wrapped the way
  ``torch.amp.custom_fwd`` is meant for: inside a CPU autocast region the
  inputs are cast to float32 and the op runs with autocast off. ``RoIAlign``
  modules cast their output back to the features' dtype, as mmdet's RoI
  extractors write it into a tensor of that dtype.
* mmcv 2.1's ``roi_align`` kernels index the features as NCHW whatever their
  memory layout, so channels_last features (``ChannelsLastHook``) give
  scrambled RoI features in the forward pass (the backward is right, so
  training runs but the RoI heads cannot learn). Its autograd function
  makes the features contiguous first; a no-op for NCHW features.

Importing the module applies them (``mmpoolformer.runner`` does, so the tools
have them; other entry points add ``mmpoolformer.cpu_amp`` to
``custom_imports``).
"""
import torch
from mmcv.ops.nms import NMSop
from mmcv.ops.roi_align import RoIAlign, RoIAlignFunction
from mmengine.device import get_device
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

__all__ = ['CPUAmpOptimWrapper', 'patch_mmcv_ops']


@OPTIM_WRAPPERS.register_module(name='AmpOptimWrapper', force=True)
class CPUAmpOptimWrapper(AmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper`` that also runs on a CPU.

    mmengine asserts an accelerator; on a CPU this autocasts to bfloat16
    (the only CPU autocast type) without loss scaling, which bfloat16 does
    not need (it keeps float32's exponent range). Registered under the
    original name so configs and ``--amp`` work unchanged.
    """

    def __init__(self, loss_scale='dynamic', dtype=None, use_fsdp=False,
                 **kwargs):
        if get_device() != 'cpu':
            super().__init__(loss_scale, dtype, use_fsdp, **kwargs)
            return
        OptimWrapper.__init__(self, **kwargs)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if dtype not in (None, torch.bfloat16):
            raise ValueError('CPU autocast supports bfloat16 only, got '
                             f'dtype={dtype}')
        self.cast_dtype = torch.bfloat16
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)


def _patch(function):
    if getattr(function, '_cpu_amp_safe', False):
        return
    function.forward = staticmethod(torch.amp.custom_fwd(
        function.forward, device_type='cpu', cast_inputs=torch.float32))
    if 'backward' in function.__dict__:
        function.backward = staticmethod(torch.amp.custom_bwd(
            function.backward, device_type='cpu'))
    function._cpu_amp_safe = True


def _cast_back(forward):
    def roi_align_forward(self, input, rois):
        return forward(self, input, rois).to(input.dtype)

    roi_align_forward._cpu_amp_safe = True
    return roi_align_forward


def _contiguous_features(forward):
    def roi_align_function_forward(ctx, input, *args, **kwargs):
        return forward(ctx, input.contiguous(), *args, **kwargs)

    return roi_align_function_forward


def patch_mmcv_ops():
    """Make ``NMSop`` and ``RoIAlign`` autocast-safe, and ``RoIAlign``
    safe for channels_last features (idempotent)."""
    if not getattr(RoIAlignFunction, '_cpu_amp_safe', False):
        RoIAlignFunction.forward = staticmethod(
            _contiguous_features(RoIAlignFunction.forward))
    for function in (NMSop, RoIAlignFunction):
        _patch(function)
    if not getattr(RoIAlign.forward, '_cpu_amp_safe', False):
        RoIAlign.forward = _cast_back(RoIAlign.forward)


patch_mmcv_ops()
