"""What every dense backbone of this package shares: ``out_indices``,
``frozen_stages``, ``norm_eval``, ``with_cp`` (selective or full activation
checkpointing of the blocks run through :meth:`DenseBackbone._run_blocks`),
``compile`` (``torch.compile`` of the backbone's forward, in place), the
deprecated ``pretrained`` and ``FORK_LAST3`` switches, input checks, and
``Pretrained`` loading through :func:`mmpoolformer.checkpoint.load_pretrained`.

A subclass builds its layers, sets ``checkpoint_layout`` (a
:class:`~mmpoolformer.checkpoint.CheckpointLayout`) and implements
:meth:`DenseBackbone.stage_modules` and ``forward``. A block may offer
``recomputes_by_hand(x)`` and ``forward_recomputed(x)``: its own selective
checkpointing, which ``with_cp=True`` uses in eager mode where the first
says True (see ``SELECTIVE_CP_FORMULATION``).
"""
import copy
import logging
import numbers
import os
import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule

from mmpoolformer.checkpoint import CheckpointLayout, load_pretrained
from mmpoolformer.models.layers.formulations import formulation_key
from mmpoolformer.models.layers.tracing import shapes_are_symbolic

NUM_STAGES = 4
# The stem is a stride-4 conv: smaller images have no stride-4 pixel.
MIN_INPUT_SIZE = 4
_FALSE_STRINGS = ('', '0', 'false', 'no', 'off')
CP_MODES = ('selective', 'full')

# Selective activation checkpointing: inside a checkpointed block the
# outputs of these ops (the GEMMs: convolutions and matrix multiplies) are
# kept from the forward; everything else (norms, pooling, activations,
# elementwise ops) is recomputed in the backward. A convolution whose kernel
# takes no gradient is recomputed too: that is how compiled CPU graphs pool
# (a depthwise kernel of ones, layers.mixers.POOL_FORMULATION), and pooling
# is cheap to recompute.
_aten = torch.ops.aten
SAVED_OPS = frozenset(
    getattr(_aten, name) for name in (
        'convolution', '_convolution', 'mm', 'addmm', 'bmm', 'baddbmm',
        '_scaled_dot_product_flash_attention',
        '_scaled_dot_product_efficient_attention',
        '_scaled_dot_product_cudnn_attention',
        '_scaled_dot_product_flash_attention_for_cpu')
    if hasattr(_aten, name))
_CONVOLUTIONS = frozenset((_aten.convolution, _aten._convolution))

# How with_cp=True recomputes in eager mode, per device type ('other': every
# device not named): 'by_hand' runs a block that offers it
# (``recomputes_by_hand``/``forward_recomputed``: PoolFormer's, see
# layers.recompute) as one autograd function keeping the same tensors as the
# policy above; 'torch' checkpoints every block through
# torch.utils.checkpoint with that policy. Both keep the GEMM outputs; torch's
# way runs each op of a block through a Python dispatch mode twice, which on
# an H200 made the eager S12 training step 3.4x slower (docs/benchmark.md).
# Compiled graphs and blocks without a hand-written form take torch's.
SELECTIVE_CP_FORMULATION = dict(other='by_hand')
SELECTIVE_CP_FORMULATIONS = ('by_hand', 'torch')


def lookup_arch(arch: Union[str, dict], table: dict, family: str,
                optional: Sequence[str] = ()) -> dict:
    """The arch dict of a name in ``table`` (any case), or a custom dict
    with ``layers`` and ``embed_dims`` (4 positive integers each, returned
    as tuples) and any of the ``optional`` keys (returned as given). Errors
    name the valid names and keys."""
    keys = ('layers', 'embed_dims') + tuple(optional)
    if isinstance(arch, str):
        if arch.lower() not in table:
            raise ValueError(
                f'Unknown {family} arch {arch!r}. Valid names: '
                f'{", ".join(table)}; or pass a dict with keys layers and '
                'embed_dims (4 entries each)' +
                (f' and optionally {", ".join(optional)}' if optional
                 else '') + '.')
        arch = table[arch.lower()]
    if not isinstance(arch, dict):
        raise TypeError(f'arch must be a name or a dict, got {type(arch)}')
    unknown = set(arch) - set(keys)
    missing = {'layers', 'embed_dims'} - set(arch)
    if unknown or missing:
        raise ValueError(
            f'Custom {family} arch {arch} is invalid: missing keys '
            f'{sorted(missing)}, unknown keys {sorted(unknown)}. Allowed '
            f'keys: {keys} (layers and embed_dims required, 4 entries '
            'each).')
    resolved = dict(arch)
    for name in ('layers', 'embed_dims'):
        value = tuple(int(n) for n in arch[name])
        if len(value) != NUM_STAGES or min(value) <= 0:
            raise ValueError(f'{family} arch {name} must be {NUM_STAGES} '
                             f'positive integers, got {value}')
        resolved[name] = value
    return resolved


def save_gemm_outputs_policy(ctx, op, *args, **kwargs):
    """The selective checkpointing policy of ``with_cp=True``: keep the
    outputs of convolutions and matmuls (``SAVED_OPS``) but not of
    convolutions with a kernel that takes no gradient; recompute the
    rest."""
    packet = getattr(op, 'overloadpacket', op)
    if packet in SAVED_OPS and not (
            packet in _CONVOLUTIONS and isinstance(args[1], torch.Tensor)
            and not args[1].requires_grad):
        return cp.CheckpointPolicy.MUST_SAVE
    return cp.CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context():
    return cp.create_selective_checkpoint_contexts(save_gemm_outputs_policy)


def normalize_with_cp(with_cp) -> Optional[str]:
    """``False``/``None`` -> None, ``True``/``'selective'`` -> 'selective',
    ``'full'`` -> 'full'."""
    if with_cp is None or with_cp is False:
        return None
    if with_cp is True:
        return 'selective'
    if isinstance(with_cp, str) and with_cp in CP_MODES:
        return with_cp
    raise ValueError(
        f'with_cp={with_cp!r}: use False, True (selective checkpointing: '
        "keep the GEMM outputs, recompute norms, pooling and activations), "
        "'selective' (the same) or 'full' (recompute whole blocks).")


def normalize_compile(compile) -> Optional[dict]:
    """``False``/``None`` -> None, ``True`` -> ``{}``, a dict -> a copy
    (keyword arguments of ``torch.compile``)."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return {}
    if isinstance(compile, dict):
        options = dict(compile)
        if 'model' in options:
            raise ValueError('compile: give torch.compile keyword '
                             'arguments only (not `model`)')
        return options
    raise TypeError(f'compile={compile!r}: use False, True or a dict of '
                    "torch.compile keyword arguments, e.g. "
                    "dict(mode='max-autotune', dynamic=False).")


def env_fork_last3() -> Optional[bool]:
    """The official code's process-global switch, kept for old configs."""
    value = os.environ.get('FORK_LAST3')
    if value is None:
        return None
    return value.strip().lower() not in _FALSE_STRINGS


def normalize_out_indices(out_indices, name: str = 'The backbone'
                          ) -> Tuple[int, ...]:
    """Stage indices (0-3) in order; raise on an empty, out-of-range or
    repeated entry."""
    if isinstance(out_indices, int):
        out_indices = (out_indices, )
    if (not isinstance(out_indices, Sequence)
            or isinstance(out_indices, str)):
        raise TypeError('out_indices must be a non-empty tuple or list '
                        f'of stage indices, got {out_indices!r}')
    if not out_indices:
        raise ValueError(
            f'out_indices {out_indices!r} is empty: the backbone would '
            f'return nothing. Name the stages to output (0-'
            f'{NUM_STAGES - 1}), e.g. out_indices=(0, 1, 2, 3).')
    result = []
    for index in out_indices:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(f'out_indices entries must be integers, got '
                            f'{index!r} in {out_indices!r}')
        if not -NUM_STAGES <= index < NUM_STAGES:
            raise ValueError(
                f'out_indices {tuple(out_indices)} names stage {index}, '
                f'but {name} has {NUM_STAGES} stages: use 0-'
                f'{NUM_STAGES - 1} (or -{NUM_STAGES} to -1 from the '
                'end), e.g. out_indices=(0, 1, 2, 3).')
        result.append(int(index) % NUM_STAGES)
    if len(set(result)) != len(result):
        raise ValueError(f'out_indices {out_indices} names a stage twice')
    return tuple(sorted(result))


class DenseBackbone(BaseModule):
    """Base of the four-stage backbones (strides 4/8/16/32).

    Args:
        in_channels (int): Input image channels.
        out_indices (Sequence[int]): Stages whose features are returned.
        fork_feat (bool): Dense mode (True) or the ImageNet classifier.
        frozen_stages (int): -1 freezes nothing, 0 the stem, k the stem and
            stages 1..k (up to 4).
        norm_eval (bool): Keep batch norms in eval mode while training.
        with_cp (bool | str): Activation checkpointing of each block while
            training: False (none), True or ``'selective'`` (keep the
            outputs of the convolutions/matmuls, recompute norms, pooling,
            activations and elementwise ops in the backward: torch's
            selective activation checkpointing, or a block's own
            ``forward_recomputed``, see ``SELECTIVE_CP_FORMULATION``),
            ``'full'`` (keep only each block's input and recompute the whole
            block).
        compile (bool | dict): ``torch.compile`` the backbone's forward
            (training and inference), lazily on the first call and in place:
            the module, its parameters and state-dict keys stay as they are.
            True uses torch's defaults; a dict gives ``torch.compile``
            keyword arguments (on a GPU ``dict(mode='reduce-overhead')``:
            CUDA graphs, see docs/benchmark.md). Input checks run before
            the compiled region. Skipped while an enclosing ``torch.compile``,
            ``torch.jit.trace`` or TorchScript runs the model.
        pretrained (str, optional): Deprecated; becomes ``init_cfg``.
        init_cfg (dict | list[dict], optional): Initialization config.
    """
    checkpoint_layout: CheckpointLayout = None
    default_arch = None

    @classmethod
    def arch_embed_dims(cls, arch) -> Tuple[int, ...]:
        """The four stage widths of ``arch`` (a name or a dict), without
        building the model; an unknown arch raises the backbone's error."""
        raise NotImplementedError

    def __init__(self, in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 fork_feat: bool = True, frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: Union[bool, str] = False,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[Union[dict, list]] = None,
                 compile: Union[bool, dict] = False):
        name = type(self).__name__
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('Give the checkpoint either as `pretrained` '
                                 'or in `init_cfg`, not both.')
            if not isinstance(pretrained, str):
                raise TypeError('pretrained must be a path or URL string, '
                                f'got {type(pretrained)}')
            warnings.warn(
                f'{name}(pretrained=...) is deprecated; use '
                "init_cfg=dict(type='Pretrained', checkpoint=...).",
                DeprecationWarning)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=copy.deepcopy(init_cfg))
        self.in_channels = in_channels
        self.fork_feat = fork_feat
        self.out_indices = normalize_out_indices(out_indices, name)
        if (isinstance(frozen_stages, bool)
                or not isinstance(frozen_stages, numbers.Integral)
                or not -1 <= frozen_stages <= NUM_STAGES):
            raise ValueError(
                f'frozen_stages={frozen_stages!r} is out of range: {name} '
                f'has {NUM_STAGES} stages, so use an integer from -1 to '
                f'{NUM_STAGES} (-1 freezes nothing, 0 the stem, k the stem '
                f'and stages 1..k; {NUM_STAGES} freezes every stage).')
        self.frozen_stages = int(frozen_stages)
        self.norm_eval = norm_eval
        normalize_with_cp(with_cp)  # validate; read again at run time
        self.with_cp = with_cp
        # not `self.compile`: that would hide nn.Module.compile
        self.compile_cfg = normalize_compile(compile)

    def _resolve_fork_last3(self, fork_last3: Optional[bool],
                            norm0: str = 'norm0') -> bool:
        """``fork_last3`` checked against ``out_indices``; None reads the
        deprecated ``FORK_LAST3`` variable (with a warning when it drops
        the stage-0 output norm)."""
        name = type(self).__name__
        uses_norm0 = self.fork_feat and 0 in self.out_indices
        if fork_last3 and self.fork_feat and not uses_norm0:
            raise ValueError(
                'fork_last3=True only changes the stage-0 output (it drops '
                f'{norm0}), but out_indices {self.out_indices} has '
                'no stage 0. Remove fork_last3 (or set it False), or add 0 '
                'to out_indices.')
        if fork_last3 is None:
            fork_last3 = env_fork_last3()
            if fork_last3 is not None:
                warnings.warn(
                    'The FORK_LAST3 environment variable is deprecated; set '
                    f'backbone=dict(type="{name}", fork_last3=True) in '
                    'the config instead.', DeprecationWarning)
            if fork_last3 and uses_norm0:
                print_log(
                    f'FORK_LAST3={os.environ["FORK_LAST3"]} in the '
                    f'environment makes this {name} return its stage-0 '
                    f'(stride 4) feature without {norm0} '
                    '(fork_last3=True). That suits only necks that skip '
                    'level 0 (RetinaNet). The variable is deprecated and '
                    f'changes every {name} in the process: run `unset '
                    'FORK_LAST3` and say fork_last3=True or False in the '
                    'backbone config.',
                    logger='current',
                    level=logging.WARNING)
        return bool(fork_last3)

    def stage_modules(self, stage: int):
        """Modules that make up ``stage`` (0-3): its downsampling layer (or
        the stem for stage 0), its blocks and its output norm."""
        raise NotImplementedError

    def _frozen_modules(self):
        modules = []
        if self.frozen_stages >= 0:
            modules.append(self.stage_modules(0)[0])  # the stem
        for stage in range(self.frozen_stages):
            modules += self.stage_modules(stage)
        return modules

    def _freeze_stages(self):
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        """Switch mode, keeping frozen stages (and all norms if
        ``norm_eval``) in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, (nn.GroupNorm,
                                  nn.modules.batchnorm._BatchNorm)):
                    m.eval()
        return self

    def init_weights(self):
        """Initialize; a ``Pretrained`` init_cfg loads through
        :func:`mmpoolformer.checkpoint.load_pretrained`, exactly once."""
        cfgs = self.init_cfg
        cfgs = [cfgs] if isinstance(cfgs, dict) else list(cfgs or [])
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        if self._is_init or not pretrained:
            return super().init_weights()
        if len(pretrained) > 1:
            raise ValueError(f'{type(self).__name__} init_cfg names more '
                             f'than one Pretrained checkpoint: {pretrained}')
        others = [c for c in cfgs if c.get('type') != 'Pretrained']
        self.init_cfg = others or None
        try:
            super().init_weights()
        finally:
            self.init_cfg = cfgs if len(cfgs) > 1 else cfgs[0]
        options = {k: v for k, v in pretrained[0].items() if k != 'type'}
        load_pretrained(self, **options)

    def _run_blocks(self, blocks: nn.Module, x: torch.Tensor):
        """Run a stage's blocks, checkpointing each one under ``with_cp``
        while training with gradients (selective: GEMM outputs saved, the
        rest recomputed; full: whole block recomputed). Blocks of frozen
        stages (nothing needs a gradient) run plainly."""
        mode = normalize_with_cp(self.with_cp)
        if (mode is None or not self.training
                or not torch.is_grad_enabled()
                or not (x.requires_grad or any(
                    p.requires_grad for p in blocks.parameters()))):
            return blocks(x)
        context = {} if mode == 'full' else dict(
            context_fn=_selective_context)
        by_hand = mode == 'selective' and SELECTIVE_CP_FORMULATION[
            formulation_key(SELECTIVE_CP_FORMULATION, x.device.type)] == \
            'by_hand'
        for block in blocks:
            if by_hand and getattr(block, 'recomputes_by_hand',
                                   lambda _: False)(x):
                x = block.forward_recomputed(x)
            else:
                x = cp.checkpoint(block, x, use_reentrant=False, **context)
        return x

    # ------------------------------------------------------------ compile
    def __call__(self, *args, **kwargs):
        options = self.__dict__.get('compile_cfg')
        if options is None or shapes_are_symbolic():
            return super().__call__(*args, **kwargs)
        if args:
            # checked here, outside the compiled region (where it is
            # skipped): a bad input raises the same clear error
            self._check_input(args[0])
        compiled = self.__dict__.get('_compiled_call')
        if compiled is None:
            # Compile Module._call_impl (forward and hooks) of this very
            # module, as nn.Module.compile does: no wrapper module, so
            # parameters and state-dict keys are unchanged.
            compiled = torch.compile(self._call_impl, **options)
            self.__dict__['_compiled_call'] = compiled
        return compiled(*args, **kwargs)

    def __getstate__(self):
        # the compiled callable is bound to this instance: a copy (deepcopy,
        # pickle) compiles its own on its first call
        state = dict(self.__dict__)
        state.pop('_compiled_call', None)
        return state

    def _check_input(self, x: torch.Tensor):
        """Shape checks only (cheap, no device sync); skipped under
        ``torch.compile``, ``torch.jit.trace`` and TorchScript."""
        if shapes_are_symbolic() or not isinstance(x, torch.Tensor):
            return  # e.g. a torch.fx proxy
        name = type(self).__name__
        shape = tuple(x.shape)
        if x.dim() != 4:
            hint = (' For a single image, add the batch dimension: '
                    'x.unsqueeze(0).' if x.dim() == 3 else '')
            raise ValueError(
                f'{name} expects a batch of images shaped (N, C, H, W); '
                f'got a {x.dim()}-D tensor of shape {shape}.{hint}')
        if shape[1] != self.in_channels:
            hint = ('move the channels to the second axis with '
                    'x.permute(0, 3, 1, 2)' if shape[3] == self.in_channels
                    else 'convert the images (e.g. grayscale to RGB, or drop '
                    'an alpha channel)')
            raise ValueError(
                f'{name} was built for {self.in_channels}-channel images '
                f'(in_channels={self.in_channels}) but got {shape[1]} '
                f'channels (input shape {shape}, read as N, C, H, W): '
                f'{hint}, or build the backbone with '
                f'in_channels={shape[1]}.')
        if shape[0] == 0:
            raise ValueError(
                f'{name} got an empty batch (input shape {shape}); pass '
                'at least one image.')
        if min(shape[2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f'{name} needs images of at least {MIN_INPUT_SIZE}x'
                f'{MIN_INPUT_SIZE} pixels (the stride of its stem), got '
                f'{shape[2]}x{shape[3]} (input shape {shape}). Resize or pad '
                'the images (in an mmdet/mmseg pipeline: a Resize or Pad '
                'transform).')
