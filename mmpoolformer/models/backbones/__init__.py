from .base import DenseBackbone
from .poolformer import ARCH_SETTINGS, PoolFormer, resolve_arch

__all__ = ['ARCH_SETTINGS', 'DenseBackbone', 'PoolFormer', 'resolve_arch']
