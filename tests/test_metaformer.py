"""The MetaFormer-baselines backbones (PoolFormerV2, ConvFormer, CAFormer,
IdentityFormer, RandFormer) against the independent reference
(tests/reference_metaformer.py: official math, official and timm layouts).
"""
import importlib.util
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import reference_metaformer as ref
from test_registry import run_python
from mmpoolformer.checkpoint import CheckpointError
from mmpoolformer.models import (CAFormer, ConvFormer, IdentityFormer,
                                 MetaFormer, PoolFormer, PoolFormerV2,
                                 RandFormer)
from mmpoolformer.models.layers import resample_random_matrix

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = dict(poolformerv2=PoolFormerV2, convformer=ConvFormer,
               caformer=CAFormer, identityformer=IdentityFormer,
               randformer=RandFormer)
TINY = dict(layers=(1, 1, 2, 1), embed_dims=(32, 32, 64, 64))


def build(name, **kwargs):
    family, size = name.split('_')
    return CLASSES[family](arch=size, **kwargs)


def count(model, prefix=''):
    return sum(p.numel() for k, p in model.named_parameters()
               if k.startswith(prefix))


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Randomised reference S12/S18 of every family, saved in the official
    and the timm layout: {name: (official_path, timm_path, reference)}."""
    root = tmp_path_factory.mktemp('metaformer')
    out = {}
    for name in ref.SMALL.values():
        model = ref.randomize_(ref.build_reference(name), seed=1).eval()
        official = model.state_dict()
        paths = (root / f'{name}_official.pth', root / f'{name}_timm.pth')
        torch.save(official, paths[0])
        torch.save(dict(state_dict=ref.official_to_timm(official)), paths[1])
        out[name] = (str(paths[0]), str(paths[1]), model)
    return out


def pretrained(path):
    return dict(type='Pretrained', checkpoint=path)


# ---------------------------------------------------------------- counts


@pytest.mark.parametrize('name', list(ref.ARCHS))
def test_param_counts(name):
    with torch.device('meta'):  # no memory, no init cost
        dense, classifier = build(name), build(name, fork_feat=False)
    assert count(dense) == ref.dense_param_count(name, 'weight_bias')
    # the output norms: LayerNorm2d with weight and bias per stage
    dims = ref.ARCHS[name]['dims']
    assert count(dense, 'norm') == 2 * sum(dims)
    assert count(classifier) == ref.classifier_param_count(name)
    if name in ref.DENSE_TARGETS_M:  # the numbers: stem + stages
        stem_stages = count(dense, 'stem.') + count(dense, 'stages.')
        assert stem_stages == ref.dense_param_count(name)
        assert round(stem_stages / 1e6, 3) == ref.DENSE_TARGETS_M[name]


# ---------------------------------------------------------------- layouts


@pytest.mark.parametrize('name', list(ref.SMALL.values()) + [
    'caformer_m36', 'randformer_m48'])
def test_keys_and_shapes_are_timms(name):
    with torch.device('meta'):
        classifier = build(name, fork_feat=False)
        dense = build(name)
    shapes = {k: tuple(v.shape) for k, v in classifier.state_dict().items()}
    assert list(shapes) == ref.expected_keys(name, 'timm')
    assert shapes == dict(ref.expected_shapes(name, 'timm'))
    body = [k for k in ref.expected_keys(name, 'timm')
            if not k.startswith('head.')]
    norms = [f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias')]
    assert sorted(dense.state_dict()) == sorted(body + norms)


def test_layout_conversion_round_trip(files):
    name = 'caformer_s18'
    official = torch.load(files[name][0])
    layout = CAFormer.checkpoint_layout
    timm = layout.convert(official, 'timm')
    expected = ref.official_to_timm(official)
    assert list(timm) == list(expected)
    for key in expected:
        assert torch.equal(timm[key], expected[key]), key
    back = layout.convert(timm, 'official')
    assert list(back) == list(official)
    for key in official:
        assert torch.equal(back[key], official[key]), key
    assert layout.detect(official) == 'official'
    assert layout.detect(timm) == 'timm'


# ---------------------------------------------------------------- math


@pytest.mark.parametrize('name', list(ref.SMALL.values()))
@pytest.mark.parametrize('layout', [0, 1], ids=['official', 'timm'])
def test_matches_reference(files, name, layout):
    path, ref_model = files[name][layout], files[name][2]
    size = (224, 224) if name.startswith('randformer') else (65, 47)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected_feats = ref.reference_stage_features(ref_model, x)
        expected_logits = ref_model(x)

    classifier = build(name, fork_feat=False, init_cfg=pretrained(path))
    classifier.init_weights()
    dense = build(name, init_cfg=pretrained(path))
    report_free = dense.norm0.weight.clone()
    dense.init_weights()
    assert torch.equal(dense.norm0.weight, report_free)  # fresh: ones
    nn.init.normal_(dense.norm1.weight)
    nn.init.normal_(dense.norm1.bias)
    outputs = {}
    for i in range(4):  # the stage features, before the output norms
        getattr(dense, f'norm{i}').register_forward_hook(
            lambda m, args, out, i=i: outputs.__setitem__(i, args[0]))
    with torch.no_grad():
        logits = classifier.eval()(x)
        feats = dense.eval()(x)
    rel = (logits - expected_logits).norm() / expected_logits.norm()
    assert rel < 1e-4
    for i in range(4):  # O(1) random weights: compare relative norms
        err = (outputs[i] - expected_feats[i]).norm()
        assert err / expected_feats[i].norm() < 1e-5, (i, err)
    # the output norm: LayerNorm over channels, weight and bias, eps 1e-6
    norm1 = F.layer_norm(outputs[1].permute(0, 2, 3, 1),
                         (dense.embed_dims[1], ), dense.norm1.weight,
                         dense.norm1.bias, 1e-6)
    torch.testing.assert_close(feats[1], norm1.permute(0, 3, 1, 2))


def test_timm_style_forward_agrees(files):
    """The timm-layout computation (fused attention, NCHW) too."""
    name = 'caformer_s18'
    timm = ref.official_to_timm(torch.load(files[name][0]))
    model = build(name, fork_feat=False, init_cfg=pretrained(files[name][1]))
    model.init_weights()
    x = torch.randn(1, 3, 97, 61)
    with torch.no_grad():
        feats, logits = ref.timm_layout_forward(timm, x, name)
        out = model.eval()(x)
    assert ((out - logits).norm() / logits.norm()) < 1e-4


@pytest.mark.parametrize('family', list(CLASSES))
def test_every_family_at_odd_sizes(family):
    model = CLASSES[family](arch=TINY).eval()
    with torch.no_grad():
        for h, w in ((65, 47), (33, 97), (4, 4)):
            outs = model(torch.randn(1, 3, h, w))
            assert [o.shape[1] for o in outs] == list(TINY['embed_dims'])
            size = ((h + 4 - 7) // 4 + 1, (w + 4 - 7) // 4 + 1)  # conv 7/4/2
            for i, out in enumerate(outs):
                if i:  # conv 3/2/1
                    size = tuple((s + 2 - 3) // 2 + 1 for s in size)
                assert tuple(out.shape[2:]) == size
                assert torch.isfinite(out).all()


# ---------------------------------------------------------------- RandFormer


def test_randformer_resamples_or_raises():
    model = RandFormer(arch=TINY).eval()
    mixer = model.stages[2].blocks[0].token_mixer
    matrix = mixer.random_matrix
    assert not matrix.requires_grad and matrix.shape == (196, 196)
    # the training grid: the released matrix itself
    assert mixer.matrix_for(14, 14) is matrix
    # same grid in, same matrix out (up to float rounding)
    torch.testing.assert_close(
        resample_random_matrix(matrix, (14, 14), (14, 14)), matrix)
    resampled = mixer.matrix_for(17, 12)
    assert resampled.shape == (204, 204) and (resampled > 0).all()
    torch.testing.assert_close(resampled.sum(-1), torch.ones(204))
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 65, 47))
    assert outs[2].shape[2:] == (4, 3) and torch.isfinite(outs[3]).all()

    strict = RandFormer(arch=TINY, rand_resample=False).eval()
    strict.load_state_dict(model.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        torch.testing.assert_close(strict(x), model(x))
        strict(torch.randn(1, 3, 211, 226))
        with pytest.raises(ValueError, match=r'211 to 226 px per side.*'
                           r'rand_resample=True'):
            strict(torch.randn(1, 3, 65, 47))
    assert all(ref.randformer_accepts(s, s) for s in (211, 226))
    assert not any(ref.randformer_accepts(s, s) for s in (210, 227))


# ---------------------------------------------------------------- options


def test_out_indices_fork_last3_and_custom_mixers():
    model = MetaFormer(arch=TINY, out_indices=(0, 2), fork_last3=True,
                       token_mixers=('pool', 'sepconv', 'attention',
                                     'random'), norm='gn1').eval()
    assert isinstance(model.norm0, nn.Identity)
    assert not hasattr(model, 'norm1') and not hasattr(model, 'norm3')
    called = []
    model.stages[3].register_forward_pre_hook(lambda *a: called.append(1))
    model.stages[3].blocks.register_forward_pre_hook(
        lambda *a: called.append(1))
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 64] and not called
    with pytest.raises(ValueError, match='no stage 0'):
        MetaFormer(arch=TINY, out_indices=(1, 2), fork_last3=True)
    with pytest.raises(TypeError, match="type='MetaFormer'"):
        ConvFormer(arch=TINY, token_mixers='attention')
    with pytest.raises(ValueError, match='Valid names: s18, s36, m36, b36'):
        CAFormer(arch='s12')


def test_frozen_stages_and_norm_eval():
    model = CAFormer(arch=TINY, frozen_stages=2, norm_eval=True)
    model.train()
    frozen = [model.stem, model.stages[0], model.stages[1], model.norm0,
              model.norm1, model.stages[2].downsample]
    for module in frozen[:5]:
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert frozen[5].training and all(p.requires_grad
                                      for p in frozen[5].parameters())
    assert all(p.requires_grad for p in model.stages[3].parameters())
    assert all(p.requires_grad for p in model.norm3.parameters())


@pytest.mark.parametrize('family,with_cp', [
    ('caformer', True), ('caformer', 'full'), ('randformer', True)])
def test_with_cp_same_outputs_and_grads(family, with_cp):
    torch.manual_seed(0)
    plain = CLASSES[family](arch=TINY, drop_path_rate=0.)
    cp = CLASSES[family](arch=TINY, with_cp=with_cp)
    cp.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 40, 52, requires_grad=True)
    grads, calls = [], []
    block = cp.stages[2].blocks[0]
    forward = block.forward  # counted (hooks do not run in a recompute)
    block.forward = lambda x: calls.append(1) or forward(x)
    for model in (plain, cp):
        model.train()
        x.grad = None
        sum(o.square().mean() for o in model(x)).backward()
        grads.append([x.grad.clone()] + [
            p.grad.clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    if with_cp == 'full':  # the block ran again in the backward
        assert len(calls) == 2


def test_drop_path_and_scales_as_timm():
    model = ConvFormer(arch=TINY, drop_path_rate=0.3,
                       layer_scale_init_value=1e-6)
    rates = [b.drop_path1.drop_prob for s in model.stages for b in s.blocks
             if hasattr(b.drop_path1, 'drop_prob')]
    assert rates == pytest.approx([0.3 * i / 4 for i in range(1, 5)])
    block = model.stages[2].blocks[0]
    assert torch.all(block.layer_scale1.scale == 1e-6)
    assert torch.all(block.res_scale1.scale == 1.0)
    assert isinstance(model.stages[1].blocks[0].res_scale1, nn.Identity)


# ---------------------------------------------------------------- errors


def test_wrong_family_and_arch_errors(files, tmp_path):
    convformer = files['convformer_s18'][0]
    with pytest.raises(CheckpointError, match='looks like ConvFormer-s18'):
        CAFormer(arch='s18', init_cfg=pretrained(convformer)).init_weights()
    with pytest.raises(CheckpointError,
                       match=r'ConvFormer-s36.*looks like ConvFormer-s18'):
        ConvFormer(arch='s36', init_cfg=pretrained(convformer)).init_weights()
    with pytest.raises(CheckpointError, match='looks like RandFormer-s12'):
        PoolFormerV2(init_cfg=pretrained(
            files['randformer_s12'][1])).init_weights()
    v1 = tmp_path / 'poolformer_v1.pth'
    torch.save(PoolFormer(arch=dict(layers=(1, 1, 1, 1),
                                    embed_dims=(8, 8, 8, 8))).state_dict(), v1)
    with pytest.raises(CheckpointError, match=r'PoolFormer \(v1\)'):
        PoolFormerV2(init_cfg=pretrained(str(v1))).init_weights()


def test_convert_tool_round_trip(files, tmp_path):
    spec = importlib.util.spec_from_file_location(
        'convert_checkpoint', os.path.join(REPO, 'tools',
                                           'convert_checkpoint.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    src = files['convformer_s18'][1]  # timm layout
    official, timm = tmp_path / 'official.pth', tmp_path / 'timm.pth'
    tool.main([src, str(official), '--model', 'ConvFormer', '--to',
               'official'])
    tool.main([str(official), str(timm), '--model', 'ConvFormer'])
    expected = torch.load(files['convformer_s18'][0])
    written = torch.load(official)
    assert list(written) == list(expected)
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    back = torch.load(timm)
    original = torch.load(src)['state_dict']
    assert list(back) == list(original)
    assert all(torch.equal(back[k], original[k]) for k in original)


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize('library,configs', [
    ('mmdet', ['configs/detection/retinanet_convformer_s18.py',
               'configs/detection/retinanet_caformer_s18.py']),
    ('mmseg', ['configs/segmentation/fpn_convformer_s18.py',
               'configs/segmentation/fpn_caformer_s18.py']),
    ('mmseg', ['configs/segmentation/upernet_convformer_s18.py',
               'configs/segmentation/upernet_caformer_s18.py']),
])
def test_configs_build_and_run(tmp_path, library, configs):
    """In a fresh interpreter: ``custom_imports`` registers the backbones,
    the registry builds the model, and one forward runs on a tiny image
    (the Pretrained init_cfg is not run: no download)."""
    result = run_python(f"""
        import json, sys, torch
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        out = []
        for path in {configs!r}:
            cfg = Config.fromfile(path)
            assert 'mmpoolformer' in sys.modules, 'custom_imports'
            init_default_scope(cfg.default_scope)
            from {library}.registry import MODELS
            model = MODELS.build(cfg.model).eval()
            with torch.no_grad():
                feats = model.extract_feat(torch.randn(1, 3, 64, 96))
                if '{library}' == 'mmdet':
                    logits = model.bbox_head(feats)[0]
                else:
                    logits = [model.decode_head(feats)]
            out.append(dict(
                backbone=type(model.backbone).__name__,
                fork_last3=model.backbone.fork_last3,
                shapes=[list(f.shape) for f in feats],
                finite=all(bool(torch.isfinite(t).all()) for t in logits)))
        print(json.dumps(out))
        """, tmp_path, cwd=REPO)
    assert [r['backbone'] for r in result] == ['ConvFormer', 'CAFormer']
    for r in result:
        assert r['finite']
        if library == 'mmdet':  # FPN from level 1 plus extra levels
            assert r['fork_last3'] and len(r['shapes']) == 5
        else:
            assert not r['fork_last3']
            assert [s[2:] for s in r['shapes']] == [[16, 24], [8, 12],
                                                    [4, 6], [2, 3]]


def test_output_norms_layernorm2d_eps_1e6():
    """norm0-norm3: LayerNorm over channels with weight and bias, eps 1e-6
    (small-variance inputs make the eps visible); every norm uses 1e-6."""
    model = ConvFormer(arch=TINY, fork_feat=True)
    for i, dim in enumerate(TINY['embed_dims']):
        norm = getattr(model, f'norm{i}')
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
        x = 1e-3 * torch.randn(2, dim, 3, 5)
        expected = F.layer_norm(x.permute(0, 2, 3, 1), (dim, ), norm.weight,
                                norm.bias, 1e-6).permute(0, 3, 1, 2)
        torch.testing.assert_close(norm(x), expected)
    epsilons = {m.eps for m in CAFormer(arch=TINY, fork_feat=False).modules()
                if hasattr(m, 'eps')}
    assert epsilons == {1e-6}


def test_custom_metaformer_batch_norm_for_training_from_scratch():
    """norm='bn' (custom MetaFormer only): BatchNorm2d block norms, kept in
    eval mode by norm_eval; refused where attention stages need tokens, and
    by the families, which fix their norms."""
    model = MetaFormer(arch=TINY, token_mixers='sepconv', norm='bn',
                       norm_eval=True)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # two per block; the output norms stay LayerNorm2d
    assert len(norms) == 2 * sum(TINY['layers'])
    model.train()
    assert not any(m.training for m in norms)
    outs = model(torch.randn(2, 3, 40, 52))
    assert [o.shape[1] for o in outs] == list(TINY['embed_dims'])
    with pytest.raises(ValueError, match="'bn' needs NCHW stages"):
        MetaFormer(arch=TINY, token_mixers=('sepconv', 'sepconv',
                                            'attention', 'attention'),
                   norm='bn')
    with pytest.raises(TypeError, match='ConvFormer fixes norm'):
        ConvFormer(arch=TINY, norm='bn')


@pytest.mark.parametrize('family', list(CLASSES))
def test_compiled_training_matches_eager(family):
    """``compile=`` (dynamo + AOTAutograd, no C++ build) gives the eager
    outputs and gradients for every family, alone and with frozen stages
    and selective ``with_cp`` (RandFormer's resampled matrix is not cached
    inside compiled graphs: a checkpointed block cannot replay that)."""
    import copy
    aot = dict(backend='aot_eager', fullgraph=True, dynamic=False)
    x = torch.randn(2, 3, 40, 52)
    for options in (dict(), dict(frozen_stages=1, with_cp=True)):
        torch._dynamo.reset()
        torch.manual_seed(0)
        eager = CLASSES[family](arch=TINY, drop_path_rate=0.1,
                                **options).train()
        compiled = copy.deepcopy(eager)
        compiled.compile_cfg = aot
        results = []
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(1)  # same drop-path draws
            outs = model(x)
            sum(o.square().mean() for o in outs).backward()
            results.append(([o.detach() for o in outs], {
                n: p.grad.clone() for n, p in model.named_parameters()
                if p.grad is not None}))
        assert '_compiled_call' in compiled.__dict__
        (ref_outs, ref_grads), (outs, grads) = results
        for a, b in zip(ref_outs, outs):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
        assert grads.keys() == ref_grads.keys() and grads
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4,
                                       atol=1e-6, msg=name)
    torch._dynamo.reset()
