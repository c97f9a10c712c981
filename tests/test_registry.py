"""Registration into mmdet / mmseg / mmengine, as users reach it from configs.

The config-driven cases run in fresh interpreters, where nothing has imported
mmpoolformer yet, so `custom_imports` itself must do the registering.
"""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.registry import MODELS as ROOT_MODELS

import mmpoolformer
from mmpoolformer.models import PoolFormer


# every backbone the package registers, by name
BACKBONES = ['CAFormer', 'ConvFormer', 'IdentityFormer', 'MetaFormer',
             'PoolFormer', 'PoolFormerV2', 'RandFormer']


def run_python(code: str, tmp_path, cwd=None) -> dict:
    """Run ``code`` in a fresh interpreter (in ``cwd``, default
    ``tmp_path``); it prints one JSON line last."""
    script = tmp_path / 'probe.py'
    script.write_text(textwrap.dedent(code))
    done = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, cwd=cwd or tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


DET_CONFIG = """
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmpoolformer'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='PoolFormer', arch='s12',
                  fork_last3=True),
    neck=dict(in_channels=[64, 128, 320, 512], start_level=1,
              add_extra_convs='on_input'))
"""
SEG_CONFIG = """
_base_ = 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmpoolformer'], allow_failed_imports=False)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=None),
    backbone=dict(_delete_=True, type='PoolFormer', arch='s12'),
    neck=dict(in_channels=[64, 128, 320, 512]),
    decode_head=dict(norm_cfg=norm_cfg))
"""


@pytest.mark.parametrize('library', ['mmdet', 'mmseg'])
def test_config_with_custom_imports_builds_model(tmp_path, library):
    config = DET_CONFIG if library == 'mmdet' else SEG_CONFIG
    (tmp_path / 'cfg.py').write_text(config)
    result = run_python(f"""
        import json, sys, torch
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        cfg = Config.fromfile('cfg.py')
        assert 'mmpoolformer' in sys.modules, 'custom_imports did not import'
        init_default_scope(cfg.default_scope)
        from {library}.registry import MODELS
        model = MODELS.build(cfg.model).eval()
        with torch.no_grad():
            feats = model.extract_feat(torch.randn(1, 3, 97, 131))
        print(json.dumps(dict(
            backbone=type(model.backbone).__module__,
            shapes=[list(f.shape) for f in feats])))
        """, tmp_path)
    assert result['backbone'] == 'mmpoolformer.models.backbones.poolformer'
    if library == 'mmdet':  # FPN from level 1 plus two extra levels
        assert [s[1] for s in result['shapes']] == [256] * 5
        assert [s[2] for s in result['shapes']] == [12, 6, 3, 2, 1]
    else:
        assert [s[2:] for s in result['shapes']] == [
            [24, 33], [12, 17], [6, 9], [3, 5]]


@pytest.mark.parametrize('blocked,expected', [
    (['mmseg'], ['mmdet']),
    (['mmdet'], ['mmseg']),
    (['mmdet', 'mmseg'], []),
])
def test_import_with_only_some_libraries(tmp_path, blocked, expected):
    result = run_python(f"""
        import json, sys
        for name in {blocked!r}:
            sys.modules[name] = None  # import now raises ImportError
        import mmpoolformer
        from mmpoolformer.registry import MODELS, register_all_modules
        from mmpoolformer.models import PoolFormer

        def entries():
            regs = dict(own=MODELS)
            for lib in ('mmdet', 'mmseg'):
                if lib not in {blocked!r}:
                    reg = __import__(lib + '.registry', fromlist=['MODELS'])
                    regs[lib + '.MODELS'] = reg.MODELS
                    regs[lib + '.DATASETS'] = reg.DATASETS
            return {{name: dict(reg.module_dict)
                    for name, reg in regs.items()}}

        before = entries()
        again = register_all_modules()  # a second call registers nothing
        after = entries()
        unchanged = before.keys() == after.keys() and all(
            before[name].keys() == after[name].keys() and all(
                after[name][k] is v for k, v in before[name].items())
            for name in before)
        libs = {{}}
        for lib in ('mmdet', 'mmseg'):
            if lib not in {blocked!r}:
                libs[lib] = sorted(
                    k for k, v in list(after[lib + '.MODELS'].items()) +
                    list(after[lib + '.DATASETS'].items())
                    if v.__module__.startswith('mmpoolformer'))
        print(json.dumps(dict(
            again=again, libs=libs, unchanged=unchanged,
            own=[k for k, v in after['own'].items() if v is PoolFormer],
            imported=sorted(m for m in ('mmdet', 'mmseg')
                            if sys.modules.get(m) is not None))))
        """, tmp_path)
    assert result['again'] == expected
    assert result['unchanged']  # the second call changed no registry
    assert result['own'] == ['PoolFormer']
    # a blocked library was not imported behind the block
    assert result['imported'] == expected
    if 'mmdet' in expected:
        assert result['libs']['mmdet'] == sorted(
            BACKBONES + ['ShapesDataset'])
    if 'mmseg' in expected:
        assert result['libs']['mmseg'] == sorted(
            BACKBONES + ['ShapesSegDataset'])


def _entries():
    """Every entry of the registries mmpoolformer registers into."""
    import mmdet.registry
    import mmseg.registry

    from mmpoolformer.registry import MODELS as OWN_MODELS
    registries = dict(own_models=OWN_MODELS, root_models=ROOT_MODELS)
    for library in (mmdet, mmseg):
        for kind in ('MODELS', 'DATASETS'):
            registries[f'{library.__name__}_{kind}'] = getattr(
                library.registry, kind)
    return {name: dict(registry.module_dict)
            for name, registry in registries.items()}


def test_registration_is_idempotent_and_scope_qualified():
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS

    from mmpoolformer.data.det_datasets import ShapesDataset
    from mmpoolformer.data.seg_datasets import ShapesSegDataset
    before = _entries()
    assert mmpoolformer.register_all_modules() == ['mmdet', 'mmseg']
    assert mmpoolformer.register_all_modules() == ['mmdet', 'mmseg']
    after = _entries()
    # nothing added, renamed or replaced: the same names, the same objects
    assert after.keys() == before.keys()
    for name, entries in before.items():
        assert after[name].keys() == entries.keys(), name
        assert all(after[name][key] is value
                   for key, value in entries.items()), name
    # each class under its own name only, once per registry
    expected = dict(own_models=PoolFormer, mmdet_MODELS=PoolFormer,
                    mmseg_MODELS=PoolFormer, mmdet_DATASETS=ShapesDataset,
                    mmseg_DATASETS=ShapesSegDataset)
    for name, cls in expected.items():
        assert [k for k, v in after[name].items() if v is cls] == [
            cls.__name__], name
    assert sorted(after['own_models']) == BACKBONES
    assert not any(v is PoolFormer for v in after['root_models'].values())
    assert DET_MODELS.module_dict['PoolFormer'] is PoolFormer
    assert SEG_MODELS.module_dict['PoolFormer'] is PoolFormer
    # any OpenMMLab library reaches it through the mmengine root registry
    model = ROOT_MODELS.build(dict(type='mmpoolformer.PoolFormer',
                                   arch='s12', out_indices=(3, )))
    assert isinstance(model, PoolFormer)
    assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 512, 2, 2)
