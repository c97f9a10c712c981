"""Kept for configs that list ``mmpoolformer.hooks`` in ``custom_imports``:
the hooks live in :mod:`mmpoolformer.engine.hooks`, and ``import
mmpoolformer`` registers them."""
from mmpoolformer.engine.hooks import ChannelsLastHook, NonFiniteCheckHook

__all__ = ['ChannelsLastHook', 'NonFiniteCheckHook']
