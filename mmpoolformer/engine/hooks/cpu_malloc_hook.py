"""Keep freed tensor memory in glibc's heap, so that CPU training stops
paying page faults for its large tensors every iteration.

PyTorch's CPU allocator calls ``malloc``/``free`` for every tensor. glibc
serves blocks above its mmap threshold (dynamic, at most 32 MiB) with a
fresh ``mmap`` and unmaps them on ``free``, and gives the top of its heap
back to the OS when more than the trim threshold is free there; either way
the next iteration's tensors land on new pages, which the kernel must fault
in and zero. ``mallopt(M_MMAP_MAX, 0)`` serves every block from the heap and
a large ``M_TRIM_THRESHOLD`` keeps freed memory there for reuse: the
process keeps its peak memory until it exits instead of returning it
between iterations.

Measured on 2 cores of an AMD EPYC (torch 2.13, 2026-11-26):

* a 1x1 convolution 64 -> 256 channels at 2x128x128 (PoolFormer-S12's
  first MLP at 512x512; a 33.5 MB output) took 10.6 ms with glibc's
  defaults and 2.4 ms with the settings here;
* PoolFormer-S12's fp32 training step at 2x512x512, the official model
  eager: 752 ms median (526-1110) with the defaults, 519 ms (interquartile
  range 14 ms) with them (``tools/benchmark.py --reuse-freed-memory``);
* the shapes demos (160 px images, smaller tensors), with
  ``tools/analysis_tools/cpu_levers.py``: page faults down by 58-67% and
  system time by 25-45%. RetinaNet's step time is the same within this
  machine's run-to-run noise (0.2095 vs 0.2105 s; three earlier pairs of
  2-epoch runs had been 3.5-5% faster with them); Semantic FPN's was 4-6%
  slower with them (0.225 vs 0.235 s, 0.203 vs 0.215 s).

On the Intel Xeon where the RetinaNet demo spent a third of its CPU time in
the kernel, the setting is not yet measured.

Nothing here runs on import: the hook (in a config's ``custom_hooks``) or a
tool calls :func:`reuse_freed_memory`. It changes only this process's
malloc settings (and those of worker processes forked after it), and leaves
them alone where the user chose an allocator already (``GLIBC_TUNABLES``
with ``glibc.malloc.*``, ``MALLOC_*_`` variables, a preloaded jemalloc,
tcmalloc or mimalloc) or where the C library is not glibc.
"""
import ctypes
import os
import platform
from typing import Optional

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

__all__ = ['CPUMallocHook', 'reuse_freed_memory', 'user_malloc_choice']

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# mallopt takes an int: the largest trim threshold it accepts
MAX_TRIM_THRESHOLD = 2**31 - 1


def _checked(trim_threshold, who: str) -> int:
    if isinstance(trim_threshold, bool) or not isinstance(
            trim_threshold, int) or not (
                0 <= trim_threshold <= MAX_TRIM_THRESHOLD):
        raise ValueError(f'{who}: trim_threshold={trim_threshold!r} is not '
                         f'a number of bytes from 0 to {MAX_TRIM_THRESHOLD}')
    return trim_threshold


def user_malloc_choice(environ=None) -> Optional[str]:
    """The malloc setting the user made for this process, if any (then
    :func:`reuse_freed_memory` leaves malloc alone)."""
    environ = os.environ if environ is None else environ
    if 'glibc.malloc.' in environ.get('GLIBC_TUNABLES', ''):
        return 'GLIBC_TUNABLES sets glibc.malloc.*'
    names = sorted(k for k in environ
                   if k.startswith('MALLOC_') and k.endswith('_'))
    if names:
        return f'{names[0]} is set'
    preload = environ.get('LD_PRELOAD', '')
    for name in ('jemalloc', 'tcmalloc', 'mimalloc'):
        if name in preload:
            return f'LD_PRELOAD loads {name}'
    return None


def reuse_freed_memory(trim_threshold: int = MAX_TRIM_THRESHOLD) -> str:
    """Serve every block from glibc's heap and keep up to
    ``trim_threshold`` bytes of freed memory there (see the module
    docstring). Returns one line saying what was done, or why nothing was.
    """
    _checked(trim_threshold, 'reuse_freed_memory')
    choice = user_malloc_choice()
    if choice:
        return f'malloc left as it is: {choice}'
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return 'malloc left as it is: the C library is not glibc'
    libc = ctypes.CDLL(None)
    done = (libc.mallopt(M_MMAP_MAX, 0) == 1
            and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1)
    if not done:
        return 'malloc left as it is: glibc refused mallopt'
    return ('malloc: every block from the heap (M_MMAP_MAX=0), up to '
            f'{trim_threshold / 2**20:.0f} MiB of freed memory kept for '
            'reuse (M_TRIM_THRESHOLD)')


@HOOKS.register_module()
class CPUMallocHook(Hook):
    """Before the run, keep freed tensor memory in glibc's heap for reuse:
    fewer page faults per iteration in CPU training (see
    :mod:`mmpoolformer.engine.hooks.cpu_malloc_hook` for what it changes
    and what it measured). For the whole process, until it exits; a malloc
    the user chose (``GLIBC_TUNABLES``, ``MALLOC_*_``, a preloaded
    allocator) is left alone.

    Args:
        trim_threshold (int): Bytes of freed memory glibc keeps before it
            returns the top of the heap to the OS. Defaults to the most
            mallopt accepts (2 GiB - 1).
    """
    priority = 'VERY_HIGH'

    def __init__(self, trim_threshold: int = MAX_TRIM_THRESHOLD):
        self.trim_threshold = _checked(trim_threshold, 'CPUMallocHook')

    def before_run(self, runner):
        runner.logger.info(reuse_freed_memory(self.trim_threshold))
