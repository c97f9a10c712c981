"""The shapes demo as an mmseg dataset that generates itself on first use."""
from mmseg.datasets import BaseSegDataset

from .shapes import (DEFAULT_SHAPES_ROOT, SEG_CLASSES, SEG_PALETTE,
                     ensure_shapes)

__all__ = ['ShapesSegDataset']


class ShapesSegDataset(BaseSegDataset):
    """Per-pixel labels of the shapes set: 0 background, 1-3 the shapes.

    Args:
        generate (dict, optional): Keyword arguments of
            :func:`mmpoolformer.data.ensure_shapes`, used when the set is
            missing under ``data_root``.
        **kwargs: As :class:`mmseg.datasets.BaseSegDataset`; images are
            ``.png`` and labels ``.png`` with ``reduce_zero_label=False``.
    """
    METAINFO = dict(classes=SEG_CLASSES, palette=SEG_PALETTE)

    def __init__(self, *args, generate: dict = None, **kwargs):
        ensure_shapes(kwargs.get('data_root') or DEFAULT_SHAPES_ROOT,
                      **(generate or {}))
        kwargs.setdefault('img_suffix', '.png')
        kwargs.setdefault('seg_map_suffix', '.png')
        kwargs.setdefault('reduce_zero_label', False)
        super().__init__(*args, **kwargs)
