"""Checkpoint layouts of each backbone family: how to recognise a file's
layout, rename it to the model's keys, and describe what a file holds.

A backbone class names its layout in ``checkpoint_layout``; the loader
(:func:`mmpoolformer.checkpoint.load_pretrained`) uses only that object, so
this package never imports a model.
"""
from .base import CheckpointLayout
from .metaformer import MetaFormerLayout
from .poolformer import PoolFormerLayout

__all__ = ['CheckpointLayout', 'MetaFormerLayout', 'PoolFormerLayout']
