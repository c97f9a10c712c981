"""tools/analysis_tools/cpu_levers.py: what it reads from mmengine's logs,
the short-run options it gives tools/train.py (applied to the real demo
configs), the settings of each lever and its table. Timing is what the
tool is for, so no run is timed here."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmpoolformer.engine.hooks.cpu_malloc_hook import user_malloc_choice
from mmpoolformer.runner import load_config

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location(
    'cpu_levers', REPO / 'tools' / 'analysis_tools' / 'cpu_levers.py')
levers = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(levers)

EPOCH_LOG = '''\
11/26 21:56:35 - mmengine - INFO - Checkpoints will be saved to /tmp/w.
11/26 21:56:41 - mmengine - INFO - Epoch(train) [1][ 25/125]  lr: 2.4293e-04  eta: 0:00:51  time: 0.2308  data_time: 0.0082  grad_norm: 8.3140  loss: 1.7334
11/26 21:56:46 - mmengine - INFO - Epoch(train) [1][ 50/125]  lr: 4.9367e-04  eta: 0:00:44  time: 0.2243  data_time: 0.0072  grad_norm: 6.9442  loss: 1.4819
11/26 21:56:52 - mmengine - INFO - Epoch(val) [1][25/25]  coco/bbox_mAP: 0.0010  data_time: 0.0095  time: 0.1103
'''  # noqa: E501
ITER_LOG = '''\
2026/11/26 21:48:12 - mmengine - INFO - Iter(train) [ 50/300]  lr: 4.9350e-04  eta: 0:00:50  time: 0.2038  data_time: 0.0052  grad_norm: 2.6703  loss: 0.8072
2026/11/26 21:48:22 - mmengine - INFO - Iter(train) [100/300]  lr: 9.9197e-04  eta: 0:00:40  time: 0.2016  data_time: 0.0051  grad_norm: 1.3217  loss: 0.6782
'''  # noqa: E501


def test_step_times_are_the_training_intervals_only():
    assert levers.step_times(EPOCH_LOG) == [0.2308, 0.2243]  # not val's
    assert levers.step_times(ITER_LOG) == [0.2038, 0.2016]
    assert levers.step_times('no intervals logged') == []


@pytest.mark.parametrize('config,kind', [
    ('configs/detection/retinanet_poolformer_s12_shapes.py', 'epochs'),
    ('configs/segmentation/fpn_poolformer_s12_shapes.py', 'iters')])
def test_short_run_options_apply_to_the_demo_configs(config, kind):
    path = REPO / config
    options = levers.run_options(path.read_text(), iters=40)
    cfg = load_config(str(path), cfg_options=dict(
        option.split('=', 1) for option in options))
    if kind == 'epochs':
        assert int(cfg.train_cfg.max_epochs) == 1
        assert int(cfg.train_cfg.val_interval) > 1  # no validation
    else:
        assert int(cfg.train_cfg.max_iters) == 40
        assert int(cfg.train_cfg.val_interval) > 40
    checkpoint = cfg.default_hooks.checkpoint
    assert checkpoint.save_last in (False, 'False')
    assert int(checkpoint.interval) > 1


def test_levers_set_what_they_say():
    # 'defaults' must make CPUMallocHook stand back; the others set the
    # hook's own values through glibc's variables
    assert user_malloc_choice(levers.LEVERS['defaults'])
    for name in ('malloc', 'omp-passive', 'no-amx', 'thp'):
        tunables = levers.LEVERS[name]['GLIBC_TUNABLES']
        assert 'glibc.malloc.mmap_max=0' in tunables
        assert 'glibc.malloc.trim_threshold=2147483647' in tunables
    assert levers.LEVERS['omp-passive']['OMP_WAIT_POLICY'] == 'PASSIVE'
    assert levers.LEVERS['no-amx']['ONEDNN_MAX_CPU_ISA'] == \
        'AVX512_CORE_BF16'


def test_thp_lever_reaches_torchs_allocator():
    # with the lever's environment torch's CPU allocator advises huge pages
    # (madvise MADV_HUGEPAGE: 'hg' in the mapping's VmFlags) for a 3 MiB
    # tensor; without it, it does not
    script = """
import torch
ptr = torch.empty(3 * 2 ** 20).data_ptr()
inside, flags = False, []
for line in open('/proc/self/smaps'):
    head = line.split()[0]
    if '-' in head and not head.endswith(':'):
        low, high = (int(v, 16) for v in head.split('-'))
        inside = low <= ptr < high
    elif inside and line.startswith('VmFlags:'):
        flags = line.split()[1:]
print('hg' in flags)
"""
    advised = {}
    for lever in ('malloc', 'thp'):
        env = {k: v for k, v in os.environ.items()
               if k not in ('THP_MEM_ALLOC_ENABLE', 'GLIBC_TUNABLES')}
        env.update(levers.LEVERS[lever])
        done = subprocess.run([sys.executable, '-c', script], env=env,
                              capture_output=True, text=True, check=True)
        advised[lever] = done.stdout.split()[-1]
    assert advised == {'malloc': 'False', 'thp': 'True'}


def test_table_medians_and_ratios():
    run = dict(step=0.2, wall=40., user=60., system=3., faults=1000,
               switches=50)
    results = {'defaults': [run, dict(run, step=0.3)],
               'malloc': [dict(run, step=0.2, faults=10)]}
    text = levers.table('configs/x.py', results)
    rows = [line for line in text.splitlines() if line.startswith('| ')]
    assert rows[1].startswith('| defaults | 0.2500 | 1.00x |')
    assert rows[2].startswith('| malloc | 0.2000 | 1.25x |')
    assert '| 10 |' in rows[2]
    assert text.startswith('CPU: ')


def test_bad_arguments_are_clear_errors(capsys):
    with pytest.raises(SystemExit):
        levers.main(['--config', 'configs/nope.py'])
    assert 'no config file configs/nope.py' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        levers.main(['--repeats', '0'])
    assert 'at least 1' in capsys.readouterr().err
