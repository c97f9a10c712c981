"""Checkpoint layouts of the "MetaFormer Baselines for Vision" families
(PoolFormerV2, ConvFormer, CAFormer, IdentityFormer, RandFormer).

The backbones use **timm's** layout (``stem.conv/norm``,
``stages.{i}.downsample.norm/conv``, ``stages.{i}.blocks.{j}.*``, classifier
``head.norm`` / ``head.fc``; dense output norms ``norm0``-``norm3``). Files
also come in the official sail-sg/metaformer layout
(``downsample_layers.{i}.pre_norm/conv/post_norm``, ``stages.{i}.{j}.*``,
``norm``, ``head``), bare, wrapped in ``state_dict``/``model`` or inside a
whole mmdet/mmseg model; they are renamed to timm's, and the Linear weights
that timm holds as 1x1 convs get two unit dims (SepConv ``pwconv1/2``
always; ``mlp.fc1/fc2`` in every stage but attention ones). Conversion back
to the official layout is the reverse.

Which family a file holds is read from its token-mixer keys (``pwconv1``:
SepConv, ``qkv``: attention, ``random_matrix``: random mixing, none:
identity or pooling, which have the same weights) and its head; a file of
another family (or a PoolFormer v1 file) raises a
:class:`~mmpoolformer.checkpoint.CheckpointError` saying what it looks like.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

from ..safe_load import CheckpointError
from .base import CheckpointLayout, StateDict

_PW = ('token_mixer.pwconv1.weight', 'token_mixer.pwconv2.weight')
_FC = ('mlp.fc1.weight', 'mlp.fc2.weight')
# stage mixer signature (identity and pooling have no weights) -> families
SIGNATURES: Dict[Tuple[str, ...], str] = {
    ('none', ) * 4: 'IdentityFormer or PoolFormerV2',
    ('none', 'none', 'random', 'random'): 'RandFormer',
    ('sepconv', ) * 4: 'ConvFormer',
    ('sepconv', 'sepconv', 'attention', 'attention'): 'CAFormer',
}


def _attention_stages(state_dict: StateDict, official: bool) -> set:
    pattern = (r'stages\.(\d+)\.\d+\.token_mixer\.qkv\.' if official else
               r'stages\.(\d+)\.blocks\.\d+\.token_mixer\.qkv\.')
    return {int(m.group(1)) for m in (re.match(pattern, k)
                                      for k in state_dict) if m}


def official_to_timm(state_dict: StateDict) -> StateDict:
    """Rename official sail-sg/metaformer keys to timm's; Linear weights
    that timm holds as 1x1 convs get two trailing unit dims. Keys of dense
    output norms (``norm0``-``norm3``) pass through."""
    attention = _attention_stages(state_dict, official=True)
    out = OrderedDict()
    for key, value in state_dict.items():
        down = re.fullmatch(
            r'downsample_layers\.(\d+)\.(pre_norm|post_norm|conv)\.(\w+)', key)
        block = re.fullmatch(r'stages\.(\d+)\.(\d+)\.(.+)', key)
        if down:
            stage, part = int(down.group(1)), down.group(2)
            where = 'stem' if stage == 0 else f'stages.{stage}.downsample'
            part = 'conv' if part == 'conv' else 'norm'
            key = f'{where}.{part}.{down.group(3)}'
        elif block:
            stage, rest = int(block.group(1)), block.group(3)
            key = f'stages.{stage}.blocks.{block.group(2)}.{rest}'
            if value.dim() == 2 and (rest in _PW or (
                    rest in _FC and stage not in attention)):
                value = value[:, :, None, None]
        elif key.startswith('norm.'):
            key = 'head.' + key
        elif key.startswith('head.'):
            key = 'head.fc.' + key[len('head.'):]
        elif not re.match(r'norm\d\.', key):
            raise CheckpointError(
                f'Unexpected key {key!r} in an official MetaFormer '
                'checkpoint (expected downsample_layers.*, stages.*, norm.*, '
                'head.*).')
        out[key] = value

    # timm order: stem, then each stage (downsampling, blocks), then the rest
    def rank(item):
        match = re.match(r'stages\.(\d+)\.', item[0])
        if match:
            return int(match.group(1)) + 1
        return 0 if item[0].startswith('stem.') else 99

    return OrderedDict(sorted(out.items(), key=rank))


def timm_to_official(state_dict: StateDict) -> StateDict:
    """Rename timm keys to the official layout; 1x1-conv weights of the
    MLPs and SepConv back to Linear."""
    out = OrderedDict()
    for key, value in state_dict.items():
        stem = re.fullmatch(r'stem\.(conv|norm)\.(\w+)', key)
        down = re.fullmatch(r'stages\.(\d+)\.downsample\.(conv|norm)\.(\w+)',
                            key)
        block = re.fullmatch(r'stages\.(\d+)\.blocks\.(\d+)\.(.+)', key)
        if stem:
            part = 'conv' if stem.group(1) == 'conv' else 'post_norm'
            key = f'downsample_layers.0.{part}.{stem.group(2)}'
        elif down:
            part = 'conv' if down.group(2) == 'conv' else 'pre_norm'
            key = f'downsample_layers.{down.group(1)}.{part}.{down.group(3)}'
        elif block:
            rest = block.group(3)
            key = f'stages.{block.group(1)}.{block.group(2)}.{rest}'
            if rest in _PW + _FC and value.dim() == 4:
                value = value.reshape(value.shape[0], value.shape[1])
        elif key.startswith('head.norm.'):
            key = key[len('head.'):]
        elif key.startswith('head.fc.'):
            key = 'head.' + key[len('head.fc.'):]
        elif not re.match(r'norm\d\.', key):
            raise CheckpointError(f'Unexpected key {key!r} in a timm '
                                  'MetaFormer checkpoint.')
        out[key] = value

    # official order: downsampling layers, stages, then norm and head
    def rank(item):
        key = item[0]
        return (0 if key.startswith('downsample_layers.') else
                1 if key.startswith('stages.') else 2)

    return OrderedDict(sorted(out.items(), key=rank))


def mixer_signature(state_dict: StateDict) -> Tuple[str, ...]:
    """Per stage: 'sepconv', 'attention', 'random' or 'none' (identity or
    pooling), from the first block's keys of a timm-layout state dict."""
    signature = []
    for stage in range(4):
        prefix = f'stages.{stage}.blocks.0.token_mixer.'
        keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
        kind = 'none'
        for name, mark in (('sepconv', 'pwconv1.'), ('attention', 'qkv.'),
                           ('random', 'random_matrix')):
            if any(k.startswith(mark) for k in keys):
                kind = name
        signature.append(kind)
    return tuple(signature)


class MetaFormerLayout(CheckpointLayout):
    """timm and official layouts of one MetaFormer-baselines family.

    Args:
        family: The family's name (``'ConvFormer'``, ...; ``'MetaFormer'``
            for custom mixers: any family's file is accepted, the weights
            must then fit the model).
        arch_settings: The family's named archs.
        mixers: The family's mixer signature (see :func:`mixer_signature`);
            None accepts any.
        mlp_head: Whether the family's classifier is an MlpHead (None: any).
        other_archs: ``{family: arch_settings}`` of the other families, to
            name what a wrong file holds.
    """
    model_layout = 'timm'
    target_layouts = ('timm', 'official')
    # ImageNet files have no dense output norms: they start fresh.
    fresh_ok = re.compile(r'^norm[0-3]\.')
    # The ImageNet classifier (final norm + head) and output norms of stages
    # the model does not output (or norm0 under fork_last3).
    ignorable = re.compile(r'^(head\.|norm[0-3]\.)')

    def __init__(self, family: str, arch_settings: Mapping[str, dict],
                 mixers: Optional[Tuple[str, ...]] = None,
                 mlp_head: Optional[bool] = None,
                 other_archs: Optional[Mapping[str, Mapping]] = None):
        super().__init__(arch_settings)
        self.family = family
        self.mixers = tuple(mixers) if mixers is not None else None
        self.mlp_head = mlp_head
        self.other_archs = dict(other_archs or {})

    def detect(self, state_dict: StateDict) -> str:
        keys = list(state_dict)
        if any(k.startswith(('patch_embed.', 'network.')) for k in keys) or (
                any(k.startswith('stem.conv.') for k in keys)
                and not any(k.startswith('stem.norm.') for k in keys)):
            raise CheckpointError(
                f'This is a PoolFormer (v1) checkpoint (keys '
                f'{sorted(keys)[:3]}...: no stem norm, GELU MLPs with '
                f'biases), not a {self.family} one. Build '
                "backbone=dict(type='PoolFormer', ...) to load it, or pick "
                f'a {self.family} checkpoint.')
        if any(k.startswith('downsample_layers.') for k in keys):
            return 'official'
        if any(k.startswith('stem.') for k in keys):
            return 'timm'
        raise CheckpointError(
            f'Unknown checkpoint layout for {self.family}: expected keys '
            "such as 'stem.conv.weight' / 'stages.0.blocks.0.norm1.weight' "
            "(timm) or 'downsample_layers.0.conv.weight' / "
            "'stages.0.0.norm1.weight' (official sail-sg/metaformer); first "
            f'keys found: {sorted(keys)[:6]}.')

    def to_model(self, state_dict: StateDict) -> Tuple[StateDict, str]:
        layout = self.detect(state_dict)
        if layout == 'official':
            state_dict = official_to_timm(state_dict)
        self._check_family(state_dict)
        return state_dict, layout

    def convert(self, state_dict: StateDict, to: str) -> StateDict:
        if to not in self.target_layouts:
            raise ValueError(f'{self.family} checkpoints convert to '
                             f'{", ".join(self.target_layouts)}, not {to!r}')
        converted, _ = self.to_model(state_dict)
        return timm_to_official(converted) if to == 'official' else converted

    def _check_family(self, state_dict: StateDict):
        signature = mixer_signature(state_dict)
        head = self._has_mlp_head(state_dict)
        wrong_mixers = self.mixers is not None and signature != self.mixers
        wrong_head = (self.mlp_head is not None and head is not None
                      and head != self.mlp_head)
        if wrong_mixers or wrong_head:
            raise CheckpointError(
                f'Checkpoint is not a {self.family} one: the file looks like '
                f'{self.describe(state_dict)} (token mixers per stage '
                f'{signature}, {"an MLP" if head else "a linear"} head). '
                f'Build the backbone of that family (or MetaFormer with '
                'matching token_mixers), or pick a '
                f'{self.family} checkpoint; nothing was loaded.')

    @staticmethod
    def _has_mlp_head(state_dict: StateDict) -> Optional[bool]:
        if any(k.startswith('head.fc.fc1.') for k in state_dict):
            return True
        if 'head.fc.weight' in state_dict:
            return False
        return None

    def shape(self, state_dict: StateDict) -> Tuple[tuple, tuple]:
        layers, dims = [], []
        for stage in range(4):
            blocks = {int(m.group(1)) for m in (
                re.match(rf'stages\.{stage}\.blocks\.(\d+)\.', k)
                for k in state_dict) if m}
            layers.append(max(blocks) + 1 if blocks else 0)
            weight = state_dict.get(f'stages.{stage}.blocks.0.norm1.weight')
            dims.append(int(weight.shape[0]) if weight is not None else 0)
        return tuple(layers), tuple(dims)

    def describe(self, state_dict: StateDict) -> str:
        layers, dims = self.shape(state_dict)
        family = SIGNATURES.get(mixer_signature(state_dict),
                                'a MetaFormer with custom mixers')
        tables = dict(self.other_archs)
        tables.setdefault(self.family, self.arch_settings)
        for name in family.split(' or '):
            for arch, setting in tables.get(name, {}).items():
                if (tuple(setting['layers']) == layers
                        and tuple(setting['embed_dims']) == dims):
                    label = ' or '.join(f'{n}-{arch}'
                                        for n in family.split(' or '))
                    return (f'{label} (layers {layers}, embed_dims '
                            f'{dims})')
        return f'{family} (layers {layers}, embed_dims {dims})'

    def hints(self, model, missing: List[str]) -> List[str]:
        if any(k.endswith('random_matrix') for k in missing):
            return ['RandFormer files hold their frozen random matrices; '
                    'this one lacks some']
        return []
