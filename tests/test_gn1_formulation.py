"""The two formulations of the one-group GroupNorm (layers.norms
``GN1_FORMULATION``): 'native' (``F.group_norm``) and 'stats' (statistics
from ``torch.var_mean``, PoolFormer's token mixer rewritten from them), the
default on CUDA. Both run here on the CPU by setting the table."""
import copy

import pytest
import torch
import torch.nn.functional as F

from mmpoolformer.benchmark import randomized, use_formulation
from mmpoolformer.models import PoolFormer, PoolFormerV2
from mmpoolformer.models.layers.norms import GN1_FORMULATION, group_norm1

TINY = dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 24, 32], mlp_ratios=2)


def formulation(value):
    return use_formulation(GN1_FORMULATION, 'cpu', value)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize('shape', [(2, 5, 7, 9), (3, 4, 11)])
@pytest.mark.parametrize('affine', [True, False])
def test_group_norm1_matches_f_group_norm(shape, affine):
    torch.manual_seed(0)
    # an offset far above the spread: the centred formulation keeps it exact
    x = torch.randn(shape) * 0.1 + 30
    weight = torch.randn(shape[1]) if affine else None
    bias = torch.randn(shape[1]) if affine else None
    ref = F.group_norm(x, 1, weight, bias, 1e-5)
    with formulation('stats'):
        out = group_norm1(x, weight, bias, 1e-5)
    assert rel(out, ref) < 1e-4
    with formulation('native'):
        assert torch.equal(group_norm1(x, weight, bias, 1e-5), ref)


def test_group_norm1_dtypes_follow_f_group_norm():
    x = torch.randn(2, 4, 6, 6).bfloat16()
    w, b = torch.ones(4), torch.zeros(4)
    with formulation('stats'):
        assert group_norm1(x, w.bfloat16(), b.bfloat16(),
                           1e-5).dtype == torch.bfloat16
        with torch.autocast('cpu', dtype=torch.bfloat16):
            stats = group_norm1(x, w, b, 1e-5)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        native = F.group_norm(x, 1, w, b, 1e-5)
    assert stats.dtype == native.dtype


def _train_step(model, x, value):
    model = copy.deepcopy(model)
    torch.manual_seed(1)  # the same drop-path masks in every run
    with formulation(value):
        outs = model(x)
        sum(o.square().mean() for o in outs).backward()
    return outs, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize('with_cp', [False, True])
def test_poolformer_stats_equals_native(with_cp):
    torch.manual_seed(0)
    model = randomized(PoolFormer(TINY, drop_path_rate=0.2,
                                  with_cp=with_cp)).train()
    x = torch.randn(2, 3, 45, 61)
    native, g_native = _train_step(model, x, 'native')
    stats, g_stats = _train_step(model, x, 'stats')
    for a, b in zip(stats, native):
        assert rel(a, b) < 1e-5
    for name, grad in g_native.items():
        if name.endswith('norm1.bias'):
            # the token mixer cancels it: an exact zero, not rounding noise
            # and not None (optimizers and DDP see it used)
            assert g_stats[name] is not None
            assert not g_stats[name].any() and grad.abs().max() < 1e-6
        else:
            assert rel(g_stats[name], grad) < 1e-4, name


def test_with_cp_recomputes_the_same_stats_graph():
    torch.manual_seed(0)
    plain = randomized(PoolFormer(TINY, drop_path_rate=0.2)).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.with_cp = 'full'
    x = torch.randn(2, 3, 33, 47)
    _, g_plain = _train_step(plain, x, 'stats')
    _, g_cp = _train_step(checkpointed, x, 'stats')
    for name, grad in g_plain.items():
        assert torch.equal(g_cp[name], grad), name


def test_deploy_and_classifier_and_metaformer_follow_the_table():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 50, 38)
    models = [randomized(PoolFormer(TINY)).eval(),
              randomized(PoolFormer(TINY, fork_feat=False,
                                    num_classes=7)).eval(),
              randomized(PoolFormerV2(dict(layers=[1, 1, 1, 1],
                                           embed_dims=[8, 8, 16, 16]),
                                      fork_feat=False, num_classes=5)).eval()]
    models.append(copy.deepcopy(models[0]).switch_to_deploy())
    with torch.no_grad():
        for model in models:
            with formulation('native'):
                native = model(x)
            with formulation('stats'):
                stats = model(x)
            native = native if isinstance(native, tuple) else (native, )
            stats = stats if isinstance(stats, tuple) else (stats, )
            for a, b in zip(stats, native):
                assert rel(a, b) < 1e-5, type(model).__name__
