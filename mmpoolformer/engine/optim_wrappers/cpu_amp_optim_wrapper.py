"""Mixed precision through mmengine that also runs on CPU-only machines."""
import logging
from contextlib import contextmanager

import torch
import torch.nn as nn
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

from mmpoolformer.engine.op_guards import (guard_dense_heads,
                                           guard_depthwise_convs,
                                           guard_group_norms,
                                           guard_roi_align,
                                           guard_small_strided_convs)
from mmpoolformer.utils.cpu import cpu_bf16_supported

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

    A CPU without bfloat16 kernels in oneDNN (AVX2 only: no AVX-512, no
    AMX; :func:`cpu_bf16_supported`) would run bf16 autocast many times
    slower than float32, so there, by default (``cpu_bf16='auto'``), it
    trains in float32 and says so once; ``cast_dtype`` tells which ran.

    ``tools/train.py --amp`` chooses it on a CPU; configs name it with
    ``optim_wrapper=dict(type='CPUAmpOptimWrapper', dtype='bfloat16')``.

    Args:
        loss_scale: As ``AmpOptimWrapper``'s; ignored on a CPU.
        dtype (str | torch.dtype, optional): Autocast type. On a CPU only
            ``'bfloat16'`` (or None, meaning bfloat16).
        use_fsdp (bool): As ``AmpOptimWrapper``'s.
        cpu_bf16 (str | bool): On a CPU: ``'auto'`` autocasts where oneDNN
            has bf16 kernels and runs float32 elsewhere; ``True`` always
            autocasts (e.g. to reproduce bf16 numbers on an AVX2 CPU,
            slowly); ``False`` always runs float32. Default: ``'auto'``.
        **kwargs: ``OptimWrapper`` arguments (optimizer, clip_grad, ...).
    """

    def __init__(self, loss_scale='dynamic', dtype=None, use_fsdp=False,
                 cpu_bf16='auto', **kwargs):
        if get_device() != 'cpu':
            super().__init__(loss_scale, dtype, use_fsdp, **kwargs)
            self.autocast = True
            return
        OptimWrapper.__init__(self, **kwargs)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, dtype)
        if dtype not in (None, torch.bfloat16):
            raise ValueError('CPU autocast supports bfloat16 only, got '
                             f"dtype={dtype!r}; use dtype='bfloat16'.")
        if cpu_bf16 not in ('auto', True, False):
            raise ValueError("cpu_bf16 must be 'auto', True or False, got "
                             f'{cpu_bf16!r}')
        self.autocast = (cpu_bf16 is True
                         or (cpu_bf16 == 'auto' and cpu_bf16_supported()))
        if cpu_bf16 == 'auto' and not self.autocast:
            print_log(
                'CPUAmpOptimWrapper: this CPU has no bfloat16 kernels in '
                'oneDNN (AVX2 only: no AVX-512 or AMX), where bf16 autocast '
                'runs many times slower than float32: training in float32 '
                'instead. optim_wrapper.cpu_bf16=True autocasts anyway.',
                logger='current', level=logging.WARNING)
        self.cast_dtype = torch.bfloat16 if self.autocast else torch.float32
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)

    @contextmanager
    def optim_context(self, model: nn.Module):
        if not self.autocast:  # float32 on a CPU without bf16 kernels
            with OptimWrapper.optim_context(self, model):
                yield
            return
        if get_device() == 'cpu':
            guard_roi_align(model)
            guard_dense_heads(model)
            guard_small_strided_convs(model)
            guard_group_norms(model)
            guard_depthwise_convs(model)
        with super().optim_context(model):
            yield
