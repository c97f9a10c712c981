"""Token mixers of the MetaFormer baselines (timm's math and names).

All but :class:`Attention` work on ``(N, C, H, W)`` features; attention works
on ``(N, L, C)`` tokens (the stage flattens them).
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .activations import StarReLU
from .formulations import backward_formulation
from .pooling import inverse_counts, window_mean, window_sum, window_sum_conv
from .tracing import is_compiling


# How the token mixer's average pooling computes inside a torch.compile'd
# graph, per device type ('other': every device not named). 'native' is
# ``F.avg_pool2d``; 'sum' adds the k*k shifted views of the zero-padded input
# and 'conv' convolves each channel with a k x k kernel of ones (a depthwise
# convolution, oneDNN's kernel on CPUs); both then multiply by 1 / (cells in
# each window), the same mean (eager mode: pooling.EAGER_POOL_FORMULATION).
# On 2 cores of an AMD EPYC (torch 2.13, inductor), PoolFormer-S12's
# compiled training step at 2x512x512: the generated avg_pool2d backward
# took ~19 ms of it; 'sum' made the step 433 -> 415 ms, but inductor's code
# for the shifted views' backward (masked loads around the padding) still
# took 6-9 ms per stage-1 block; with 'conv' the step took 366 and 405
# against 382 and 420 ms for 'sum' in two runs (docs/benchmark.md). 'sum'
# and 'conv' apply only where a backward follows (the input requires
# grad): for inference the native kernel was as fast or faster (S12 deploy
# + compile at 800x1216: fp32 270 vs 270 ms, bf16 134 vs 150 ms with
# 'sum'). On CUDA it is not yet measured, so CUDA keeps 'native'
# (`tools/check_cuda.py` times 'sum' and 'conv' too).
POOL_FORMULATION = dict(cpu='conv', other='native')


def avg_pool_same(x: torch.Tensor, pool_size: int = 3) -> torch.Tensor:
    """``F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)``: the mean
    of each k x k window, padded cells not counted (computed as
    ``POOL_FORMULATION`` says when compiling for a backward, as
    ``pooling.EAGER_POOL_FORMULATION`` says in eager mode; even ``k`` is
    always native)."""
    if pool_size % 2 and x.requires_grad:
        formulation = backward_formulation(POOL_FORMULATION, x)
        if formulation == 'conv':
            return window_sum_conv(x, pool_size) * inverse_counts(
                x, pool_size)
        if formulation == 'sum':
            return window_sum(x, pool_size) * inverse_counts(x, pool_size)
    return window_mean(x, pool_size)


class Pooling(nn.Module):
    """PoolFormer's mixer: ``avg_pool(x) - x`` (the block adds x back);
    padded cells are not counted."""

    def __init__(self, dim: Optional[int] = None, pool_size: int = 3):
        super().__init__()
        self.pool_size = pool_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool_same(x, self.pool_size) - x


class SepConv(nn.Module):
    """Inverted separable conv (MobileNetV2): 1x1 conv C -> 2C, StarReLU,
    depthwise 7x7, 1x1 conv 2C -> C; no biases."""

    def __init__(self, dim: int, expansion_ratio: float = 2,
                 kernel_size: int = 7, padding: int = 3, bias: bool = False):
        super().__init__()
        mid = int(expansion_ratio * dim)
        self.pwconv1 = nn.Conv2d(dim, mid, 1, bias=bias)
        self.act1 = StarReLU()
        self.dwconv = nn.Conv2d(mid, mid, kernel_size, padding=padding,
                                groups=mid, bias=bias)
        self.act2 = nn.Identity()
        self.pwconv2 = nn.Conv2d(mid, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.pwconv1(x))
        return self.pwconv2(self.act2(self.dwconv(x)))


class Attention(nn.Module):
    """Multi-head self-attention over ``(N, L, C)`` tokens, heads of
    ``head_dim`` (32) channels (``C // 32`` heads, at least one); ``qkv``
    and ``proj`` without bias."""

    def __init__(self, dim: int, head_dim: int = 32, attn_drop: float = 0.,
                 proj_drop: float = 0.):
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = max(dim // head_dim, 1)
        self.attention_dim = self.num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * self.attention_dim, bias=False)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(self.attention_dim, dim, bias=False)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads,
                                      self.head_dim).permute(2, 0, 3, 1,
                                                             4).unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.)
        x = x.transpose(1, 2).reshape(b, n, self.attention_dim)
        return self.proj_drop(self.proj(x))


def resample_random_matrix(matrix: torch.Tensor, src: Tuple[int, int],
                           dst: Tuple[int, int]) -> torch.Tensor:
    """Resample a token-mixing matrix made for an ``src`` = (h0, w0) grid to
    a ``dst`` = (h, w) grid: view it as an (h0, w0, h0, w0) map, resize both
    the output (query) and the input (key) grid bilinearly, and renormalise
    each row to sum to 1 (like the softmax the released matrix came from).
    """
    (h0, w0), (h, w) = src, dst
    m = matrix.reshape(h0 * w0, 1, h0, w0)  # per query: a map over keys
    m = F.interpolate(m, size=(h, w), mode='bilinear', align_corners=False)
    m = m.reshape(h0, w0, h * w).permute(2, 0, 1).unsqueeze(1)
    m = F.interpolate(m, size=(h, w), mode='bilinear', align_corners=False)
    m = m.reshape(h * w, h * w).t()  # (query, key)
    return m / m.sum(-1, keepdim=True)


class RandomMixing(nn.Module):
    """RandFormer's mixer: a frozen row-stochastic ``random_matrix`` (an
    ``nn.Parameter`` without gradient, as in the official code) mixes the
    ``num_tokens = grid[0] * grid[1]`` tokens.

    On another feature size, ``resample=True`` mixes with the matrix
    resampled to that size (:func:`resample_random_matrix`; in eager mode
    the last one is cached, compiled graphs resample on each call);
    ``resample=False`` is the official behaviour: the token count must be
    ``num_tokens`` (else ``ValueError``).
    """

    def __init__(self, dim: Optional[int] = None, num_tokens: int = 196,
                 grid: Optional[Tuple[int, int]] = None,
                 resample: bool = True):
        super().__init__()
        side = int(math.isqrt(num_tokens))
        self.grid = tuple(grid) if grid is not None else (side, side)
        if self.grid[0] * self.grid[1] != num_tokens:
            raise ValueError(f'grid {self.grid} does not hold {num_tokens} '
                             'tokens')
        self.num_tokens = num_tokens
        self.resample = resample
        self.random_matrix = nn.Parameter(
            torch.softmax(torch.rand(num_tokens, num_tokens), dim=-1),
            requires_grad=False)
        self._cache = None

    def matrix_for(self, h: int, w: int) -> torch.Tensor:
        """The (h*w, h*w) mixing matrix for an h x w feature map."""
        matrix = self.random_matrix
        if (h, w) == self.grid or (not self.resample
                                   and h * w == self.num_tokens):
            return matrix
        if not self.resample:
            raise ValueError(
                f'RandomMixing holds a fixed {self.num_tokens}-token matrix '
                f'({self.grid[0]}x{self.grid[1]}), but the feature map is '
                f'{h}x{w} ({h * w} tokens); build with resample=True to '
                'resample the matrix to other sizes.')
        if is_compiling():
            # no cache inside compiled graphs: storing it is a side effect
            # that a checkpointed block (with_cp) cannot replay in its
            # recompute; the graph resamples on every call
            return resample_random_matrix(matrix.detach(), self.grid, (h, w))
        key = (h, w, matrix.device, matrix.dtype, matrix._version,
               matrix.data_ptr())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, resample_random_matrix(
                    matrix, self.grid, (h, w)))
        return self._cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        matrix = self.matrix_for(h, w)
        return (x.reshape(b, c, h * w) @ matrix.t()).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return (f'num_tokens={self.num_tokens}, grid={self.grid}, '
                f'resample={self.resample}')


MIXERS = ('identity', 'random', 'pool', 'sepconv', 'attention')


def build_token_mixer(kind: str, dim: int, num_tokens: Optional[int] = None,
                      resample: bool = True) -> nn.Module:
    """A token mixer by name: one of :data:`MIXERS`."""
    if kind == 'identity':
        return nn.Identity()
    if kind == 'pool':
        return Pooling(dim)
    if kind == 'sepconv':
        return SepConv(dim)
    if kind == 'attention':
        return Attention(dim)
    if kind == 'random':
        return RandomMixing(dim, num_tokens=num_tokens, resample=resample)
    raise ValueError(f'Unknown token mixer {kind!r}; use one of {MIXERS}')
