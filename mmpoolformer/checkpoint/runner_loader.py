"""The Runner's checkpoint loader: ``load_from`` and ``resume`` read files
through :func:`~.io.read_whole_checkpoint` (``weights_only=True``, clear
errors), and whole models that other libraries wrote are converted for the
model (:mod:`.whole_model`) before mmengine loads them."""
from mmengine.model import is_model_wrapper
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from .io import read_whole_checkpoint
from .whole_model import convert_whole_model, needs_conversion

__all__ = ['use_safe_loader']


def use_safe_loader(runner, trust: bool = False) -> None:
    """Make ``runner`` read local files for ``load_from``/``resume`` with
    :func:`read_checkpoint`: ``weights_only=True`` with mmengine's types
    allowed (``trust``: ``weights_only=False``), and a clear
    :class:`CheckpointError` for a missing, truncated, corrupted or unsafe
    file.

    Only this Runner instance changes (its ``load_checkpoint`` attribute);
    mmengine's ``CheckpointLoader`` and other runners are left as they are.
    URLs and other schemes go to mmengine's loader
    (:func:`read_whole_checkpoint`). Whole models other libraries wrote
    (mmdet 2.x, mmseg 0.x; see :mod:`.whole_model`) are converted for the
    model first, and what was renamed, dropped or left at init is logged.
    """
    def load_checkpoint(filename, map_location='cpu', strict=False,
                        revise_keys=[(r'^module.', '')]):
        checkpoint = read_whole_checkpoint(filename, map_location, trust)
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        # a detector / segmentor another library released (mmdet 2.x,
        # mmseg 0.x): renamed and checked for this model, with a report
        source = needs_conversion(checkpoint, model)
        if source is not None:
            checkpoint, report = convert_whole_model(checkpoint, model,
                                                     source)
            runner.logger.info(report.summary(filename))
        # the same steps as mmengine's Runner.load_checkpoint
        runner.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        checkpoint = _load_checkpoint_to_model(model, checkpoint, strict,
                                               revise_keys=revise_keys)
        runner._has_loaded = True
        runner.logger.info(f'Load checkpoint from {filename}'
                           + (' (trusted: weights_only=False)'
                              if trust else ''))
        return checkpoint

    runner.load_checkpoint = load_checkpoint
