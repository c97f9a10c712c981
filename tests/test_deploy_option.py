"""``PoolFormer(deploy=True)`` and ``tools/model_converters/
poolformer_to_deploy.py``: a whole trained RetinaNet checkpoint, converted,
loads strictly into a config whose backbone says ``deploy=True`` and gives
the plain model's outputs and detections; errors are clear."""
import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from mmpoolformer.benchmark import _model_inputs, build_model
from mmpoolformer.checkpoint import CheckpointError, read_whole_checkpoint
from mmpoolformer.models import PoolFormer
from mmpoolformer.models.backbones.poolformer import PoolFormerBlock
from mmpoolformer.models.backbones.poolformer_deploy import \
    DeployPoolFormerBlock
from reference_poolformer import randomize_
from test_fast import assert_faithful

TINY = dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 24, 32], mlp_ratios=2)
REPO = Path(__file__).resolve().parents[1]


def _converter():
    path = REPO / 'tools' / 'model_converters' / 'poolformer_to_deploy.py'
    spec = importlib.util.spec_from_file_location('poolformer_to_deploy',
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flat(outs):
    if isinstance(outs, torch.Tensor):
        return [outs]
    return [t for o in outs for t in _flat(o)]


def test_converted_retinanet_checkpoint_in_deploy_config(tmp_path):
    torch.manual_seed(0)
    plain, _, _ = build_model('retinanet', TINY, size=(64, 96))
    randomize_(plain.backbone, seed=2)
    # "trained": one optimizer step, saved as tools/train.py saves it
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(1, 3, 64, 96)
    sum(t.float().mean() for t in _flat(plain._forward(x))).backward()
    optimizer.step()
    plain.eval()
    src, dst = tmp_path / 'epoch_1.pth', tmp_path / 'deploy.pth'
    torch.save(dict(meta=dict(epoch=1, dataset_meta=dict(classes=['a'])),
                    state_dict=plain.state_dict(),
                    optimizer=optimizer.state_dict()), src)
    _converter().main([str(src), str(dst)])
    converted = read_whole_checkpoint(str(dst))
    assert converted['meta']['epoch'] == 1
    assert converted['meta']['dataset_meta'] == dict(classes=['a'])
    assert 'optimizer' not in converted
    state = converted['state_dict']
    for key, value in plain.state_dict().items():  # neck, head unchanged
        if not key.startswith('backbone.'):
            assert torch.equal(state[key], value), key
    assert 'backbone.network.0.0.mix_scale' in state
    assert not any('norm1' in k for k in state)

    # the deploy model, built from a config as tools/test.py builds it
    deploy = _build_deploy_retinanet()
    assert not any(isinstance(m, PoolFormerBlock) for m in deploy.modules())
    assert sum(isinstance(m, DeployPoolFormerBlock)
               for m in deploy.modules()) == sum(TINY['layers'])
    deploy.load_state_dict(state, strict=True)
    deploy.eval()
    for model in (plain, deploy):  # random heads score low: keep 20 boxes
        model.bbox_head.test_cfg.update(score_thr=0.0, max_per_img=20)
    with torch.no_grad():
        assert_faithful(_flat(plain._forward(x)), _flat(deploy._forward(x)))
        samples = _model_inputs('mmdet', 1, (64, 96))[1]
        ref = plain.predict(x, copy.deepcopy(samples))[0].pred_instances
        out = deploy.predict(x, copy.deepcopy(samples))[0].pred_instances
    assert_same_detections(out, ref)


def assert_same_detections(out, ref, rtol=1e-4, atol=1e-6):
    """The same scores (both sorted), and each detection's box and label
    among the reference's with a score within rounding. Random heads score
    every box alike: scores 4e-8 apart swap places with the rounding of
    the CPU (seen on an AVX2 EPYC), and a box near-tied with the last one
    kept may take its place."""
    assert len(ref) == len(out) > 0
    torch.testing.assert_close(out.scores, ref.scores, rtol=rtol, atol=atol)
    unmatched = list(range(len(ref)))
    lowest = float(ref.scores.min())
    for box, label, score in zip(out.bboxes, out.labels, out.scores):
        close = abs(ref.scores - score) <= atol + rtol * abs(score)
        match = [j for j in unmatched if close[j] and ref.labels[j] == label
                 and torch.allclose(ref.bboxes[j], box, rtol=rtol, atol=1e-3)]
        if match:
            unmatched.remove(match[0])
        else:  # only a box tied with the cut may differ
            assert float(score) - lowest <= atol + rtol * lowest, (box, score)
    assert all(float(ref.scores[j]) - lowest <= atol + rtol * lowest
               for j in unmatched)


def _build_deploy_retinanet():
    import mmpoolformer.benchmark as benchmark
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(str(REPO / benchmark.MODELS['retinanet'][0]))
    cfg.model.backbone = dict(type='PoolFormer', arch=TINY, init_cfg=None,
                              fork_last3=True, deploy=True)
    cfg.model.neck.in_channels = TINY['embed_dims']
    init_default_scope('mmdet')
    return MODELS.build(cfg.model)


@pytest.mark.parametrize('options', [
    dict(), dict(fork_feat=False, num_classes=5), dict(out_indices=(1, 3)),
    dict(fork_last3=True)])
def test_converter_round_trip_bare_backbone(tmp_path, options):
    model = randomize_(PoolFormer(TINY, **options), seed=4).eval()
    torch.save(model.state_dict(), tmp_path / 'plain.pth')
    _converter().main([str(tmp_path / 'plain.pth'),
                       str(tmp_path / 'deploy.pth')])
    deploy = PoolFormer(TINY, deploy=True, **options).eval()
    deploy.load_state_dict(torch.load(tmp_path / 'deploy.pth'))
    reference = copy.deepcopy(model).switch_to_deploy()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(deploy.state_dict()[key], value)
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        assert_faithful(_flat(model(x)), _flat(deploy(x)))
    # converting again is refused, not silently doubled
    with pytest.raises(SystemExit, match='already folded'):
        _converter().main([str(tmp_path / 'deploy.pth'),
                           str(tmp_path / 'again.pth')])


def test_deploy_option_builds_folded_blocks_only():
    model = PoolFormer(TINY, deploy=True)
    assert model.deploy
    assert not any(isinstance(m, (PoolFormerBlock, torch.nn.GroupNorm))
                   for blocks in model.network[::2] for m in blocks.modules())
    assert not any(p.requires_grad for p in model.parameters())
    keys = copy.deepcopy(PoolFormer(TINY)).switch_to_deploy().state_dict()
    assert list(model.state_dict()) == list(keys)
    with torch.no_grad():  # a fresh deploy model is finite
        assert all(torch.isfinite(o).all()
                   for o in model.eval()(torch.randn(1, 3, 32, 32)))


@pytest.mark.parametrize('folded', [False, True])
def test_deploy_with_pretrained_plain_or_converted(tmp_path, folded):
    """An unfolded (ImageNet-style) file is loaded into a plain twin and
    folded; a converted file loads as it is."""
    source = randomize_(PoolFormer(TINY), seed=6).eval()
    weights = (copy.deepcopy(source).switch_to_deploy().state_dict()
               if folded else source.state_dict())
    torch.save(weights, tmp_path / 'w.pth')
    model = PoolFormer(TINY, deploy=True, init_cfg=dict(
        type='Pretrained', checkpoint=str(tmp_path / 'w.pth')))
    model.init_weights()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert_faithful(source(x), model.eval()(x))


@pytest.mark.parametrize('norm_cfg', [dict(type='BN'),
                                      dict(type='GN', num_groups=4)])
def test_deploy_refuses_other_norms(norm_cfg):
    with pytest.raises(ValueError, match='deploy=True.*one-group GroupNorm'
                       '.*Remove deploy=True'):
        PoolFormer(TINY, deploy=True, norm_cfg=norm_cfg)


def test_converter_refuses_batch_norm_and_non_poolformer(tmp_path):
    bn = PoolFormer(TINY, norm_cfg=dict(type='BN'))
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in
                                bn.state_dict().items()}),
               tmp_path / 'bn.pth')
    with pytest.raises(SystemExit, match='batch norm'):
        _converter().main([str(tmp_path / 'bn.pth'), str(tmp_path / 'o')])
    torch.save({'conv.weight': torch.zeros(1)}, tmp_path / 'x.pth')
    with pytest.raises(SystemExit, match='No PoolFormer blocks'):
        _converter().main([str(tmp_path / 'x.pth'), str(tmp_path / 'o')])
    with pytest.raises(CheckpointError):
        _converter().convert(str(tmp_path / 'missing.pth'),
                             str(tmp_path / 'o'))


def test_conv_formulation_matches_folded(monkeypatch):
    """The formulation non-CPU devices can fall back to (plain ops on the
    folded weights) gives the same numbers; run here on the CPU."""
    import mmpoolformer.models.backbones.poolformer_deploy as fast
    model = randomize_(PoolFormer(TINY), seed=7).eval()
    deploy = copy.deepcopy(model).switch_to_deploy()
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        ref = model(x)
        monkeypatch.setitem(fast.FORMULATION, 'cpu', 'conv')
        assert_faithful(ref, deploy(x))
        assert_faithful(ref, deploy(x.contiguous(
            memory_format=torch.channels_last)))


def test_folded_eager_formulation_compiles_as_conv(monkeypatch):
    """'folded_eager' (the CUDA default) runs the folded blocks in eager mode
    and the plain ops on the folded weights inside torch.compile; outputs
    match plain either way. Run here on the CPU with that entry set."""
    import mmpoolformer.models.backbones.poolformer_deploy as fast
    model = randomize_(PoolFormer(TINY), seed=3).eval()
    deploy = copy.deepcopy(model).switch_to_deploy()
    x = torch.randn(2, 3, 45, 61)

    def graph_ops(value):
        """Forward of ``deploy`` with the CPU entry at ``value``: outputs and
        the names of the ops dynamo traced."""
        monkeypatch.setitem(fast.FORMULATION, 'cpu', value)
        ops = []

        def backend(gm, inputs):
            ops.extend(str(n.target) for n in gm.graph.nodes
                       if n.op == 'call_function')
            return gm.forward
        torch._dynamo.reset()
        with torch.no_grad():
            outs = torch.compile(deploy, backend=backend,
                                 fullgraph=True)(x)
        return outs, ops

    with torch.no_grad():
        ref = model(x)
        monkeypatch.setitem(fast.FORMULATION, 'cpu', 'folded')
        folded = deploy(x)
        monkeypatch.setitem(fast.FORMULATION, 'cpu', 'folded_eager')
        eager = deploy(x)
    for a, b in zip(folded, eager):  # eager: the folded blocks themselves
        assert torch.equal(a, b)
    _, folded_ops = graph_ops('folded')
    outs, ops = graph_ops('folded_eager')
    assert any('conv1x1_gelu' in op for op in folded_ops), folded_ops
    assert not any('conv1x1' in op for op in ops), ops
    assert sum('conv2d' in op for op in ops) >= 2 * 5  # fc1, fc2 per block
    assert_faithful(ref, outs)
    torch._dynamo.reset()


def test_unknown_deploy_formulation_is_named(monkeypatch):
    import mmpoolformer.models.backbones.poolformer_deploy as fast
    deploy = PoolFormer(TINY).switch_to_deploy().eval()
    monkeypatch.setitem(fast.FORMULATION, 'cpu', 'fused')
    with pytest.raises(ValueError, match="'fused' is not one of"):
        deploy(torch.randn(1, 3, 32, 32))


def test_conv_formulation_keeps_plain_dtypes_under_autocast(monkeypatch):
    """Under bf16 autocast a plain block promotes its residual stream to
    fp32 (the norms run in fp32); the 'conv' deploy block (the compiled CUDA
    default) does the same, and stays as close to plain as 'folded'."""
    import mmpoolformer.models.backbones.poolformer_deploy as fast
    block = randomize_(PoolFormerBlock(16, 2), seed=1).eval()
    deploy = DeployPoolFormerBlock.from_block(block)
    x = torch.randn(2, 16, 9, 11).bfloat16()
    outs = {}
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        ref = block(x)
        for value in ('conv', 'folded'):
            monkeypatch.setitem(fast.FORMULATION, 'cpu', value)
            outs[value] = deploy(x)
    assert ref.dtype == outs['conv'].dtype == torch.float32
    errors = {k: ((v - ref).abs().max() / ref.abs().max()).item()
              for k, v in outs.items()}
    assert errors['conv'] < 0.05 and errors['conv'] < 2 * errors['folded'] \
        + 1e-3, errors
