"""PoolFormer backbone for dense prediction (mmdet 3.x / mmseg 1.x).

The math follows "MetaFormer is Actually What You Need for Vision" (Yu et al.,
CVPR 2022) and its official ``fork_feat`` model; parameter names follow the
official checkpoint layout exactly, so released ImageNet weights and detectors
trained with the official code load without renaming.
"""
import copy
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.modules.module as nn_module
from mmcv.cnn import build_norm_layer
from mmengine.model.weight_init import trunc_normal_

from mmpoolformer.checkpoint import PoolFormerLayout
from mmpoolformer.models.layers import GELU, DropPath, Pooling
from mmpoolformer.models.layers.conv import channel_param, conv_bias_apart
from mmpoolformer.models.layers.gn1_autograd import StatsPoolMixer, wanted
from mmpoolformer.models.layers.norms import (apply_norm, gn1_formulation,
                                              gn1_statistics,
                                              hand_written_backward)
from mmpoolformer.models.layers.recompute import RecomputedPoolFormerBlock
from mmpoolformer.registry import MODELS
from .base import NUM_STAGES, DenseBackbone, lookup_arch
from .poolformer_deploy import DeployPoolFormerBlock

# Official architectures (paper Table 1 and the released checkpoints).
ARCH_SETTINGS: Dict[str, dict] = {
    's12': dict(layers=(2, 2, 6, 2), embed_dims=(64, 128, 320, 512),
                mlp_ratios=4, layer_scale_init_value=1e-5),
    's24': dict(layers=(4, 4, 12, 4), embed_dims=(64, 128, 320, 512),
                mlp_ratios=4, layer_scale_init_value=1e-5),
    's36': dict(layers=(6, 6, 18, 6), embed_dims=(64, 128, 320, 512),
                mlp_ratios=4, layer_scale_init_value=1e-6),
    'm36': dict(layers=(6, 6, 18, 6), embed_dims=(96, 192, 384, 768),
                mlp_ratios=4, layer_scale_init_value=1e-6),
    'm48': dict(layers=(8, 8, 24, 8), embed_dims=(96, 192, 384, 768),
                mlp_ratios=4, layer_scale_init_value=1e-6),
}
# The official norm: one-group GroupNorm, i.e. over (C, H, W) per image.
DEFAULT_NORM_CFG = dict(type='GN', num_groups=1, eps=1e-5)
_ARCH_KEYS = ('layers', 'embed_dims', 'mlp_ratios', 'layer_scale_init_value')


def resolve_arch(arch: Union[str, dict]) -> dict:
    """Return a validated arch dict from a name in ``ARCH_SETTINGS`` or a
    custom dict with ``layers`` and ``embed_dims`` (4 entries each) and
    optional ``mlp_ratios`` (number or 4 numbers, default 4) and
    ``layer_scale_init_value`` (default 1e-5)."""
    arch = lookup_arch(arch, ARCH_SETTINGS, 'PoolFormer',
                       optional=_ARCH_KEYS[2:])
    layers, dims = arch['layers'], arch['embed_dims']
    ratios = arch.get('mlp_ratios', 4)
    ratios = (tuple(float(r) for r in ratios) if isinstance(ratios, Sequence)
              else (float(ratios), ) * NUM_STAGES)
    if len(ratios) != NUM_STAGES or min(ratios) <= 0:
        raise ValueError(f'PoolFormer arch mlp_ratios must be {NUM_STAGES} '
                         f'positive numbers, got {ratios}')
    return dict(layers=layers, embed_dims=dims, mlp_ratios=ratios,
                layer_scale_init_value=float(
                    arch.get('layer_scale_init_value', 1e-5)))


def build_norm(norm_cfg: Optional[dict], num_channels: int) -> nn.Module:
    """A norm layer for ``(N, C, H, W)`` features from an mmcv ``norm_cfg``
    (``None``: the official one-group GroupNorm; ``'GN'`` without
    ``num_groups`` also means one group)."""
    norm_cfg = DEFAULT_NORM_CFG if norm_cfg is None else norm_cfg
    if not (isinstance(norm_cfg, dict)
            and isinstance(norm_cfg.get('type'), str)):
        raise TypeError('norm_cfg must be a dict with a `type`, such as '
                        f"dict(type='BN'); got {norm_cfg!r}")
    norm_cfg = dict(norm_cfg)
    if norm_cfg['type'] in ('LN', 'LayerNorm'):
        # nn.LayerNorm would normalise the last axis (W) of NCHW features.
        raise ValueError(
            "PoolFormer norm_cfg type 'LN' would normalise over the width "
            "axis. Use dict(type='GN', num_groups=1) (the official norm, "
            "over C, H, W) or dict(type='BN').")
    if norm_cfg['type'] == 'GN':
        norm_cfg.setdefault('num_groups', 1)
    try:
        return build_norm_layer(norm_cfg, num_channels)[1]
    except KeyError as err:  # mmcv's message names None, not the type
        raise ValueError(
            f"Unknown norm type {norm_cfg['type']!r} in PoolFormer norm_cfg. "
            "Use 'GN' (num_groups=1 is the official norm), 'BN' or "
            "'SyncBN'.") from err


def _check_deploy_norm(norm_cfg: Optional[dict]):
    cfg = DEFAULT_NORM_CFG if norm_cfg is None else norm_cfg
    if not (isinstance(cfg, dict) and cfg.get('type') in ('GN', 'GroupNorm')
            and cfg.get('num_groups', 1) == 1):
        raise ValueError(
            'PoolFormer(deploy=True) builds folded blocks, which exist for '
            f'the one-group GroupNorm only; norm_cfg={norm_cfg!r} has no '
            'deploy form. Remove deploy=True (and use the model as it is) '
            "or use norm_cfg=dict(type='GN', num_groups=1).")


def _holds_folded_blocks(options: dict) -> bool:
    """Whether a ``Pretrained`` checkpoint already holds deploy (folded)
    blocks, i.e. was written by ``poolformer_to_deploy.py``."""
    from mmpoolformer.checkpoint import extract_state_dict, read_checkpoint
    raw = read_checkpoint(options['checkpoint'],
                          options.get('weights_only', True))
    state_dict, _ = extract_state_dict(raw, options.get('prefix'))
    return any(k.endswith('.mix_scale') for k in state_dict)


class PatchEmbed(nn.Module):
    """A strided conv: the stem (7/4/2) and the downsampling (3/2/1) layers."""

    def __init__(self, in_channels, out_channels, kernel_size, stride,
                 padding):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              padding)

    def forward(self, x):
        return conv_bias_apart(self.proj, x)


class Mlp(nn.Module):
    """Channel MLP as two 1x1 convs with GELU."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop(self.act(conv_bias_apart(self.fc1, x)))
        return self.drop(conv_bias_apart(self.fc2, x))


def _is_gn1(norm: nn.Module) -> bool:
    return (isinstance(norm, nn.GroupNorm) and norm.num_groups == 1
            and norm.affine)


def _hooked(module: nn.Module) -> bool:
    """Whether forward hooks (global or on ``module`` or its children)
    expect its submodules to be called."""
    return bool(nn_module._global_forward_hooks
                or nn_module._global_forward_pre_hooks or any(
                    m._forward_hooks or m._forward_pre_hooks
                    for m in module.modules()))


class PoolFormerBlock(nn.Module):
    """x + ls1 * mix(norm1(x)), then x + ls2 * mlp(norm2(x))."""

    def __init__(self, dim: int, mlp_ratio: float = 4., pool_size: int = 3,
                 drop: float = 0., drop_path: float = 0.,
                 layer_scale_init_value: float = 1e-5,
                 norm_cfg: Optional[dict] = None):
        super().__init__()
        self.norm1 = build_norm(norm_cfg, dim)
        self.token_mixer = Pooling(pool_size=pool_size)
        self.norm2 = build_norm(norm_cfg, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = (DropPath(drop_path) if drop_path > 0 else
                          nn.Identity())
        self.layer_scale_1 = nn.Parameter(
            torch.full((dim, ), layer_scale_init_value))
        self.layer_scale_2 = nn.Parameter(
            torch.full((dim, ), layer_scale_init_value))
        self._mixer_rewritable = _is_gn1(self.norm1)
        self._norm2_rewritable = _is_gn1(self.norm2)

    def forward(self, x):
        if self._mixer_rewritable and gn1_formulation(x) != 'native':
            mixed = self._mix_from_stats(x)
        else:
            mixed = self.token_mixer(self.norm1(x))
            mixed = channel_param(self.layer_scale_1, mixed) * mixed
        x = x + self.drop_path(mixed)
        mlp = self.mlp(apply_norm(self.norm2, x))
        return x + self.drop_path(channel_param(self.layer_scale_2, mlp) * mlp)

    def recomputes_by_hand(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward_recomputed` can run this block on ``x``:
        one-group affine GroupNorms, an odd pooling window, fp32 parameters,
        no dropout or drop path in training, no forward hooks that would
        miss its submodules' calls, and a gradient to compute in eager
        mode."""
        return (wanted(x, self.layer_scale_1) and self._mixer_rewritable
                and self._norm2_rewritable
                and self.token_mixer.pool_size % 2 == 1
                and self.layer_scale_1.dtype == torch.float32
                and isinstance(self.drop_path, nn.Identity)
                and not (self.training and self.mlp.drop.p > 0)
                and not _hooked(self))

    def forward_recomputed(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output as one autograd function that keeps only its
        input, statistics and convolution outputs for the backward (the
        selective ``with_cp=True`` of eager mode; see
        ``layers.recompute``)."""
        mlp = self.mlp
        return RecomputedPoolFormerBlock.apply(
            x, self.layer_scale_1, self.norm1.weight, self.norm1.bias,
            self.norm2.weight, self.norm2.bias, mlp.fc1.weight, mlp.fc1.bias,
            mlp.fc2.weight, mlp.fc2.bias, self.layer_scale_2, self.norm1.eps,
            self.norm2.eps, self.token_mixer.pool_size, mlp.act,
            gn1_formulation(x) == 'native')

    def _mix_from_stats(self, x):
        """``ls1 * (pool(n1(x)) - n1(x))`` as ``ls1 * g1 * rstd * (pool(x) -
        x)`` (avg-pooling without padded zeros maps a constant plane to
        itself, so the mean and bias of ``n1`` cancel): the normalized
        tensor is never formed. In fp32, as the GroupNorm is under
        autocast. See ``layers.norms.GN1_FORMULATION``."""
        x = x.float()
        norm1, pool_size = self.norm1, self.token_mixer.pool_size
        if pool_size % 2 and hand_written_backward(x, self.layer_scale_1,
                                                   norm1.weight):
            return StatsPoolMixer.apply(x, self.layer_scale_1, norm1.weight,
                                        norm1.bias, norm1.eps, pool_size)
        rstd = gn1_statistics(x, self.norm1.eps)[1]
        scale = (self.layer_scale_1 * self.norm1.weight)[:, None, None]
        # g1's bias cancels; `0 * bias` gives it the exact zero gradient
        # (not None), so optimizers and DDP see every parameter used
        return (scale * rstd * self.token_mixer(x) +
                0 * self.norm1.bias[:, None, None])


@MODELS.register_module()
class PoolFormer(DenseBackbone):
    """PoolFormer backbone.

    A reimplementation of the backbone in `MetaFormer is Actually What You
    Need for Vision <https://arxiv.org/abs/2111.11418>`_ for mmdet 3.x and
    mmseg 1.x. Parameter names follow the official release, so its ImageNet
    checkpoints and its detectors load as they are.

    Args:
        arch (str | dict): ``'s12'``, ``'s24'``, ``'s36'``, ``'m36'``,
            ``'m48'``, or a dict with ``layers`` and ``embed_dims`` (four
            entries each) and optional ``mlp_ratios`` and
            ``layer_scale_init_value``. Defaults to ``'s12'``.
        in_channels (int): Input image channels. Defaults to 3.
        pool_size (int): Token-mixer pooling window. Defaults to 3.
        out_indices (Sequence[int]): Stages (0-3, negative allowed) whose
            normalized features are returned, in stage order. Stages after
            the last one listed are not computed. Defaults to (0, 1, 2, 3).
        fork_last3 (bool, optional): Return the stage-0 feature without
            normalization and give ``norm0`` no parameters, as the official
            ``FORK_LAST3`` environment variable did. Set it when the neck
            skips level 0 (RetinaNet's ``start_level=1``) so distributed
            training has no unused parameters; True needs stage 0 in
            ``out_indices``. ``None`` reads the deprecated ``FORK_LAST3``
            variable (unset means False) and logs a warning when the
            variable drops ``norm0``; configs whose neck uses level 0 say
            False, so a leftover variable cannot change them.
        fork_feat (bool): True for dense prediction (per-stage outputs with
            their own GroupNorm). False builds the ImageNet classifier
            (final norm, global average pool, linear head) and returns
            logits. Defaults to True.
        num_classes (int): Classifier outputs when ``fork_feat=False``.
            Defaults to 1000.
        drop_rate (float): Dropout in the MLPs. Defaults to 0.
        drop_path_rate (float): Stochastic depth, rising linearly over all
            blocks from 0 to this value. Defaults to 0.
        layer_scale_init_value (float, optional): Initial value of every
            block's two LayerScale vectors, overriding the arch's (1e-5 for
            S12/S24, 1e-6 for the rest: for stable ImageNet pre-training,
            the residual branches start almost off). Larger values make the
            blocks active from the first step of a from-scratch run.
            Checkpoints overwrite it. Defaults to None (the arch's value).
        norm_cfg (dict, optional): mmcv config of every norm layer (block
            and output norms). Defaults to None: one-group GroupNorm,
            ``dict(type='GN', num_groups=1, eps=1e-5)``, as in the paper
            and the released checkpoints. ``dict(type='BN')`` (also in the
            paper's ablation) trains much faster from scratch in short
            schedules; it does not load the released GroupNorm weights
            (they have no running statistics) and has no deploy path.
        frozen_stages (int): -1 freezes nothing; 0 freezes the stem; k >= 1
            freezes the stem and stages 1..k (with their downsampling and
            output norms), kept in eval mode across ``train()``; at most 4
            (every stage). Defaults to -1.
        norm_eval (bool): Keep every batch norm in eval mode while training
            (frozen running statistics), as mmdet backbones do. GroupNorm
            has none, so this only matters with ``norm_cfg=dict(type='BN')``
            or ``'SyncBN'``. Defaults to False.
        with_cp (bool | str): Activation checkpointing of the blocks while
            training, to save memory; same outputs and gradients (to
            rounding). True (or ``'selective'``) keeps the outputs of each
            block's two 1x1 convs and recomputes its norms, pooling, GELU
            and elementwise ops in the backward: most of the saving for a
            small share of the time (in eager mode blocks without drop path
            or dropout run as one hand-written autograd function,
            ``layers.recompute``; the others and compiled graphs use torch's
            selective activation checkpointing); ``'full'`` keeps only each
            block's input and recomputes the whole block (least memory,
            slowest). Defaults to False.
        compile (bool | dict): ``torch.compile`` the backbone (training and
            inference) inside any model, lazily on its first forward; True
            for torch's defaults or a dict of ``torch.compile`` arguments.
            Parameters and checkpoint keys are unchanged. See
            :class:`~mmpoolformer.models.backbones.base.DenseBackbone`.
            Defaults to False.
        deploy (bool): Build the inference-only folded blocks
            (:class:`DeployPoolFormerBlock`, as :meth:`switch_to_deploy`
            makes them) instead of the plain ones, channels_last and without
            gradients: for inference configs with a checkpoint converted by
            ``tools/model_converters/poolformer_to_deploy.py``. A
            ``Pretrained`` init_cfg may name a converted file or a plain
            (e.g. ImageNet) one: a plain file is loaded into a plain twin
            and folded. Needs the one-group GroupNorm ``norm_cfg``.
            Defaults to False.
        pretrained (str, optional): Deprecated; use ``init_cfg``. A path or
            URL here is turned into ``init_cfg=dict(type='Pretrained', ...)``.
        init_cfg (dict | list[dict], optional): Initialization config. A
            ``dict(type='Pretrained', checkpoint=PATH_OR_URL)`` loads official
            ImageNet weights (or another supported layout) once, with a
            report; see :mod:`mmpoolformer.checkpoint` for its extra keys
            (``prefix``, ``weights_only``).

    Input: a float tensor ``(N, C, H, W)`` with ``C == in_channels``,
    ``N >= 1`` and ``H, W >= 4`` (the stem's stride; a 4x4 image gives 1x1
    features at every stage). Other shapes raise a ``ValueError`` that says
    what to change; the check is skipped under ``torch.compile``,
    ``torch.jit.trace`` and TorchScript. Values are not checked: a NaN or
    inf pixel does not raise or hang, it makes that image's outputs NaN
    (one-group GroupNorm spreads it over the whole image; batch norm in
    training mode over the whole batch and its running statistics), and a
    non-finite loss then stops training.
    """

    checkpoint_layout = PoolFormerLayout(ARCH_SETTINGS)
    default_arch = 's12'

    @classmethod
    def arch_embed_dims(cls, arch) -> tuple:
        return resolve_arch(arch)['embed_dims']

    def __init__(self,
                 arch: Union[str, dict] = 's12',
                 in_channels: int = 3,
                 pool_size: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 fork_last3: Optional[bool] = None,
                 fork_feat: bool = True,
                 num_classes: int = 1000,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: Optional[float] = None,
                 norm_cfg: Optional[dict] = None,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: Union[bool, str] = False,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[Union[dict, list]] = None,
                 compile: Union[bool, dict] = False,
                 deploy: bool = False):
        # what a plain twin needs (deploy=True loading a plain checkpoint)
        self._plain_kwargs = dict(
            arch=copy.deepcopy(arch), in_channels=in_channels,
            pool_size=pool_size, out_indices=out_indices,
            fork_last3=fork_last3, fork_feat=fork_feat,
            num_classes=num_classes,
            layer_scale_init_value=layer_scale_init_value,
            norm_cfg=copy.deepcopy(norm_cfg))
        super().__init__(in_channels=in_channels, out_indices=out_indices,
                         fork_feat=fork_feat, frozen_stages=frozen_stages,
                         norm_eval=norm_eval, with_cp=with_cp,
                         pretrained=pretrained, init_cfg=init_cfg,
                         compile=compile)
        self.deploy = bool(deploy)
        if self.deploy:
            _check_deploy_norm(norm_cfg)
        self.arch_settings = resolve_arch(arch)
        if layer_scale_init_value is not None:
            self.arch_settings['layer_scale_init_value'] = float(
                layer_scale_init_value)
        layers = self.arch_settings['layers']
        dims = self.arch_settings['embed_dims']
        self.arch = arch if isinstance(arch, str) else 'custom'
        self.embed_dims = dims
        self.fork_last3 = self._resolve_fork_last3(fork_last3)
        self.norm_cfg = copy.deepcopy(norm_cfg)

        self.patch_embed = PatchEmbed(in_channels, dims[0], 7, 4, 2)
        # network = [stage0, down1, stage1, down2, stage2, down3, stage3], the
        # official layout, so checkpoint keys are `network.{i}.{j}.*`.
        total_blocks = sum(layers)
        block_idx = 0
        network = []
        for i in range(NUM_STAGES):
            if i > 0:
                network.append(PatchEmbed(dims[i - 1], dims[i], 3, 2, 1))
            blocks = []
            for _ in range(layers[i]):
                dpr = drop_path_rate * block_idx / max(total_blocks - 1, 1)
                if self.deploy:
                    eps = (norm_cfg or DEFAULT_NORM_CFG).get('eps', 1e-5)
                    blocks.append(DeployPoolFormerBlock(
                        dims[i], int(dims[i] *
                                     self.arch_settings['mlp_ratios'][i]),
                        pool_size, eps, eps))
                    block_idx += 1
                    continue
                blocks.append(PoolFormerBlock(
                    dims[i], self.arch_settings['mlp_ratios'][i], pool_size,
                    drop_rate, dpr,
                    self.arch_settings['layer_scale_init_value'], norm_cfg))
                block_idx += 1
            network.append(nn.Sequential(*blocks))
        self.network = nn.ModuleList(network)

        if fork_feat:
            # One norm per output stage, named after its network index
            # (norm0/norm2/norm4/norm6) as in the official release.
            for i in self.out_indices:
                norm = (nn.Identity() if i == 0 and self.fork_last3 else
                        build_norm(norm_cfg, dims[i]))
                self.add_module(f'norm{2 * i}', norm)
        else:
            self.norm = build_norm(norm_cfg, dims[-1])
            self.head = (nn.Linear(dims[-1], num_classes)
                         if num_classes > 0 else nn.Identity())
        self.apply(self._init_layer)
        if self.deploy:
            for module in self.modules():
                if isinstance(module, DeployPoolFormerBlock):
                    module.reset_parameters(
                        self.arch_settings['layer_scale_init_value'])
            self.to(memory_format=torch.channels_last)
            self.requires_grad_(False)
        self._freeze_stages()

    @staticmethod
    def _init_layer(m: nn.Module):
        # As the official code: MLP convs and the classifier get truncated
        # normal weights; patch-embedding convs keep PyTorch's default.
        if isinstance(m, Mlp):
            for conv in (m.fc1, m.fc2):
                trunc_normal_(conv.weight, std=.02)
                nn.init.zeros_(conv.bias)
        elif isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            nn.init.zeros_(m.bias)

    def stage_modules(self, stage: int):
        """Modules that make up ``stage`` (0-3): its downsampling layer (or
        the stem for stage 0), its blocks and its output norm."""
        modules = [self.patch_embed if stage == 0 else
                   self.network[2 * stage - 1], self.network[2 * stage]]
        norm = getattr(self, f'norm{2 * stage}', None)
        return modules + ([norm] if norm is not None else [])

    def init_weights(self):
        """As :meth:`DenseBackbone.init_weights`; with ``deploy=True`` a
        ``Pretrained`` checkpoint holding plain (unfolded) blocks is loaded
        into a plain twin of this backbone, folded, and copied here."""
        cfgs = self.init_cfg
        cfgs = [cfgs] if isinstance(cfgs, dict) else list(cfgs or [])
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        if not (self.deploy and pretrained and not self._is_init):
            return super().init_weights()
        options = {k: v for k, v in pretrained[-1].items() if k != 'type'}
        if _holds_folded_blocks(options):
            return super().init_weights()  # a converted file loads as is
        twin = PoolFormer(**self._plain_kwargs, init_cfg=pretrained[-1])
        twin.init_weights()
        twin.switch_to_deploy()
        self.load_state_dict(twin.state_dict())
        self._is_init = True

    def switch_to_deploy(self):
        """Fold every block in place (see
        :mod:`~mmpoolformer.models.backbones.poolformer_deploy`) and put the
        weights in channels_last. Outputs match the plain model to fp32
        rounding; the model is for inference only afterwards (no
        drop-path). Calling it twice is harmless. Returns ``self``."""
        foldable = [(blocks, idx, block) for blocks in self.network
                    if isinstance(blocks, nn.Sequential)
                    for idx, block in enumerate(blocks)
                    if isinstance(block, PoolFormerBlock)]
        # The folding relies on one-group GroupNorm (a per-image, per-plane
        # constant shift and scale); check first so a refusal changes
        # nothing.
        for _, _, block in foldable:
            for norm in (block.norm1, block.norm2):
                if not (isinstance(norm, nn.GroupNorm)
                        and norm.num_groups == 1):
                    raise ValueError(
                        'switch_to_deploy folds the official one-group '
                        f'GroupNorm only; this model has {norm} (norm_cfg='
                        f'{self.norm_cfg}). Use the model as it is: deploy '
                        'only speeds up inference.')
        for blocks, idx, block in foldable:
            blocks[idx] = DeployPoolFormerBlock.from_block(block)
        # a compiled forward (compile=...) was traced through the plain
        # blocks: compile again on the next call
        self.__dict__.pop('_compiled_call', None)
        self.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.deploy = True
        return self

    def forward(self, x: torch.Tensor):
        """Dense mode: a tuple of features, one per ``out_indices`` stage,
        with strides 4/8/16/32. Classification mode: logits."""
        self._check_input(x)
        x = self.patch_embed(x)
        last_stage = self.out_indices[-1] if self.fork_feat else NUM_STAGES - 1
        outs = []
        for stage in range(last_stage + 1):
            if stage > 0:
                x = self.network[2 * stage - 1](x)
            x = self._run_blocks(self.network[2 * stage], x)
            if self.fork_feat and stage in self.out_indices:
                outs.append(apply_norm(getattr(self, f'norm{2 * stage}'), x))
        if self.fork_feat:
            return tuple(outs)
        return self.head(apply_norm(self.norm, x).mean((-2, -1)))
