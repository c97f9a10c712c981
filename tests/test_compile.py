"""``compile=``: the backbone compiled in place gives the eager numbers
(outputs and gradients) with frozen stages, ``with_cp`` and ``norm_eval``,
keeps its state-dict keys, runs inside a real mmdet model and under DDP.

Most tests use ``backend='aot_eager'`` (dynamo + AOTAutograd's joint graph,
no C++ build); one test runs inductor on a tiny arch. Speed is measured by
tools/benchmark.py, not here."""
import copy
import os
import time

import pytest
import torch

from mmpoolformer.models import PoolFormer
from mmpoolformer.registry import MODELS
from reference_poolformer import randomize_

TINY = dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 24, 32], mlp_ratios=2)
AOT = dict(backend='aot_eager', fullgraph=True, dynamic=False)


def _step(model, x, seed=1):
    """Outputs and parameter gradients of one backward."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same drop-path draws
    outs = model(x)
    sum(o.float().square().mean() for o in outs).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return [o.detach() for o in outs], grads


def _assert_same(ref, out, rtol=1e-4, atol=1e-6):
    (ref_outs, ref_grads), (outs, grads) = ref, out
    for a, b in zip(ref_outs, outs):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=rtol,
                                   atol=atol, msg=name)


def _pair(compile_cfg=AOT, **options):
    torch.manual_seed(0)
    eager = randomize_(PoolFormer(TINY, **options)).train()
    compiled = copy.deepcopy(eager)
    compiled.compile_cfg = dict(compile_cfg)
    return eager, compiled


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize('options', [
    dict(drop_path_rate=0.2),
    dict(frozen_stages=2, with_cp=True),
    dict(with_cp='full', fork_last3=True),
    dict(norm_cfg=dict(type='BN'), norm_eval=True, frozen_stages=1),
])
def test_compiled_training_matches_eager(options):
    eager, compiled = _pair(**options)
    x = torch.randn(2, 3, 40, 48)
    ref = _step(eager, x)
    out = _step(compiled, x)
    _assert_same(ref, out)
    assert '_compiled_call' in compiled.__dict__  # it did compile
    frozen = options.get('frozen_stages', -1)
    for module in compiled._frozen_modules():
        assert not module.training
        for param in module.parameters():
            assert param.grad is None
    if frozen >= 0:
        assert 'patch_embed.proj.weight' not in out[1]
    if options.get('norm_eval'):  # batch norm statistics stay put
        for a, b in zip(eager.buffers(), compiled.buffers()):
            torch.testing.assert_close(a, b)
    # eval mode (a recompile on the training flag) and no_grad inference
    eager.eval()
    compiled.eval()
    with torch.no_grad():
        for a, b in zip(eager(x), compiled(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_config_option_and_state_dict_unchanged(tmp_path):
    torch.manual_seed(0)
    model = MODELS.build(dict(type='PoolFormer', arch=TINY, compile=AOT))
    plain = PoolFormer(TINY)
    assert model.compile_cfg == AOT
    keys = list(model.state_dict())
    model(torch.randn(1, 3, 32, 32))
    assert list(model.state_dict()) == keys == list(plain.state_dict())
    assert not any('_orig_mod' in k for k in keys)
    # a checkpoint of the compiled model loads into an eager one and back
    torch.save(model.state_dict(), tmp_path / 'w.pth')
    plain.load_state_dict(torch.load(tmp_path / 'w.pth'))
    model.load_state_dict(plain.state_dict())
    # a deep copy compiles its own forward (not bound to the original)
    other = copy.deepcopy(model)
    assert '_compiled_call' not in other.__dict__
    with torch.no_grad():
        other.patch_embed.proj.weight.zero_()
        other.patch_embed.proj.bias.zero_()
        x = torch.randn(1, 3, 32, 32)
        assert not torch.equal(other(x)[0], model(x)[0])


@pytest.mark.parametrize('value,error', [
    ('yes', TypeError), (dict(model=1), ValueError)])
def test_bad_compile_option(value, error):
    with pytest.raises(error, match='compile'):
        PoolFormer(TINY, compile=value)


def test_input_checks_run_outside_the_compiled_region():
    model = PoolFormer(TINY, compile=AOT).eval()
    with pytest.raises(ValueError, match='expects a batch of images'):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='3-channel images'):
        model(torch.randn(1, 4, 32, 32))
    assert '_compiled_call' not in model.__dict__  # checked before compiling


def test_inductor_tiny_arch_matches_eager():
    """The real compiler (C++ kernels) once, on a tiny arch."""
    eager, compiled = _pair(dict(fullgraph=True, dynamic=False))
    x = torch.randn(2, 3, 32, 32)
    _assert_same(_step(eager, x), _step(compiled, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('pool_size,size', [
    (3, (9, 7)), (5, (6, 11)), (3, (1, 4)), (2, (5, 6))])
def test_pooling_formulation_inside_compiled_graphs(pool_size, size):
    """Under torch.compile, for a backward, the CPU pools by 'conv' (a
    depthwise convolution with a kernel of ones, times 1 / window counts) or
    'sum' (shifted views of the padded input, times the same), with no
    avg_pool2d in the graph, and gets avg_pool2d's outputs and gradients;
    'native' keeps avg_pool2d; even windows, inference (no grad) and eager
    always take avg_pool2d."""
    import torch.nn.functional as F
    from mmpoolformer.benchmark import use_formulation
    from mmpoolformer.models.layers import mixers

    graphs = []

    def capture(gm, example_inputs):
        graphs.append([n.target for n in gm.graph.nodes])
        return gm.forward

    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    ref = F.avg_pool2d(x, pool_size, 1, pool_size // 2,
                       count_include_pad=False)
    ref_grad, = torch.autograd.grad(ref.square().sum(), x)
    assert mixers.POOL_FORMULATION['cpu'] == 'conv'
    for formulation in ('conv', 'sum', 'native'):
        torch._dynamo.reset()
        pool = torch.compile(mixers.avg_pool_same, backend=capture,
                             fullgraph=True)
        with use_formulation(mixers.POOL_FORMULATION, 'cpu', formulation):
            out = pool(x, pool_size)
        grad, = torch.autograd.grad(out.square().sum(), x)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(grad, ref_grad)
        pooled = F.avg_pool2d in graphs[-1]
        convolved = any(t in (torch.conv2d, F.conv2d) for t in graphs[-1])
        native = formulation == 'native' or pool_size % 2 == 0
        assert pooled == native
        assert convolved == (formulation == 'conv' and not native)
        with torch.no_grad():  # inference: the native kernel
            torch._dynamo.reset()
            torch.testing.assert_close(pool(x, pool_size), ref)
            assert F.avg_pool2d in graphs[-1]
    # eager: always the native op, whatever the table says
    assert torch.equal(mixers.avg_pool_same(x, pool_size), ref)


def _compiled_graph(fn, run, table=None, formulation=None):
    """``run(compiled)`` with ``fn`` compiled afresh (dynamo graph captured,
    run as traced) while ``formulation`` is ``table``'s CPU entry; returns
    what ``run`` returned and the captured graph."""
    from mmpoolformer.benchmark import use_formulation
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=capture, fullgraph=True)
    with use_formulation(table or {}, 'cpu', formulation):
        result = run(compiled)
    return result, graphs[-1].graph


def _check_formulations(fn, args, wrt, table, formulations, inspect):
    """For each formulation: ``fn(*args)`` compiled gives the eager output
    and gradients (for ``wrt``), and ``inspect(graph, formulation)`` holds;
    under no_grad, ``inspect(graph, None)``."""
    def grads(f):
        out = f(*args)
        return (out, ) + torch.autograd.grad(out.square().sum(), wrt)
    expected = grads(fn)
    for formulation in formulations:
        got, graph = _compiled_graph(fn, grads, table, formulation)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)
        inspect(graph, formulation)
    with torch.no_grad():
        inspect(_compiled_graph(fn, lambda f: f(*args))[1], None)


@pytest.mark.parametrize('kernel,stride,padding', [(1, 1, 0), (3, 2, 1)])
def test_conv_bias_apart_inside_compiled_graphs(kernel, stride, padding):
    """``conv_bias_apart(conv, x)``: inside a CPU graph compiled with
    gradients ('apart', the CPU's default) the convolution runs without its
    bias and the bias is added after, with conv(x)'s outputs and gradients;
    'fused', no_grad and eager pass the bias to the convolution."""
    import torch.nn.functional as F
    from mmpoolformer.models.layers.conv import (CONV_BIAS_FORMULATION,
                                                 conv_bias_apart)

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, kernel, stride, padding).double()
    x = torch.randn(2, 4, 9, 7, dtype=torch.float64, requires_grad=True)

    def inspect(graph, formulation):
        biases = [n.args[2] if len(n.args) > 2 else n.kwargs.get('bias')
                  for n in graph.nodes
                  if n.target in (torch.conv2d, F.conv2d)]
        assert len(biases) == 1
        assert (biases[0] is None) == (formulation == 'apart')
    assert CONV_BIAS_FORMULATION['cpu'] == 'apart'
    _check_formulations(conv_bias_apart, (conv, x),
                        (x, conv.weight, conv.bias), CONV_BIAS_FORMULATION,
                        ('apart', 'fused'), inspect)
    assert torch.equal(conv_bias_apart(conv, x), conv(x))
    # PoolFormer's convolutions stay plain nn.Conv2d (tools such as mmcv's
    # FLOP counter match modules by exact type)
    convs = [m for m in PoolFormer(TINY).modules()
             if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(type(m) is torch.nn.Conv2d for m in convs)


def test_channel_param_rows_inside_compiled_graphs():
    """``channel_param(p, x)``: inside a CPU graph compiled with gradients
    ('rows', the CPU's default) the per-channel parameter is expanded over
    the images and rows, so its gradient is summed by rows; 'direct',
    no_grad and eager give the (1, C, 1, 1) view. Same outputs and
    gradients either way."""
    from mmpoolformer.models.layers.conv import (CHANNEL_GRAD_FORMULATION,
                                                 channel_param)

    def scale_shift(p, q, x):
        return channel_param(p, x) * x + channel_param(q, x)

    torch.manual_seed(0)
    p = torch.randn(5, dtype=torch.float64, requires_grad=True)
    q = torch.randn(5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 5, 7, 4, dtype=torch.float64, requires_grad=True)

    def inspect(graph, formulation):
        expands = [n for n in graph.nodes if 'expand' in str(n.target)]
        assert len(expands) == (2 if formulation == 'rows' else 0)
    assert CHANNEL_GRAD_FORMULATION['cpu'] == 'rows'
    _check_formulations(scale_shift, (p, q, x), (p, q, x),
                        CHANNEL_GRAD_FORMULATION, ('rows', 'direct'), inspect)
    torch.testing.assert_close(scale_shift(p, q, x),
                               p.view(1, -1, 1, 1) * x + q.view(1, -1, 1, 1))
    assert channel_param(p, x).shape == (1, 5, 1, 1)


def _det_batch(size=64):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    samples = []
    for _ in range(2):
        sample = DetDataSample(metainfo=dict(
            img_shape=(size, size), pad_shape=(size, size),
            batch_input_shape=(size, size), scale_factor=(1., 1.)))
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[4., 4., 40., 50.], [20., 10., 60., 60.]]),
            labels=torch.tensor([0, 2]))
        samples.append(sample)
    torch.manual_seed(3)
    return torch.randn(2, 3, size, size), samples


def test_compiled_backbone_inside_retinanet_loss():
    from mmpoolformer.benchmark import build_model
    torch.manual_seed(0)
    eager, _, _ = build_model('retinanet', TINY, size=(64, 64))
    eager.backbone.frozen_stages = 1
    eager.backbone.with_cp = True
    eager.train()
    compiled = copy.deepcopy(eager)
    compiled.backbone.compile_cfg = dict(AOT)
    images, samples = _det_batch()
    results = []
    for model in (eager, compiled):
        model.zero_grad(set_to_none=True)
        losses = model.loss(images, copy.deepcopy(samples))
        total = sum(v if isinstance(v, torch.Tensor) else sum(v)
                    for v in losses.values())
        total.backward()
        results.append((total.detach(), {
            n: p.grad.clone() for n, p in model.named_parameters()
            if p.grad is not None}))
    assert '_compiled_call' in compiled.backbone.__dict__
    torch.testing.assert_close(results[1][0], results[0][0])
    assert results[1][1].keys() == results[0][1].keys()
    assert 'backbone.patch_embed.proj.weight' not in results[0][1]
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4,
                                   atol=1e-6, msg=name)


def _ddp_worker(rank, init_file, world):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}',
                            rank=rank, world_size=world)
    try:
        eager, compiled = _pair(frozen_stages=1, with_cp=True)
        x = torch.randn(4, 3, 32, 32)[2 * rank:2 * rank + 2]
        grads = []
        for model in (eager, compiled):
            ddp = DDP(model)
            sum(o.square().mean() for o in ddp(x)).backward()
            grads.append({n: p.grad for n, p in model.named_parameters()
                          if p.grad is not None})
            # A DDP wrapper (its Reducer) alive after destroy_process_group
            # releases the process group last, at exit, where gloo's
            # destructor joins threads that wait for the rank that has
            # already gone: the run hung there once in CI. Free it now.
            del ddp
        assert grads[0].keys() == grads[1].keys()
        for name in grads[0]:
            torch.testing.assert_close(grads[1][name], grads[0][name],
                                       rtol=1e-4, atol=1e-6, msg=name)
        # the all-reduce happened: both ranks hold the same gradients
        flat = torch.cat([g.flatten() for g in grads[1].values()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        torch.testing.assert_close(gathered[0], gathered[1])
        dist.barrier()  # both ranks done with every collective
    finally:
        dist.destroy_process_group()


def test_ddp_step_two_processes(tmp_path):
    import torch.multiprocessing as mp
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    context = mp.spawn(_ddp_worker, args=(str(tmp_path / 'init'), 2),
                       nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):  # raises if a worker failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail('the two DDP workers did not finish in 300 s')


@pytest.mark.parametrize('variant,pool_conv,bias_apart,rows', [
    ('compile', True, True, True), ('fusedbias_compile', True, False, True),
    ('sumpool_compile', False, True, True),
    ('sumpool_fusedbias_compile', False, False, True),
    ('directgrad_compile', True, True, False)])
def test_benchmark_variants_trace_their_formulations(
        monkeypatch, variant, pool_conv, bias_apart, rows):
    """tools/benchmark.py's compiled training rows trace what their names
    say: the CPU defaults (ones-kernel pooling, biases apart, per-channel
    gradients by rows) or the forced 'sum' pooling / fused biases / direct
    gradient sums."""
    import torch.nn.functional as F
    from mmpoolformer import benchmark as bench
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    monkeypatch.setattr(bench, 'COMPILE_KWARGS',
                        dict(backend=capture, fullgraph=True))
    bench._train_setup(TINY, variant, 1, (32, 32))()
    convs = [n for gm in graphs for n in gm.graph.nodes
             if n.target in (torch.conv2d, F.conv2d)]
    # the stem, downsampling and MLP convolutions, and one ones-kernel
    # convolution per block with 'conv' pooling
    learned = [n for n in convs if 'ones' not in str(n.args[1])]
    assert len(convs) - len(learned) == (5 if pool_conv else 0)
    assert all((n.args[2] is None) == bias_apart for n in learned)
    # by rows: both layer scales of each block (5 blocks) and every bias
    # added apart (stem, 3 downsamplings, 2 per MLP) are expanded
    expands = [n for gm in graphs for n in gm.graph.nodes
               if 'expand' in str(n.target)]
    assert len(expands) == ((10 + (14 if bias_apart else 0)) if rows else 0)
