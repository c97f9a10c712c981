"""Norm layers of the MetaFormer baselines (timm's names and math).

All keep a ``weight`` (and a ``bias`` unless ``bias=False``) of shape
``(C,)``; the default eps is 1e-6, as in the official models.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .formulations import formulation_key
from .gn1_autograd import StatsGroupNorm1, gn1_apply, gn1_moments, wanted

# How one-group GroupNorms (over C, H, W of each image) compute, per device
# type ('other': every device not named): 'native' is ``F.group_norm``;
# 'stats' takes the statistics from ``torch.var_mean`` and applies them in
# one fused multiply-add, and PoolFormer's token mixer uses the exact
# rewrite ``g * rstd * (pool(x) - x)``. Same parameters, same outputs to
# rounding. On an H100 (torch 2.11, bf16 autocast, PoolFormer-S12 at
# 800x1216) CUDA's native kernel computes the statistics with one thread
# block per image and took 69% of the official model's training step
# (27 of 39 ms of GPU time at batch 2), so CUDA takes 'stats'. The CPU's
# native kernel is vectorised and parallel: it stays. In eager training
# 'stats' differentiates through hand-written backwards (layers.
# gn1_autograd: a few ops where autograd launches dozens per norm);
# 'stats_autograd' is the same formula differentiated by autograd, kept to
# measure the difference. `tools/check_cuda.py` and `tools/benchmark.py`
# time them.
GN1_FORMULATION = dict(cpu='native', other='stats')
GN1_FORMULATIONS = ('native', 'stats', 'stats_autograd')


def gn1_formulation(x: torch.Tensor) -> str:
    """'native', 'stats' or 'stats_autograd' for ``x``'s device (see
    ``GN1_FORMULATION``)."""
    value = GN1_FORMULATION[formulation_key(GN1_FORMULATION, x.device.type)]
    if value not in GN1_FORMULATIONS:
        raise ValueError(f'GN1_FORMULATION: {value!r} is not one of '
                         f'{GN1_FORMULATIONS}')
    return value


def hand_written_backward(x: torch.Tensor, *params) -> bool:
    """Whether a 'stats' norm of ``x`` differentiates through
    ``layers.gn1_autograd`` here: the formulation says 'stats', and the
    forward runs eagerly with a gradient to compute."""
    return gn1_formulation(x) == 'stats' and wanted(x, *params)


def gn1_statistics(x: torch.Tensor, eps: float):
    """``(mean, rstd)`` of a one-group GroupNorm over ``(C, ...)`` of each
    image, in fp32, shaped ``(N, 1, ...)`` to broadcast against ``x``."""
    return gn1_moments(x.float(), eps)


def group_norm1(x: torch.Tensor, weight: Optional[torch.Tensor],
                bias: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """``F.group_norm(x, 1, weight, bias, eps)`` for ``(N, C, ...)``
    tensors, as ``GN1_FORMULATION`` says for ``x``'s device. 'stats'
    computes in fp32 and returns what ``F.group_norm`` would: fp32 under
    CUDA autocast (group_norm is on its fp32 list), the input's dtype
    otherwise."""
    if gn1_formulation(x) == 'native':
        return F.group_norm(x, 1, weight, bias, eps)
    xf = x.float()
    weight = None if weight is None else weight.float()
    bias = None if bias is None else bias.float()
    if hand_written_backward(xf, weight, bias):
        out = StatsGroupNorm1.apply(xf, weight, bias, eps)
    else:
        mean, rstd = gn1_statistics(xf, eps)
        out = gn1_apply(xf, mean, rstd, weight, bias)
    return _autocast_dtype(out, x)


def _autocast_dtype(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """An fp32 norm output in the dtype ``F.group_norm`` gives for ``x``."""
    if x.device.type == 'cuda' and torch.is_autocast_enabled('cuda'):
        return out
    return out.to(x.dtype)


def apply_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``, through :func:`group_norm1` when ``norm`` is a
    one-group ``nn.GroupNorm`` (as mmcv's ``build_norm_layer`` makes it)."""
    if isinstance(norm, nn.GroupNorm) and norm.num_groups == 1:
        return group_norm1(x, norm.weight, norm.bias, norm.eps)
    return norm(x)


class _ChannelNorm(nn.Module):
    """Shared parameters: ``weight`` (ones) and optional ``bias`` (zeros)."""

    def __init__(self, num_channels: int, eps: float = 1e-6,
                 bias: bool = True):
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        if bias:
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter('bias', None)

    def extra_repr(self) -> str:
        return (f'{self.num_channels}, eps={self.eps}, '
                f'bias={self.bias is not None}')


class LayerNorm2d(_ChannelNorm):
    """LayerNorm over the channels of each pixel of an ``(N, C, H, W)``
    tensor (timm's ``LayerNorm2d``; ``bias=False``: ``LayerNorm2dNoBias``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (self.num_channels, ), self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


class LayerNorm(_ChannelNorm):
    """LayerNorm over the last axis, e.g. of ``(N, L, C)`` tokens (timm's
    ``LayerNorm``; ``bias=False``: ``LayerNormNoBias``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.num_channels, ), self.weight, self.bias,
                            self.eps)


class GroupNorm1(_ChannelNorm):
    """One-group GroupNorm (over C, H, W of each image) of ``(N, C, H, W)``
    features (or of ``(N, L, C)`` tokens with ``channels_last=True``);
    ``bias=False`` is the "modified LayerNorm" of PoolFormerV2,
    IdentityFormer and RandFormer (timm's ``GroupNorm1NoBias``)."""

    def __init__(self, num_channels: int, eps: float = 1e-6,
                 bias: bool = True, channels_last: bool = False):
        super().__init__(num_channels, eps, bias)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            return group_norm1(x, self.weight, self.bias, self.eps)
        # (N, L, C) tokens: over all tokens and channels of each image
        x = F.layer_norm(x, x.shape[1:], eps=self.eps) * self.weight
        return x if self.bias is None else x + self.bias


def build_metaformer_norm(kind: str, num_channels: int, bias: bool = False,
                          eps: float = 1e-6,
                          use_nchw: bool = True) -> nn.Module:
    """A block norm: ``'ln'`` (over channels: ``LayerNorm2d`` on NCHW
    features, ``LayerNorm`` on tokens) or ``'gn1'`` (one-group GroupNorm),
    without bias and with eps 1e-6 by default; or ``'bn'`` (``BatchNorm2d``
    with its own weight, bias and eps 1e-5; NCHW stages only), not in any
    released model: for training from scratch."""
    if kind == 'ln':
        return (LayerNorm2d if use_nchw else LayerNorm)(
            num_channels, eps=eps, bias=bias)
    if kind == 'gn1':
        return GroupNorm1(num_channels, eps=eps, bias=bias,
                          channels_last=not use_nchw)
    if kind == 'bn':
        if not use_nchw:
            raise ValueError(
                "MetaFormer norm 'bn' needs NCHW stages: attention stages "
                "work on tokens; use 'ln' or 'gn1' with attention mixers")
        return nn.BatchNorm2d(num_channels)
    raise ValueError(f"Unknown MetaFormer norm {kind!r}; use 'ln', 'gn1' "
                     "or 'bn'")
