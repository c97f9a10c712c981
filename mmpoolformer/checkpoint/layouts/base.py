"""The interface every backbone family's checkpoint layout implements."""
import re
from typing import Dict, List, Mapping, Tuple

import torch

StateDict = Dict[str, torch.Tensor]


class CheckpointLayout:
    """Recognise, rename and describe one family's checkpoints.

    Subclasses set ``family``, ``fresh_ok`` (model keys that files may lack,
    such as the dense backbone's output norms, initialised fresh) and
    ``ignorable`` (file keys the model may not use, such as an ImageNet
    classifier), and implement :meth:`detect`, :meth:`to_model` and
    :meth:`describe`.

    Args:
        arch_settings: The family's named archs, ``{name: dict(layers=...,
            embed_dims=...)}``, used to name what a file holds.
    """
    family = 'backbone'
    # the layout the family's models use, and those it can convert to
    model_layout = 'official'
    target_layouts: Tuple[str, ...] = ('official', )
    fresh_ok = re.compile(r'$^')
    ignorable = re.compile(r'$^')

    def __init__(self, arch_settings: Mapping[str, dict]):
        self.arch_settings = dict(arch_settings)

    def detect(self, state_dict: StateDict) -> str:
        """The name of the layout of ``state_dict`` (bare backbone keys);
        raise :class:`~mmpoolformer.checkpoint.CheckpointError` if it is
        none of the family's."""
        raise NotImplementedError

    def to_model(self, state_dict: StateDict) -> Tuple[StateDict, str]:
        """``state_dict`` in the model's own layout, and the layout it was
        in."""
        raise NotImplementedError

    def convert(self, state_dict: StateDict, to: str) -> StateDict:
        """``state_dict`` (any known layout) in the layout ``to``."""
        converted, _ = self.to_model(state_dict)
        if to != self.model_layout:
            raise ValueError(f'{self.family} checkpoints convert only to '
                             f'the {self.model_layout!r} layout, not {to!r}')
        return converted

    def shape(self, state_dict: StateDict) -> Tuple[tuple, tuple]:
        """``(layers, embed_dims)`` of a model-layout state dict."""
        raise NotImplementedError

    def describe(self, state_dict: StateDict) -> str:
        """What a model-layout state dict holds, e.g. ``'PoolFormer-s12
        (layers (2, 2, 6, 2), embed_dims (64, 128, 320, 512))'``."""
        layers, dims = self.shape(state_dict)
        for name, arch in self.arch_settings.items():
            if (tuple(layers) == tuple(arch['layers'])
                    and tuple(dims) == tuple(arch['embed_dims'])):
                return (f'{self.family}-{name} (layers {tuple(layers)}, '
                        f'embed_dims {tuple(dims)})')
        return f'layers {tuple(layers)}, embed_dims {tuple(dims)}'

    def model_name(self, model) -> str:
        settings = model.arch_settings
        if model.arch != 'custom':
            return f'{self.family}-{model.arch}'
        return (f'{self.family}(layers {tuple(settings["layers"])}, '
                f'embed_dims {tuple(settings["embed_dims"])})')

    def hints(self, model, missing: List[str]) -> List[str]:
        """Extra advice for a file that does not fit ``model``."""
        return []
