"""Building blocks shared by the backbones."""
from .activations import (GELU, Scale, SquaredReLU, StarReLU,
                          optional_scale)
from .drop_path import DropPath
from .mixers import (MIXERS, Attention, Pooling, RandomMixing, SepConv,
                     build_token_mixer, resample_random_matrix)
from .mlp import Mlp, MlpHead
from .norms import GroupNorm1, LayerNorm, LayerNorm2d, build_metaformer_norm

__all__ = [
    'Attention', 'DropPath', 'GELU', 'GroupNorm1', 'LayerNorm', 'LayerNorm2d',
    'MIXERS', 'Mlp', 'MlpHead', 'Pooling', 'RandomMixing',
    'Scale', 'SepConv', 'SquaredReLU', 'StarReLU', 'build_metaformer_norm',
    'build_token_mixer', 'optional_scale', 'resample_random_matrix'
]
