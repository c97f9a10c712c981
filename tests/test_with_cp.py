"""``with_cp``: selective checkpointing (True / 'selective': GEMM outputs
saved, norms, pooling, activations and elementwise ops recomputed) and full
recompute ('full') give the same outputs and gradients as no
checkpointing; they really recompute, and selective does not re-run the
convolutions. Memory and time are measured by tools/benchmark.py."""
import copy
import gc
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from autograd_graph import node_names
from mmpoolformer.models import PoolFormer
from reference_poolformer import randomize_

TINY = dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 24, 32], mlp_ratios=2)
aten = torch.ops.aten


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        self.counts[packet] = self.counts.get(packet, 0) + 1
        return func(*args, **(kwargs or {}))


def native_pooling():
    """Pooling as ``avg_pool2d`` ops in eager mode (on CPUs NCHW tensors
    pool by a depthwise convolution, layers.pooling), so that the ops
    counted below tell pooling from the GEMMs."""
    from mmpoolformer.benchmark import use_formulation
    from mmpoolformer.models.layers.pooling import EAGER_POOL_FORMULATION
    return use_formulation(EAGER_POOL_FORMULATION, 'cpu', 'native')


def _grads(model, x, count=False):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    outs = model(x)
    loss = sum(o.square().mean() for o in outs)
    mode = CountOps()
    with mode:
        loss.backward()
    return ([o.detach() for o in outs],
            {n: p.grad.clone() for n, p in model.named_parameters()
             if p.grad is not None}, mode.counts)


def _models(**options):
    torch.manual_seed(0)
    ref = randomize_(PoolFormer(TINY, drop_path_rate=0.2, **options)).train()
    return ref, {mode: copy.deepcopy(ref) for mode in (True, 'full')}


@pytest.mark.parametrize('frozen_stages', [-1, 2])
def test_same_outputs_and_gradients(frozen_stages):
    ref, models = _models(frozen_stages=frozen_stages)
    x = torch.randn(2, 3, 47, 59)
    ref_outs, ref_grads, _ = _grads(ref, x)
    for mode, model in models.items():
        model.with_cp = mode
        outs, grads, _ = _grads(model, x)
        for a, b in zip(ref_outs, outs):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        assert grads.keys() == ref_grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(grads[name], ref_grads[name],
                                       rtol=1e-4, atol=1e-6,
                                       msg=f'{mode} {name}')
    if frozen_stages >= 0:
        assert not any(k.startswith(('patch_embed', 'network.0.',
                                     'network.2.')) for k in ref_grads)


def test_recomputes_norms_and_keeps_gemm_outputs():
    """Ops in the backward: no checkpointing runs no forward op there;
    selective re-runs the norms, pooling and GELU of every block but no
    convolution; full re-runs the convolutions too."""
    from mmpoolformer.benchmark import use_formulation
    from mmpoolformer.models.backbones.base import SELECTIVE_CP_FORMULATION
    ref, models = _models()
    x = torch.randn(2, 3, 40, 48)
    n_blocks = sum(TINY['layers'])
    with native_pooling():
        counts = {False: _grads(ref, x)[2]}
        for mode, model in models.items():
            model.with_cp = mode
            with use_formulation(SELECTIVE_CP_FORMULATION, 'cpu', 'torch'):
                counts[mode] = _grads(model, x)[2]

    def forward_ops(c, op):
        return c.get(op, 0)
    assert forward_ops(counts[False], aten.native_group_norm) == 0
    assert forward_ops(counts[False], aten.convolution) == 0
    for mode in (True, 'full'):
        assert forward_ops(counts[mode], aten.native_group_norm) == \
            2 * n_blocks, mode
        assert forward_ops(counts[mode], aten.avg_pool2d) == n_blocks
        assert forward_ops(counts[mode], aten.gelu) == n_blocks
    assert forward_ops(counts[True], aten.convolution) == 0
    assert forward_ops(counts['full'], aten.convolution) == 2 * n_blocks


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors made in the forward that are still alive after
    it: what the autograd graph (and checkpointing's cache) keeps."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out, )):
            if isinstance(t, torch.Tensor):
                self.made.append(weakref.ref(t.untyped_storage()))
        return out

    def alive(self):
        gc.collect()
        storages = {}
        for ref in self.made:
            storage = ref()
            if storage is not None:
                storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())


def kept(model, x) -> int:
    """Bytes the forward of ``model(x)`` leaves for the backward."""
    mode = LiveBytes()
    with mode:
        outs = model(x)
    nbytes = mode.alive()
    del outs
    return nbytes


def test_selective_keeps_far_less_than_no_checkpointing():
    """Selective keeps each block's input and its two conv outputs;
    no checkpointing also keeps the norms', pooling's and GELU's outputs;
    full keeps only the block inputs."""
    ref, models = _models()
    x = torch.randn(2, 3, 64, 64)
    plain = kept(ref, x)
    models[True].with_cp = True
    models['full'].with_cp = 'full'
    selective = kept(models[True], x)
    full = kept(models['full'], x)
    assert full < selective < 0.6 * plain, (full, selective, plain)


def test_no_checkpointing_in_eval_or_no_grad():
    ref, models = _models()
    model = models[True]
    model.with_cp = True
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
    model.eval()
    model(x)  # no checkpoint warnings/errors either way


def test_bad_with_cp():
    with pytest.raises(ValueError, match="with_cp='yes'.*'full'"):
        PoolFormer(TINY, with_cp='yes')


def test_selective_recomputes_constant_kernel_convolutions():
    """The selective policy keeps the outputs of convolutions with learned
    kernels but recomputes one whose kernel takes no gradient (compiled CPU
    graphs pool that way: a depthwise kernel of ones)."""
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from mmpoolformer.models.backbones.base import _selective_context
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 1)
    ones = torch.ones(4, 1, 3, 3)

    def block(x):
        return F.conv2d(conv(x), ones, None, 1, 1, 1, 4).sin()
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = checkpoint(block, x, use_reentrant=False,
                     context_fn=_selective_context)
    mode = CountOps()
    with mode:
        out.sum().backward()
    # sin's backward needs its input: the ones-kernel convolution's output,
    # recomputed; the learned convolution's output was kept
    assert mode.counts.get(aten.convolution, 0) == 1
    grad = x.grad.clone()
    x.grad = None
    block(x).sum().backward()
    torch.testing.assert_close(grad, x.grad)


# ------------------------------------------------ hand-written recompute
# In eager mode with_cp=True runs each PoolFormer block without drop path
# or dropout as one autograd function (layers.recompute) that keeps what
# the selective policy keeps; anything else goes through torch's
# checkpointing (backbones.base.SELECTIVE_CP_FORMULATION).
def _hand_nodes(outs) -> int:
    """Autograd nodes of the hand-written block function behind ``outs``."""
    return node_names(outs).count('RecomputedPoolFormerBlockBackward')


def _by_hand_models(**options):
    torch.manual_seed(0)
    ref = randomize_(PoolFormer(TINY, **options)).train()
    model = copy.deepcopy(ref)
    model.with_cp = True
    return ref, model


@pytest.mark.parametrize('native', [False, True])
def test_by_hand_gradcheck(native):
    """The hand-written backward against finite differences (float64),
    with the statistics from either GroupNorm formulation."""
    from mmpoolformer.models.layers import GELU
    from mmpoolformer.models.layers.recompute import \
        RecomputedPoolFormerBlock
    torch.manual_seed(0)
    c, hidden = 4, 8

    def r(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    for act in (GELU(), GELU(approximate='tanh')):
        args = (r(2, c, 5, 6), r(c), r(c), r(c), r(c), r(c),
                r(hidden, c, 1, 1), r(hidden), r(c, hidden, 1, 1), r(c), r(c),
                1e-5, 1e-6, 3, act, native)
        assert torch.autograd.gradcheck(RecomputedPoolFormerBlock.apply,
                                        args, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize('frozen_stages,channels_last',
                         [(-1, False), (2, False), (-1, True)])
def test_by_hand_same_outputs_and_gradients(frozen_stages, channels_last):
    ref, model = _by_hand_models(frozen_stages=frozen_stages)
    x = torch.randn(2, 3, 47, 59)
    if channels_last:
        for m in (ref, model):
            m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ref_outs, ref_grads, _ = _grads(ref, x)
    outs, grads, _ = _grads(model, x)
    trainable = sum(TINY['layers'][max(frozen_stages, 0):])
    assert _hand_nodes(model(x)) == trainable
    assert _hand_nodes(ref(x)) == 0
    for a, b in zip(ref_outs, outs):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4,
                                   atol=1e-6, msg=name)


def test_by_hand_recomputes_and_keeps_what_selective_keeps():
    """Backward: pooling and GELU once per block, no forward convolution;
    kept for the backward: no more than torch's selective checkpointing."""
    from mmpoolformer.benchmark import use_formulation
    from mmpoolformer.models.backbones.base import SELECTIVE_CP_FORMULATION
    ref, model = _by_hand_models()
    x = torch.randn(2, 3, 64, 64)
    with native_pooling():
        counts = _grads(model, x)[2]
    n_blocks = sum(TINY['layers'])
    assert counts.get(aten.avg_pool2d, 0) == n_blocks
    assert counts.get(aten.gelu, 0) == n_blocks
    assert counts.get(aten.convolution, 0) == 0
    plain, by_hand = kept(ref, x), kept(model, x)
    with use_formulation(SELECTIVE_CP_FORMULATION, 'cpu', 'torch'):
        sac = kept(model, x)
    assert by_hand <= sac < 0.6 * plain, (by_hand, sac, plain)


def test_by_hand_falls_back_to_torch_checkpointing():
    """Drop path, dropout, module hooks and SELECTIVE_CP_FORMULATION='torch'
    take torch's checkpointing, with the same gradients."""
    from mmpoolformer.benchmark import use_formulation
    from mmpoolformer.models.backbones.base import SELECTIVE_CP_FORMULATION
    x = torch.randn(1, 3, 32, 32)
    _, model = _by_hand_models(drop_rate=0.1)
    assert _hand_nodes(model(x)) == 0
    # drop path rises from 0: the first block has none
    _, model = _by_hand_models(drop_path_rate=0.1)
    assert _hand_nodes(model(x)) == 1
    ref, model = _by_hand_models()
    with use_formulation(SELECTIVE_CP_FORMULATION, 'cpu', 'torch'):
        assert _hand_nodes(model(x)) == 0
    calls = []
    block = model.network[0][0]
    handle = block.mlp.fc1.register_forward_hook(
        lambda *args: calls.append(1))
    outs = model(x)
    assert calls and _hand_nodes(outs) == sum(TINY['layers']) - 1
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda *args: calls.append(2))
    try:
        outs = model(x)
    finally:
        handle.remove()
    assert 2 in calls and _hand_nodes(outs) == 0
    torch.testing.assert_close(_grads(model, x)[1], _grads(ref, x)[1],
                               rtol=1e-4, atol=1e-6)


def test_by_hand_under_autocast():
    """bf16 autocast: the convolutions in bf16, the rest in fp32 (the
    residual stream fp32, as without checkpointing); fp32 parameter
    gradients close to the fp32 ones."""
    ref, model = _by_hand_models()
    x = torch.randn(2, 3, 32, 48)
    ref_grads = _grads(ref, x)[1]
    with torch.autocast('cpu', torch.bfloat16):
        plain_outs = ref(x)
        outs, grads, _ = _grads(model, x)
        assert _hand_nodes(model(x)) == sum(TINY['layers'])
    assert [o.dtype for o in outs] == [o.dtype for o in plain_outs]
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name
        if name.endswith('norm1.bias'):  # cancels: exactly zero
            assert not grad.any(), name
            continue
        cos = torch.nn.functional.cosine_similarity(
            grad.flatten(), ref_grads[name].flatten(), dim=0)
        assert cos > 0.999, (name, cos)
