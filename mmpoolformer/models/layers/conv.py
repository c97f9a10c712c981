"""Convolutions whose bias is added apart from them inside compiled graphs."""
import torch
import torch.nn as nn

from .norms import backward_formulation

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
        return out + conv.bias.view(1, -1, 1, 1).to(out.dtype)
    return conv(x)
