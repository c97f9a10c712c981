"""Mixed precision through mmengine that also runs on CPU-only machines."""
from contextlib import contextmanager

import torch
import torch.nn as nn
from mmengine.device import get_device
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

from mmpoolformer.engine.op_guards import (guard_dense_heads,
                                           guard_depthwise_convs,
                                           guard_group_norms,
                                           guard_roi_align,
                                           guard_small_strided_convs)

__all__ = ['CPUAmpOptimWrapper']


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(AmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper``, which also runs on a CPU.

    On an accelerator it *is* ``AmpOptimWrapper`` (float16 with dynamic loss
    scaling by default, or the ``dtype`` given). mmengine's own asserts an
    accelerator; on a CPU this one autocasts to bfloat16, the only CPU
    autocast type, without loss scaling, which bfloat16 does not need (it
    keeps float32's exponent range). The first time it opens its autocast
    context for a model on the CPU it guards that model's mmcv ops that take
    float32 only and the strided convolutions whose bf16 weight gradient
    oneDNN gets wrong on inputs smaller than the kernel, and runs its
    multi-group GroupNorms in float32, where torch's bf16 channels_last
    kernel is slow (:mod:`mmpoolformer.engine.op_guards`); nothing outside
    that model changes.

    ``tools/train.py --amp`` chooses it on a CPU; configs name it with
    ``optim_wrapper=dict(type='CPUAmpOptimWrapper', dtype='bfloat16')``.

    Args:
        loss_scale: As ``AmpOptimWrapper``'s; ignored on a CPU.
        dtype (str | torch.dtype, optional): Autocast type. On a CPU only
            ``'bfloat16'`` (or None, meaning bfloat16).
        use_fsdp (bool): As ``AmpOptimWrapper``'s.
        **kwargs: ``OptimWrapper`` arguments (optimizer, clip_grad, ...).
    """

    def __init__(self, loss_scale='dynamic', dtype=None, use_fsdp=False,
                 **kwargs):
        if get_device() != 'cpu':
            super().__init__(loss_scale, dtype, use_fsdp, **kwargs)
            return
        OptimWrapper.__init__(self, **kwargs)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, dtype)
        if dtype not in (None, torch.bfloat16):
            raise ValueError('CPU autocast supports bfloat16 only, got '
                             f"dtype={dtype!r}; use dtype='bfloat16'.")
        self.cast_dtype = torch.bfloat16
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)

    @contextmanager
    def optim_context(self, model: nn.Module):
        if get_device() == 'cpu':
            guard_roi_align(model)
            guard_dense_heads(model)
            guard_small_strided_convs(model)
            guard_group_norms(model)
            guard_depthwise_convs(model)
        with super().optim_context(model):
            yield
