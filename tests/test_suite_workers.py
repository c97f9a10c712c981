"""The suite's own parallelism: how many pytest-xdist workers ``-n auto``
starts (tests/conftest.py), and that pytest.ini asks for it."""
import configparser
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _conftest():
    """The conftest module this session runs with (not a second copy:
    importing it again would make another session folder)."""
    return next(module for module in list(sys.modules.values())
                if getattr(module, '__file__', None)
                and Path(module.__file__).resolve() == TESTS / 'conftest.py')


@pytest.mark.parametrize('cores,workers', [(1, 0), (2, 2), (3, 3), (4, 4),
                                           (64, 4)])
def test_auto_workers_follow_the_usable_cores(monkeypatch, cores, workers):
    monkeypatch.delenv('PYTEST_XDIST_AUTO_NUM_WORKERS', raising=False)
    monkeypatch.setattr(os, 'sched_getaffinity',
                        lambda pid: set(range(cores)), raising=False)
    assert _conftest().pytest_xdist_auto_num_workers(None) == workers


def test_the_environment_variable_decides_when_set(monkeypatch):
    monkeypatch.setenv('PYTEST_XDIST_AUTO_NUM_WORKERS', '3')
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0},
                        raising=False)
    assert _conftest().pytest_xdist_auto_num_workers(None) == 3


def test_pytest_ini_runs_the_suite_in_parallel():
    ini = configparser.ConfigParser()
    ini.read(TESTS.parent / 'pytest.ini')
    options = ini['pytest']['addopts'].split()
    assert options[options.index('-n') + 1] == 'auto'
    assert '--dist' in options
