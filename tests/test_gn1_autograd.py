"""The hand-written backwards of the 'stats' one-group GroupNorm
(``layers.gn1_autograd``): exact gradients (float64 gradcheck), used in eager
training only, the same gradients as autograd through the formula, and less
kept for the backward. 'stats' is the CUDA default; set here on the CPU."""
import copy

import pytest
import torch

from autograd_graph import node_names
from mmpoolformer.benchmark import randomized, use_formulation
from mmpoolformer.models import PoolFormer
from mmpoolformer.models.backbones.poolformer import PoolFormerBlock
from mmpoolformer.models.layers.gn1_autograd import (StatsGroupNorm1,
                                                     StatsPoolMixer, wanted)
from mmpoolformer.models.layers.norms import GN1_FORMULATION

TINY = dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 24, 32], mlp_ratios=2)


def formulation(value):
    return use_formulation(GN1_FORMULATION, 'cpu', value)


def _inputs(*shape):
    torch.manual_seed(0)
    # an offset and a spread away from 0 and 1: rstd's gradient matters
    return (torch.randn(*shape, dtype=torch.double) * 2 + 3).requires_grad_()


def _param(c, seed):
    torch.manual_seed(seed)
    return torch.randn(c, dtype=torch.double, requires_grad=True)


@pytest.mark.parametrize('affine', [True, False])
def test_group_norm1_gradients_are_exact(affine):
    x = _inputs(2, 5, 7, 6)
    w, b = (_param(5, 1), _param(5, 2)) if affine else (None, None)
    assert torch.autograd.gradcheck(
        lambda *t: StatsGroupNorm1.apply(x, *t, 1e-5) if affine else
        StatsGroupNorm1.apply(t[0], None, None, 1e-5),
        (w, b) if affine else (x, ))
    assert torch.autograd.gradcheck(
        lambda x: StatsGroupNorm1.apply(x, w, b, 1e-5), (x, ))
    out = StatsGroupNorm1.apply(x, w, b, 1e-5)
    ref = torch.nn.functional.group_norm(x, 1, w, b, 1e-5)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize('pool_size', [3, 5])
def test_pool_mixer_gradients_are_exact(pool_size):
    x = _inputs(2, 5, 7, 6)
    ls1, g1, b1 = _param(5, 1), _param(5, 2), _param(5, 3)
    args = (x, ls1, g1, b1)
    assert torch.autograd.gradcheck(
        lambda *t: StatsPoolMixer.apply(*t, 1e-5, pool_size), args)
    # the value it stands for: ls1 * (pool(n1(x)) - n1(x))
    normed = torch.nn.functional.group_norm(x, 1, g1, b1, 1e-5)
    pooled = torch.nn.functional.avg_pool2d(
        normed, pool_size, 1, pool_size // 2, count_include_pad=False)
    ref = ls1.view(1, -1, 1, 1) * (pooled - normed)
    out = StatsPoolMixer.apply(*args, 1e-5, pool_size)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    out.square().sum().backward()
    assert torch.equal(b1.grad, torch.zeros_like(b1))  # cancels exactly


def test_used_in_eager_training_only():
    model = randomized(PoolFormer(TINY)).train()
    x = torch.randn(1, 3, 32, 32)
    with formulation('stats'):
        names = set(node_names(model(x)))
        assert {'StatsPoolMixerBackward', 'StatsGroupNorm1Backward'} <= names
        with torch.no_grad():
            assert not wanted(x.requires_grad_())

        def pick(t):
            return t * 2 if wanted(t) else t * 3
        t = torch.ones(2, requires_grad=True)
        assert pick(t)[0] == 2
        compiled = torch.compile(pick, backend='eager', fullgraph=True)
        assert compiled(t)[0] == 3  # compiled graphs keep the formula
        assert torch.jit.trace(pick, t)(t)[0] == 3
        torch._dynamo.reset()
    for value in ('native', 'stats_autograd'):
        with formulation(value):
            names = set(node_names(model(x)))
        assert not {n for n in names if n.startswith('Stats')}, value


def test_unknown_formulation_is_named():
    with formulation('fast'):
        with pytest.raises(ValueError, match="'fast' is not one of"):
            PoolFormer(TINY)(torch.randn(1, 3, 32, 32))


def _saved_bytes_and_grads(block, x, value):
    saved = {}

    def pack(t):
        saved[(t.data_ptr(), t.dtype, tuple(t.shape))] = (
            t.numel() * t.element_size())
        return t
    block = copy.deepcopy(block)
    inp = x.clone().requires_grad_()
    with formulation(value), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = block(inp)
    out.square().sum().backward()
    grads = {n: p.grad for n, p in block.named_parameters()}
    grads['input'] = inp.grad
    return sum(saved.values()), grads


def test_same_gradients_as_the_formula_with_less_kept():
    torch.manual_seed(0)
    block = randomized(PoolFormerBlock(16, 2)).train()
    x = torch.randn(2, 16, 13, 11) * 1.5 + 0.5
    fused_bytes, fused = _saved_bytes_and_grads(block, x, 'stats')
    # 'stats_autograd': the same formula, differentiated by autograd
    formula_bytes, formula = _saved_bytes_and_grads(block, x,
                                                    'stats_autograd')
    for name, grad in formula.items():
        scale = grad.abs().max().clamp_min(1e-12)
        assert ((fused[name] - grad).abs().max() / scale) < 1e-5, name
    # the formula also keeps the centred input of norm2 and pool(x) - x;
    # the functions keep their inputs and per-image statistics only
    activation = x.numel() * x.element_size()
    assert formula_bytes - fused_bytes >= 2 * activation, (formula_bytes,
                                                           fused_bytes)
