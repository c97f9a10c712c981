"""PoolFormer backbone for mmdet 3.x and mmsegmentation 1.x.

Importing the package registers its modules (see :mod:`mmpoolformer.registry`)
into whichever of mmdet and mmseg are installed; it does nothing else.
"""
from .registry import register_all_modules
from .version import __version__

register_all_modules()

__all__ = ['__version__', 'register_all_modules']
