"""Fast paths give the plain backbone's numbers (equivalence, not speed:
speed is measured by tools/benchmark.py)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from mmpoolformer.benchmark import (bench_backbone, bench_training,
                                    build_model, compare, format_report,
                                    train_memory)
from mmpoolformer.models import ARCH_SETTINGS, PoolFormer
from mmpoolformer.models.backbones.poolformer_deploy import \
    DeployPoolFormerBlock
from reference_poolformer import randomize_

TINY = dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 24, 32], mlp_ratios=2)


def deployed(model):
    fast = copy.deepcopy(model)
    fast.switch_to_deploy()
    return fast


def assert_faithful(ref, out, rel=1e-4):
    assert len(ref) == len(out)
    for a, b in zip(ref, out):
        assert a.shape == b.shape
        scale = a.abs().max().item()
        assert (a - b).abs().max().item() <= rel * scale


@pytest.mark.parametrize('arch', list(ARCH_SETTINGS))
def test_deploy_matches_plain_every_arch(arch):
    model = randomize_(PoolFormer(arch)).eval()
    fast = deployed(model)
    assert not any(isinstance(m, torch.nn.GroupNorm) for blocks in
                   fast.network[::2] for m in blocks.modules())
    x = torch.randn(2, 3, 61, 87)  # odd sizes: pooling borders everywhere
    with torch.no_grad():
        ref = model(x)
        assert_faithful(ref, fast(x))
        assert_faithful(ref, fast(x.contiguous(
            memory_format=torch.channels_last)))


@pytest.mark.parametrize('options', [
    dict(fork_last3=True), dict(out_indices=(1, 2)), dict(pool_size=5),
    dict(fork_feat=False, num_classes=5)])
def test_deploy_matches_plain_options(options):
    model = randomize_(PoolFormer(TINY, **options), seed=3).eval()
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        ref = model(x)
        out = deployed(model)(x)
    ref = (ref, ) if isinstance(ref, torch.Tensor) else ref
    out = (out, ) if isinstance(out, torch.Tensor) else out
    assert_faithful(ref, out)


def test_deploy_refuses_batch_norm_and_changes_nothing():
    model = PoolFormer(TINY, norm_cfg=dict(type='BN')).eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match='one-group GroupNorm only.*BatchNorm'
                       '2d.*Use the model as it is'):
        model.switch_to_deploy()
    assert not getattr(model, 'deploy', False)
    assert model.state_dict().keys() == before.keys()
    assert all(p.requires_grad for p in model.parameters())


def test_folding_is_exact_without_onednn(monkeypatch):
    """The fallback (plain torch ops) path folds the same way."""
    import mmpoolformer.models.backbones.poolformer_deploy as fast_module
    monkeypatch.setattr(fast_module, '_ONEDNN_AVAILABLE', False)
    model = randomize_(PoolFormer('s12')).eval()
    x = torch.randn(1, 3, 67, 93)
    with torch.no_grad():
        assert_faithful(model(x), deployed(model)(x))


def test_deploy_bf16_autocast_keeps_features():
    model = randomize_(PoolFormer('s12')).eval()
    fast = deployed(model)
    x = torch.randn(1, 3, 96, 128).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = fast(x)
    accuracy = compare(ref, [o.float() for o in out])
    assert accuracy['min_cosine'] >= 0.999
    # and bf16 did happen (an fp32 run would match to 1e-5)
    assert accuracy['max_rel'] > 1e-4


def test_deploy_checkpoint_round_trip(tmp_path):
    """Build from a checkpoint, switch, compare; a deployed state dict loads
    into another deployed model."""
    source = randomize_(PoolFormer('s12'), seed=5)
    ckpt = tmp_path / 'poolformer_s12.pth'
    torch.save(source.state_dict(), ckpt)
    model = PoolFormer('s12', init_cfg=dict(type='Pretrained',
                                            checkpoint=str(ckpt)))
    model.init_weights()
    model.eval()
    x = torch.randn(1, 3, 75, 101)
    with torch.no_grad():
        ref = source.eval()(x)
        model.switch_to_deploy()
        model.switch_to_deploy()  # idempotent
        assert_faithful(ref, model(x))
        other = PoolFormer('s12').eval()
        other.switch_to_deploy()
        other.load_state_dict(model.state_dict())
        assert_faithful(ref, other(x))
    assert any(isinstance(m, DeployPoolFormerBlock) for m in model.modules())


def test_whole_detector_with_deploy_backbone():
    model, _, _ = build_model('retinanet', 's12', size=(96, 128))
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref = model.extract_feat(x)
        model.backbone.switch_to_deploy()
        model.to(memory_format=torch.channels_last)
        out = model.extract_feat(x.contiguous(
            memory_format=torch.channels_last))
    assert len(ref) == 5
    assert_faithful(ref, out)


def test_deploy_compiles_without_graph_breaks():
    model = randomize_(PoolFormer(TINY)).eval()
    fast = deployed(model)
    x = torch.randn(1, 3, 53, 67).contiguous(
        memory_format=torch.channels_last)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fast)(x)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1
    with torch.no_grad():
        compiled = torch.compile(fast, fullgraph=True, dynamic=False)
        assert_faithful(model(x), compiled(x))


@pytest.mark.parametrize('with_cp', [False, True])
def test_plain_backbone_traces_whole_for_training(with_cp):
    model = PoolFormer(TINY, with_cp=with_cp).train()
    x = torch.randn(2, 3, 40, 48, requires_grad=True)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    loss = sum(o.square().mean() for o in model(x))
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_with_cp_and_channels_last_gradients_equal():
    torch.manual_seed(0)
    model = randomize_(PoolFormer(TINY)).train()
    cp_model = copy.deepcopy(model)
    cp_model.with_cp = True
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 47, 59)
    ref = _grads(model, x)
    for other, inp in ((cp_model, x),
                       (cl_model, x.contiguous(
                           memory_format=torch.channels_last))):
        grads = _grads(other, inp)
        assert grads.keys() == ref.keys()
        for name in ref:
            torch.testing.assert_close(grads[name], ref[name], rtol=1e-4,
                                       atol=1e-6, msg=name)


def test_compiled_training_step_matches_eager():
    # aot_eager runs dynamo and AOTAutograd (the joint forward/backward
    # graph) without inductor's C++ build, which takes minutes for a
    # backward here; the benchmark times the inductor-compiled step.
    torch.manual_seed(0)
    model = randomize_(PoolFormer(TINY)).train()
    copied = copy.deepcopy(model).to(memory_format=torch.channels_last)
    compiled = torch.compile(copied, fullgraph=True, dynamic=False,
                             backend='aot_eager')
    x = torch.randn(2, 3, 40, 48)
    ref = _grads(model, x)
    _grads(compiled, x.contiguous(memory_format=torch.channels_last))
    for name, param in copied.named_parameters():
        torch.testing.assert_close(param.grad, ref[name], rtol=1e-4,
                                   atol=1e-6, msg=name)


def test_deploy_blocks_fall_back_to_autograd():
    """A deploy block still differentiates (e.g. for input attributions):
    the fused oneDNN ops are skipped when a gradient is needed."""
    model = randomize_(PoolFormer(TINY)).eval()
    fast = deployed(model)
    x = torch.randn(1, 3, 33, 41, requires_grad=True)
    sum(o.sum() for o in fast(x)).backward()
    grad_fast = x.grad.clone()
    x.grad = None
    sum(o.sum() for o in model(x)).backward()
    torch.testing.assert_close(grad_fast, x.grad, rtol=1e-4, atol=1e-5)


def conv_flops(arch, size):
    """FLOPs (2 per multiply-add; biases, norms, pooling and GELU are not
    counted) of the dense backbone's convolutions at batch 1, from the conv
    arithmetic: stem 7x7/4 (pad 2), 3x3/2 (pad 1) downsampling, and two 1x1
    convs per block."""
    layers, dims = arch['layers'], arch['embed_dims']
    ratio = arch['mlp_ratios']
    h, w = ((n + 2 * 2 - 7) // 4 + 1 for n in size)
    macs = h * w * dims[0] * 3 * 7 * 7
    for stage, (depth, dim) in enumerate(zip(layers, dims)):
        if stage > 0:
            h, w = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
            macs += h * w * dim * dims[stage - 1] * 3 * 3
        macs += depth * 2 * h * w * dim * int(dim * ratio)
    return 2 * macs


def test_conv_flops_by_hand():
    # TINY at 64x80: 16x20, 8x10, 4x5, 2x3 feature maps
    assert conv_flops(TINY, (64, 80)) == 2 * (
        16 * 20 * 8 * 3 * 49 + 2 * 16 * 20 * 8 * 16 +
        8 * 10 * 16 * 8 * 9 + 2 * 8 * 10 * 16 * 32 +
        4 * 5 * 24 * 16 * 9 + 2 * 2 * 4 * 5 * 24 * 48 +
        2 * 3 * 32 * 24 * 9 + 2 * 2 * 3 * 32 * 64)


def _rel(ref, out):
    return max((a - b).abs().max().item() / a.abs().max().item()
               for a, b in zip(ref, out))


def test_benchmark_reports_every_path_faithfully(monkeypatch):
    """The benchmark's machinery (no timing asserted): every path's outputs
    against the independent reference math on the same weights and inputs,
    the reported errors against those outputs, and the FLOP count against
    the conv arithmetic."""
    import mmpoolformer.benchmark as benchmark
    from reference_poolformer import reference_forward
    calls = []  # (path, model, input, output) of every first call
    first_call = benchmark.BackbonePath.first_call

    def recording_first_call(self, x):
        out = first_call(self, x)
        calls.append((self.name, self.model, x.clone(), out))
        return out

    monkeypatch.setattr(benchmark.BackbonePath, 'first_call',
                        recording_first_call)
    paths = ['plain', 'channels_last', 'deploy', 'deploy_bf16']
    result = bench_backbone(TINY, (64, 80), 2, paths, warmup=0, repeats=1,
                            log=lambda *_: None)
    assert [c[0] for c in calls] == [p for p in paths for _ in range(2)]
    assert [tuple(c[2].shape) for c in calls] == [(1, 3, 64, 80),
                                                  (2, 3, 64, 80)] * 4
    for _, _, x, _ in calls[2:]:  # every path saw the same two inputs
        assert any(torch.equal(x, c[2]) for c in calls[:2])
    weights = calls[0][1].state_dict()
    assert not any('deploy' in type(m).__name__.lower()
                   for m in calls[0][1].modules())
    assert any(isinstance(m, DeployPoolFormerBlock)
               for m in calls[4][1].modules())
    outputs = {}
    for name, _, x, out in calls:
        with torch.no_grad():
            ref = reference_forward(weights, x, TINY['layers'])
        assert [o.shape for o in out] == [r.shape for r in ref]
        error = _rel(ref, out)
        if name == 'deploy_bf16':
            for a, b in zip(ref, out):
                cosine = F.cosine_similarity(a.flatten(), b.flatten(), dim=0)
                assert cosine > 0.999
            assert error > 1e-4  # bf16 did happen
        else:
            assert error < 1e-4, name
        outputs.setdefault(name, out)  # batch 1: what accuracy is about
    reported = result['paths']
    assert list(reported) == paths
    plain = outputs['plain']
    for name, out in outputs.items():
        accuracy = reported[name]['accuracy']
        diffs = [(a.double() - b.double()).abs().max().item()
                 for a, b in zip(plain, out)]
        assert accuracy['abs_per_level'] == pytest.approx(diffs, rel=1e-9,
                                                          abs=1e-12)
        assert accuracy['max_rel'] == pytest.approx(
            _rel([a.double() for a in plain], [b.double() for b in out]),
            rel=1e-9, abs=1e-12)
    assert reported['plain']['accuracy']['max_abs'] == 0
    assert reported['deploy_bf16']['accuracy']['max_rel'] > 1e-4
    flops = conv_flops(TINY, (64, 80))
    assert result['gflops'] == pytest.approx(flops / 1e9, rel=1e-12)
    for entry in reported.values():
        assert entry['gflops_per_s'] == pytest.approx(
            flops / 1e9 / entry['latency_s']['median'], rel=1e-9)
    training = bench_training(TINY, 2, (48, 48),
                              ['plain', 'official', 'with_cp',
                               'with_cp_full'],
                              warmup=1, repeats=1, memory=False,
                              log=lambda *_: None)
    assert training['interleaved']
    assert list(training['variants']) == ['plain', 'official', 'with_cp',
                                          'with_cp_full']
    assert training['variants']['official']['speedup_vs_official'] == 1
    report = format_report(dict(
        machine=dict(torch='t', threads=1, cpu='c', logical_cpus=1,
                     avx512_bf16=False, amx=False),
        matmul=[dict(dtype='float32', backend='torch.mm', n=8, gflops=1.)],
        settings=dict(repeats=1, warmup=0), backbones=[result],
        training=training, total_s=1.))
    assert 'deploy_bf16' in report and 'with_cp_full' in report
    assert 'vs official' in report


def test_nhwc_pin_is_a_view_in_eager_mode():
    """The deploy blocks' layout pin (for inductor) is the same tensor in
    eager mode: same storage and shape, still channels_last, no copy."""
    from mmpoolformer.models.backbones.poolformer_deploy import _pin_nhwc
    for shape in ((2, 16, 5, 7), (1, 8, 1, 3), (1, 4, 1, 1)):
        t = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        pinned = _pin_nhwc(t)
        assert pinned.data_ptr() == t.data_ptr()
        assert pinned.shape == t.shape
        assert pinned.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(pinned, t)


def test_benchmark_against_the_official_model(monkeypatch):
    """bench_vs_official: the official model and the project's paths on the
    same weights and input (the deploy path's outputs match the official
    ones), timed interleaved, speed-ups against the official model by the
    best and the median round."""
    import mmpoolformer.benchmark as benchmark
    calls = []
    interleaved = benchmark.time_interleaved

    def recording(fns, repeats):
        calls.append((list(fns), repeats))
        return interleaved(fns, repeats)
    monkeypatch.setattr(benchmark, 'time_interleaved', recording)
    result = benchmark.bench_vs_official(TINY, (64, 80), ['deploy'], 3,
                                         log=lambda *_: None)
    assert calls == [(['official', 'deploy'], 1), (['official', 'deploy'], 3)]
    official, deploy = result['paths']['official'], result['paths']['deploy']
    assert result['interleaved'] and result['input'] == [1, 3, 64, 80]
    assert official['speedup_best'] == official['speedup_median'] == 1
    assert deploy['accuracy']['max_rel'] < 1e-4
    assert deploy['time_s']['n'] == 3
    assert deploy['speedup_best'] == pytest.approx(
        official['time_s']['min'] / deploy['time_s']['min'])
    report = format_report(dict(
        machine=dict(torch='t', threads=1, cpu='c', logical_cpus=1,
                     avx512_bf16=False, amx=False),
        matmul=[], settings=dict(repeats=3, warmup=0), vs_official=result,
        total_s=1.))
    assert 'against the official model' in report
    assert f"x{deploy['speedup_best']:.2f}" in report


def test_with_cp_cuts_training_step_peak_memory():
    # measured in fresh subprocesses; a clear margin, not a speed
    size = (256, 256)
    plain = train_memory('s12', 'plain', 2, size)
    with_cp = train_memory('s12', 'with_cp', 2, size)
    assert 'peak_step_bytes' in plain, plain
    assert 'peak_step_bytes' in with_cp, with_cp
    assert with_cp['peak_step_bytes'] < 0.8 * plain['peak_step_bytes']


def test_fused_onednn_ops():
    """The fused oneDNN post-ops: the erf GELU the model uses, the residual
    added in the residual's dtype, channels_last outputs as their fake
    (compile-time) versions say."""
    from mmpoolformer.models.backbones.poolformer_deploy import (conv1x1_add,
                                                                 conv1x1_gelu)
    cl = torch.channels_last
    x = (torch.randn(2, 16, 5, 7) * 3).contiguous(memory_format=cl)
    w = torch.randn(32, 16) / 4
    b = torch.randn(32)
    hidden = conv1x1_gelu(x, w, b)
    torch.testing.assert_close(hidden, F.gelu(F.conv2d(x, w[..., None, None],
                                                       b)),
                               rtol=1e-5, atol=1e-5)
    assert hidden.is_contiguous(memory_format=cl)
    residual = torch.randn(2, 16, 5, 7).contiguous(memory_format=cl)
    w2, b2 = torch.randn(16, 32) / 4, torch.randn(16)
    expected = residual + F.conv2d(hidden, w2[..., None, None], b2)
    for h, wt, bias in ((hidden, w2, b2),
                        (hidden.bfloat16(), w2.bfloat16(), b2.bfloat16())):
        out = conv1x1_add(h, residual, wt, bias)
        assert out.dtype == torch.float32 and out.is_contiguous(
            memory_format=cl)
        tol = 1e-5 if h.dtype == torch.float32 else 5e-2
        torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    torch.library.opcheck(conv1x1_gelu, (x, w, b))
    torch.library.opcheck(conv1x1_add, (hidden, residual, w2, b2))


def test_benchmark_times_metaformer_family_training(capsys):
    """--arch 'Family-size' times the family backbone's training variants
    (with_cp included); what only PoolFormer has (the official model,
    inference paths) is refused with a message that says what to do."""
    import mmpoolformer.benchmark as benchmark
    from mmpoolformer.models import IdentityFormer
    model = benchmark.training_backbone('IdentityFormer-s12', with_cp=True)
    assert type(model) is IdentityFormer and model.with_cp is True
    assert type(benchmark.training_backbone('s12')) is PoolFormer
    training = bench_training('IdentityFormer-s12', 1, (32, 32),
                              ['plain', 'with_cp'], warmup=1, repeats=1,
                              memory=False, log=lambda *_: None)
    assert list(training['variants']) == ['plain', 'with_cp']
    with pytest.raises(ValueError, match="official model is PoolFormer's"):
        benchmark._train_setup('IdentityFormer-s12', 'official', 1, (32, 32))
    with pytest.raises(ValueError, match="'Foo' is not one of the "
                       'MetaFormer families'):
        benchmark.family_of('Foo-s12')
    for argv, message in (
            (['--arch', 'ConvFormer-s18'], 'add --train-only'),
            (['--arch', 'ConvFormer-s18', '--train-only', '--train',
              'official'], "the official model is PoolFormer's"),
            (['--arch', 'Foo-s12'], 'is not one of the MetaFormer')):
        with pytest.raises(SystemExit):
            benchmark.main(argv)
        assert message in capsys.readouterr().err


def test_benchmark_header_names_the_cpu_kind(tmp_path):
    """Kinds of 2-core machine here share the model name "AMD EPYC" and
    differ in family/model, clock and ISA: the report's header says them."""
    import mmpoolformer.benchmark as benchmark
    block = ('processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n'
             'model\t\t: {}\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.152\n'
             'flags\t\t: fpu avx2 {}\n\n')
    path = tmp_path / 'cpuinfo'
    path.write_text(block.format(0, 17, 'avx512f avx512_bf16') +
                    block.format(1, 1, 'amx_bf16'))
    info = benchmark.machine_info(str(path))
    assert (info['cpu'], info['cpu_family'], info['cpu_model']) == (
        'AMD EPYC', '25', '17')
    assert info['avx512_bf16'] and not info['amx']  # the first block's
    report = benchmark.format_report(dict(
        machine=info, matmul=[], settings=dict(repeats=1, warmup=0),
        total_s=0))
    assert 'CPU AMD EPYC (family 25 model 17, 2596 MHz; ' in report
    info = benchmark.machine_info(str(tmp_path / 'missing'))
    assert info['cpu_family'] is None and info['cpu'] != ''
    assert 'CPU {} ({} logical)'.format(
        info['cpu'], info['logical_cpus']) in benchmark.format_report(dict(
            machine=info, matmul=[], settings=dict(repeats=1, warmup=0),
            total_s=0))


@pytest.mark.parametrize('bf16_kernels', [True, False])
def test_benchmark_leaves_out_bf16_paths_only_where_they_would_crawl(
        monkeypatch, bf16_kernels):
    """By default the benchmark times bf16 paths only on a CPU with bf16
    kernels (on an AVX2-only one they time oneDNN's reference code); paths
    the user names are timed whatever the CPU."""
    import mmpoolformer.benchmark as benchmark
    import mmpoolformer.utils as utils
    monkeypatch.setattr(utils, 'cpu_bf16_supported', lambda: bf16_kernels)
    lines = []
    paths, model_paths, chosen = benchmark.default_paths(None, None,
                                                         lines.append)
    bf16 = [p for p in benchmark.BACKBONE_PATHS if p.endswith('bf16')]
    assert bf16 and 'fast_bf16' in benchmark.MODEL_PATHS
    if bf16_kernels:
        assert paths == list(benchmark.BACKBONE_PATHS)
        assert model_paths == list(benchmark.MODEL_PATHS)
        assert not lines
    else:
        assert paths == [p for p in benchmark.BACKBONE_PATHS
                         if p not in bf16]
        assert model_paths == ['plain', 'fast']
        assert lines == ['bf16 paths ' + chosen] and '--paths' in chosen
    named = benchmark.default_paths(['plain', 'deploy_bf16'], ['fast_bf16'],
                                    lines.append)
    assert named[:2] == (['plain', 'deploy_bf16'], ['fast_bf16'])
    report = benchmark.format_report(dict(
        machine=benchmark.machine_info(), matmul=[],
        settings=dict(repeats=1, warmup=0, bf16_paths=chosen), total_s=0))
    assert 'bf16 paths ' + chosen in report
