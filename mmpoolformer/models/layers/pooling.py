"""PoolFormer's average pooling: the mean of each k x k window (stride 1,
padded cells not counted), ``F.avg_pool2d(x, k, 1, k // 2,
count_include_pad=False)``, and its gradient, computed as
``EAGER_POOL_FORMULATION`` says in eager mode. Graphs (``torch.compile``,
tracing, TorchScript) see ``F.avg_pool2d``; graphs compiled for training
have their own choice (``mixers.POOL_FORMULATION``)."""
import torch
import torch.nn.functional as F

from .formulations import formulation_key
from .tracing import shapes_are_symbolic

# How eager mode averages the windows of an fp32 NCHW tensor (odd k), per
# device type ('other': every device not named): 'native' is
# ``F.avg_pool2d``; 'conv' convolves each channel with a k x k kernel of
# ones (a depthwise convolution, oneDNN's on CPUs) and multiplies by
# 1 / (cells in each window); its gradient is the same convolution of the
# gradient times those reciprocals (the kernel is symmetric). torch's CPU
# kernels walk NCHW tensors one output at a time: on 2 cores of an AMD EPYC
# (AVX2, torch 2.13, freed memory reused) the forward took 21.6 against
# 3.5 ms at 1x64x200x304 (PoolFormer-S12's stage 1 at 800x1216) and 6.7
# against 0.64 ms at 1x320x50x76; forward and backward 28.3 against 5.4 ms
# at 2x64x128x128. channels_last tensors keep the native kernel (vectorised
# over channels; the convolution was no faster: 2.5 against 2.3 ms).
EAGER_POOL_FORMULATION = dict(cpu='conv', other='native')
EAGER_POOL_FORMULATIONS = ('native', 'conv')


def _by_conv(x: torch.Tensor, k: int) -> bool:
    if shapes_are_symbolic() or not (
            k % 2 and x.dim() == 4 and x.dtype == torch.float32
            and x.is_contiguous()):
        return False
    table = EAGER_POOL_FORMULATION
    value = table[formulation_key(table, x.device.type)]
    if value not in EAGER_POOL_FORMULATIONS:
        raise ValueError(f'EAGER_POOL_FORMULATION: {value!r} is not one of '
                         f'{EAGER_POOL_FORMULATIONS}')
    return value == 'conv'


def window_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """``F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)`` (same
    values to rounding)."""
    if _by_conv(x, k):
        with _no_autocast(x):  # sums in fp32, as avg_pool2d's
            return window_sum_conv(x, k) * inverse_counts(x, k)
    return F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)


def window_mean_backward(grad: torch.Tensor, x: torch.Tensor,
                         k: int) -> torch.Tensor:
    """The gradient of :func:`window_mean` for ``x``."""
    if _by_conv(x, k):
        with _no_autocast(x):
            return window_sum_conv(grad * inverse_counts(x, k), k)
    return torch.ops.aten.avg_pool2d_backward(grad, x, [k, k], [1, 1],
                                              [k // 2, k // 2], False, False,
                                              None)


def window_sum(x: torch.Tensor, k: int) -> torch.Tensor:
    """The sum of each k x k window of the zero-padded ``x`` (odd k), as
    k * k shifted views added up."""
    h, w = x.shape[-2:]
    p = k // 2
    padded = F.pad(x, (p, p, p, p))
    total = padded[..., :h, :w]
    for i in range(k):
        for j in range(k):
            if i or j:
                total = total + padded[..., i:i + h, j:j + w]
    return total


def window_sum_conv(x: torch.Tensor, k: int) -> torch.Tensor:
    """The sums of :func:`window_sum` as a depthwise convolution with a
    constant kernel of ones (no gradient of its own)."""
    c = x.shape[1]
    return F.conv2d(x, x.new_ones(c, 1, k, k), None, 1, k // 2, 1, c)


def _no_autocast(x: torch.Tensor):
    return torch.autocast(x.device.type, enabled=False)


def inverse_counts(x: torch.Tensor, k: int) -> torch.Tensor:
    """``1 / (cells of each window inside the image)``, shaped ``(H, W)``."""
    p = k // 2

    def counts(n):
        i = torch.arange(n, device=x.device)
        return (i + p).clamp(max=n - 1) - (i - p).clamp(min=0) + 1
    h, w = x.shape[-2:]
    return 1 / (counts(h)[:, None] * counts(w)).to(x.dtype)
