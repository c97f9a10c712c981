"""The shapes demo as an mmdet dataset that generates itself on first use."""
from mmdet.datasets import CocoDataset

from .shapes import (DEFAULT_SHAPES_ROOT, SHAPES_CLASSES, SHAPES_PALETTE,
                     ensure_shapes)

__all__ = ['ShapesDataset']


class ShapesDataset(CocoDataset):
    """COCO-format shapes (circle / square / triangle).

    Args:
        generate (dict, optional): Keyword arguments of
            :func:`mmpoolformer.data.ensure_shapes` (``num_train``,
            ``num_val``, ``img_size``, ``seed``); the set is generated under
            ``data_root`` when missing. Every rank may call it at once.
        **kwargs: As :class:`mmdet.datasets.CocoDataset`.
    """
    METAINFO = dict(classes=SHAPES_CLASSES, palette=SHAPES_PALETTE)

    def __init__(self, *args, generate: dict = None, **kwargs):
        ensure_shapes(kwargs.get('data_root') or DEFAULT_SHAPES_ROOT,
                      **(generate or {}))
        super().__init__(*args, **kwargs)
