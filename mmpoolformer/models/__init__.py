from .backbones import (ARCH_SETTINGS, CAFormer, ConvFormer, DenseBackbone,
                        IdentityFormer, MetaFormer, PoolFormer, PoolFormerV2,
                        RandFormer, resolve_arch)

__all__ = [
    'ARCH_SETTINGS', 'CAFormer', 'ConvFormer', 'DenseBackbone',
    'IdentityFormer', 'MetaFormer', 'PoolFormer', 'PoolFormerV2',
    'RandFormer', 'resolve_arch'
]
