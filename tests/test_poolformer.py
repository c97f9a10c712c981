import warnings

import pytest
import torch
import torch.nn as nn

from mmpoolformer.models import ARCH_SETTINGS, PoolFormer
from reference_poolformer import randomize_, reference_forward

# Facts file: backbone with four output norms, and the ImageNet classifier.
DENSE_PARAMS = dict(s12=11.40, s24=20.88, s36=30.35, m36=55.40, m48=72.71)
CLS_PARAMS = dict(s12=11.915, s24=21.389, s36=30.863, m36=56.173, m48=73.473)
TINY = dict(layers=[1, 1, 2, 1], embed_dims=[8, 16, 24, 32], mlp_ratios=2)


def n_params(model):
    return sum(p.numel() for p in model.parameters()) / 1e6


def test_arch_table_matches_paper():
    assert ARCH_SETTINGS['s12']['layers'] == (2, 2, 6, 2)
    assert ARCH_SETTINGS['m48']['embed_dims'] == (96, 192, 384, 768)
    scales = {k: v['layer_scale_init_value'] for k, v in ARCH_SETTINGS.items()}
    assert scales == dict(s12=1e-5, s24=1e-5, s36=1e-6, m36=1e-6, m48=1e-6)
    model = PoolFormer('s36')
    assert torch.all(model.network[0][0].layer_scale_1 == 1e-6)
    assert model.network[0][0].mlp.fc1.out_channels == 4 * 64


@pytest.mark.parametrize('arch', list(ARCH_SETTINGS))
def test_shapes_strides_and_params(arch):
    model = PoolFormer(arch).eval()
    assert n_params(model) == pytest.approx(DENSE_PARAMS[arch], abs=0.005)
    assert n_params(PoolFormer(arch, fork_feat=False)) == pytest.approx(
        CLS_PARAMS[arch], abs=0.0005)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 225, 333))
    dims = ARCH_SETTINGS[arch]['embed_dims']
    # conv arithmetic: stem 7/4/2 then three 3/2/1 downsamplings
    h, w = (225 + 4 - 7) // 4 + 1, (333 + 4 - 7) // 4 + 1
    sizes = [(h, w)]
    for _ in range(3):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        sizes.append((h, w))
    assert sizes == [(56, 83), (28, 42), (14, 21), (7, 11)]
    assert [tuple(o.shape) for o in outs] == [
        (1, c, h, w) for c, (h, w) in zip(dims, sizes)]


@pytest.mark.parametrize('size', [(64, 64), (97, 131), (33, 35)])
def test_matches_reference_math(size):
    model = randomize_(PoolFormer('s12')).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours = model(x)
        ref = reference_forward(model.state_dict(), x, (2, 2, 6, 2))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_classification_mode_matches_reference():
    model = randomize_(PoolFormer(TINY, fork_feat=False, num_classes=7)).eval()
    x = torch.randn(2, 3, 65, 70)
    with torch.no_grad():
        logits = model(x)
        ref = reference_forward(model.state_dict(), x, TINY['layers'],
                                classify=True)
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)


def test_state_dict_keys_are_official_layout():
    keys = set(PoolFormer('s12').state_dict())
    expected = {'patch_embed.proj.weight', 'network.0.1.layer_scale_2',
                'network.1.proj.weight', 'network.4.5.mlp.fc2.bias',
                'network.6.1.norm2.weight', 'norm0.weight', 'norm6.bias'}
    assert expected <= keys
    assert all(k.split('.')[0] in ('patch_embed', 'network', 'norm0', 'norm2',
                                   'norm4', 'norm6') for k in keys)


def test_unknown_and_custom_arch():
    with pytest.raises(ValueError, match="s12, s24, s36, m36, m48"):
        PoolFormer('s18')
    with pytest.raises(ValueError, match='layers'):
        PoolFormer(dict(embed_dims=[8, 16, 24, 32]))
    with pytest.raises(ValueError, match='4 positive'):
        PoolFormer(dict(layers=[1, 1, 1], embed_dims=[8, 16, 24]))
    model = PoolFormer(TINY)
    outs = model(torch.randn(1, 3, 32, 32))
    assert [o.shape[1] for o in outs] == [8, 16, 24, 32]
    assert model.network[0][0].mlp.fc1.out_channels == 16


def test_out_indices_select_negative_and_not_mutated():
    requested = [-1, 1]
    model = PoolFormer(TINY, out_indices=requested)
    assert requested == [-1, 1]
    assert model.out_indices == (1, 3)
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [16, 32]
    assert not hasattr(model, 'norm0') and hasattr(model, 'norm6')
    with pytest.raises(ValueError, match='twice'):
        PoolFormer(TINY, out_indices=(3, -1))
    with pytest.raises(ValueError, match='out_indices'):
        PoolFormer(TINY, out_indices=(4, ))
    # stages after the last requested one are not run
    early = PoolFormer(TINY, out_indices=(1, ))
    assert len(early(torch.randn(1, 3, 64, 64))) == 1


def test_fork_last3_option_env_and_coexistence(monkeypatch):
    monkeypatch.delenv('FORK_LAST3', raising=False)
    plain = randomize_(PoolFormer(TINY)).eval()
    forked = PoolFormer(TINY, fork_last3=True).eval()
    forked.load_state_dict(plain.state_dict(), strict=False)
    assert isinstance(forked.norm0, nn.Identity)
    assert not any(k.startswith('norm0') for k in forked.state_dict())
    assert isinstance(plain.norm0, nn.GroupNorm)  # same process, other setting
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        ref = reference_forward(plain.state_dict(), x, TINY['layers'],
                                fork_last3=True)
        outs_forked, outs_plain = forked(x), plain(x)
    for a, b in zip(outs_forked, ref):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(outs_forked[0], outs_plain[0])
    torch.testing.assert_close(outs_forked[3], outs_plain[3])

    monkeypatch.setenv('FORK_LAST3', '1')
    with pytest.warns(DeprecationWarning, match='FORK_LAST3'):
        assert PoolFormer(TINY).fork_last3
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the explicit option wins, silently
        assert not PoolFormer(TINY, fork_last3=False).fork_last3
    monkeypatch.setenv('FORK_LAST3', '0')
    with pytest.warns(DeprecationWarning):
        assert not PoolFormer(TINY).fork_last3


def test_drop_path_rises_linearly_over_all_blocks():
    model = PoolFormer('s12', drop_path_rate=0.11)
    rates = [getattr(b.drop_path, 'drop_prob', 0.) for i in (0, 2, 4, 6)
             for b in model.network[i]]
    assert len(rates) == 12
    expected = [0.11 * i / 11 for i in range(12)]
    assert rates == pytest.approx(expected)


def test_layer_scale_init_value_overrides_the_arch():
    def scales(model):
        values = torch.cat([torch.cat([blk.layer_scale_1, blk.layer_scale_2])
                            for b in (0, 2, 4, 6) for blk in model.network[b]])
        return set(values.tolist())

    def f32(value):  # the parameters are float32
        return {torch.tensor(value).item()}

    assert scales(PoolFormer('s12')) == f32(1e-5)
    assert scales(PoolFormer('m36')) == f32(1e-6)
    assert scales(PoolFormer('s12', layer_scale_init_value=0.1)) == f32(0.1)
    # the shared arch table is not changed by the override
    assert ARCH_SETTINGS['s12']['layer_scale_init_value'] == 1e-5
    assert scales(PoolFormer('s12')) == f32(1e-5)


# What each frozen_stages value freezes, by the official key names (stem
# patch_embed; stage k's downsampling network.{2k-1}, blocks network.{2k}
# and output norm norm{2k}), written out rather than derived from the model.
FROZEN_PREFIXES = {
    0: ('patch_embed.', ),
    1: ('patch_embed.', 'network.0.', 'norm0.'),
    2: ('patch_embed.', 'network.0.', 'norm0.', 'network.1.', 'network.2.',
        'norm2.'),
    4: ('patch_embed.', 'network.0.', 'norm0.', 'network.1.', 'network.2.',
        'norm2.', 'network.3.', 'network.4.', 'norm4.', 'network.5.',
        'network.6.', 'norm6.'),
}


@pytest.mark.parametrize('frozen', sorted(FROZEN_PREFIXES))
def test_frozen_stages_get_no_gradient_and_stay_eval(frozen):
    model = randomize_(
        PoolFormer(TINY, frozen_stages=frozen))
    model.train()
    prefixes = FROZEN_PREFIXES[frozen]
    names = [n for n, _ in model.named_parameters()]
    frozen_names = {n for n in names if n.startswith(prefixes)}
    assert frozen_names
    assert (len(frozen_names) == len(names)) == (frozen == 4)
    frozen_modules = [m for n, m in model.named_modules()
                      if n and (n + '.').startswith(prefixes)]

    def modes():
        return {n: m.training for n, m in model.named_modules() if n}

    assert all(not m.training for m in frozen_modules)
    assert all(training for n, training in modes().items()
               if not (n + '.').startswith(prefixes))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    sum(o.square().mean() for o in model(x)).backward()
    optim.step()
    assert x.grad is not None  # frozen weights still pass gradients on
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p)
        if name in frozen_names:
            assert not p.requires_grad and p.grad is None and not changed, \
                name
        else:
            assert p.requires_grad and p.grad is not None, name
            # avg_pool(y + b) - (y + b) does not depend on norm1's bias b:
            # its gradient is zero up to rounding
            if not name.endswith('norm1.bias'):
                assert p.grad.abs().sum() > 0 and changed, name
    model.eval()
    model.train()  # frozen parts must survive a later train() call
    assert modes() == {n: not (n + '.').startswith(prefixes)
                       for n in modes()}
    with pytest.raises(ValueError, match='frozen_stages'):
        PoolFormer(TINY, frozen_stages=5)


def _bn_buffers(model):
    return {n: b.clone() for n, b in model.named_buffers()
            if n.endswith(('running_mean', 'running_var',
                           'num_batches_tracked'))}


@pytest.mark.parametrize('norm_eval', [True, False])
def test_norm_eval(norm_eval):
    """With batch norms (the only norms with running statistics), a
    training-mode forward keeps the statistics and normalises with them
    when norm_eval, and updates them otherwise; the rest still trains."""
    torch.manual_seed(0)
    model = randomize_(PoolFormer(TINY, norm_cfg=dict(type='BN'),
                                  norm_eval=norm_eval))
    with torch.no_grad():  # non-trivial running statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.eval()(x)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 * 5 + 4
    assert all(m.training is not norm_eval for m in bns)
    assert model.network[0][0].mlp.training and model.training
    stats = _bn_buffers(model)
    outs = model(x)
    sum(o.square().mean() for o in outs).backward()
    after = _bn_buffers(model)
    assert len(stats) == 3 * len(bns)
    if norm_eval:
        assert all(torch.equal(after[n], stats[n]) for n in stats)
        for a, b in zip(outs, ref):
            torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-5)
    else:
        assert all(not torch.equal(after[n], stats[n]) for n in stats)
        assert not torch.allclose(outs[-1].detach(), ref[-1], atol=1e-3)
    # the affine weights of the norms still learn either way
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0
               for m in bns)
    model.train()  # and a later train() call keeps the setting
    assert all(m.training is not norm_eval for m in bns)


def test_default_norm_is_official_one_group_groupnorm():
    model = PoolFormer(TINY)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    # two per block (5 blocks) and four output norms
    assert len(norms) == 2 * 5 + 4
    assert all(m.num_groups == 1 and m.eps == 1e-5 for m in norms)
    assert model.norm_cfg is None
    gn = PoolFormer(TINY, norm_cfg=dict(type='GN')).network[0][0].norm1
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 1


def test_norm_cfg_batch_norm_everywhere_and_norm_eval():
    model = PoolFormer(TINY, norm_cfg=dict(type='BN'))
    assert not any(isinstance(m, nn.GroupNorm) for m in model.modules())
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 * 5 + 4
    keys = set(model.state_dict())
    assert {'network.0.0.norm1.running_mean', 'norm6.running_var'} <= keys
    outs = model.train()(torch.randn(2, 3, 64, 64))
    assert [o.shape[1] for o in outs] == TINY['embed_dims']
    assert not torch.equal(bns[0].running_mean, torch.zeros(8))

    frozen = PoolFormer(TINY, norm_cfg=dict(type='BN'), norm_eval=True)
    frozen.train()
    stats = {n: b.clone() for n, b in frozen.named_buffers()}
    frozen(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(b, stats[n]) for n, b in frozen.named_buffers())
    assert frozen.network[0][0].mlp.training


def test_bad_norm_cfg_is_refused_at_build():
    with pytest.raises(ValueError, match="'LN' would normalise over the "
                       'width'):
        PoolFormer(TINY, norm_cfg=dict(type='LN'))
    for bad in (dict(num_groups=1), 'BN'):
        with pytest.raises(TypeError, match='norm_cfg must be a dict with a '
                           '`type`'):
            PoolFormer(TINY, norm_cfg=bad)
    with pytest.raises(ValueError, match="Unknown norm type 'Nope'"):
        PoolFormer(TINY, norm_cfg=dict(type='Nope'))


def test_with_cp_same_outputs_and_gradients():
    torch.manual_seed(0)
    base = randomize_(PoolFormer(TINY, drop_path_rate=0.2))
    cp_model = PoolFormer(TINY, drop_path_rate=0.2, with_cp=True)
    cp_model.load_state_dict(base.state_dict())
    x = torch.randn(2, 3, 40, 56, requires_grad=True)
    grads, calls, saved = [], [], []
    for model in (base, cp_model):
        model.train()
        # block forwards started (checkpoint stops a recomputation early, so
        # a forward hook would miss it), counted per pass
        count = dict(forward=0, backward=0)
        phase = ['forward']
        handles = [block.register_forward_pre_hook(
            lambda *_: count.__setitem__(phase[0], count[phase[0]] + 1))
            for i in (0, 2, 4, 6) for block in model.network[i]]
        saved_numel = []
        weights = {p.data_ptr() for p in model.parameters()}

        def pack(tensor):  # activations kept for backward (not weights)
            if tensor.data_ptr() not in weights:
                saved_numel.append(tensor.numel())
            return tensor

        torch.manual_seed(123)  # same drop-path draws
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outs = model(x)
        loss = sum((o * torch.linspace(0, 1, o.shape[-1])).sum() for o in outs)
        x.grad = None
        phase[0] = 'backward'
        loss.backward()
        for handle in handles:
            handle.remove()
        calls.append(count)
        saved.append(sum(saved_numel))
        grads.append((
            [o.detach() for o in outs], x.grad.clone(),
            {n: p.grad.clone() for n, p in model.named_parameters()}))
    (o1, gx1, gp1), (o2, gx2, gp2) = grads
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(gx1, gx2)
    for name in gp1:
        torch.testing.assert_close(gp1[name], gp2[name], msg=name)
    # checkpointing happened: each of the 5 blocks ran again in backward,
    # and the forward kept far fewer activations for it
    assert calls == [dict(forward=5, backward=0), dict(forward=5, backward=5)]
    assert saved[1] < 0.5 * saved[0]
    # no recomputation where no gradient is needed
    count = [0]
    handle = cp_model.network[0][0].register_forward_pre_hook(
        lambda *_: count.__setitem__(0, count[0] + 1))
    with torch.no_grad():
        cp_model(x)
    cp_model.eval()
    sum(o.sum() for o in cp_model(x)).backward()
    handle.remove()
    assert count == [2]


def test_pretrained_argument_becomes_init_cfg():
    with pytest.warns(DeprecationWarning, match='init_cfg'):
        model = PoolFormer(TINY, pretrained='some/file.pth')
    assert model.init_cfg == dict(type='Pretrained',
                                  checkpoint='some/file.pth')
    with pytest.raises(ValueError, match='not both'):
        PoolFormer(TINY, pretrained='a.pth',
                   init_cfg=dict(type='Pretrained', checkpoint='b.pth'))


@pytest.mark.parametrize('approximate', ['none', 'tanh'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_gelu_computes_channels_last_as_contiguous_elements(
        monkeypatch, approximate, dtype):
    """The MLP's GELU hands torch's kernel a channels_last tensor as its
    contiguous (N, H, W, C) view (the CPU kernel's fast path) and gives
    what a contiguous tensor gets (to the rounding of the kernel's vector
    tail), forward and backward, in the input's layout; other inputs go
    through nn.GELU as they are."""
    import torch.nn.functional as F
    from mmpoolformer.models.layers import GELU
    seen = []
    gelu = F.gelu

    def recording_gelu(x, *args, **kwargs):
        seen.append(x.is_contiguous())
        return gelu(x, *args, **kwargs)

    monkeypatch.setattr(F, 'gelu', recording_gelu)
    torch.manual_seed(0)
    x = torch.randn(3, 37, 5, 7, dtype=dtype)
    cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    nchw = x.clone().requires_grad_()
    out, ref = GELU(approximate)(cl), nn.GELU(approximate)(nchw)
    same = torch.testing.assert_close
    assert seen == [True, True]
    assert out.is_contiguous(memory_format=torch.channels_last)
    same(out, ref)
    grad = torch.randn_like(out)  # channels_last, as a conv's backward
    got, = torch.autograd.grad(out, cl, grad)
    want, = torch.autograd.grad(ref, nchw, grad.contiguous())
    assert got.is_contiguous(memory_format=torch.channels_last)
    same(got, want)
    # NCHW and 3-D inputs: nn.GELU's own call, unchanged
    seen.clear()
    tokens = torch.randn(2, 6, 5, dtype=dtype)
    assert torch.equal(GELU(approximate)(tokens),
                       nn.GELU(approximate)(tokens))
    assert torch.equal(GELU(approximate)(x), ref.detach())
    assert seen == [True, True, True]
    block_act = PoolFormer(dict(layers=[1, 1, 1, 1], embed_dims=[8, 8, 8, 8],
                                mlp_ratios=2)).network[0][0].mlp.act
    assert isinstance(block_act, GELU)
