"""tools/analysis_tools/timm_parity.py without timm (which does not import
here): its load checks and its stand-ins for the output norms, on PoolFormer
(v1) files in timm's layout written out independently
(``test_checkpoint.official_to_timm``). The comparison with timm itself is a
documented run (docs/metaformer.md, "Parity with timm")."""
import sys
from pathlib import Path

import pytest
import torch

from mmpoolformer.models import PoolFormer
from test_checkpoint import official_to_timm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools' /
                       'analysis_tools'))
import timm_parity  # noqa: E402

V1 = timm_parity.family('PoolFormer')


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
