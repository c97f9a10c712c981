import os
import shutil
import sys
import tempfile

import pytest

# Nothing the suite runs may leave files behind. No bytecode in the
# repository (tools/ is run as scripts and loaded by path). Temporary files
# of this process and its subprocesses (torch.compile's caches, which
# inductor keeps in /tmp/torchinductor_$USER whatever TORCHINDUCTOR_CACHE_DIR
# says for some of them; torchrun's log folders; ...) go into a folder of
# this session, removed at its end. pytest's own tmp_path folders stay
# where they were, kept for a look after a failure.
sys.dont_write_bytecode = True
os.environ['PYTHONDONTWRITEBYTECODE'] = '1'
os.environ.setdefault('PYTEST_DEBUG_TEMPROOT', tempfile.gettempdir())
_SESSION_TMP = tempfile.mkdtemp(prefix='mmpoolformer-tests-')
tempfile.tempdir = os.environ['TMPDIR'] = _SESSION_TMP
os.environ.setdefault('TORCHINDUCTOR_CACHE_DIR',
                      os.path.join(_SESSION_TMP, 'torchinductor'))
_TESTS = os.path.dirname(os.path.abspath(__file__))
# pytest caches this file's rewritten bytecode before running it: remove
# that at the end too, unless the folder held more (an earlier run's)
_PYCACHE = os.path.join(_TESTS, '__pycache__')
_OWN_PYCACHE = os.path.isdir(_PYCACHE) and all(
    name.startswith('conftest.') for name in os.listdir(_PYCACHE))

# tests import their helpers (reference_poolformer, ...) by plain name
sys.path.insert(0, _TESTS)
# Keep the suite's parallel processes from oversubscribing the cores.
os.environ.setdefault('OMP_NUM_THREADS', '1')


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pytest.ini): a worker per core this process may use, at
    most 4 (a worker holds torch, mmdet and mmseg: 0.4-1.2 GB seen; the
    suite has about 30 files); none on one core. Tests run single-threaded
    (OMP_NUM_THREADS above), so two workers use both cores of a 2-core
    machine. PYTEST_XDIST_AUTO_NUM_WORKERS, or ``-n N`` / ``-n 0``, decide
    otherwise."""
    if os.environ.get('PYTEST_XDIST_AUTO_NUM_WORKERS'):
        return int(os.environ['PYTEST_XDIST_AUTO_NUM_WORKERS'])
    cores = len(os.sched_getaffinity(0)) if hasattr(
        os, 'sched_getaffinity') else (os.cpu_count() or 1)
    return 0 if cores < 2 else min(cores, 4)


def pytest_unconfigure(config):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
    if _OWN_PYCACHE:
        shutil.rmtree(_PYCACHE, ignore_errors=True)


@pytest.fixture(autouse=True, scope='module')
def _no_visualizer_of_an_earlier_module():
    """mmdet's and mmseg's runtime configs name their visualizer
    'visualizer', and mmengine hands a Runner the instance of that name if
    one exists, with the save folder of the run that made it: a module's
    scalars.json would land in another module's work_dir. Each module
    starts without them (runs inside a module keep theirs)."""
    visualization = sys.modules.get('mmengine.visualization')
    if visualization is not None:
        classes = [visualization.Visualizer]
        while classes:
            cls = classes.pop()
            cls._instance_dict.clear()
            classes += cls.__subclasses__()
    yield
