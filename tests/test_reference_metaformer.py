"""Sanity checks of the MetaFormer-baselines reference itself (CPU, fast):
parameter counts against the published and target numbers, the official and
timm key layouts, RandFormer's fixed token count, and that the official
(NHWC) model and the timm-style (NCHW) computation on converted weights
agree."""
import pytest
import torch
import torch.nn.functional as F

import reference_metaformer as R

FAMILY_SIZES = {
    'identityformer': ('s12', 's24', 's36', 'm36', 'm48'),
    'randformer': ('s12', 's24', 's36', 'm36', 'm48'),
    'poolformerv2': ('s12', 's24', 's36', 'm36', 'm48'),
    'convformer': ('s18', 's36', 'm36', 'b36'),
    'caformer': ('s18', 's36', 'm36', 'b36'),
}
# exact counts (official classifier, 1000 classes, random matrices included)
CLASSIFIER_PARAMS = {
    'identityformer_s12': 11891712, 'identityformer_s24': 21341464,
    'identityformer_s36': 30791216, 'identityformer_m36': 56077168,
    'identityformer_m48': 73346056,
    'randformer_s12': 12127010, 'randformer_s24': 21812060,
    'randformer_s36': 31497110, 'randformer_m36': 56783062,
    'randformer_m48': 74287248,
    'poolformerv2_s12': 11891712, 'poolformerv2_s24': 21341464,
    'poolformerv2_s36': 30791216, 'poolformerv2_m36': 56077168,
    'poolformerv2_m48': 73346056,
    'convformer_s18': 26774448, 'convformer_s36': 40012152,
    'convformer_m36': 57051640, 'convformer_b36': 99882616,
    'caformer_s18': 26341656, 'caformer_s36': 39297102,
    'caformer_m36': 56204878, 'caformer_b36': 98753614,
}


@pytest.fixture(scope='module')
def meta_models():
    with torch.device('meta'):
        return {name: R.build_reference(name) for name in R.ARCHS}


def _count(model, skip=()):
    return sum(p.numel() for k, p in model.named_parameters()
               if not k.startswith(skip))


def test_arch_table():
    assert list(R.ARCHS) == [f'{f}_{s}' for f, sizes in FAMILY_SIZES.items()
                             for s in sizes]
    for name, a in R.ARCHS.items():
        assert a['res_scale'] == (None, None, 1.0, 1.0)
        assert a['layer_scale'] == (None,) * 4
    assert R.ARCHS['caformer_m36']['dims'] == (96, 192, 384, 576)
    assert R.ARCHS['randformer_m48']['depths'] == (8, 8, 24, 8)


def test_dense_param_counts_match_targets():
    for name, target in R.DENSE_TARGETS_M.items():
        assert round(R.dense_param_count(name) / 1e6, 3) == target, name
        # output norms holding parameters would not round to the targets
        for kind in ('weight', 'weight_bias'):
            assert round(R.dense_param_count(name, kind) / 1e6, 3) != target
    assert R.dense_param_count('poolformerv2_s12') == 11377688
    assert R.dense_param_count('poolformerv2_s12', 'weight_bias') == 11379736
    for size in FAMILY_SIZES['poolformerv2']:
        pool = R.dense_param_count(f'poolformerv2_{size}')
        assert R.dense_param_count(f'identityformer_{size}') == pool
        d = R.ARCHS[f'randformer_{size}']['depths']
        frozen = d[2] * 196 ** 2 + d[3] * 49 ** 2
        assert R.dense_param_count(f'randformer_{size}') == pool + frozen
        assert R.dense_param_count(f'randformer_{size}',
                                   include_frozen=False) == pool


def test_counts_match_built_modules(meta_models):
    for name, model in meta_models.items():
        assert _count(model) == R.classifier_param_count(name) \
            == CLASSIFIER_PARAMS[name], name
        assert _count(model, ('norm.', 'head.')) \
            == R.features_param_count(name), name
        trainable = sum(p.numel() for p in model.parameters()
                        if p.requires_grad)
        assert trainable == R.classifier_param_count(
            name, include_frozen=False), name


def test_published_classifier_counts():
    for name, published in R.PUBLISHED_PARAMS_M.items():
        if name.startswith('randformer'):
            base, frozen = published
            total = R.classifier_param_count(name)
            trainable = R.classifier_param_count(name, include_frozen=False)
            assert round(trainable / 1e6, 1) == base, name
            assert round((total - trainable) / 1e6, 1) == frozen, name
        else:
            digits = 0 if isinstance(published, int) else 1
            got = round(R.classifier_param_count(name) / 1e6, digits)
            assert got == published, name
    # the 0.1M values quoted in the paper's tables
    assert round(CLASSIFIER_PARAMS['convformer_s18'] / 1e6, 1) == 26.8
    assert round(CLASSIFIER_PARAMS['caformer_s18'] / 1e6, 1) == 26.3


def test_key_layouts(meta_models):
    for name, model in meta_models.items():
        sd = model.state_dict()
        for layout, got in (('official', sd),
                            ('timm', R.official_to_timm(sd))):
            exp = R.expected_shapes(name, layout)
            assert list(got) == list(exp) == R.expected_keys(name, layout)
            assert {k: tuple(v.shape) for k, v in got.items()} == exp, name
        back = R.timm_to_official(R.official_to_timm(sd))
        assert list(back) == list(sd)
        assert all(back[k].shape == v.shape for k, v in sd.items())


def test_timm_layout_details():
    t = R.expected_shapes('caformer_s18', 'timm')
    o = R.expected_shapes('caformer_s18', 'official')
    assert t['stem.conv.weight'] == o['downsample_layers.0.conv.weight'] \
        == (64, 3, 7, 7)
    assert t['stem.norm.weight'] == (64,)
    assert 'stages.0.downsample.conv.weight' not in t
    assert t['stages.1.downsample.norm.weight'] == (64,)
    assert t['stages.1.downsample.conv.weight'] == (128, 64, 3, 3)
    # SepConv pointwise convs and NCHW-stage MLPs become 1x1 convs ...
    assert o['stages.0.0.token_mixer.pwconv1.weight'] == (128, 64)
    assert t['stages.0.blocks.0.token_mixer.pwconv1.weight'] == (128, 64, 1, 1)
    assert t['stages.1.blocks.2.mlp.fc2.weight'] == (128, 512, 1, 1)
    # ... attention stages keep Linear
    assert t['stages.2.blocks.0.mlp.fc1.weight'] == (1280, 320)
    assert t['stages.3.blocks.2.token_mixer.qkv.weight'] == (1536, 512)
    assert t['stages.3.blocks.2.res_scale2.scale'] == (512,)
    assert 'stages.1.blocks.0.res_scale1.scale' not in t
    assert t['head.norm.bias'] == (512,)
    assert t['head.fc.fc1.weight'] == o['head.fc1.weight'] == (2048, 512)
    assert t['head.fc.norm.weight'] == (2048,)
    p = R.expected_shapes('poolformerv2_s12', 'timm')
    assert p['stages.0.blocks.0.mlp.fc1.weight'] == (256, 64, 1, 1)
    assert p['head.fc.weight'] == (1000, 512)
    r = R.expected_shapes('randformer_s12', 'timm')
    assert r['stages.2.blocks.5.token_mixer.random_matrix'] == (196, 196)
    assert r['stages.3.blocks.1.token_mixer.random_matrix'] == (49, 49)


@pytest.mark.parametrize('family', list(R.SMALL))
def test_stage_features_and_timm_math(family):
    name = R.SMALL[family]
    torch.manual_seed(0)
    model = R.randomize_(R.build_reference(name, num_classes=7)).eval()
    size = (224, 224) if family == 'randformer' else (65, 47)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        feats = R.reference_stage_features(model, x)
        logits = model(x)
        sd = R.official_to_timm(model.state_dict())
        t_feats, t_logits = R.timm_layout_forward(sd, x, name)
        back = R.timm_to_official(sd)
    dims = R.ARCHS[name]['dims']
    hw = [(56, 56), (28, 28), (14, 14), (7, 7)] if family == 'randformer' \
        else [(16, 12), (8, 6), (4, 3), (2, 2)]
    assert [tuple(f.shape) for f in feats] == [
        (1, c) + s for c, s in zip(dims, hw)]
    assert logits.shape == (1, 7)
    for a, b in zip(feats, t_feats):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * a.abs().max())
    assert torch.allclose(logits, t_logits, atol=1e-4 * logits.abs().max())
    ref_sd = model.state_dict()
    assert list(back) == list(ref_sd)
    assert all(torch.equal(back[k], v) for k, v in ref_sd.items())


def test_randformer_tied_to_224_tokens():
    torch.manual_seed(0)
    model = R.build_reference('randformer_s12').eval()
    mats = {k: p for k, p in model.named_parameters()
            if k.endswith('random_matrix')}
    assert len(mats) == 6 + 2
    for k, p in mats.items():
        n = 196 if k.startswith('stages.2.') else 49
        assert p.shape == (n, n) and not p.requires_grad
        assert torch.allclose(p.sum(-1), torch.ones(n))
        assert k in model.state_dict()
    assert R.randformer_accepts(224, 224)
    assert R.randformer_accepts(211, 226)
    for h, w in ((210, 224), (227, 224), (64, 64), (256, 256), (384, 384)):
        assert not R.randformer_accepts(h, w)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 211, 226)).shape == (1, 1000)
        for size in ((64, 64), (210, 224)):
            # stage 2's token count differs from 196: the matrix product
            # cannot be formed
            with pytest.raises(RuntimeError):
                model(torch.randn(1, 3, *size))


def test_layer_math():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, 6)  # NHWC
    w = torch.rand(6) + 0.5
    gn = R.LayerNormGeneral(6, normalized_dim=(1, 2, 3), bias=False, eps=1e-6)
    gn.weight.data.copy_(w)
    expect = F.group_norm(x.permute(0, 3, 1, 2), 1, w, None, 1e-6)
    assert torch.allclose(gn(x), expect.permute(0, 2, 3, 1), atol=1e-5)
    ln = R.LayerNormWithoutBias(6)
    ln.weight.data.copy_(w)
    cl = R.LayerNormGeneral(6, bias=False, eps=1e-6)
    cl.weight.data.copy_(w)
    assert torch.allclose(ln(x), cl(x), atol=1e-5)
    att = R.Attention(64)
    assert att.num_heads == 2 and att.head_dim == 32
    y = torch.randn(1, 3, 5, 64)
    q, k, v = att.qkv(y).reshape(1, 15, 3, 2, 32).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    assert torch.allclose(att(y), att.proj(o.reshape(1, 3, 5, 64)),
                          atol=1e-5)
    pool = R.Pooling()
    got = pool(x).permute(0, 3, 1, 2)
    xc = x.permute(0, 3, 1, 2)
    ones = torch.ones_like(xc[:, :1])
    avg = F.avg_pool2d(xc, 3, 1, 1) / F.avg_pool2d(ones, 3, 1, 1)
    assert torch.allclose(got, avg - xc, atol=1e-5)
    act = R.StarReLU(0.8944, -0.4472)
    t = torch.tensor([-1., 0., 2.])
    assert torch.allclose(act(t), 0.8944 * F.relu(t) ** 2 - 0.4472)
