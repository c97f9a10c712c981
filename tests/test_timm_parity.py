"""tools/analysis_tools/{timm,official}_parity.py without timm or the
official code (neither imports here): the load checks and the stand-ins for
the output norms, on PoolFormer (v1) files in timm's layout written out
independently (``test_checkpoint.official_to_timm``), and the official-code
checks against the independent reference of that code. The comparisons with
timm and the official code themselves are documented runs
(docs/metaformer.md, "Parity with timm")."""
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mmpoolformer.models import PoolFormer
from reference_metaformer import build_reference
from test_checkpoint import official_to_timm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools' /
                       'analysis_tools'))
import official_parity  # noqa: E402
import timm_parity  # noqa: E402

V1 = timm_parity.family('PoolFormer')
ARGS = SimpleNamespace(seed=0, tol=1e-4)
CPU = torch.device('cpu')


@pytest.fixture(scope='module')
def timm_file(tmp_path_factory):
    """A PoolFormer-S12 classifier in timm's layout, every 1-D tensor
    perturbed (so a fresh or swapped norm / layer scale would show)."""
    torch.manual_seed(0)
    model = PoolFormer('s12', fork_feat=False, init_cfg=None)
    timm_parity.perturb(model, torch.Generator().manual_seed(0))
    state_dict = official_to_timm(model.state_dict())
    path = tmp_path_factory.mktemp('timm') / 'poolformer_s12.pth'
    torch.save(state_dict, path)
    return str(path), state_dict


@pytest.mark.parametrize('dense', [False, True])
def test_load_check_passes_a_clean_load_and_catches_a_changed_tensor(
        timm_file, dense):
    path, state_dict = timm_file
    model, report = timm_parity.build_ours(PoolFormer, 's12', dense, path)
    assert '(timm layout)' in report
    assert timm_parity.check_load(model, state_dict, report, dense, V1) == []
    # the MetaFormer family's expectations do not fit a v1 file
    assert timm_parity.check_load(model, state_dict, report, dense,
                                  timm_parity.family('ConvFormer'))
    with torch.no_grad():
        model.network[0][0].layer_scale_1.add_(1.)
    problems = timm_parity.check_load(model, state_dict, report, dense, V1)
    assert any('tensors differ from the file' in p for p in problems)


def test_norm_stand_ins_keep_the_outputs_and_see_the_stage_features():
    torch.manual_seed(0)
    model = PoolFormer('s12', init_cfg=None).eval()
    timm_parity.perturb(model, torch.Generator().manual_seed(1))
    norms = [getattr(model, name) for name in V1['norms']]
    x = torch.randn(1, 3, 67, 93)
    with torch.no_grad():
        expected = model(x)
        with timm_parity.tapped_norms(model, V1['norms']) as stage_features:
            outs = model(x)
    assert [getattr(model, name) for name in V1['norms']] == norms
    assert sorted(stage_features) == [0, 1, 2, 3]
    for i, (out, want) in enumerate(zip(outs, expected)):
        assert torch.equal(out, want)
        feature = stage_features[i]
        assert feature.shape == out.shape
        # the output is the official norm of exactly that feature
        torch.testing.assert_close(
            out, V1['out_norm'](feature, norms[i].weight, norms[i].bias))


def _official(**functions):
    """Stands in for the official ``metaformer_baselines`` module: the
    independent reference of the official code (tests/reference_metaformer.py,
    official key layout, NHWC stages, the MLP head's eps 1e-5)."""
    return SimpleNamespace(**functions)


@pytest.mark.parametrize('name', ['convformer_s18', 'randformer_s12'])
def test_official_parity_passes_the_reference_of_the_official_code(
        tmp_path, name):
    module = _official(**{name: partial(build_reference, name)})
    row = official_parity.check_model(module, name, ARGS, CPU, str(tmp_path))
    assert row['ok'], row['problems']
    assert row['params_ours_classifier'] == row['params_official']
    assert row['logits_std'] < 1e-5 and row['dense_std'] < 1e-4
    if name == 'randformer_s12':
        assert 'logits_odd' not in row  # its matrices are sized for 224 px
    else:  # the official head's LayerNorm eps (1e-5) against timm's 1e-6
        assert row['logits_official_eps_std'] > 10 * row['logits_std']


def test_official_parity_fails_a_model_that_computes_otherwise(tmp_path):
    def shifted():
        # not affine: the next downsampling's LayerNorm would undo that
        model = build_reference('identityformer_s12')
        model.stages[1].register_forward_hook(
            lambda m, a, out: out + 0.1 * out.sin())
        return model

    row = official_parity.check_model(_official(identityformer_s12=shifted),
                                      'identityformer_s12', ARGS, CPU,
                                      str(tmp_path))
    assert not row['ok']
    assert any(p.startswith('logits') for p in row['problems'])
    assert any(p.startswith('dense') and 'stage 1' in p
               for p in row['problems'])
    assert not any('stage 0' in p for p in row['problems'])


@pytest.mark.parametrize('run', [
    lambda: timm_parity.main(['--models', 'poolformer_s12']),
    lambda: official_parity.main(['--code', 'metaformer_baselines.py']),
], ids=['timm_parity', 'official_parity'])
def test_without_timm_both_tools_exit_2_saying_where_to_run(
        run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'timm', None)  # import timm fails
    with pytest.raises(SystemExit) as stop:
        run()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert 'cannot import timm' in err and 'timm_parity.py' in err
