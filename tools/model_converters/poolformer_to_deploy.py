"""Fold a PoolFormer checkpoint for ``backbone=dict(..., deploy=True)``.

    python tools/model_converters/poolformer_to_deploy.py SRC DST
        [--prefix backbone.] [--pool-size 3] [--trust]

SRC is a whole mmdet/mmseg checkpoint written by this project's tools (the
backbone's keys under ``backbone.``) or a bare backbone state dict (official
layout). Every PoolFormer block is folded with
:meth:`PoolFormer.switch_to_deploy` on a model built from the file's own
tensors; DST keeps everything else: the other models' keys (neck, heads),
``meta`` and the rest of the file, except the optimizer state (its entries
follow the unfolded parameters, so a folded file cannot resume training).
The folded model matches the plain one to fp32 rounding; DST loads into a
config whose backbone says ``deploy=True`` (``tools/test.py``,
``tools/image_demo.py``, ``init_cfg=dict(type='Pretrained', ...)``).
"""
import argparse
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
from mmpoolformer.checkpoint import (CheckpointError,  # noqa: E402
                                     read_whole_checkpoint,
                                     save_checkpoint_file)

_BLOCK = re.compile(r'network\.(\d+)\.(\d+)\.')


def _find_state_dict(ckpt: dict):
    for wrapper in ('state_dict', 'model'):
        if isinstance(ckpt.get(wrapper), dict):
            return ckpt[wrapper]
    return ckpt


def _infer_prefix(state_dict) -> str:
    keys = [k for k in state_dict if isinstance(state_dict[k], torch.Tensor)]
    for prefix in ('backbone.', 'module.backbone.', 'module.', ''):
        if any(k.startswith(prefix + 'network.') for k in keys):
            return prefix
    raise CheckpointError(
        'No PoolFormer blocks (`network.*` keys) found in the checkpoint; '
        f'first keys: {keys[:5]}')


def fold_backbone(backbone: dict, pool_size: int = 3) -> dict:
    """Folded state dict of a PoolFormer backbone state dict (official
    layout): the model is rebuilt from the tensors' shapes, loaded strictly
    and switched to deploy."""
    from mmpoolformer.models import PoolFormer
    if any(k.endswith('.mix_scale') for k in backbone):
        raise CheckpointError('The checkpoint is already folded (it has '
                              '`mix_scale` keys): nothing to convert.')
    if any('running_mean' in k for k in backbone):
        raise CheckpointError(
            'The backbone uses batch norm (running statistics found): only '
            'the one-group GroupNorm PoolFormer has a deploy form.')
    layers = [0] * 4
    for key in backbone:
        match = _BLOCK.match(key)
        if match and int(match.group(1)) % 2 == 0:
            stage = int(match.group(1)) // 2
            layers[stage] = max(layers[stage], int(match.group(2)) + 1)
    if not all(layers):
        raise CheckpointError(f'Found blocks in stages {layers}; a '
                              'PoolFormer has blocks in all four.')
    dims = [backbone[f'network.{2 * i}.0.norm1.weight'].numel()
            for i in range(4)]
    ratios = [backbone[f'network.{2 * i}.0.mlp.fc1.weight'].shape[0] / d
              for i, d in enumerate(dims)]
    classify = 'head.weight' in backbone or 'norm.weight' in backbone
    kwargs = dict(arch=dict(layers=layers, embed_dims=dims,
                            mlp_ratios=ratios),
                  in_channels=backbone['patch_embed.proj.weight'].shape[1],
                  pool_size=pool_size, init_cfg=None)
    if classify:
        kwargs.update(fork_feat=False,
                      num_classes=(backbone['head.weight'].shape[0]
                                   if 'head.weight' in backbone else 0))
    else:
        out = tuple(i for i in range(4) if f'norm{2 * i}.weight' in backbone)
        # norm0 without parameters: fork_last3 (or no stage-0 output)
        kwargs.update(out_indices=out or (3, ), fork_last3=False)
    model = PoolFormer(**kwargs)
    own = model.state_dict()
    missing = [k for k in own if k not in backbone]
    unexpected = [k for k in backbone if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f'The backbone tensors do not make a PoolFormer: missing '
            f'{missing[:5]}, unexpected {unexpected[:5]}')
    model.load_state_dict(backbone)
    model.switch_to_deploy()
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def convert(src: str, dst: str, prefix=None, pool_size: int = 3,
            trust: bool = False) -> dict:
    ckpt = read_whole_checkpoint(src, trust=trust)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'Expected a dict, got {type(ckpt)}')
    state_dict = _find_state_dict(ckpt)
    prefix = _infer_prefix(state_dict) if prefix is None else prefix
    backbone = {k[len(prefix):]: v for k, v in state_dict.items()
                if k.startswith(prefix) and isinstance(v, torch.Tensor)}
    folded = fold_backbone(backbone, pool_size)
    new_state = {k: v for k, v in state_dict.items()
                 if not k.startswith(prefix)}
    new_state.update({prefix + k: v for k, v in folded.items()})
    if state_dict is ckpt:
        out = new_state
    else:
        out = {k: v for k, v in ckpt.items() if k != 'optimizer'}
        out['state_dict' if 'state_dict' in ckpt else 'model'] = new_state
        if isinstance(out.get('meta'), dict):
            out['meta'] = dict(out['meta'], poolformer_deploy=True)
    save_checkpoint_file(out, dst)
    return dict(prefix=prefix, plain=len(backbone), folded=len(folded))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='checkpoint (whole model or backbone)')
    parser.add_argument('dst', help='where to write the folded checkpoint')
    parser.add_argument('--prefix', help='backbone key prefix (default: '
                        'found: backbone. in a whole model, none in a bare '
                        'backbone)')
    parser.add_argument('--pool-size', type=int, default=3,
                        help='the backbone pool_size (not stored in weights)')
    parser.add_argument('--trust', action='store_true',
                        help='allow pickled Python objects (weights_only='
                        'False), only for files you trust')
    args = parser.parse_args(argv)
    try:
        info = convert(args.src, args.dst, args.prefix, args.pool_size,
                       args.trust)
    except CheckpointError as error:
        sys.exit(f'error: {error}')
    print(f"{args.src} -> {args.dst}: {info['plain']} backbone tensors "
          f"under {info['prefix']!r} folded into {info['folded']}")


if __name__ == '__main__':
    main()
