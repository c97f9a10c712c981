"""``CPUMallocHook`` / ``reuse_freed_memory``: after it, freeing and
allocating a large tensor again reuses the same pages (no page faults),
where glibc's defaults map fresh ones every time; a malloc the user chose
is left alone; bad arguments are clear errors. The page-fault checks run in
a fresh process, so this one's malloc stays as it was."""
import json
import platform
import subprocess
import sys

import pytest

from mmpoolformer.engine.hooks import CPUMallocHook
from mmpoolformer.engine.hooks.cpu_malloc_hook import (reuse_freed_memory,
                                                       user_malloc_choice)

FAULTS = r'''
import json, resource, sys
import torch
from mmpoolformer.engine.hooks.cpu_malloc_hook import reuse_freed_memory

def faults(rounds=16):
    """Page faults of each round (sorted)."""
    for _ in range(3):  # warm-up
        torch.ones(16 * 2**20).sum()  # 64 MiB, written: every page touched
    counts = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 * 2**20).sum()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt -
                      before)
    return sorted(counts)

default = faults()
message = reuse_freed_memory() if sys.argv[1] == 'reuse' else ''
print(json.dumps(dict(default=default, after=faults(), message=message)))
'''

needs_glibc = pytest.mark.skipif(
    platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
    reason='mallopt is glibc-only; elsewhere the hook only says so')


def _faults(mode, env_extra=None):
    import os
    env = {k: v for k, v in os.environ.items()
           if user_malloc_choice({k: v}) is None}
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, '-c', FAULTS, mode], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_glibc
def test_freed_memory_is_reused_without_page_faults():
    result = _faults('reuse')
    assert result['message'].startswith('malloc: every block from the heap')
    # glibc's defaults: each 64 MiB block is a fresh mmap, at least 32
    # faults (2 MiB huge pages) and 16384 with 4 KiB pages, in every round
    assert result['default'][0] >= 32, result
    # after: the same heap pages serve the rounds. The heap may still grow
    # in a round or two where small blocks split a freed one (seen 0-2 of
    # 16), so the typical (median) round is what must not fault.
    median = result['after'][len(result['after']) // 2]
    assert median < 8, result


@needs_glibc
def test_a_malloc_the_user_chose_is_left_alone():
    result = _faults('reuse', {'GLIBC_TUNABLES': 'glibc.malloc.check=0'})
    assert result['message'] == (
        'malloc left as it is: GLIBC_TUNABLES sets glibc.malloc.*')
    assert result['after'][0] >= 32, result  # still glibc's defaults


@pytest.mark.parametrize('environ,choice', [
    ({}, None),
    ({'GLIBC_TUNABLES': 'glibc.rtld.nns=2'}, None),
    ({'GLIBC_TUNABLES': 'glibc.malloc.mmap_max=0'},
     'GLIBC_TUNABLES sets glibc.malloc.*'),
    ({'MALLOC_ARENA_MAX': '2'}, None),  # not a malloc tunable spelling
    ({'MALLOC_TRIM_THRESHOLD_': '0'}, 'MALLOC_TRIM_THRESHOLD_ is set'),
    ({'LD_PRELOAD': '/usr/lib/libtcmalloc.so.4'}, 'LD_PRELOAD loads tcmalloc'),
    ({'LD_PRELOAD': 'libjemalloc.so.2'}, 'LD_PRELOAD loads jemalloc'),
])
def test_user_malloc_choice(environ, choice):
    assert user_malloc_choice(environ) == choice


def test_user_choice_wins_in_this_process(monkeypatch):
    # returns before mallopt: this process's malloc is untouched
    monkeypatch.setenv('MALLOC_MMAP_THRESHOLD_', '65536')
    assert reuse_freed_memory() == (
        'malloc left as it is: MALLOC_MMAP_THRESHOLD_ is set')


@pytest.mark.parametrize('value', [-1, 2**31, 1.5, True, '1G'])
def test_bad_trim_threshold(value):
    with pytest.raises(ValueError, match='trim_threshold=.*number of bytes'):
        CPUMallocHook(trim_threshold=value)
    with pytest.raises(ValueError, match='reuse_freed_memory'):
        reuse_freed_memory(value)
