"""Optimizer wrappers (registered into mmengine's ``OPTIM_WRAPPERS``)."""
from .cpu_amp_optim_wrapper import CPUAmpOptimWrapper

__all__ = ['CPUAmpOptimWrapper']
