"""Independent reference for the "MetaFormer Baselines for Vision" models
(arXiv 2210.13452): IdentityFormer, RandFormer, PoolFormerV2, ConvFormer and
CAFormer. Written from the official sail-sg/metaformer
``metaformer_baselines.py`` (math, module tree and state-dict key names) and
from timm's ``timm/models/metaformer.py`` (its key layout), importing only
torch. Tests use it as the check against the package's production backbones.

Official model (channels-last inside: every stage works on (B, H, W, C)):

* ``downsample_layers.0``: stem, ``conv`` 7/4/2 (with bias), then
  ``post_norm`` = LayerNormGeneral over C, weight only, eps 1e-6.
  ``downsample_layers.{1,2,3}``: ``pre_norm`` (same kind, on the input
  width), then ``conv`` 3/2/1 (with bias).
* ``stages.{i}.{j}``:
  ``x = res_scale1(x) + layer_scale1(token_mixer(norm1(x)))``,
  ``x = res_scale2(x) + layer_scale2(mlp(norm2(x)))``. All five families use
  res_scale (``Scale``, init 1.0, key ``res_scaleK.scale``, shape (C,)) in
  stages 2 and 3 only and no layer_scale anywhere (official defaults
  ``res_scale_init_values=[None, None, 1.0, 1.0]``,
  ``layer_scale_init_values=None``). Drop path is off here (training used
  0.1-0.6).
* block norms: IdentityFormer/RandFormer/PoolFormerV2 use "modified
  LayerNorm" = LayerNormGeneral(normalized_dim=(1, 2, 3), bias=False,
  eps=1e-6), i.e. GroupNorm(1) with a weight and no bias; ConvFormer and
  CAFormer use LayerNormWithoutBias (over C, eps 1e-6).
* ``mlp``: ``fc1`` (C -> 4C), StarReLU ``act`` (``scale``, ``bias``, both
  shape (1,)), ``fc2`` (4C -> C); Linear, no biases.
* mixers: Identity; RandomMixing (``random_matrix``, a frozen
  ``nn.Parameter`` softmax(rand(N, N), -1), N = 196 in stage 2 and 49 in
  stage 3: the 224-px token counts); Pooling (avgpool 3/1/1 without padded
  cells, minus input); SepConv (``pwconv1`` Linear C -> 2C, ``act1``
  StarReLU, ``dwconv`` depthwise 7x7 pad 3, ``act2`` Identity, ``pwconv2``
  Linear 2C -> C, no biases); Attention (head_dim 32, heads C // 32,
  ``qkv`` and ``proj`` Linear without bias). CAFormer: SepConv in stages 0-1,
  Attention in stages 2-3; RandFormer: Identity in stages 0-1.
* ``norm``: nn.LayerNorm(C3, eps 1e-6) with bias, on the spatial mean.
  ``head``: nn.Linear (Identity/Rand/PoolFormerV2) or ``MlpHead``
  (ConvFormer/CAFormer): ``fc1`` C -> 4C, SquaredReLU, ``norm``
  nn.LayerNorm(4C) (eps 1e-5), dropout (head_dropout: 0 for ConvFormer and
  CAFormer-S18, 0.4/0.4/0.5 for CAFormer S36/M36/B36 in training), ``fc2``;
  all with biases.

timm layout (``official_to_timm``/``timm_to_official``; ``expected_keys``):
``stem.conv``, ``stem.norm``; ``stages.{i}.downsample.norm/conv`` for
i = 1..3 (stage 0 has none); ``stages.{i}.blocks.{j}.<same block names>``;
``head.norm``; ``head.fc`` (Linear) or ``head.fc.fc1/norm/fc2`` (MlpHead).
Tensor shapes that change: timm's SepConv ``pwconv1``/``pwconv2`` are 1x1
Conv2d, (out, in, 1, 1) instead of (out, in); timm's ``mlp.fc1``/``fc2`` are
1x1 convs in every NCHW stage (all stages except CAFormer's attention stages
2-3, which keep Linear). Everything else (Scale (C,), StarReLU (1,), norm
weights (C,), qkv/proj, convs) keeps its shape. timm 1.0.31 has no
IdentityFormer or RandFormer; for them the same renames are applied (what
timm's ``checkpoint_filter_fn`` regexes would produce), RandFormer's
``token_mixer.random_matrix`` just moving to ``stages.{i}.blocks.{j}``.

Math differences timm vs official (none matter at 1e-4): timm's MlpHead
norm uses eps 1e-6 (official nn.LayerNorm default 1e-5); timm applies the
head dropout before the whole MlpHead (official: between its norm and
fc2); timm works in NCHW (GroupNorm1/LayerNorm2d without bias), official in
NHWC; timm's attention may use fused SDPA. ``timm_layout_forward`` computes
the timm way on a timm-layout state dict.

Parameter counts (``dense_param_count``): the target numbers given for the
dense backbones (timm 1.0.29 ``features_only`` "+ four output norms":
PoolFormerV2 s12 11.378M ... CAFormer b36 93.311M) come out exactly with
output norms that hold NO parameters: they are the counts of stem + stages
alone (e.g. poolformerv2_s12 11,377,688). Four LayerNorm2d output norms with
weight and bias would add 2 * sum(dims) (s12: 11,379,736 = 11.380M), weight
only sum(dims) (11.379M); neither rounds to the targets. ``out_norm`` selects
which is added (default none). RandFormer's frozen random matrices are
parameters (as in the official code and the "+0.2M" of its model table) and
are counted unless ``include_frozen=False``.
"""
import math
import re
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------
# arch tables

_FAMILIES = {
    # mixers per stage, block norm kind, head kind
    'identityformer': (('identity',) * 4, 'gn1', 'linear'),
    'randformer': (('identity', 'identity', 'random', 'random'), 'gn1',
                   'linear'),
    'poolformerv2': (('pool',) * 4, 'gn1', 'linear'),
    'convformer': (('sepconv',) * 4, 'ln', 'mlp'),
    'caformer': (('sepconv', 'sepconv', 'attention', 'attention'), 'ln',
                 'mlp'),
}
_V2_SIZES = {
    's12': ((2, 2, 6, 2), (64, 128, 320, 512)),
    's24': ((4, 4, 12, 4), (64, 128, 320, 512)),
    's36': ((6, 6, 18, 6), (64, 128, 320, 512)),
    'm36': ((6, 6, 18, 6), (96, 192, 384, 768)),
    'm48': ((8, 8, 24, 8), (96, 192, 384, 768)),
}
_CONV_SIZES = {
    's18': ((3, 3, 9, 3), (64, 128, 320, 512)),
    's36': ((3, 12, 18, 3), (64, 128, 320, 512)),
    'm36': ((3, 12, 18, 3), (96, 192, 384, 576)),
    'b36': ((3, 12, 18, 3), (128, 256, 512, 768)),
}
RAND_TOKENS = (None, None, 196, 49)  # 224 px: 14 * 14 and 7 * 7 tokens
RES_SCALE = (None, None, 1.0, 1.0)
LAYER_SCALE = (None, None, None, None)
HEAD_DIM = 32
SMALL = {'identityformer': 'identityformer_s12',
         'randformer': 'randformer_s12',
         'poolformerv2': 'poolformerv2_s12', 'convformer': 'convformer_s18',
         'caformer': 'caformer_s18'}


def _make_archs():
    archs = OrderedDict()
    for family, (mixers, norm, head) in _FAMILIES.items():
        sizes = _CONV_SIZES if head == 'mlp' else _V2_SIZES
        for size, (depths, dims) in sizes.items():
            archs[f'{family}_{size}'] = dict(
                family=family, depths=depths, dims=dims, mixers=mixers,
                norm=norm, head=head, res_scale=RES_SCALE,
                layer_scale=LAYER_SCALE)
    return archs


ARCHS = _make_archs()

# Numbers the official README publishes for the classifiers (M params);
# RandFormer: trainable + frozen random matrices.
PUBLISHED_PARAMS_M = {
    'identityformer_s12': 11.9, 'identityformer_s24': 21.3,
    'identityformer_s36': 30.8, 'identityformer_m36': 56.1,
    'identityformer_m48': 73.3,
    'randformer_s12': (11.9, 0.2), 'randformer_s24': (21.3, 0.5),
    'randformer_s36': (30.8, 0.7), 'randformer_m36': (56.1, 0.7),
    'randformer_m48': (73.3, 0.9),
    'poolformerv2_s12': 11.9, 'poolformerv2_s24': 21.3,
    'poolformerv2_s36': 30.8, 'poolformerv2_m36': 56.1,
    'poolformerv2_m48': 73.3,
    'convformer_s18': 27, 'convformer_s36': 40, 'convformer_m36': 57,
    'convformer_b36': 100,
    'caformer_s18': 26, 'caformer_s36': 39, 'caformer_m36': 56,
    'caformer_b36': 99,
}
# dense targets (timm 1.0.29 features_only), M params, 3 decimals
DENSE_TARGETS_M = {
    'poolformerv2_s12': 11.378, 'poolformerv2_s24': 20.827,
    'poolformerv2_s36': 30.277, 'poolformerv2_m36': 55.307,
    'poolformerv2_m48': 72.576,
    'convformer_s18': 23.670, 'convformer_s36': 36.907,
    'convformer_m36': 53.411, 'convformer_b36': 94.440,
    'caformer_s18': 23.237, 'caformer_s36': 36.192,
    'caformer_m36': 52.565, 'caformer_b36': 93.311,
}

# --------------------------------------------------------------------------
# layers (official names, channels-last)


class Scale(nn.Module):
    def __init__(self, dim, init_value=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x):
        return x * self.scale


class StarReLU(nn.Module):
    """s * relu(x) ** 2 + b, scalar learnable s and b."""

    def __init__(self, scale_value=1.0, bias_value=0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), float(scale_value)))
        self.bias = nn.Parameter(torch.full((1,), float(bias_value)))

    def forward(self, x):
        return self.scale * F.relu(x).pow(2) + self.bias


class SquaredReLU(nn.Module):
    def forward(self, x):
        return F.relu(x).pow(2)


class LayerNormGeneral(nn.Module):
    """Normalize over ``normalized_dim``; affine of shape ``affine_shape``
    broadcast over the last dim (channels-last input)."""

    def __init__(self, affine_shape, normalized_dim=(-1,), scale=True,
                 bias=True, eps=1e-5):
        super().__init__()
        self.normalized_dim = tuple(normalized_dim)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(affine_shape)) if scale else None
        self.bias = nn.Parameter(torch.zeros(affine_shape)) if bias else None

    def forward(self, x):
        centered = x - x.mean(self.normalized_dim, keepdim=True)
        var = centered.pow(2).mean(self.normalized_dim, keepdim=True)
        x = centered / torch.sqrt(var + self.eps)
        if self.weight is not None:
            x = x * self.weight
        if self.bias is not None:
            x = x + self.bias
        return x


class LayerNormWithoutBias(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, None, self.eps)


def _block_norm(kind, dim):
    if kind == 'gn1':  # "modified LayerNorm": GroupNorm(1), weight only
        return LayerNormGeneral(dim, normalized_dim=(1, 2, 3), bias=False,
                                eps=1e-6)
    return LayerNormWithoutBias(dim, eps=1e-6)


def _down_norm(dim):
    return LayerNormGeneral(dim, normalized_dim=(-1,), bias=False, eps=1e-6)


class Downsampling(nn.Module):
    """Stem (NCHW in, post_norm) or stage downsampling (NHWC in, pre_norm);
    NHWC out."""

    def __init__(self, cin, cout, kernel_size, stride, padding, pre_norm,
                 post_norm):
        super().__init__()
        self.pre_norm = _down_norm(cin) if pre_norm else nn.Identity()
        self.channels_last_in = pre_norm
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding)
        self.post_norm = _down_norm(cout) if post_norm else nn.Identity()

    def forward(self, x):
        x = self.pre_norm(x)
        if self.channels_last_in:
            x = x.permute(0, 3, 1, 2)
        x = self.conv(x).permute(0, 2, 3, 1)
        return self.post_norm(x)


class Pooling(nn.Module):
    def __init__(self, dim=None, pool_size=3):
        super().__init__()
        self.pool_size = pool_size

    def forward(self, x):
        y = F.avg_pool2d(x.permute(0, 3, 1, 2), self.pool_size, 1,
                         self.pool_size // 2, count_include_pad=False)
        return y.permute(0, 2, 3, 1) - x


class RandomMixing(nn.Module):
    """Token mixing with a fixed row-stochastic (N, N) matrix: only works
    when the stage has exactly N = H * W tokens."""

    def __init__(self, dim=None, num_tokens=196):
        super().__init__()
        self.random_matrix = nn.Parameter(
            torch.softmax(torch.rand(num_tokens, num_tokens), dim=-1),
            requires_grad=False)

    def forward(self, x):
        b, h, w, c = x.shape
        y = torch.einsum('mn,bnc->bmc', self.random_matrix,
                         x.reshape(b, h * w, c))
        return y.reshape(b, h, w, c)


class SepConv(nn.Module):
    def __init__(self, dim, expansion_ratio=2, kernel_size=7, padding=3):
        super().__init__()
        mid = int(expansion_ratio * dim)
        self.pwconv1 = nn.Linear(dim, mid, bias=False)
        self.act1 = StarReLU()
        self.dwconv = nn.Conv2d(mid, mid, kernel_size, padding=padding,
                                groups=mid, bias=False)
        self.act2 = nn.Identity()
        self.pwconv2 = nn.Linear(mid, dim, bias=False)

    def forward(self, x):
        x = self.act1(self.pwconv1(x))
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.pwconv2(self.act2(x))


class Attention(nn.Module):
    def __init__(self, dim, head_dim=HEAD_DIM):
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = max(dim // head_dim, 1)
        self.attention_dim = self.num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * self.attention_dim, bias=False)
        self.proj = nn.Linear(self.attention_dim, dim, bias=False)

    def forward(self, x):
        b, h, w, _ = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
        y = attn.softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(b, h, w, self.attention_dim)
        return self.proj(y)


class Mlp(nn.Module):
    def __init__(self, dim, mlp_ratio=4):
        super().__init__()
        self.fc1 = nn.Linear(dim, int(mlp_ratio * dim), bias=False)
        self.act = StarReLU()
        self.fc2 = nn.Linear(int(mlp_ratio * dim), dim, bias=False)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class MlpHead(nn.Module):
    def __init__(self, dim, num_classes=1000, mlp_ratio=4, head_dropout=0.):
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = SquaredReLU()
        self.norm = nn.LayerNorm(hidden)  # eps 1e-5 (nn default)
        self.head_dropout = nn.Dropout(head_dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = self.norm(self.act(self.fc1(x)))
        return self.fc2(self.head_dropout(x))


def _mixer(kind, dim, stage):
    if kind == 'identity':
        return nn.Identity()
    if kind == 'random':
        return RandomMixing(dim, num_tokens=RAND_TOKENS[stage])
    if kind == 'pool':
        return Pooling(dim)
    if kind == 'sepconv':
        return SepConv(dim)
    if kind == 'attention':
        return Attention(dim)
    raise ValueError(kind)


class MetaFormerBlock(nn.Module):
    def __init__(self, dim, mixer, norm, stage, layer_scale=None,
                 res_scale=None):
        super().__init__()

        def scale(value):
            return Scale(dim, value) if value else nn.Identity()

        self.norm1 = _block_norm(norm, dim)
        self.token_mixer = _mixer(mixer, dim, stage)
        self.layer_scale1 = scale(layer_scale)
        self.res_scale1 = scale(res_scale)
        self.norm2 = _block_norm(norm, dim)
        self.mlp = Mlp(dim)
        self.layer_scale2 = scale(layer_scale)
        self.res_scale2 = scale(res_scale)

    def forward(self, x):
        x = self.res_scale1(x) + self.layer_scale1(
            self.token_mixer(self.norm1(x)))
        return self.res_scale2(x) + self.layer_scale2(self.mlp(self.norm2(x)))


class MetaFormer(nn.Module):
    """The official classifier (key names as sail-sg/metaformer)."""

    def __init__(self, depths, dims, mixers, norm, head, num_classes=1000,
                 res_scale=RES_SCALE, layer_scale=LAYER_SCALE,
                 head_dropout=0., in_chans=3, **_):
        super().__init__()
        chans = (in_chans,) + tuple(dims)
        self.downsample_layers = nn.ModuleList(
            [Downsampling(in_chans, dims[0], 7, 4, 2, False, True)]
            + [Downsampling(chans[i], chans[i + 1], 3, 2, 1, True, False)
               for i in range(1, len(dims))])
        self.stages = nn.ModuleList(
            nn.Sequential(*[MetaFormerBlock(dims[i], mixers[i], norm, i,
                                            layer_scale[i], res_scale[i])
                            for _ in range(depths[i])])
            for i in range(len(dims)))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        if head == 'mlp':
            self.head = MlpHead(dims[-1], num_classes,
                                head_dropout=head_dropout)
        else:
            self.head = nn.Linear(dims[-1], num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.mean((1, 2)))

    def forward(self, x):
        return self.head(self.forward_features(x))


def build_reference(name, num_classes=1000, **kwargs):
    """The official classifier ``name`` (official key names)."""
    return MetaFormer(num_classes=num_classes, **{**ARCHS[name], **kwargs})


def reference_stage_features(model, x):
    """Output of each stage (after its blocks, before ``norm``), NCHW."""
    outs = []
    for down, stage in zip(model.downsample_layers, model.stages):
        x = stage(down(x))
        outs.append(x.permute(0, 3, 1, 2).contiguous())
    return outs


def randformer_accepts(h, w):
    """Whether a RandFormer runs on an h x w input: stage 2 must have 196
    tokens and stage 3 49 (14x14 and 7x7 for h, w in 211..226)."""
    h, w = (h - 3) // 4 + 1, (w - 3) // 4 + 1
    sizes = []
    for _ in range(3):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        sizes.append(h * w)
    return sizes[1] == RAND_TOKENS[2] and sizes[2] == RAND_TOKENS[3]


def randomize_(model, seed=0):
    """O(1) values everywhere (norm weights, scales, StarReLU included), so
    init values cannot hide mistakes; random matrices stay row-stochastic."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('random_matrix'):
                new = torch.softmax(torch.rand(p.shape, generator=g), -1)
            elif name.endswith('bias'):
                new = 0.1 * torch.randn(p.shape, generator=g)
            elif p.dim() == 1:
                new = 0.5 + torch.rand(p.shape, generator=g)
            else:
                fan_in = p[0].numel()
                new = torch.randn(p.shape, generator=g) / math.sqrt(fan_in)
            p.copy_(new)
    return model


# --------------------------------------------------------------------------
# parameter counts, computed from the tables alone


def _block_params(dim, mixer, res, ls, stage, include_frozen=True):
    n = 2 * dim + 8 * dim * dim + 2  # norm1, norm2, fc1, fc2, StarReLU
    if mixer == 'sepconv':
        n += 2 * dim * dim + 2 + 2 * dim * 49 + 2 * dim * dim
    elif mixer == 'attention':
        a = max(dim // HEAD_DIM, 1) * HEAD_DIM
        n += 3 * a * dim + a * dim
    elif mixer == 'random' and include_frozen:
        n += RAND_TOKENS[stage] ** 2
    n += 2 * dim * (bool(res) + bool(ls))
    return n


def features_param_count(name, include_frozen=True, in_chans=3):
    """Stem + stages (no final norm, no head)."""
    a = ARCHS[name]
    dims = a['dims']
    n = in_chans * dims[0] * 49 + dims[0] + dims[0]  # stem conv + post_norm
    for i, (depth, dim) in enumerate(zip(a['depths'], dims)):
        if i:
            n += dims[i - 1] + dims[i - 1] * dim * 9 + dim
        n += depth * _block_params(dim, a['mixers'][i], a['res_scale'][i],
                                   a['layer_scale'][i], i, include_frozen)
    return n


_OUT_NORM_FACTOR = {None: 0, 'none': 0, 'weight': 1, 'weight_bias': 2}


def dense_param_count(name, out_norm=None, include_frozen=True):
    """Features-only model plus four output norms of the stage widths.
    ``out_norm``: None (parameter-free: matches DENSE_TARGETS_M),
    'weight' or 'weight_bias' (LayerNorm2d with weight and bias)."""
    return (features_param_count(name, include_frozen)
            + _OUT_NORM_FACTOR[out_norm] * sum(ARCHS[name]['dims']))


def classifier_param_count(name, num_classes=1000, include_frozen=True):
    a = ARCHS[name]
    c = a['dims'][-1]
    n = features_param_count(name, include_frozen) + 2 * c  # + norm
    if a['head'] == 'mlp':
        h = 4 * c
        return n + c * h + h + 2 * h + h * num_classes + num_classes
    return n + c * num_classes + num_classes


# --------------------------------------------------------------------------
# key layouts


def _block_shapes(dim, mixer, res, ls, stage, nchw_mlp, timm):
    pw = (1, 1) if timm else ()
    mlp = (1, 1) if timm and nchw_mlp else ()
    out = [('norm1.weight', (dim,))]
    if mixer == 'random':
        t = RAND_TOKENS[stage]
        out.append(('token_mixer.random_matrix', (t, t)))
    elif mixer == 'sepconv':
        out += [('token_mixer.pwconv1.weight', (2 * dim, dim) + pw),
                ('token_mixer.act1.scale', (1,)),
                ('token_mixer.act1.bias', (1,)),
                ('token_mixer.dwconv.weight', (2 * dim, 1, 7, 7)),
                ('token_mixer.pwconv2.weight', (dim, 2 * dim) + pw)]
    elif mixer == 'attention':
        a = max(dim // HEAD_DIM, 1) * HEAD_DIM
        out += [('token_mixer.qkv.weight', (3 * a, dim)),
                ('token_mixer.proj.weight', (dim, a))]
    for k in '12':
        if k == '2':
            out += [('norm2.weight', (dim,)),
                    ('mlp.fc1.weight', (4 * dim, dim) + mlp),
                    ('mlp.act.scale', (1,)), ('mlp.act.bias', (1,)),
                    ('mlp.fc2.weight', (dim, 4 * dim) + mlp)]
        if ls:
            out.append((f'layer_scale{k}.scale', (dim,)))
        if res:
            out.append((f'res_scale{k}.scale', (dim,)))
    return out


def expected_shapes(name, layout='official', num_classes=1000, in_chans=3):
    """Ordered {key: shape} of the classifier's state dict in ``layout``
    ('official' or 'timm'), built from the arch tables alone."""
    assert layout in ('official', 'timm'), layout
    timm = layout == 'timm'
    a = ARCHS[name]
    dims = a['dims']
    out = OrderedDict()

    def add(prefix, items):
        for k, s in items:
            out[prefix + k] = tuple(s)

    for i, dim in enumerate(dims):
        if i == 0:
            conv = [('conv.weight', (dim, in_chans, 7, 7)),
                    ('conv.bias', (dim,))]
            if timm:
                add('stem.', conv + [('norm.weight', (dim,))])
            else:
                add('downsample_layers.0.',
                    conv + [('post_norm.weight', (dim,))])
        else:
            items = [('norm.weight' if timm else 'pre_norm.weight',
                      (dims[i - 1],)),
                     ('conv.weight', (dim, dims[i - 1], 3, 3)),
                     ('conv.bias', (dim,))]
            add(f'stages.{i}.downsample.' if timm
                else f'downsample_layers.{i}.', items)
        if not timm:
            continue
        blk = _block_shapes(dim, a['mixers'][i], a['res_scale'][i],
                            a['layer_scale'][i], i,
                            a['mixers'][i] != 'attention', True)
        for j in range(a['depths'][i]):
            add(f'stages.{i}.blocks.{j}.', blk)
    if not timm:  # official: all downsample layers first, then the stages
        for i, dim in enumerate(dims):
            blk = _block_shapes(dim, a['mixers'][i], a['res_scale'][i],
                                a['layer_scale'][i], i, True, False)
            for j in range(a['depths'][i]):
                add(f'stages.{i}.{j}.', blk)
    c = dims[-1]
    add('head.norm.' if timm else 'norm.', [('weight', (c,)), ('bias', (c,))])
    if a['head'] == 'mlp':
        h = 4 * c
        add('head.fc.' if timm else 'head.',
            [('fc1.weight', (h, c)), ('fc1.bias', (h,)),
             ('norm.weight', (h,)), ('norm.bias', (h,)),
             ('fc2.weight', (num_classes, h)), ('fc2.bias', (num_classes,))])
    else:
        add('head.fc.' if timm else 'head.',
            [('weight', (num_classes, c)), ('bias', (num_classes,))])
    return out


def expected_keys(name, layout='official', num_classes=1000):
    return list(expected_shapes(name, layout, num_classes))


_PW = ('token_mixer.pwconv1.weight', 'token_mixer.pwconv2.weight')
_FC = ('mlp.fc1.weight', 'mlp.fc2.weight')


def _timm_rank(k):  # stem, then per stage: downsample, blocks; head
    m = re.match(r'stages\.(\d+)\.', k)
    return int(m.group(1)) + 1 if m else (0 if k.startswith('stem.') else 99)


def _official_rank(k):  # downsample layers, stages, norm + head
    return 0 if k.startswith('downsample_layers.') else (
        1 if k.startswith('stages.') else 2)


def _ordered(sd, rank):
    # stable: keeps the source order within each group, as state_dict() has
    return OrderedDict(sorted(sd.items(), key=lambda kv: rank(kv[0])))


def official_to_timm(state_dict):
    """Official keys -> timm keys; Linear weights that timm holds as 1x1
    convs get two trailing unit dims."""
    attn_stages = {int(m.group(1)) for m in (
        re.match(r'stages\.(\d+)\.\d+\.token_mixer\.qkv\.', k)
        for k in state_dict) if m}
    out = OrderedDict()
    for k, v in state_dict.items():
        m = re.fullmatch(r'downsample_layers\.(\d+)\.(pre_norm|post_norm|conv)'
                         r'\.(\w+)', k)
        b = re.fullmatch(r'stages\.(\d+)\.(\d+)\.(.+)', k)
        if m:
            i, part = int(m.group(1)), m.group(2)
            part = 'conv' if part == 'conv' else 'norm'
            where = 'stem' if i == 0 else f'stages.{i}.downsample'
            k = f'{where}.{part}.{m.group(3)}'
        elif b:
            i, rest = int(b.group(1)), b.group(3)
            k = f'stages.{i}.blocks.{b.group(2)}.{rest}'
            if v.dim() == 2 and (rest in _PW or (
                    rest in _FC and i not in attn_stages)):
                v = v.reshape(*v.shape, 1, 1)
        elif k.startswith('norm.'):
            k = 'head.' + k
        elif k.startswith('head.'):
            k = 'head.fc.' + k[len('head.'):]
        else:
            raise KeyError(f'unexpected official key {k}')
        out[k] = v
    return _ordered(out, _timm_rank)


def timm_to_official(state_dict):
    """timm keys -> official keys; 1x1-conv weights back to Linear."""
    out = OrderedDict()
    for k, v in state_dict.items():
        s = re.fullmatch(r'stem\.(conv|norm)\.(\w+)', k)
        d = re.fullmatch(r'stages\.(\d+)\.downsample\.(conv|norm)\.(\w+)', k)
        b = re.fullmatch(r'stages\.(\d+)\.blocks\.(\d+)\.(.+)', k)
        if s:
            part = 'conv' if s.group(1) == 'conv' else 'post_norm'
            k = f'downsample_layers.0.{part}.{s.group(2)}'
        elif d:
            part = 'conv' if d.group(2) == 'conv' else 'pre_norm'
            k = f'downsample_layers.{d.group(1)}.{part}.{d.group(3)}'
        elif b:
            rest = b.group(3)
            k = f'stages.{b.group(1)}.{b.group(2)}.{rest}'
            if rest in _PW + _FC and v.dim() == 4:
                assert v.shape[2:] == (1, 1), (k, v.shape)
                v = v.reshape(v.shape[0], v.shape[1])
        elif k.startswith('head.norm.'):
            k = k[len('head.'):]
        elif k.startswith('head.fc.'):
            k = 'head.' + k[len('head.fc.'):]
        else:
            raise KeyError(f'unexpected timm key {k}')
        out[k] = v
    return _ordered(out, _official_rank)


# --------------------------------------------------------------------------
# timm-style computation on a timm-layout state dict (NCHW throughout,
# tokens (B, N, C) in attention stages)


def _ln2d(x, w, b=None, eps=1e-6):
    return F.layer_norm(x.permute(0, 2, 3, 1), w.shape, w, b,
                        eps).permute(0, 3, 1, 2)


def _star(sd, p, x):
    return sd[p + 'scale'] * F.relu(x).pow(2) + sd[p + 'bias']


def timm_layout_forward(sd, x, name):
    """(list of 4 stage outputs NCHW, logits or None) the way timm computes
    them, from a timm-layout state dict."""
    a = ARCHS[name]
    x = F.conv2d(x, sd['stem.conv.weight'], sd['stem.conv.bias'], 4, 2)
    x = _ln2d(x, sd['stem.norm.weight'])
    feats = []
    for i, dim in enumerate(a['dims']):
        mixer = a['mixers'][i]
        if i:
            p = f'stages.{i}.downsample.'
            x = _ln2d(x, sd[p + 'norm.weight'])
            x = F.conv2d(x, sd[p + 'conv.weight'], sd[p + 'conv.bias'], 2, 1)
        b_, c_, h_, w_ = x.shape
        tokens = mixer == 'attention'
        if tokens:
            x = x.flatten(2).transpose(1, 2)

        def norm(t, w):
            if a['norm'] == 'gn1':
                return F.group_norm(t, 1, w, None, 1e-6)
            if tokens:
                return F.layer_norm(t, w.shape, w, None, 1e-6)
            return _ln2d(t, w)

        def scale(t, s):
            return t * (s if tokens else s.view(-1, 1, 1))

        def lin(t, w):  # Linear on tokens or 1x1 conv on NCHW
            return F.linear(t, w) if w.dim() == 2 else F.conv2d(t, w)

        for j in range(a['depths'][i]):
            p = f'stages.{i}.blocks.{j}.'
            y = norm(x, sd[p + 'norm1.weight'])
            t = p + 'token_mixer.'
            if mixer == 'pool':
                y = F.avg_pool2d(y, 3, 1, 1, count_include_pad=False) - y
            elif mixer == 'random':
                y = (y.flatten(2) @ sd[t + 'random_matrix'].t()).view(y.shape)
            elif mixer == 'sepconv':
                y = F.conv2d(y, sd[t + 'pwconv1.weight'])
                y = _star(sd, t + 'act1.', y)
                dw = sd[t + 'dwconv.weight']
                y = F.conv2d(y, dw, None, 1, 3, 1, dw.shape[0])
                y = F.conv2d(y, sd[t + 'pwconv2.weight'])
            elif mixer == 'attention':
                n_h = sd[t + 'proj.weight'].shape[1] // HEAD_DIM
                q, k, v = F.linear(y, sd[t + 'qkv.weight']).reshape(
                    b_, -1, 3, n_h, HEAD_DIM).permute(2, 0, 3, 1, 4)
                y = F.scaled_dot_product_attention(q, k, v)
                y = F.linear(y.transpose(1, 2).flatten(2),
                             sd[t + 'proj.weight'])
            for k_, branch in (('1', None), ('2', 'mlp')):
                if branch == 'mlp':
                    y = norm(x, sd[p + 'norm2.weight'])
                    y = lin(y, sd[p + 'mlp.fc1.weight'])
                    y = lin(_star(sd, p + 'mlp.act.', y),
                            sd[p + 'mlp.fc2.weight'])
                if p + f'layer_scale{k_}.scale' in sd:
                    y = scale(y, sd[p + f'layer_scale{k_}.scale'])
                if p + f'res_scale{k_}.scale' in sd:
                    x = scale(x, sd[p + f'res_scale{k_}.scale'])
                x = x + y
        if tokens:
            x = x.transpose(1, 2).reshape(b_, c_, h_, w_)
        feats.append(x)
    if 'head.norm.weight' not in sd:
        return feats, None
    y = x.mean((2, 3))
    y = F.layer_norm(y, y.shape[-1:], sd['head.norm.weight'],
                     sd['head.norm.bias'], 1e-6)
    if 'head.fc.fc1.weight' in sd:
        y = F.relu(F.linear(y, sd['head.fc.fc1.weight'],
                            sd['head.fc.fc1.bias'])).pow(2)
        y = F.layer_norm(y, y.shape[-1:], sd['head.fc.norm.weight'],
                         sd['head.fc.norm.bias'], 1e-6)  # timm: eps 1e-6
        y = F.linear(y, sd['head.fc.fc2.weight'], sd['head.fc.fc2.bias'])
    else:
        y = F.linear(y, sd['head.fc.weight'], sd['head.fc.bias'])
    return feats, y
