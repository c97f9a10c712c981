"""Building blocks shared by the backbones."""
from .drop_path import DropPath

__all__ = ['DropPath']
