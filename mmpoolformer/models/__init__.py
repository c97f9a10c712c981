from .poolformer import ARCH_SETTINGS, PoolFormer, resolve_arch

__all__ = ['ARCH_SETTINGS', 'PoolFormer', 'resolve_arch']
