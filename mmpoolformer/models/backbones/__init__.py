from .base import DenseBackbone
from .metaformer import (CAFormer, ConvFormer, IdentityFormer, MetaFormer,
                         PoolFormerV2, RandFormer)
from .poolformer import ARCH_SETTINGS, PoolFormer, resolve_arch

__all__ = [
    'ARCH_SETTINGS', 'CAFormer', 'ConvFormer', 'DenseBackbone',
    'IdentityFormer', 'MetaFormer', 'PoolFormer', 'PoolFormerV2',
    'RandFormer', 'resolve_arch'
]
