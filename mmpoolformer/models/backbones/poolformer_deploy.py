"""Inference-only ("deploy") PoolFormer blocks with folded parameters.

A plain block computes ``x + ls1 * (pool(n1(x)) - n1(x))`` and then
``x + ls2 * fc2(gelu(fc1(n2(x))))`` with ``n`` a one-group GroupNorm
``(x - mean) * rstd * g + b``. Exact rewrites used here:

* token mixer: avg-pooling without padded zeros maps a constant plane to
  itself, so ``b`` and ``mean`` cancel in ``pool(n1(x)) - n1(x)``, leaving
  ``g1 * rstd * (pool(x) - x)``: the step is ``lerp(x, pool(x), ls1 * g1 *
  rstd)``, one fused kernel, and only the variance of ``x`` is needed;
* MLP: ``g2``/``b2`` fold into ``fc1`` (``W1 * g2``, ``W1 @ b2 + c1``) and
  ``ls2`` into ``fc2`` (``ls2 * W2``, ``ls2 * c2``), so only the
  normalisation ``(x - mean) * rstd`` remains;
* layout and kernels: the 1x1 convs run on channels_last tensors through
  oneDNN's convolution with fused post-ops (fc1: bias+GELU; fc2:
  bias+residual add), or as GEMMs on the NHWC view where oneDNN is not
  used; both norms' statistics come from the vectorised GroupNorm kernel.

Deploy blocks take and return NCHW tensors (channels_last in memory) and keep
the residual stream in fp32, so under bf16 autocast only the GEMMs and
convolutions run in bf16. They contain no data-dependent Python control flow,
so ``torch.compile(fullgraph=True)`` traces the whole backbone.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmpoolformer.models.layers.formulations import formulation_key
from mmpoolformer.models.layers.gn1_autograd import gn1_forward
from mmpoolformer.models.layers.mixers import avg_pool_same
from mmpoolformer.models.layers.norms import group_norm1, gn1_statistics
from mmpoolformer.models.layers.tracing import is_compiling
from mmpoolformer.utils.cpu import cpu_bf16_supported

# Read once: torch.compile cannot trace the query.
_ONEDNN_AVAILABLE = torch.backends.mkldnn.is_available()
# oneDNN's fused ops refuse bf16 on CPUs without bf16 kernels (AVX2)
_BF16_KERNELS = cpu_bf16_supported()

# How deploy blocks compute, per device type ('other': every device not
# named): 'folded' is the channels_last GEMM formulation above (fp32
# residual stream); 'conv' runs the same folded weights as the plain block's
# ops (NCHW 1x1 convolutions, the input's layout, plain's dtypes), so a device
# where the folded formulation is not faster than plain gets plain speed;
# 'folded_eager' is 'folded' in eager mode and 'conv' inside torch.compile.
# On an H200 (torch 2.11, bf16 autocast, 2026-11-27) eager 'folded'
# measured 4.21 ms against plain's 5.15 at batch 1 (11.09 vs 13.88 at batch
# 8; 'conv' 4.85 / 14.05, when it still kept a bf16 residual stream under
# autocast), but compiled, folded took 9.14 ms against
# plain `compile=True`'s 8.19: inside a compiled graph 'conv' is plain's
# graph less the norms' affine and the layer scales, so a compiled deploy
# model should not be slower than a compiled plain one (not yet timed on a
# GPU: `tools/check_cuda.py` rows 'project deploy + compile' and
# '... (folded) + compile'). On CPUs the oneDNN 'folded' blocks are the
# faster ones, compiled or not (docs/benchmark.md).
FORMULATION = dict(cpu='folded', other='folded_eager')
FORMULATIONS = ('folded', 'conv', 'folded_eager')


def block_formulation(device_type: str) -> str:
    """'folded' or 'conv': how deploy blocks compute on ``device_type``
    here (eager or inside ``torch.compile``), as ``FORMULATION`` says."""
    value = FORMULATION[formulation_key(FORMULATION, device_type)]
    if value not in FORMULATIONS:
        raise ValueError(f'poolformer_deploy.FORMULATION: {value!r} is not '
                         f'one of {FORMULATIONS}')
    if value == 'folded_eager':
        return 'conv' if is_compiling() else 'folded'
    return value


# The MLP's two 1x1 convolutions run as oneDNN convolutions with fused
# post-ops (bias+GELU, bias+residual add) on channels_last tensors: oneDNN's
# fp32 kernels are about twice MKL's on AMD CPUs, where MKL does not use
# AVX-512, and its convolution beat its matmul (``_linear_pointwise`` on the
# NHWC view, used before) on these shapes: S12 at 1x3x800x1216 on 2 cores
# of an AMD EPYC, stage 3 fc1 + GELU 7.05 against 8.02 ms in fp32, 3.77
# against 4.59 ms in bf16; stage 1's fc1 + GELU was the one exception (7.23
# against 6.43 ms in fp32). Wrapped as custom ops so torch.compile keeps
# them as opaque kernels (inductor's own oneDNN lowering needs frozen
# weights).
_ONE_BY_ONE = ([0, 0], [1, 1], [1, 1], 1)  # padding, stride, dilation, groups


@torch.library.custom_op('mmpoolformer::conv1x1_gelu', mutates_args=())
def conv1x1_gelu(x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
    """``gelu(conv1x1(x))`` (erf GELU) of an ``(N, C, H, W)`` ``x`` with an
    ``(out, C)`` weight; channels_last in, channels_last out."""
    if x.dtype == torch.bfloat16 and not _BF16_KERNELS:
        return conv1x1_gelu(x.float(), weight.float(), bias.float()).to(
            x.dtype)
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight[:, :, None, None], bias, *_ONE_BY_ONE, 'gelu', [], 'none')


def _conv1x1_fake(x, weight):
    n, _, h, w = x.shape
    return x.new_empty((n, weight.shape[0], h, w)).contiguous(
        memory_format=torch.channels_last)


@conv1x1_gelu.register_fake
def _(x, weight, bias):
    return _conv1x1_fake(x, weight)


@torch.library.custom_op('mmpoolformer::conv1x1_add', mutates_args=())
def conv1x1_add(x: torch.Tensor, residual: torch.Tensor,
                weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``residual + conv1x1(x)`` in ``residual``'s dtype (channels_last)."""
    if x.dtype == torch.bfloat16 and not _BF16_KERNELS:
        x, weight, bias = x.float(), weight.float(), bias.float()
    weight = weight[:, :, None, None]
    if x.dtype == residual.dtype:
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, weight, bias, *_ONE_BY_ONE, 'add', None, None, [],
            None)
    out = torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, *_ONE_BY_ONE, 'none', [], '')
    # a bf16 ``out`` promotes to the fp32 residual inside the add: one pass
    return (residual + out).to(residual.dtype)


@conv1x1_add.register_fake
def _(x, residual, weight, bias):
    return _conv1x1_fake(residual, weight)


class DeployPoolFormerBlock(nn.Module):
    """A :class:`PoolFormerBlock` with norms and layer scales folded away."""

    def __init__(self, dim: int, hidden_dim: int, pool_size: int = 3,
                 eps1: float = 1e-5, eps2: float = 1e-5):
        super().__init__()
        self.pool_size = pool_size
        self.eps1 = eps1
        self.eps2 = eps2
        self.mix_scale = nn.Parameter(torch.empty(dim))
        self.fc1_weight = nn.Parameter(torch.empty(hidden_dim, dim))
        self.fc1_bias = nn.Parameter(torch.empty(hidden_dim))
        self.fc2_weight = nn.Parameter(torch.empty(dim, hidden_dim))
        self.fc2_bias = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, layer_scale: float = 1e-5):
        """What folding a freshly initialised :class:`PoolFormerBlock`
        gives (norm weights 1, biases 0, truncated-normal MLP weights,
        layer scales ``layer_scale``); a checkpoint overwrites it."""
        from mmengine.model.weight_init import trunc_normal_
        self.mix_scale.fill_(layer_scale)
        trunc_normal_(self.fc1_weight, std=.02)
        self.fc1_bias.zero_()
        trunc_normal_(self.fc2_weight, std=.02)
        self.fc2_weight.mul_(layer_scale)
        self.fc2_bias.zero_()

    @classmethod
    @torch.no_grad()
    def from_block(cls, block: nn.Module) -> 'DeployPoolFormerBlock':
        """Fold a trained block (its dropout/drop-path are inference no-ops,
        so they vanish)."""
        fc1, fc2 = block.mlp.fc1, block.mlp.fc2
        dim, hidden = fc1.in_channels, fc1.out_channels
        new = cls(dim, hidden, block.token_mixer.pool_size, block.norm1.eps,
                  block.norm2.eps)
        # Fold in float64 so the folded weights carry no extra rounding.
        w1 = fc1.weight.reshape(hidden, dim).double()
        w2 = fc2.weight.reshape(dim, hidden).double()
        g1, g2 = block.norm1.weight.double(), block.norm2.weight.double()
        b2 = block.norm2.bias.double()
        ls1 = block.layer_scale_1.double()
        ls2 = block.layer_scale_2.double()
        dtype = fc1.weight.dtype
        new.mix_scale.copy_((ls1 * g1).to(dtype))
        new.fc1_weight.copy_((w1 * g2).to(dtype))
        new.fc1_bias.copy_((w1 @ b2 + fc1.bias.double()).to(dtype))
        new.fc2_weight.copy_((ls2[:, None] * w2).to(dtype))
        new.fc2_bias.copy_((ls2 * fc2.bias.double()).to(dtype))
        return new.to(fc1.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if block_formulation(x.device.type) == 'conv':
            return self._forward_conv(x)
        return self._forward_folded(x)

    def _forward_conv(self, x: torch.Tensor) -> torch.Tensor:
        """The folded weights through the plain block's ops, with the plain
        block's dtypes: the mixer's fp32 statistics promote the residual
        stream to fp32 (under autocast a bf16 input comes out fp32)."""
        c = x.shape[1]
        rstd = gn1_statistics(x, self.eps1)[1]
        pooled = avg_pool_same(x, self.pool_size)
        mix = self.mix_scale.view(1, c, 1, 1) * rstd
        x = x + mix * (pooled - x)
        normed = group_norm1(x, None, None, self.eps2)
        hidden = F.gelu(F.conv2d(normed, self.fc1_weight[:, :, None, None],
                                 self.fc1_bias))
        out = F.conv2d(hidden, self.fc2_weight[:, :, None, None],
                       self.fc2_bias)
        return x + out

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        # The residual stream stays fp32 even when autocast hands us bf16
        # from a downsampling conv.
        x = x.float().contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        onednn = _use_onednn(x, self.fc1_weight)
        if onednn:
            # native_group_norm's moments kernel is vectorised (var_mean is
            # ~15x slower here); its rstd is all the mixer needs.
            rstd = gn1_forward(x, None, None, self.eps1, native=True)[2]
        else:
            # autograd does not flow through native_group_norm's rstd
            rstd = gn1_statistics(x, self.eps1)[1]
        weight = self.mix_scale.view(1, c, 1, 1) * rstd
        pooled = avg_pool_same(x, self.pool_size)
        x = torch.lerp(x, pooled, weight)
        normed = group_norm1(x, None, None, self.eps2)
        if onednn:
            return self._mlp_onednn(_pin_nhwc(normed), _pin_nhwc(x))
        # NHWC views of channels_last tensors: the 1x1 convs become GEMMs.
        tokens = normed.permute(0, 2, 3, 1).reshape(-1, c)
        residual = x.permute(0, 2, 3, 1).reshape(-1, c)
        hidden = F.gelu(F.linear(tokens, self.fc1_weight, self.fc1_bias))
        out = residual + F.linear(hidden, self.fc2_weight,
                                  self.fc2_bias).float()
        return out.view(n, h, w, c).permute(0, 3, 1, 2)

    def _mlp_onednn(self, normed, residual):
        weights = (self.fc1_weight, self.fc1_bias, self.fc2_weight,
                   self.fc2_bias)
        if _BF16_KERNELS and torch.is_autocast_enabled('cpu') and \
                torch.get_autocast_dtype('cpu') == torch.bfloat16:
            # autocast does not know these ops: cast by hand; the residual
            # sum stays fp32. (Without bf16 kernels they run in float32.)
            normed = normed.to(torch.bfloat16)
            weights = tuple(t.to(torch.bfloat16) for t in weights)
        w1, b1, w2, b2 = weights
        return conv1x1_add(conv1x1_gelu(normed, w1, b1), residual, w2, b2)

    def extra_repr(self) -> str:
        return (f'dim={self.mix_scale.numel()}, '
                f'hidden_dim={self.fc1_bias.numel()}, '
                f'pool_size={self.pool_size}')


def _pin_nhwc(t: torch.Tensor) -> torch.Tensor:
    """A channels_last ``t`` through its NHWC matrix view and back: no copy
    in eager mode. Inside torch.compile the view exists only for
    channels_last memory, so inductor stores ``t`` that way; left to itself
    it stored the lerp's output in NCHW for the GroupNorm's statistics
    (transposed stores) and copied it back for the convolutions: S12 deploy
    + compile at 4x3x800x1216, 2 cores of an AMD EPYC, 948 against 778 ms
    (eager deploy 795 ms)."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n * h * w, c).view(
        n, h, w, c).permute(0, 3, 1, 2)


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # The fused oneDNN ops have no autograd formula: training through a
    # deploy block (not its purpose) takes the plain ops.
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or
                                              weight.requires_grad)
    return x.device.type == 'cpu' and _ONEDNN_AVAILABLE and not needs_grad
