"""Activations and scaling layers of the MetaFormer baselines."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tracing import shapes_are_symbolic


def _is_channels_last_only(x: torch.Tensor) -> bool:
    return (x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


class GELU(nn.GELU):
    """``nn.GELU`` (same math: the values a contiguous tensor gets) that, on
    a CPU, computes channels_last ``(N, C, H, W)`` tensors as the contiguous
    ``(N, H, W, C)`` views they are: torch's CPU GELU kernels take a slower
    path for channels_last strides (forward and backward 1.6-1.8x the time
    of the same elements in contiguous order; 2 cores of an AVX2 EPYC,
    float32, 8x256x40x40 and 8x1280x10x10). Compiled and traced graphs are
    left as written."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != 'cpu' or not _is_channels_last_only(x)
                or shapes_are_symbolic()):
            return super().forward(x)
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def gelu_backward(grad: torch.Tensor, x: torch.Tensor,
                  approximate: str = 'none') -> torch.Tensor:
    """The gradient of ``F.gelu(x, approximate=approximate)`` for ``grad``,
    on a CPU over channels_last tensors' contiguous ``(N, H, W, C)`` views,
    as :class:`GELU` computes its forward."""
    if x.device.type == 'cpu' and _is_channels_last_only(x):
        back = torch.ops.aten.gelu_backward(
            grad.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1),
            approximate=approximate)
        return back.permute(0, 3, 1, 2)
    return torch.ops.aten.gelu_backward(grad, x, approximate=approximate)


class StarReLU(nn.Module):
    """``scale * relu(x) ** 2 + bias`` with learnable scalars ``scale`` and
    ``bias`` (shape ``(1,)``), from "MetaFormer Baselines for Vision"."""

    def __init__(self, scale_value: float = 1.0, bias_value: float = 0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, ), float(scale_value)))
        self.bias = nn.Parameter(torch.full((1, ), float(bias_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, bias = self.scale, self.bias
        if x.dtype != scale.dtype:
            # under autocast: stay in x's dtype (float32 parameters of shape
            # (1,) would promote the whole tensor to float32, and the next
            # layer would cast it back)
            scale, bias = scale.to(x.dtype), bias.to(x.dtype)
        return scale * F.relu(x).pow(2) + bias


class SquaredReLU(nn.Module):
    """``relu(x) ** 2`` (the MLP head's activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).pow(2)


class Scale(nn.Module):
    """Per-channel scaling by a learnable ``scale`` of shape ``(C,)``: over
    axis 1 of ``(N, C, H, W)`` features (``use_nchw``) or the last axis of
    tokens. Used as LayerScale and ResScale."""

    def __init__(self, dim: int, init_value: float = 1.0,
                 use_nchw: bool = True):
        super().__init__()
        self.use_nchw = use_nchw
        self.scale = nn.Parameter(torch.full((dim, ), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale.view(-1, 1, 1) if self.use_nchw else self.scale
        return x * scale


def optional_scale(dim: int, init_value: Optional[float],
                   use_nchw: bool = True) -> nn.Module:
    """A :class:`Scale` or, for ``init_value=None``, ``nn.Identity``."""
    if init_value is None:
        return nn.Identity()
    return Scale(dim, init_value, use_nchw)
