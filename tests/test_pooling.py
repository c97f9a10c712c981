"""layers.pooling: eager CPU pooling of NCHW tensors by a depthwise
convolution gives ``F.avg_pool2d``'s values and gradients, in fp32 under
autocast too; channels_last tensors, other dtypes, graphs and
``EAGER_POOL_FORMULATION='native'`` keep ``avg_pool2d``. Speed is measured
in docs/benchmark.md, not here."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mmpoolformer.benchmark import use_formulation
from mmpoolformer.models.layers import Pooling
from mmpoolformer.models.layers.pooling import (EAGER_POOL_FORMULATION,
                                                window_mean,
                                                window_mean_backward)

aten = torch.ops.aten


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(func.overloadpacket)
        return func(*args, **(kwargs or {}))


def _native(x, k):
    return F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)


@pytest.mark.parametrize('k,shape', [(3, (2, 5, 9, 7)), (5, (1, 3, 4, 6)),
                                     (7, (1, 2, 3, 3)), (3, (1, 4, 1, 1))])
def test_values_and_gradients_match_avg_pool2d(k, shape):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    ops = Ops()
    with ops:
        out = window_mean(x, k)
        back = window_mean_backward(grad, x.detach(), k)
    assert aten.convolution in ops.seen
    assert aten.avg_pool2d not in ops.seen
    assert aten.avg_pool2d_backward not in ops.seen
    ref = _native(x, k)
    torch.testing.assert_close(out, ref)
    (ref_grad, ) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(back, ref_grad)
    (autograd_grad, ) = torch.autograd.grad(out, x, grad)
    torch.testing.assert_close(autograd_grad, ref_grad)


def test_autocast_keeps_the_sums_in_fp32():
    x = torch.randn(1, 4, 6, 6)
    with torch.autocast('cpu', torch.bfloat16):
        out = window_mean(x, 3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _native(x, 3))


@pytest.mark.parametrize('case', ['channels_last', 'bfloat16', 'even',
                                  'native', 'traced'])
def test_avg_pool2d_kept(case):
    x = torch.randn(1, 4, 6, 6)
    k = 2 if case == 'even' else 3
    if case == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    if case == 'bfloat16':
        x = x.bfloat16()
    if case == 'traced':  # FLOP counting traces: it must see the pooling
        graph = torch.jit.trace(Pooling(pool_size=3), x).inlined_graph
        assert 'aten::avg_pool2d' in str(graph)
        assert 'aten::_convolution' not in str(graph)
        return
    ops = Ops()
    formulation = 'native' if case == 'native' else None
    with use_formulation(EAGER_POOL_FORMULATION, 'cpu', formulation), ops:
        out = window_mean(x, k)
    assert aten.avg_pool2d in ops.seen and aten.convolution not in ops.seen
    torch.testing.assert_close(out, F.avg_pool2d(
        x, k, 1, k // 2, count_include_pad=False))


def test_bad_formulation():
    with use_formulation(EAGER_POOL_FORMULATION, 'cpu', 'fast'):
        with pytest.raises(ValueError, match="'fast' is not one of"):
            window_mean(torch.randn(1, 2, 4, 4), 3)


def test_benchmark_plain_paths_time_each_pooling():
    """tools/benchmark.py's 'plain' path pools NCHW tensors by convolution
    and its 'plain_atenpool' path (the A/B of docs/benchmark.md) by
    avg_pool2d, on the same weights, to the same outputs."""
    from mmpoolformer.benchmark import BackbonePath, randomized
    from mmpoolformer.models import PoolFormer
    model = randomized(PoolFormer('s12', init_cfg=None)).eval()
    x = torch.randn(1, 3, 32, 32)
    outs = {}
    for name in ('plain', 'plain_atenpool'):
        path = BackbonePath(name, model)
        ops = Ops()
        with ops:
            outs[name] = path(path.prepare(x))
        pooled_by_conv = name == 'plain'
        assert (aten.avg_pool2d in ops.seen) != pooled_by_conv, name
    assert EAGER_POOL_FORMULATION == dict(cpu='conv', other='native')
    for a, b in zip(outs['plain'], outs['plain_atenpool']):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
