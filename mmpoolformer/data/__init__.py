"""Demo data: the synthetic shapes dataset (numpy only, no mm* imports)."""
from .shapes import (DEFAULT_SHAPES_ROOT, GENERATOR_VERSION, SEG_CLASSES,
                     SEG_PALETTE, SHAPES_CLASSES, SHAPES_PALETTE,
                     ShapesDatasetMismatchError, ensure_shapes,
                     generate_shapes)

__all__ = [
    'SHAPES_CLASSES', 'SHAPES_PALETTE', 'SEG_CLASSES', 'SEG_PALETTE',
    'DEFAULT_SHAPES_ROOT', 'GENERATOR_VERSION', 'ShapesDatasetMismatchError',
    'generate_shapes', 'ensure_shapes'
]
