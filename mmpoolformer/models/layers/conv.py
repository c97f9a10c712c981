"""Convolutions whose bias is added apart from them, and per-channel
parameters whose gradients are summed by rows, inside compiled graphs."""
import torch
import torch.nn as nn

from .formulations import backward_formulation

# How a biased convolution computes inside a torch.compile'd graph that a
# backward follows, per device type ('other': every device not named):
# 'fused' passes the bias to the convolution; 'apart' convolves without it
# and adds it after, so the compiler fuses the add with its neighbours and
# sums the bias gradient in its own kernels. oneDNN's channels_last backward
# computes the bias gradient slowly on these shapes (PoolFormer-S12's stage-1
# fc1, 64 -> 256 at 2x128x128, fp32: 10.6 ms with it, 6.7 ms without, on 2
# cores of an AMD EPYC); with 'apart' the compiled S12 training step at
# 2x512x512 took 366 and 405 against 373 and 410 ms in two runs
# (docs/benchmark.md). Eager mode, inference and other devices keep the
# fused bias.
CONV_BIAS_FORMULATION = dict(cpu='apart', other='fused')

# How the gradient of a per-channel parameter broadcast over (N, C, H, W)
# activations (a bias added apart, a layer scale) is summed inside a
# torch.compile'd graph that a backward follows, per device type: 'rows'
# broadcasts it as an (N, C, H, 1) expansion, so the backward sums each
# image row first and then the N * H row sums; 'direct' broadcasts a
# (1, C, 1, 1) view, one reduction over N * H * W. Inductor's CPU code runs
# that one reduction on channels_last activations as a pass over the whole
# tensor per 16 channels; by rows, each row is read once while it is in
# cache. Fused GELU + bias-gradient backward and forward, 2x256x128x128
# fp32 on 2 cores of an AMD EPYC: 5.8 against 6.6 ms; S12 training step at
# 2x512x512: see docs/benchmark.md. Eager mode and inference broadcast the
# view.
CHANNEL_GRAD_FORMULATION = dict(cpu='rows', other='direct')


def channel_param(param: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The per-channel ``param`` shaped to broadcast over ``x`` (N, C, H,
    W): a ``(1, C, 1, 1)`` view, or inside graphs compiled for a backward
    where ``CHANNEL_GRAD_FORMULATION`` says 'rows' for ``x``'s device, its
    ``(N, C, H, 1)`` expansion (no copy; the same values and gradient)."""
    view = param.view(1, -1, 1, 1)
    if backward_formulation(CHANNEL_GRAD_FORMULATION, x) == 'rows':
        return view.expand(x.shape[0], -1, x.shape[2], 1)
    return view


def conv_bias_apart(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, except inside graphs compiled for a backward where
    ``CONV_BIAS_FORMULATION`` says 'apart' for ``x``'s device: there the
    convolution runs without its bias and the bias is added after (same
    outputs and gradients; ``conv``'s own forward hooks do not run on that
    path). ``conv`` stays an ``nn.Conv2d``, so tools that match modules by
    exact type (mmcv's FLOP counter, quantization) still see it."""
    if conv.bias is not None and backward_formulation(
            CONV_BIAS_FORMULATION, x) == 'apart':
        out = conv._conv_forward(x, conv.weight, None)
        return out + channel_param(conv.bias, out).to(out.dtype)
    return conv(x)
