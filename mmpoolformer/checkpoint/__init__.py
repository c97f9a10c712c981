"""Checkpoint handling, all in one place.

* :mod:`.safe_load`: ``weights_only`` loading with mmengine's types allowed;
* :mod:`.io`: reading files and URLs with clear errors, and atomic writing
  (:func:`save_checkpoint_file`);
* :mod:`.layouts`: each backbone family's key layouts (official, timm, ...);
* :mod:`.loading`: ``init_cfg`` loading with a report, and conversion;
* :mod:`.whole_model`: detectors / segmentors that other libraries wrote;
* :mod:`.runner_loader`: the Runner's loader (:func:`use_safe_loader`).

Nothing here imports a model: a backbone names its layout in
``checkpoint_layout``.
"""
from .io import read_checkpoint, read_whole_checkpoint, save_checkpoint_file
from .layouts import CheckpointLayout, MetaFormerLayout, PoolFormerLayout
from .loading import (LoadReport, convert_checkpoint, extract_state_dict,
                      load_pretrained, match_state_dict)
from .runner_loader import use_safe_loader
from .safe_load import (TRUST_OPTIONS, CheckpointError, UnsafeCheckpointError,
                        allow_mmengine_checkpoints, safe_torch_load)

__all__ = [
    'CheckpointError', 'CheckpointLayout', 'LoadReport', 'MetaFormerLayout',
    'PoolFormerLayout',
    'TRUST_OPTIONS', 'UnsafeCheckpointError', 'allow_mmengine_checkpoints',
    'convert_checkpoint', 'extract_state_dict', 'load_pretrained',
    'match_state_dict', 'read_checkpoint', 'read_whole_checkpoint',
    'safe_torch_load', 'save_checkpoint_file', 'use_safe_loader'
]
