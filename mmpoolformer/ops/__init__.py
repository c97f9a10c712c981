"""Ops that replace slow CPU kernels of the stack for the models that the
engine's guards are given (:mod:`mmpoolformer.engine.op_guards`)."""
from .roi_align import (MAX_SEPARABLE_PIXELS, roi_align_separable,
                        separable_pays)

__all__ = ['MAX_SEPARABLE_PIXELS', 'roi_align_separable', 'separable_pays']
