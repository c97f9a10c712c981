from .backbones import ARCH_SETTINGS, DenseBackbone, PoolFormer, resolve_arch

__all__ = ['ARCH_SETTINGS', 'DenseBackbone', 'PoolFormer', 'resolve_arch']
