"""The "MetaFormer Baselines for Vision" family (Yu et al., TPAMI 2024) as
dense backbones for mmdet 3.x / mmseg 1.x: PoolFormerV2, ConvFormer,
CAFormer, IdentityFormer and RandFormer, all one :class:`MetaFormer`.

The math is timm's (``timm/models/metaformer.py``, itself the official
sail-sg/metaformer model computed in NCHW) and parameter names follow
**timm's** layout; official files are renamed on load (see
:mod:`mmpoolformer.checkpoint.layouts.metaformer`).
"""
import numbers
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.model.weight_init import trunc_normal_

from mmpoolformer.checkpoint import MetaFormerLayout
from mmpoolformer.models.layers import (MIXERS, DropPath, LayerNorm,
                                        LayerNorm2d, Mlp, MlpHead,
                                        RandomMixing, build_metaformer_norm,
                                        build_token_mixer, optional_scale)
from mmpoolformer.models.layers.tracing import shapes_are_symbolic
from mmpoolformer.registry import MODELS
from .base import NUM_STAGES, DenseBackbone, lookup_arch

# paper Table 1 / the released checkpoints
V2_ARCHS: Dict[str, dict] = {
    's12': dict(layers=(2, 2, 6, 2), embed_dims=(64, 128, 320, 512)),
    's24': dict(layers=(4, 4, 12, 4), embed_dims=(64, 128, 320, 512)),
    's36': dict(layers=(6, 6, 18, 6), embed_dims=(64, 128, 320, 512)),
    'm36': dict(layers=(6, 6, 18, 6), embed_dims=(96, 192, 384, 768)),
    'm48': dict(layers=(8, 8, 24, 8), embed_dims=(96, 192, 384, 768)),
}
CONV_ARCHS: Dict[str, dict] = {
    's18': dict(layers=(3, 3, 9, 3), embed_dims=(64, 128, 320, 512)),
    's36': dict(layers=(3, 12, 18, 3), embed_dims=(64, 128, 320, 512)),
    'm36': dict(layers=(3, 12, 18, 3), embed_dims=(96, 192, 384, 576)),
    'b36': dict(layers=(3, 12, 18, 3), embed_dims=(128, 256, 512, 768)),
}
# family: (arch table, token mixers per stage, block norm, MLP head)
FAMILIES = {
    'PoolFormerV2': (V2_ARCHS, ('pool', ) * 4, 'gn1', False),
    'IdentityFormer': (V2_ARCHS, ('identity', ) * 4, 'gn1', False),
    'RandFormer': (V2_ARCHS, ('identity', 'identity', 'random', 'random'),
                   'gn1', False),
    'ConvFormer': (CONV_ARCHS, ('sepconv', ) * 4, 'ln', True),
    'CAFormer': (CONV_ARCHS, ('sepconv', 'sepconv', 'attention',
                              'attention'), 'ln', True),
}
# RandFormer's matrices mix the tokens of a 224x224 image: 14x14 in stage 2,
# 7x7 in stage 3 (the frozen weights of the released files).
RAND_BASE_SIZE = 224
_SIGNATURE = dict(identity='none', pool='none', random='random',
                  sepconv='sepconv', attention='attention')
_OTHER_ARCHS = {name: table for name, (table, *_) in FAMILIES.items()}


def _layout(family: str) -> MetaFormerLayout:
    if family == 'MetaFormer':
        return MetaFormerLayout('MetaFormer', CONV_ARCHS,
                                other_archs=_OTHER_ARCHS)
    table, mixers, _, mlp_head = FAMILIES[family]
    return MetaFormerLayout(family, table,
                            tuple(_SIGNATURE[m] for m in mixers), mlp_head,
                            other_archs=_OTHER_ARCHS)


def _per_stage(value, name: str, kinds=(numbers.Real, type(None))):
    """A value or 4 values, one per stage."""
    if isinstance(value, (list, tuple)):
        if len(value) != NUM_STAGES:
            raise ValueError(f'{name} must be one value or {NUM_STAGES} (one '
                             f'per stage), got {value!r}')
        values = tuple(value)
    else:
        values = (value, ) * NUM_STAGES
    for v in values:
        if isinstance(v, bool) or not isinstance(v, kinds):
            raise TypeError(f'{name} entries must be numbers or None, got '
                            f'{value!r}')
    return values


def resolve_metaformer_arch(arch: Union[str, dict], table: Dict[str, dict],
                            family: str) -> dict:
    """A name in ``table`` or a dict with ``layers`` and ``embed_dims`` (4
    positive integers each) -> ``dict(layers=..., embed_dims=...)``."""
    return lookup_arch(arch, table, family)


def _stem_side(size: int) -> int:
    return (size - 3) // 4 + 1  # conv 7, stride 4, padding 2


def _down_side(size: int) -> int:
    return (size - 1) // 2 + 1  # conv 3, stride 2, padding 1


def stage_side(size: int, stage: int) -> int:
    """Feature side of ``stage`` for an input side ``size``."""
    side = _stem_side(size)
    for _ in range(stage):
        side = _down_side(side)
    return side


class MetaFormerBlock(nn.Module):
    """``x = res_scale1(x) + layer_scale1(drop_path(mixer(norm1(x))))``, then
    the same with ``mlp(norm2(x))`` (timm names). ``use_nchw=False``: the
    block works on ``(N, L, C)`` tokens (attention stages)."""

    def __init__(self, dim: int, token_mixer: nn.Module, norm: str,
                 use_nchw: bool = True, mlp_ratio: float = 4.,
                 proj_drop: float = 0., drop_path: float = 0.,
                 layer_scale_init_value: Optional[float] = None,
                 res_scale_init_value: Optional[float] = None):
        super().__init__()
        self.norm1 = build_metaformer_norm(norm, dim, use_nchw=use_nchw)
        self.token_mixer = token_mixer
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else \
            nn.Identity()
        self.layer_scale1 = optional_scale(dim, layer_scale_init_value,
                                           use_nchw)
        self.res_scale1 = optional_scale(dim, res_scale_init_value, use_nchw)
        self.norm2 = build_metaformer_norm(norm, dim, use_nchw=use_nchw)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), drop=proj_drop,
                       use_conv=use_nchw)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else \
            nn.Identity()
        self.layer_scale2 = optional_scale(dim, layer_scale_init_value,
                                           use_nchw)
        self.res_scale2 = optional_scale(dim, res_scale_init_value, use_nchw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.layer_scale1(
            self.drop_path1(self.token_mixer(self.norm1(x))))
        return self.res_scale2(x) + self.layer_scale2(
            self.drop_path2(self.mlp(self.norm2(x))))


class Downsampling(nn.Module):
    """``conv(norm(x))``: a stage's downsampling (timm's names)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = LayerNorm2d(in_channels, eps=1e-6, bias=False)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class Stem(nn.Module):
    """``norm(conv(x))``: conv 7/4/2, then LayerNorm2d without bias."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 7, 4, 2)
        self.norm = LayerNorm2d(out_channels, eps=1e-6, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class MetaFormerStage(nn.Module):
    """A stage: ``downsample`` (Identity in stage 0) and ``blocks``."""

    def __init__(self, downsample: nn.Module, blocks: nn.Sequential,
                 use_nchw: bool):
        super().__init__()
        self.downsample = downsample
        self.blocks = blocks
        self.use_nchw = use_nchw


class ClassifierHead(nn.Module):
    """timm's head: global average pool, ``norm`` (LayerNorm with bias, eps
    1e-6), dropout, ``fc`` (Linear or :class:`MlpHead`)."""

    def __init__(self, dim: int, num_classes: int, mlp_head: bool,
                 drop_rate: float = 0., head_dropout: float = 0.):
        super().__init__()
        self.norm = LayerNorm(dim, eps=1e-6, bias=True)
        self.drop = nn.Dropout(drop_rate)
        if num_classes <= 0:
            self.fc = nn.Identity()
        elif mlp_head:
            self.fc = MlpHead(dim, num_classes, drop_rate=head_dropout)
        else:
            self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.norm(x.mean((-2, -1)))))


@MODELS.register_module()
class MetaFormer(DenseBackbone):
    """MetaFormer backbone with a token mixer of your choice per stage.

    A reimplementation of `MetaFormer Baselines for Vision
    <https://arxiv.org/abs/2210.13452>`_ (timm's math, timm's parameter
    names) for mmdet 3.x and mmseg 1.x. The registered families
    :class:`PoolFormerV2`, :class:`ConvFormer`, :class:`CAFormer`,
    :class:`IdentityFormer` and :class:`RandFormer` fix the mixers, norms and
    head as the paper does; ``MetaFormer`` itself takes them as arguments.
    Stem: conv 7/4/2 + LayerNorm2d (no bias); stages 1-3 start with
    LayerNorm2d (no bias) + conv 3/2/1; every block is ``res_scale(x) +
    layer_scale(mixer(norm(x)))`` then the same with a StarReLU MLP
    (ratio 4, no biases).

    Args:
        arch (str | dict): A name in the class's ``ARCH_SETTINGS`` (here the
            ConvFormer sizes ``'s18'``, ``'s36'``, ``'m36'``, ``'b36'``) or
            ``dict(layers=(4 ints), embed_dims=(4 ints))``. Defaults to
            ``'s18'`` (the family's default for the subclasses).
        in_channels (int): Input image channels. Defaults to 3.
        token_mixers (str | Sequence[str], optional): One mixer or one per
            stage: ``'identity'``, ``'pool'``, ``'sepconv'``,
            ``'attention'`` (head_dim 32, on tokens) or ``'random'``
            (RandFormer's, stages with a 224-px grid). Only ``MetaFormer``
            takes it; None: ``'sepconv'`` (the families fix theirs).
        norm (str, optional): Block norms: ``'ln'`` (LayerNorm over
            channels without bias, ConvFormer/CAFormer) or ``'gn1'``
            (one-group GroupNorm without bias, PoolFormerV2/IdentityFormer/
            RandFormer); eps 1e-6. Or ``'bn'`` (BatchNorm2d, NCHW stages
            only; no released weights): trains faster from scratch, see
            docs/metaformer.md. Only ``MetaFormer``; None: ``'ln'``.
        mlp_head (bool, optional): Classifier head of ``fork_feat=False``:
            MLP head (True) or Linear. Only ``MetaFormer``; None: True.
        out_indices (Sequence[int]): Stages (0-3) whose features are
            returned, in order; later stages are not computed. Defaults to
            (0, 1, 2, 3).
        fork_last3 (bool, optional): Return stage 0 without its output norm
            (``norm0`` has no parameters): for necks that skip level 0
            (RetinaNet). None reads the deprecated ``FORK_LAST3`` variable.
        fork_feat (bool): True: dense mode, each output through its own
            LayerNorm2d ``norm{i}`` (with weight and bias, eps 1e-6, new:
            ImageNet files have none and they start at identity). False:
            timm's ImageNet classifier (returns logits). Defaults to True.
        num_classes (int): Classifier outputs (``fork_feat=False``).
            Defaults to 1000.
        drop_rate (float): Dropout before the classifier's ``fc`` (timm).
            Defaults to 0.
        head_dropout (float): Dropout inside the MLP head (official
            recipe: 0.4/0.4/0.5 for CAFormer S36/M36/B36). Defaults to 0.
        proj_drop_rate (float): Dropout in the MLPs and attention output.
            Defaults to 0.
        drop_path_rate (float): Stochastic depth, rising linearly over all
            blocks from 0. Defaults to 0.
        layer_scale_init_value (float | Sequence, optional): LayerScale init
            per stage (one value or 4; None: no LayerScale). Defaults to
            None, as all five families.
        res_scale_init_value (float | Sequence, optional): ResScale init per
            stage. Defaults to (None, None, 1.0, 1.0), as all five families.
        mlp_ratio (float): MLP hidden width ratio. Defaults to 4.
        rand_resample (bool): RandFormer only: on inputs whose stage-2/3
            grid is not 14x14/7x7 (224 px), resample each frozen random
            matrix to the actual grid (True, see
            :func:`~mmpoolformer.models.layers.resample_random_matrix`) or
            raise a ``ValueError`` naming the input sizes that work (False,
            the official behaviour). Defaults to True.
        frozen_stages (int): -1 nothing; 0 the stem; k the stem and stages
            1..k (with their downsampling and output norms). Defaults to -1.
        norm_eval (bool): Keep batch norms in eval mode while training (the
            MetaFormer norms have no running statistics). Defaults to False.
        with_cp (bool | str): Activation checkpointing of the blocks while
            training (same outputs and gradients): True or ``'selective'``
            (GEMM outputs kept, the rest recomputed) or ``'full'`` (whole
            block recomputed); see :class:`DenseBackbone`. Defaults to False.
        pretrained (str, optional): Deprecated; use ``init_cfg``.
        init_cfg (dict | list[dict], optional): Initialization config;
            ``dict(type='Pretrained', checkpoint=...)`` loads timm or
            official files of the family (with a report). Defaults to None.
        compile (bool | dict): ``torch.compile`` the backbone lazily on its
            first forward (True or ``torch.compile`` arguments); see
            :class:`DenseBackbone`. Defaults to False.
    """
    ARCH_SETTINGS = CONV_ARCHS
    FAMILY: Optional[str] = None  # None: mixers, norm and head from args
    checkpoint_layout = _layout('MetaFormer')
    default_arch = 's18'

    def __init_subclass__(cls, **kwargs):
        """A family subclass names its ``FAMILY``; its arch table, default
        arch (the table's first) and checkpoint layout follow from it."""
        super().__init_subclass__(**kwargs)
        if cls.FAMILY is not None:
            cls.ARCH_SETTINGS = FAMILIES[cls.FAMILY][0]
            cls.default_arch = next(iter(cls.ARCH_SETTINGS))
            cls.checkpoint_layout = _layout(cls.FAMILY)

    @classmethod
    def arch_embed_dims(cls, arch) -> tuple:
        return resolve_metaformer_arch(arch, cls.ARCH_SETTINGS,
                                       cls.__name__)['embed_dims']

    def __init__(self,
                 arch: Union[str, dict, None] = None,
                 in_channels: int = 3,
                 token_mixers: Union[str, Sequence[str], None] = None,
                 norm: Optional[str] = None,
                 mlp_head: Optional[bool] = None,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 fork_last3: Optional[bool] = None,
                 fork_feat: bool = True,
                 num_classes: int = 1000,
                 drop_rate: float = 0.,
                 head_dropout: float = 0.,
                 proj_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value=None,
                 res_scale_init_value=(None, None, 1.0, 1.0),
                 mlp_ratio: float = 4.,
                 rand_resample: bool = True,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: Union[bool, str] = False,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[Union[dict, list]] = None,
                 compile: Union[bool, dict] = False):
        super().__init__(in_channels=in_channels, out_indices=out_indices,
                         fork_feat=fork_feat, frozen_stages=frozen_stages,
                         norm_eval=norm_eval, with_cp=with_cp,
                         pretrained=pretrained, init_cfg=init_cfg,
                         compile=compile)
        name = type(self).__name__
        mixers, norm, mlp_head = self._family_settings(token_mixers, norm,
                                                       mlp_head)
        arch = self.default_arch if arch is None else arch
        self.arch_settings = resolve_metaformer_arch(
            arch, self.ARCH_SETTINGS, name)
        self.arch = arch if isinstance(arch, str) else 'custom'
        layers = self.arch_settings['layers']
        dims = self.embed_dims = self.arch_settings['embed_dims']
        self.token_mixers, self.norm_kind = mixers, norm
        self.use_mlp_head = mlp_head
        self.rand_resample = bool(rand_resample)
        self.fork_last3 = self._resolve_fork_last3(fork_last3)
        layer_scales = _per_stage(layer_scale_init_value,
                                  'layer_scale_init_value')
        res_scales = _per_stage(res_scale_init_value, 'res_scale_init_value')

        self.stem = Stem(in_channels, dims[0])
        total, index = sum(layers), 0
        stages = []
        for i in range(NUM_STAGES):
            use_nchw = mixers[i] != 'attention'
            side = RAND_BASE_SIZE // (4 * 2**i)
            blocks = []
            for _ in range(layers[i]):
                mixer = build_token_mixer(mixers[i], dims[i], side * side,
                                          self.rand_resample)
                blocks.append(MetaFormerBlock(
                    dims[i], mixer, norm, use_nchw, mlp_ratio,
                    proj_drop_rate,
                    drop_path_rate * index / max(total - 1, 1),
                    layer_scales[i], res_scales[i]))
                index += 1
            downsample = (nn.Identity() if i == 0 else
                          Downsampling(dims[i - 1], dims[i]))
            stages.append(MetaFormerStage(downsample,
                                          nn.Sequential(*blocks), use_nchw))
        self.stages = nn.ModuleList(stages)

        if fork_feat:
            for i in self.out_indices:
                self.add_module(
                    f'norm{i}',
                    nn.Identity() if i == 0 and self.fork_last3 else
                    LayerNorm2d(dims[i], eps=1e-6, bias=True))
        else:
            self.head = ClassifierHead(dims[-1], num_classes, mlp_head,
                                       drop_rate, head_dropout)
        self.apply(self._init_layer)
        self._freeze_stages()

    def _family_settings(self, token_mixers, norm, mlp_head):
        name = type(self).__name__
        if self.FAMILY is not None:
            given = [k for k, v in (('token_mixers', token_mixers),
                                    ('norm', norm), ('mlp_head', mlp_head))
                     if v is not None]
            if given:
                raise TypeError(
                    f'{name} fixes {", ".join(given)} as the paper does; '
                    "for another combination use type='MetaFormer' with "
                    'token_mixers=..., norm=..., mlp_head=...')
            _, mixers, norm, mlp_head = FAMILIES[self.FAMILY]
            return mixers, norm, mlp_head
        mixers = token_mixers if token_mixers is not None else 'sepconv'
        mixers = ((mixers, ) * NUM_STAGES if isinstance(mixers, str)
                  else tuple(mixers))
        if len(mixers) != NUM_STAGES or any(m not in MIXERS for m in mixers):
            raise ValueError(f'token_mixers must be one of {MIXERS} or '
                             f'{NUM_STAGES} of them, got {token_mixers!r}')
        norm = 'ln' if norm is None else norm
        if norm not in ('ln', 'gn1', 'bn'):
            raise ValueError(f"norm must be 'ln', 'gn1' or 'bn', got "
                             f'{norm!r}')
        return mixers, norm, True if mlp_head is None else bool(mlp_head)

    @staticmethod
    def _init_layer(m: nn.Module):
        # timm: truncated normal (std .02) convs and linears, zero biases
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def stage_modules(self, stage: int):
        """The stem (stage 0) or downsampling, the stage and its output
        norm."""
        first = self.stem if stage == 0 else self.stages[stage].downsample
        norm = getattr(self, f'norm{stage}', None)
        return [first, self.stages[stage]] + ([norm] if norm is not None
                                              else [])

    def _check_random_mixing(self, stage: int, h: int, w: int):
        if self.rand_resample or self.token_mixers[stage] != 'random':
            return
        side = RAND_BASE_SIZE // (4 * 2**stage)
        if h * w == side * side or shapes_are_symbolic():
            return
        sizes = [s for s in range(4, 4 * RAND_BASE_SIZE)
                 if all(stage_side(s, i) == RAND_BASE_SIZE // (4 * 2**i)
                        for i in range(NUM_STAGES)
                        if self.token_mixers[i] == 'random')]
        raise ValueError(
            f'{type(self).__name__}(rand_resample=False): stage {stage} '
            f'mixes exactly {side * side} tokens ({side}x{side}, a '
            f'{RAND_BASE_SIZE}x{RAND_BASE_SIZE} image) with its frozen '
            f'random matrices, but the input gives a {h}x{w} map. Inputs '
            f'of {sizes[0]} to {sizes[-1]} px per side work (e.g. '
            f'{RAND_BASE_SIZE}x{RAND_BASE_SIZE}); resize to that, or set '
            'rand_resample=True to resample the matrices to any size.')

    def forward(self, x: torch.Tensor):
        """Dense mode: a tuple of features, one per ``out_indices`` stage
        (strides 4/8/16/32). Classification mode: logits."""
        self._check_input(x)
        x = self.stem(x)
        last = self.out_indices[-1] if self.fork_feat else NUM_STAGES - 1
        outs = []
        for i in range(last + 1):
            stage = self.stages[i]
            x = stage.downsample(x)
            if stage.use_nchw:
                self._check_random_mixing(i, x.shape[2], x.shape[3])
                x = self._run_blocks(stage.blocks, x)
            else:
                b, c, h, w = x.shape
                x = self._run_blocks(stage.blocks,
                                     x.flatten(2).transpose(1, 2))
                x = x.transpose(1, 2).reshape(b, c, h, w)
            if self.fork_feat and i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
        if self.fork_feat:
            return tuple(outs)
        return self.head(x)


@MODELS.register_module()
class PoolFormerV2(MetaFormer):
    """PoolFormerV2 backbone: pooling mixers, one-group GroupNorm (no
    bias) in blocks, StarReLU MLPs, ResScale in stages 2-3, Linear head.

    Arguments as :class:`MetaFormer` except ``token_mixers``, ``norm`` and
    ``mlp_head``, which the family fixes. ``arch``: ``'s12'``, ``'s24'``,
    ``'s36'``, ``'m36'``, ``'m48'`` or a dict of ``layers`` and
    ``embed_dims``; default ``'s12'``.
    """
    FAMILY = 'PoolFormerV2'


@MODELS.register_module()
class IdentityFormer(MetaFormer):
    """IdentityFormer backbone: identity mixers, otherwise as
    PoolFormerV2.

    Arguments as :class:`MetaFormer` except ``token_mixers``, ``norm`` and
    ``mlp_head``, which the family fixes. ``arch``: ``'s12'``, ``'s24'``,
    ``'s36'``, ``'m36'``, ``'m48'`` or a dict of ``layers`` and
    ``embed_dims``; default ``'s12'``.
    """
    FAMILY = 'IdentityFormer'


@MODELS.register_module()
class RandFormer(MetaFormer):
    """RandFormer backbone: identity mixers in stages 0-1, frozen random
    token mixing in stages 2-3, otherwise as PoolFormerV2.

    The random matrices are made for the 14x14 and 7x7 grids of a 224-px
    image. On other sizes they are resampled to the actual grid (bilinear
    over the (h0, w0, h0, w0) map, rows renormalised to sum to 1); with
    ``rand_resample=False`` other sizes raise a ``ValueError`` naming the
    input sizes that work (211-226 px per side), as the official model
    fails on them.

    Arguments as :class:`MetaFormer` except ``token_mixers``, ``norm`` and
    ``mlp_head``, which the family fixes. ``arch``: ``'s12'``, ``'s24'``,
    ``'s36'``, ``'m36'``, ``'m48'`` or a dict of ``layers`` and
    ``embed_dims``; default ``'s12'``.
    """
    FAMILY = 'RandFormer'


@MODELS.register_module()
class ConvFormer(MetaFormer):
    """ConvFormer backbone: separable-conv mixers, LayerNorm (no bias)
    in blocks, StarReLU MLPs, ResScale in stages 2-3, MLP head.

    Arguments as :class:`MetaFormer` except ``token_mixers``, ``norm`` and
    ``mlp_head``, which the family fixes. ``arch``: ``'s18'``, ``'s36'``,
    ``'m36'``, ``'b36'`` or a dict of ``layers`` and ``embed_dims``;
    default ``'s18'``.
    """
    FAMILY = 'ConvFormer'


@MODELS.register_module()
class CAFormer(MetaFormer):
    """CAFormer backbone: separable-conv mixers in stages 0-1 and
    self-attention (head_dim 32) in stages 2-3, otherwise as ConvFormer.

    Arguments as :class:`MetaFormer` except ``token_mixers``, ``norm`` and
    ``mlp_head``, which the family fixes. ``arch``: ``'s18'``, ``'s36'``,
    ``'m36'``, ``'b36'`` or a dict of ``layers`` and ``embed_dims``;
    default ``'s18'``.
    """
    FAMILY = 'CAFormer'


__all__ = ['CAFormer', 'CONV_ARCHS', 'ConvFormer', 'FAMILIES',
           'IdentityFormer', 'MetaFormer', 'PoolFormerV2', 'RandFormer',
           'RandomMixing', 'V2_ARCHS', 'resolve_metaformer_arch']
