"""The MetaFormer channel MLP and classification MLP head."""
import torch
import torch.nn as nn

from .activations import SquaredReLU, StarReLU
from .norms import LayerNorm


class Mlp(nn.Module):
    """``fc2(drop(act(fc1(x))))`` then dropout: 1x1 convs on ``(N, C, H, W)``
    features (``use_conv=True``) or Linear layers on tokens (timm's Mlp with
    StarReLU and no biases by default)."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False,
                 drop: float = 0., use_conv: bool = True,
                 act_layer=StarReLU):
        super().__init__()

        def linear(cin, cout):
            if use_conv:
                return nn.Conv2d(cin, cout, 1, bias=bias)
            return nn.Linear(cin, cout, bias=bias)

        self.fc1 = linear(dim, hidden_dim)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1(x)))
        return self.drop2(self.fc2(x))


class MlpHead(nn.Module):
    """ConvFormer/CAFormer classifier: ``fc1`` (C -> 4C), SquaredReLU,
    LayerNorm (eps 1e-6, as timm), dropout, ``fc2``; all with biases."""

    def __init__(self, dim: int, num_classes: int = 1000,
                 mlp_ratio: float = 4, drop_rate: float = 0.):
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = SquaredReLU()
        self.norm = LayerNorm(hidden, eps=1e-6, bias=True)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.act(self.fc1(x)))
        return self.fc2(self.head_drop(x))
