"""Ops that replace slow CPU kernels of the stack for the models that the
engine's guards are given (:mod:`mmpoolformer.engine.op_guards`)."""
from .roi_align import roi_align_separable

__all__ = ['roi_align_separable']
