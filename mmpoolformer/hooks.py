"""Runner hooks for the CPU demo recipes.

Importing this module registers them into mmengine's root ``HOOKS``, which
mmdet's and mmseg's registries fall back to, so configs list it in
``custom_imports`` and name the hooks with ``type=...`` in ``custom_hooks``.
"""
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from mmpoolformer.cpu_amp import patch_mmcv_ops

__all__ = ['ChannelsLastHook']


@HOOKS.register_module()
class ChannelsLastHook(Hook):
    """Store the model's 4-d weights channels_last before training/testing.

    Convolutions with channels_last weights return channels_last outputs, so
    the whole network runs in NHWC; on x86 CPUs (oneDNN), with bf16 autocast
    above all, that is the faster layout. The input batch needs no change.
    Parameters are converted in place, so the optimizer keeps its references
    and checkpoints load into NCHW models as usual. mmcv's ``RoIAlign``
    misreads channels_last features, so the hook patches it first
    (:func:`mmpoolformer.cpu_amp.patch_mmcv_ops`).
    """
    priority = 'VERY_HIGH'

    def _convert(self, runner):
        patch_mmcv_ops()
        model = runner.model
        if is_model_wrapper(model):
            model = model.module
        model.to(memory_format=torch.channels_last)

    def before_train(self, runner):
        self._convert(runner)

    def before_val(self, runner):
        self._convert(runner)

    def before_test(self, runner):
        self._convert(runner)
