"""The package installs like an OpenMMLab one.

The wheel ships ``configs/``, ``tools/`` and ``model-index.yml`` in
``mmpoolformer/.mim/`` (what mim and mmengine look for); an installed copy
finds its configs by name from any working directory, their ``_base_`` files
included; ``mim train mmpoolformer NAME`` runs our tools/train.py from the
installed copy and ``mim search`` reads its model index; and the tools
take config names as well as paths.

The wheel is built (``pip wheel --no-deps --no-build-isolation``) from a
copy of the sources, so the checkout gets no build/ folder, and installed
with ``pip install --target``: nothing is installed into the environment.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from mmengine.config import Config

from mmpoolformer.runner import ConfigError, load_config
from mmpoolformer.utils import get_config_path, list_configs
from test_mim import run_mim, tiny_options

REPO = Path(__file__).resolve().parents[1]
SOURCES = ('setup.py', 'README.md', 'MANIFEST.in', 'model-index.yml',
           'requirements', 'mmpoolformer', 'configs', 'tools')
BUILD_LEFTOVERS = shutil.ignore_patterns('__pycache__', '*.py[cod]',
                                         '*.egg-info', '.mim')


def _pip(args, cwd):
    result = subprocess.run(
        [sys.executable, '-m', 'pip', '--disable-pip-version-check', '-q'] +
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """The wheel and the folder it was installed into (``--target``)."""
    tmp = tmp_path_factory.mktemp('packaging')
    source = tmp / 'source'
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=BUILD_LEFTOVERS)
        else:
            shutil.copy2(REPO / name, source / name)
    _pip(['wheel', source, '--no-deps', '--no-build-isolation', '-w',
          tmp / 'dist'], tmp)
    wheel, = (tmp / 'dist').glob('mmpoolformer-*.whl')
    _pip(['install', '--no-deps', '--target', tmp / 'site', wheel], tmp)
    return dict(wheel=wheel, site=tmp / 'site')


def _repo_files(folder, suffixes):
    return sorted(path.relative_to(REPO / folder).as_posix()
                  for path in (REPO / folder).rglob('*')
                  if path.is_file() and path.suffix in suffixes
                  and '__pycache__' not in path.parts)


def test_wheel_ships_configs_tools_and_model_index(installed):
    names = set(zipfile.ZipFile(installed['wheel']).namelist())
    mim = 'mmpoolformer/.mim/'
    configs = _repo_files('configs', ('.py', '.yml'))
    assert '_base_/datasets/shapes_detection.py' in configs
    missing = [c for c in configs if mim + 'configs/' + c not in names]
    assert not missing, f'configs missing from the wheel: {missing}'
    tools = _repo_files('tools', ('.py', '.sh'))
    assert {'train.py', 'test.py', 'dist_train.sh'} <= set(tools)
    missing = [t for t in tools if mim + 'tools/' + t not in names]
    assert not missing, f'tools missing from the wheel: {missing}'
    assert mim + 'model-index.yml' in names
    assert not [n for n in names if '__pycache__' in n or n.endswith('.pyc')]
    # the index of the installed copy points at files it has
    root = installed['site'] / 'mmpoolformer' / '.mim'
    for metafile in Config.fromfile(str(root / 'model-index.yml')).Import:
        for model in Config.fromfile(str(root / metafile)).Models:
            assert (root / model.Config).is_file(), model.Config


INSTALLED_CLIENT = r'''
import json, sys
import mmpoolformer
out = dict(package=mmpoolformer.__file__, configs={})
for name in sys.argv[2:]:
    out['configs'][name] = dict(path=mmpoolformer.get_config_path(name),
                                text=mmpoolformer.get_config(name).pretty_text)
json.dump(out, open(sys.argv[1], 'w'))
'''
# a config with a local _base_ list, a chain of two, and an ADE20K one
NAMES = ('detection/retinanet_poolformer_s12_shapes',
         'configs/detection/mask_rcnn_poolformer_s24.py',
         'fpn_poolformer_s12_shapes.py')


def test_installed_configs_load_by_name_anywhere(installed, tmp_path):
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    (elsewhere / 'client.py').write_text(INSTALLED_CLIENT)
    env = dict(os.environ, PYTHONPATH=str(installed['site']))
    result = subprocess.run(
        [sys.executable, 'client.py', 'out.json', *NAMES], cwd=elsewhere,
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    out = json.loads((elsewhere / 'out.json').read_text())
    package = installed['site'] / 'mmpoolformer'
    assert Path(out['package']).parent == package
    for name in NAMES:
        path = Path(out['configs'][name]['path'])
        assert path.is_relative_to(package / '.mim' / 'configs'), path
        # the installed configs (and their _base_ files) merge into exactly
        # what the checkout's do
        ours = Config.fromfile(get_config_path(name))
        assert out['configs'][name]['text'] == ours.pretty_text, name


def test_mim_trains_with_the_installed_copy_by_name(installed, tmp_path):
    """``mim train mmpoolformer NAME.py``: mim finds the config and
    tools/train.py in the installed copy's .mim folder."""
    env = dict(os.environ, PYTHONPATH=str(installed['site']))
    loaders = ('train_dataloader', 'val_dataloader')
    code, output = run_mim(
        ['train', 'mmpoolformer', 'retinanet_poolformer_s12_shapes.py',
         '--gpus', '0', '--work-dir', 'work', '--cfg-options'] +
        tiny_options(loaders), tmp_path, env=env)
    assert code == 0, output[-3000:]
    mim = installed['site'] / 'mmpoolformer' / '.mim'
    assert f'{mim}/tools/train.py {mim}/configs/detection/' in output
    assert (tmp_path / 'work' / 'epoch_1.pth').is_file()


def test_mim_search_reads_the_installed_model_index(installed, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(installed['site']))
    code, output = run_mim(['search', 'mmpoolformer', '--config',
                            'fpn_poolformer_s12'], tmp_path, env=env)
    assert code == 0, output[-3000:]
    assert re.search(r'parameters\s+15669846', output), output[-3000:]
    assert re.search(r'ade20k/miou\s+37.2', output), output[-3000:]


def test_tools_take_config_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert len(list_configs()) >= 14
    by_path = Config.fromfile(
        str(REPO / 'configs/segmentation/fpn_poolformer_s24.py')).to_dict()
    for name in ('segmentation/fpn_poolformer_s24',
                 'configs/segmentation/fpn_poolformer_s24.py',
                 'fpn_poolformer_s24'):
        assert load_config(name).to_dict() == by_path
    with pytest.raises(ConfigError, match='fpn_poolformer_s24.py'):
        load_config('segmentation/fpn_poolformer_s25')
    # the tools print that as one line, no traceback
    done = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'test.py'),
         'segmentation/fpn_poolformer_s25', 'none.pth'],
        capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert 'error: No config' in done.stderr and 'Did you mean' in done.stderr
    assert 'Traceback' not in done.stderr
