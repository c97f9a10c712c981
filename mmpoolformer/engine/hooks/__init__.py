"""Runner hooks (registered into mmengine's ``HOOKS`` on import)."""
from .channels_last_hook import ChannelsLastHook
from .cpu_malloc_hook import CPUMallocHook
from .non_finite_check_hook import NonFiniteCheckHook
from .random_state_hook import RandomStateHook

__all__ = [
    'ChannelsLastHook', 'CPUMallocHook', 'NonFiniteCheckHook',
    'RandomStateHook'
]
