"""Run the whole model in NHWC (channels_last) layout."""
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from mmpoolformer.engine.op_guards import guard_roi_align

__all__ = ['ChannelsLastHook']


@HOOKS.register_module()
class ChannelsLastHook(Hook):
    """Store the model's 4-d weights channels_last before training/testing.

    Convolutions with channels_last weights return channels_last outputs, so
    the whole network runs in NHWC; on x86 CPUs (oneDNN), with bf16 autocast
    above all, that is the faster layout. The input batch needs no change.
    Parameters are converted in place, so the optimizer keeps its references
    and checkpoints load into NCHW models as usual. mmcv's ``RoIAlign``
    misreads channels_last features, so the hook first guards the RoIAlign
    modules of *this* model (:func:`mmpoolformer.engine.op_guards.
    guard_roi_align`); nothing else in the process changes.
    """
    priority = 'VERY_HIGH'

    def _convert(self, runner):
        model = runner.model
        if is_model_wrapper(model):
            model = model.module
        guard_roi_align(model)
        model.to(memory_format=torch.channels_last)

    def before_train(self, runner):
        self._convert(runner)

    def before_val(self, runner):
        self._convert(runner)

    def before_test(self, runner):
        self._convert(runner)
