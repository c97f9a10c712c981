"""PoolFormer's block as one autograd function that keeps its GEMM outputs
and recomputes the rest: ``with_cp=True`` without torch's checkpointing.

``x1 = x + ls1 * (pool(n1(x)) - n1(x))``, ``out = x1 + ls2 * fc2(act(fc1(
n2(x1))))`` with one-group GroupNorms ``n1, n2`` (the token mixer through
the rewrite ``ls1 * g1 * rstd1 * (pool(x) - x)`` of
:class:`~.gn1_autograd.StatsPoolMixer`). The forward keeps the block input,
the four per-image statistics and the two convolutions' outputs (``fc1``'s,
4C channels; ``fc2``'s, C): what selective checkpointing with
``base.save_gemm_outputs_policy`` keeps. The backward recomputes the mixer,
``n2`` and the activation from them and calls one backward op per
convolution, norm, pooling and activation.

torch's selective checkpointing reaches the same memory through a Python
dispatch mode that sees every op of the block in the forward and again in
the recompute; where the step waits on the host (a GPU running eager
PoolFormer-S12: 111 against 32.5 ms a training step on an H200,
docs/benchmark.md) that costs more than the recompute. This function is one
autograd node per block. Under autocast the convolutions run in the
autocast dtype and everything else in fp32, as in the plain block.

Used by ``PoolFormerBlock.forward_recomputed`` in eager training with
``with_cp=True`` (``base.SELECTIVE_CP_FORMULATION``); compiled graphs use
torch's selective checkpointing, which the compiler turns into a plan.
"""
import torch
import torch.nn.functional as F

from .activations import gelu_backward
from .gn1_autograd import (channel_view, gn1_apply, gn1_backward,
                           gn1_forward, pool_diff, pool_mix,
                           pool_mix_backward)


class RecomputedPoolFormerBlock(torch.autograd.Function):
    """A PoolFormer block with one-group GroupNorms (affine), 1x1
    convolution MLP and no dropout or drop path; see the module docstring.
    ``b1``, which cancels in the mixer, gets its exact zero gradient."""

    @staticmethod
    def forward(ctx, x, ls1, g1, b1, g2, b2, w1, c1, w2, c2, ls2, eps1, eps2,
                pool_size, act, native):
        xf = _at_least_fp32(x)
        _, mean1, rstd1 = gn1_forward(xf, None, None, eps1, native)
        x1 = xf + pool_mix(xf, rstd1, ls1, g1, pool_size)
        n2, mean2, rstd2 = gn1_forward(x1, g2, b2, eps2, native)
        h = F.conv2d(n2, w1, c1)
        del n2
        y = F.conv2d(act(h), w2, c2)
        ctx.save_for_backward(x, mean1, rstd1, mean2, rstd2, h, y, ls1, g1,
                              b1, g2, b2, w1, c1, w2, c2, ls2)
        ctx.pool_size, ctx.act = pool_size, act
        return x1.addcmul_(channel_view(ls2, y), y)

    @staticmethod
    def backward(ctx, grad):
        (x, mean1, rstd1, mean2, rstd2, h, y, ls1, g1, b1, g2, b2, w1, c1, w2,
         c2, ls2) = ctx.saved_tensors
        needs = ctx.needs_input_grad
        # out = x1 + ls2 * y
        g_ls2 = (grad * y).sum((0, 2, 3)) if needs[10] else None
        gy = (grad * channel_view(ls2, grad)).to(y.dtype)
        ga, g_w2, g_c2 = _conv1x1_backward(gy, ctx.act(h), w2, c2, needs[8:10])
        gh = gelu_backward(ga, h, ctx.act.approximate)
        del ga
        # the mixer and n2, recomputed
        xf = _at_least_fp32(x)
        diff = pool_diff(xf, ctx.pool_size)
        x1 = xf + pool_mix(xf, rstd1, ls1, g1, ctx.pool_size, diff)
        n2 = gn1_apply(x1, mean2, rstd2, g2, b2)
        gn2, g_w1, g_c1 = _conv1x1_backward(gh, n2, w1, c1, needs[6:8])
        del gh, n2
        gx1, g_g2, g_b2 = gn1_backward(gn2.to(x1.dtype), x1, mean2, rstd2, g2,
                                       [True, needs[4], needs[5]])
        gx1 += grad
        del x1
        gx, g_ls1, g_g1 = pool_mix_backward(gx1, xf, mean1, rstd1, ls1, g1,
                                            ctx.pool_size, diff)
        gx += gx1
        return (gx.to(x.dtype), g_ls1, g_g1, torch.zeros_like(b1), g_g2,
                g_b2, g_w1, g_c1, g_w2, g_c2, g_ls2) + (None, ) * 5


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32, or as it is in a wider type (float64 gradchecks)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _conv1x1_backward(grad, inp, weight, bias, needs):
    """Gradients of ``F.conv2d(inp, weight, bias)`` (a 1x1 convolution, in
    ``grad``'s dtype as under autocast) for ``inp`` and, where ``needs``
    says, ``weight`` and ``bias``; parameter gradients in their dtype."""
    dtype = grad.dtype
    g_in, g_w, g_b = torch.ops.aten.convolution_backward(
        grad, inp.to(dtype), weight.to(dtype),
        None if bias is None else [bias.shape[0]], [1, 1], [0, 0], [1, 1],
        False, [0, 0], 1,
        [True, needs[0], bias is not None and needs[1]])
    return (g_in, None if g_w is None else g_w.to(weight.dtype),
            None if g_b is None else g_b.to(bias.dtype))
