"""An independent, deliberately plain implementation of the seed document's
``fork_feat`` PoolFormer math, written as functions over an official-layout
state dict. Tests compare the package's modules against it on the same
weights, so a mistake in either shows up as a difference."""
import torch.nn.functional as F

from mmpoolformer.benchmark import randomized


def _block(sd, prefix, x):
    def gn(name, t):
        return F.group_norm(t, 1, sd[f'{prefix}{name}.weight'],
                            sd[f'{prefix}{name}.bias'], eps=1e-5)

    y = gn('norm1', x)
    mixed = F.avg_pool2d(y, 3, stride=1, padding=1,
                         count_include_pad=False) - y
    x = x + sd[f'{prefix}layer_scale_1'].unsqueeze(-1).unsqueeze(-1) * mixed
    y = gn('norm2', x)
    y = F.conv2d(y, sd[f'{prefix}mlp.fc1.weight'], sd[f'{prefix}mlp.fc1.bias'])
    y = F.gelu(y)
    y = F.conv2d(y, sd[f'{prefix}mlp.fc2.weight'], sd[f'{prefix}mlp.fc2.bias'])
    return x + sd[f'{prefix}layer_scale_2'].unsqueeze(-1).unsqueeze(-1) * y


def reference_forward(sd, x, layers, fork_last3=False, classify=False):
    """Dense: list of 4 features (norm0/2/4/6). Classify: logits."""
    x = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'],
                 stride=4, padding=2)
    outs = []
    for stage, depth in enumerate(layers):
        if stage > 0:
            idx = 2 * stage - 1
            x = F.conv2d(x, sd[f'network.{idx}.proj.weight'],
                         sd[f'network.{idx}.proj.bias'], stride=2, padding=1)
        for j in range(depth):
            x = _block(sd, f'network.{2 * stage}.{j}.', x)
        if classify:
            continue
        if stage == 0 and fork_last3:
            outs.append(x)
        else:
            name = f'norm{2 * stage}'
            outs.append(F.group_norm(x, 1, sd[f'{name}.weight'],
                                     sd[f'{name}.bias'], eps=1e-5))
    if classify:
        x = F.group_norm(x, 1, sd['norm.weight'], sd['norm.bias'], eps=1e-5)
        return F.linear(x.mean([-2, -1]), sd['head.weight'], sd['head.bias'])
    return outs


# The benchmark's randomizer: O(1) values everywhere (norm weights and layer
# scales included), so init values cannot hide mistakes in comparisons.
randomize_ = randomized
