"""model-index.yml and configs/*/metafile.yml, OpenMMLab's model index.

The rule is general, for every backbone's configs: every config under
configs/ except the ``_base_`` files has exactly one metafile entry, named
after its file; model-index.yml imports every metafile; and each entry's
parameter count and ImageNet weights are those of the model its config
builds (built on the ``meta`` device: no memory, no download).
"""
import copy
import importlib
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmpoolformer  # noqa: F401  registers PoolFormer

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / 'configs'


def _configs():
    """Every config under configs/, ``_base_`` files excluded, as the
    repository-relative paths metafiles use."""
    return sorted(
        path.relative_to(REPO).as_posix() for path in CONFIGS.rglob('*.py')
        if '_base_' not in path.relative_to(CONFIGS).parts)


def _metafiles():
    return sorted(path.relative_to(REPO).as_posix()
                  for pattern in ('metafile.yml', 'metafile.yaml')
                  for path in CONFIGS.rglob(pattern))


def _load(path):
    return yaml.safe_load((REPO / path).read_text())


INDEX = _load('model-index.yml')
ENTRIES = [(metafile, model) for metafile in INDEX['Import']
           for model in _load(metafile)['Models']]


def test_model_index_imports_every_metafile():
    assert sorted(INDEX['Import']) == _metafiles()


def test_every_config_has_exactly_one_entry():
    counts = Counter(model['Config'] for _, model in ENTRIES)
    missing = [config for config in _configs() if not counts[config]]
    assert not missing, f'configs without a metafile entry: {missing}'
    twice = [config for config, count in counts.items() if count > 1]
    assert not twice, f'configs with several metafile entries: {twice}'
    unknown = [config for config in counts if not (REPO / config).is_file()]
    assert not unknown, f'metafile entries of missing configs: {unknown}'
    for _, model in ENTRIES:  # named after the file, as in mmdet and mmseg
        assert model['Name'] == Path(model['Config']).stem


def test_entries_are_in_openmmlab_format():
    modelindex = pytest.importorskip('modelindex')  # comes with openmim
    index = modelindex.load(str(REPO / 'model-index.yml'))
    assert index.check(silent=True) == []
    assert len(index.models) == len(ENTRIES)
    for metafile, model in ENTRIES:
        collections = [c['Name'] for c in _load(metafile)['Collections']]
        assert model['In Collection'] in collections
        assert isinstance(model['Metadata']['Parameters'], int)
        for result in model.get('Results', []):
            assert result['Task'] and result['Dataset'] and result['Metrics']


def _build_on_meta(model_cfg, scope):
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    with torch.device('meta'):
        return registry.build(model_cfg)


@pytest.mark.parametrize('entry', [model for _, model in ENTRIES],
                         ids=lambda model: model['Name'])
def test_entry_matches_the_model_its_config_builds(entry):
    cfg = Config.fromfile(str(REPO / entry['Config']))
    model_cfg = copy.deepcopy(cfg.model)
    init_cfg = model_cfg.backbone.pop('init_cfg', None) or {}
    model_cfg.backbone.init_cfg = None
    metadata = entry['Metadata']
    if init_cfg.get('type') == 'Pretrained':
        assert metadata['Pretrained Weights'] == init_cfg['checkpoint']
    else:
        assert metadata['Pretrained Weights'].startswith('none')
    # the schedule the entry reports is the one the config runs
    if 'Epochs' in metadata:
        assert metadata['Epochs'] == cfg.train_cfg.max_epochs, entry['Name']
    else:
        assert metadata['Iterations'] == cfg.train_cfg.max_iters, \
            entry['Name']
    model = _build_on_meta(model_cfg, cfg.default_scope)
    params = sum(p.numel() for p in model.parameters())
    assert metadata['Parameters'] == params, (
        f"{entry['Config']}: the metafile says {metadata['Parameters']} "
        f'parameters, the model has {params}')
