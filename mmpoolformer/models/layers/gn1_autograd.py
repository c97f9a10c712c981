"""Hand-written backwards for the 'stats' one-group GroupNorm formulation.

In eager mode autograd differentiates ``layers.norms.group_norm1``'s
'stats' formula (``var_mean``, ``rsqrt``, a centred multiply-add) and
PoolFormer's token-mixer rewrite (``ls1 * g1 * rstd * (pool(x) - x)``) op by
op, keeping the intermediate tensors those ops need, where the native
GroupNorm keeps its input and calls one backward op. These two functions
compute the same values with the backward written out:

* :class:`StatsGroupNorm1` keeps ``x`` and the per-image statistics and
  calls ``aten.native_group_norm_backward`` (one op);
* :class:`StatsPoolMixer` keeps only ``x`` and the statistics and
  recomputes ``pool(x) - x`` in the backward (a tensor autograd keeps).

PoolFormer-S12, 2x3x512x512 fp32 on 2 cores of an AMD EPYC (AVX2): peak
training-step memory 512 MiB against 609 with autograd through the
formula, step time 1.39 s either way; 31% fewer aten calls per forward and
backward (2,519 against 3,659 at 1x3x32x32), which on that CPU did not
shorten the step. On a GPU, where the eager step waits on kernel launches
(docs/benchmark.md), its effect on time is not yet measured:
``tools/check_cuda.py`` rows ``plain`` against ``autograd``
(``GN1_FORMULATION`` 'stats_autograd').

Used only in eager mode with gradients (``wanted``): inside
``torch.compile`` the compiler fuses the formula itself, and TorchScript,
tracing and ONNX export see the plain ops.
"""
from typing import Optional

import torch

from .pooling import window_mean, window_mean_backward
from .tracing import shapes_are_symbolic


def wanted(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether the hand-written backward applies: eager mode (no compile,
    trace or script) and a gradient to compute for one of ``tensors``."""
    return (torch.is_grad_enabled() and not shapes_are_symbolic() and any(
        t is not None and t.requires_grad for t in tensors))


def gn1_moments(x: torch.Tensor, eps: float):
    """``(mean, rstd)`` of a one-group GroupNorm over ``(C, ...)`` of each
    image, in ``x``'s dtype, shaped ``(N, 1, ...)`` to broadcast against
    ``x`` (``layers.norms.gn1_statistics`` takes them in fp32)."""
    var, mean = torch.var_mean(x, dim=tuple(range(1, x.dim())),
                               correction=0, keepdim=True)
    return mean, torch.rsqrt(var + eps)


def gn1_forward(x: torch.Tensor, weight: Optional[torch.Tensor],
                bias: Optional[torch.Tensor], eps: float, native: bool):
    """``(out, mean, rstd)`` of a one-group GroupNorm of ``x``, the
    statistics shaped ``(N, 1, ...)``: from the native kernel (``native``;
    fast on CPUs) or from :func:`gn1_moments` and :func:`gn1_apply` (see
    ``layers.norms.GN1_FORMULATION``)."""
    if not native:
        mean, rstd = gn1_moments(x, eps)
        return gn1_apply(x, mean, rstd, weight, bias), mean, rstd
    n, c = x.shape[:2]
    out, mean, rstd = torch.ops.aten.native_group_norm(
        x.contiguous(memory_format=_native_layout(x)), weight, bias, n, c,
        x[0, 0].numel(), 1, eps)
    shape = (n, ) + (1, ) * (x.dim() - 1)
    return out, mean.view(shape), rstd.view(shape)


def gn1_apply(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
              weight: Optional[torch.Tensor],
              bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``(x - mean) * rstd * weight + bias``: a one-group GroupNorm of ``x``
    from its statistics, as one fused multiply-add."""
    scale = rstd if weight is None else rstd * channel_view(weight, x)
    centred = x - mean
    return (centred * scale if bias is None else torch.addcmul(
        channel_view(bias, x), centred, scale))


def gn1_backward(grad, x, mean, rstd, weight, mask):
    """Gradients of :func:`gn1_apply` for ``x``, ``weight`` and ``bias``
    (those ``mask`` asks for, else None) by the native kernel."""
    n, c = x.shape[:2]
    layout = _native_layout(x)
    return torch.ops.aten.native_group_norm_backward(
        grad.contiguous(memory_format=layout),
        x.contiguous(memory_format=layout), mean.view(n, 1),
        rstd.view(n, 1), weight, n, c, x[0, 0].numel(), 1, mask)


def _native_layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format the native GroupNorm kernels take ``x`` in, as
    ``F.group_norm`` passes it: its own on a CPU (channels_last kernels),
    contiguous elsewhere."""
    if (x.device.type == 'cpu' and x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)):
        return torch.channels_last
    return torch.contiguous_format


def channel_view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel ``(C,)`` tensor viewed to broadcast over ``x``."""
    return t.view((1, -1) + (1, ) * (x.dim() - 2))


class StatsGroupNorm1(torch.autograd.Function):
    """``F.group_norm(x, 1, weight, bias, eps)`` of an fp32 ``x`` with the
    statistics from ``var_mean``; the backward is the native kernel's."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        mean, rstd = gn1_moments(x, eps)
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.has_bias = bias is not None
        return gn1_apply(x, mean, rstd, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, mean, rstd, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0],
                weight is not None and ctx.needs_input_grad[1],
                ctx.has_bias and ctx.needs_input_grad[2]]
        return gn1_backward(grad, x, mean, rstd, weight, mask) + (None, )


class StatsPoolMixer(torch.autograd.Function):
    """``ls1 * g1 * rstd * (avg_pool(x) - x)`` for an fp32 ``(N, C, H, W)``
    ``x`` (``rstd``: of a one-group GroupNorm of each image; odd
    ``pool_size``, padded cells not counted). ``b1``, which cancels, gets
    its exact zero gradient (not None: optimizers and DDP see it used)."""

    @staticmethod
    def forward(ctx, x, ls1, g1, b1, eps, pool_size):
        mean, rstd = gn1_moments(x, eps)
        ctx.pool = pool_size
        ctx.save_for_backward(x, mean, rstd, ls1, g1, b1)
        return pool_mix(x, rstd, ls1, g1, pool_size)

    @staticmethod
    def backward(ctx, grad):
        x, mean, rstd, ls1, g1, b1 = ctx.saved_tensors
        gx, g_ls1, g_g1 = pool_mix_backward(grad, x, mean, rstd, ls1, g1,
                                            ctx.pool)
        return gx, g_ls1, g_g1, torch.zeros_like(b1), None, None


def pool_mix(x: torch.Tensor, rstd: torch.Tensor, ls1: torch.Tensor,
             g1: torch.Tensor, pool_size: int,
             diff: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The forward of :class:`StatsPoolMixer` given ``rstd`` (and
    ``diff = pool_diff(x)`` if at hand)."""
    if diff is None:
        diff = pool_diff(x, pool_size)
    return diff * (channel_view(ls1 * g1, x) * rstd)


def pool_diff(x: torch.Tensor, pool_size: int) -> torch.Tensor:
    """``avg_pool(x) - x`` (stride 1, padded cells not counted)."""
    return window_mean(x, pool_size) - x


def pool_mix_backward(grad, x, mean, rstd, ls1, g1, pool_size: int,
                      diff: Optional[torch.Tensor] = None):
    """Gradients of :func:`pool_mix` (with ``mean, rstd`` the statistics of
    ``x``) for ``x``, ``ls1`` and ``g1``; ``diff = pool_diff(x)`` is
    recomputed unless given."""
    k = pool_size
    scale = channel_view(ls1 * g1, x)  # (1, C, 1, 1)
    if diff is None:
        diff = pool_diff(x, k)
    # d out / d (ls1 * g1) and d out / d rstd, summed per image/channel
    per_channel = (grad * diff).sum((2, 3), keepdim=True)  # (N, C, 1, 1)
    g_scale = (per_channel * rstd).sum(0).flatten()
    g_rstd = (per_channel * scale).sum(1, keepdim=True)  # (N, 1, 1, 1)
    # through avg_pool(x) - x ...
    g_diff = grad * (scale * rstd)
    gx = window_mean_backward(g_diff, x, k) - g_diff
    # ... and through rstd = (var + eps)^(-1/2), var = mean((x - m)^2)
    coef = g_rstd * rstd.pow(3) * (-1.0 / x[0].numel())
    gx.addcmul_(x, coef).sub_(coef * mean)
    return gx, g_scale * g1, g_scale * ls1
