"""Per-device formulation tables: how a computation runs on each device
type (``norms.GN1_FORMULATION``, ``mixers.POOL_FORMULATION``,
``pooling.EAGER_POOL_FORMULATION``, ``conv.CONV_BIAS_FORMULATION``,
``conv.CHANNEL_GRAD_FORMULATION``, the deploy blocks' ``FORMULATION``,
``backbones.base.SELECTIVE_CP_FORMULATION``): dicts from a device type, or
``'other'`` for every device not named, to the name of a formulation.
``mmpoolformer.benchmark.use_formulation`` sets one for an A/B run."""
from typing import Optional

import torch

from .tracing import is_compiling


def formulation_key(table: dict, device_type: str) -> str:
    """The entry of a per-device formulation table that applies to
    ``device_type``: its own, else ``'other'``."""
    return device_type if device_type in table else 'other'


def backward_formulation(table: dict, x: torch.Tensor) -> Optional[str]:
    """``table``'s formulation for ``x``'s device while torch.compile traces
    a graph with gradients enabled (a backward may follow); None in eager
    mode and under ``no_grad``."""
    if torch.is_grad_enabled() and is_compiling():
        return table[formulation_key(table, x.device.type)]
    return None
