"""PoolFormer (v1) checkpoint layouts.

All end up in the official one, which the backbone uses:

* official release (``patch_embed.proj``, ``network.{i}.{j}.*``, classifier
  ``norm``/``head``), bare or wrapped in ``state_dict``/``model``;
* official dense models and whole detectors/segmentors trained with mmdet 2.x
  / mmseg 0.x or 3.x / 1.x (``backbone.``-prefixed, plus necks and heads);
* mmpretrain classifiers (``backbone.``-prefixed, head under ``head.fc``);
* timm >= 0.9 (``stem.conv``, ``stages.N.downsample.conv``,
  ``stages.N.blocks.M.*``, ``layer_scale1.scale``, ``head.norm``, ``head.fc``).
"""
import re
from collections import OrderedDict
from typing import List, Tuple

from ..safe_load import CheckpointError
from .base import CheckpointLayout, StateDict

_TIMM_RULES = (
    (re.compile(r'^stem\.conv\.'), 'patch_embed.proj.'),
    (re.compile(r'^stages\.(\d+)\.downsample\.conv\.'),
     lambda m: f'network.{2 * int(m.group(1)) - 1}.proj.'),
    (re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.layer_scale(\d)\.scale$'),
     lambda m: f'network.{2 * int(m.group(1))}.{m.group(2)}.'
               f'layer_scale_{m.group(3)}'),
    (re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.'),
     lambda m: f'network.{2 * int(m.group(1))}.{m.group(2)}.'),
    (re.compile(r'^head\.norm\.'), 'norm.'),
    (re.compile(r'^head\.fc\.'), 'head.'),
)


def timm_to_official(state_dict: StateDict) -> StateDict:
    """Rename timm >= 0.9 PoolFormer (v1) keys to the official layout."""
    converted = OrderedDict()
    for key, value in state_dict.items():
        new_key = key
        for pattern, replacement in _TIMM_RULES:
            if pattern.search(key):
                new_key = pattern.sub(replacement, key, count=1)
                break
        if new_key.endswith(('layer_scale_1', 'layer_scale_2')):
            value = value.reshape(-1)
        elif re.search(r'\.mlp\.fc\d\.weight$', new_key) and value.ndim == 2:
            value = value[:, :, None, None]  # Linear -> 1x1 conv
        converted[new_key] = value
    return converted


class PoolFormerLayout(CheckpointLayout):
    """The official PoolFormer layout and the ones that rename to it."""
    family = 'PoolFormer'
    # The dense backbone's per-stage output norms: ImageNet files lack them
    # (they start from GroupNorm's identity init, as in the official code).
    fresh_ok = re.compile(r'^norm[0246]\.')
    # The ImageNet classifier (`norm`, `head`) and output norms of stages
    # the model does not output (or `norm0` under fork_last3).
    ignorable = re.compile(r'^(norm\d*|head)\.')

    def detect(self, state_dict: StateDict) -> str:
        if any(k.startswith(('stem.conv.', 'stages.')) for k in state_dict):
            return 'timm'
        if any(k.startswith(('patch_embed.proj.', 'network.'))
               for k in state_dict):
            return 'official'
        raise CheckpointError(
            'Unknown checkpoint layout: expected PoolFormer keys such as '
            "'patch_embed.proj.weight' / 'network.0.0.mlp.fc1.weight' "
            "(official, mmdet/mmseg/mmpretrain) or 'stem.conv.weight' / "
            f"'stages.0.blocks.0.*' (timm); first keys found: "
            f'{sorted(state_dict)[:6]}.')

    def to_model(self, state_dict: StateDict) -> Tuple[StateDict, str]:
        layout = self.detect(state_dict)
        if layout == 'timm':
            state_dict = timm_to_official(state_dict)
        return state_dict, layout

    def shape(self, state_dict: StateDict) -> Tuple[tuple, tuple]:
        layers, dims = [], []
        for stage in range(4):
            blocks = {int(m.group(1)) for k in state_dict
                      for m in [re.match(rf'network\.{2 * stage}\.(\d+)\.',
                                         k)] if m}
            layers.append(max(blocks) + 1 if blocks else 0)
            weight = state_dict.get(f'network.{2 * stage}.0.norm1.weight')
            dims.append(int(weight.shape[0]) if weight is not None else 0)
        return tuple(layers), tuple(dims)

    def hints(self, model, missing: List[str]) -> List[str]:
        if any(k.endswith('.running_mean') for k in missing):
            return [f'the model has batch norms (norm_cfg='
                    f'{getattr(model, "norm_cfg", None)}); files in the '
                    'official layout use one-group GroupNorm, so leave '
                    'norm_cfg unset to load them']
        return []
