"""Faults: tools/train.py killed mid-epoch and while writing a checkpoint,
then ``--resume``; deterministic mode repeats itself.

Real subprocesses on the tiny shapes set (64 px, 16 train images, batch 4:
4 iterations an epoch, 3 epochs, ``num_workers=0``), started side by side
where they do not depend on each other. The faults come from a test-only
module written into the test's tmp dir and imported by the training process
through ``custom_imports``: a hook that records every iteration's loss and
lr (full precision) and SIGKILLs the process after a chosen iteration, and a
wrapper of mmengine's ``LocalBackend.put`` that writes half of a chosen
checkpoint's bytes and then SIGKILLs the process.
"""
import io
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmpoolformer.engine.hooks.random_state_hook import (get_random_state,
                                                         set_random_state)
from mmpoolformer.checkpoint.safe_load import safe_torch_load
from test_detection import write_tiny_config

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / 'tools' / 'train.py')
# Relative, per iteration (and for weights and optimizer state). A resumed
# run repeats the uninterrupted run's float operations on the same bits on
# the same machine, and the losses came out bit for bit equal (AMD EPYC, 2
# cores); 1e-6 (8 float32 ulps at a loss of 2-3) is only headroom. Without
# RandomStateHook the resumed losses moved by 2.7e-4 to 1.2e-1 (other flips
# and drop-path masks); with the hook but no shield around validation by
# 2.4e-6 to 5.3e-4 (drop-path masks: validation's DataLoader draws a seed
# from torch's generator between the checkpoint and the next epoch).
LOSS_RTOL = 1e-6

FAULTS = '''"""Test-only faults (tests/test_faults.py), for train.py."""
import json
import os
import signal

from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

LOSSES = os.environ['FAULT_LOSSES']
KILL_AFTER_ITER = int(os.environ.get('FAULT_KILL_AFTER_ITER') or 0)
KILL_SAVING = os.environ.get('FAULT_KILL_SAVING')


@HOOKS.register_module()
class RecordLossesAndKill(Hook):
    priority = 'LOWEST'  # after the logger has written the iteration

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        lr = runner.optim_wrapper.get_lr()['lr'][0]
        with open(LOSSES, 'a') as file:
            file.write(json.dumps(dict(iter=runner.iter + 1, lr=lr,
                                       loss=outputs['loss'].item())) + '\\n')
        if runner.iter + 1 == KILL_AFTER_ITER:
            os.kill(os.getpid(), signal.SIGKILL)


_put = LocalBackend.put


def put(self, obj, filepath):
    if KILL_SAVING and str(filepath).endswith(KILL_SAVING):
        with open(filepath, 'wb') as file:
            file.write(obj[:len(obj) // 2])
            file.flush()
            os.fsync(file.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    _put(self, obj, filepath)


LocalBackend.put = put
'''

CONFIG = '''
_base_ = {base!r}
randomness = dict(seed=0, deterministic={deterministic})
custom_imports = dict(
    imports=['mmpoolformer', 'mmpoolformer.engine.hooks.random_state_hook',
             'fault_injection'],
    allow_failed_imports=False)
custom_hooks = [dict(type='RandomStateHook'), dict(type='RecordLossesAndKill')]
# CheckpointHook deletes the oldest kept file before it writes the next, so
# with 1 a kill while saving would leave nothing to resume from
default_hooks = dict(checkpoint=dict(max_keep_ckpts=2))
'''


def write_config(folder, name, deterministic=False):
    """The tiny 3-epoch RetinaNet with a fixed seed, drop path (so torch's
    generator matters as well as numpy's, which drives RandomFlip),
    RandomStateHook and the fault hook."""
    folder = Path(folder)
    base = write_tiny_config(folder, 'retinanet', max_epochs=3,
                             backbone_extra=', drop_path_rate=0.1')
    (folder / 'fault_injection.py').write_text(FAULTS)
    path = folder / f'{name}.py'
    path.write_text(CONFIG.format(base=base, deterministic=deterministic))
    return str(path)


class Run:
    """``tools/train.py CONFIG --work-dir WORK_DIR ARGS`` in the background,
    its output in ``NAME.log`` and its losses in ``NAME.jsonl`` next to the
    config."""

    def __init__(self, config, name, *args, kill_after_iter=None,
                 kill_saving=None, work_dir=None):
        folder = Path(config).parent
        self.work_dir = Path(work_dir or folder / name)
        self.losses = folder / f'{name}.jsonl'
        self.log = folder / f'{name}.log'
        python_path = [str(folder)] + [
            p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep)
            if p]
        env = dict(os.environ, FAULT_LOSSES=str(self.losses),
                   FAULT_KILL_AFTER_ITER=str(kill_after_iter or ''),
                   FAULT_KILL_SAVING=kill_saving or '',
                   PYTHONPATH=os.pathsep.join(python_path))
        with open(self.log, 'w') as log:
            self.process = subprocess.Popen(
                [sys.executable, TRAIN, config, '--work-dir',
                 str(self.work_dir), *args],
                cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait(self, timeout=300):
        """(exit code, output); a SIGKILLed run exits with -9."""
        code = self.process.wait(timeout=timeout)
        return code, self.log.read_text()

    def read_losses(self):
        """{iteration: (loss, lr)} as the training process recorded them."""
        records = [json.loads(line)
                   for line in self.losses.read_text().splitlines()]
        return {r['iter']: (r['loss'], r['lr']) for r in records}

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def assert_same_curve(losses, reference, iters):
    assert sorted(losses) == list(iters)
    for i in iters:
        loss, lr = losses[i]
        assert loss == pytest.approx(reference[i][0], rel=LOSS_RTOL), i
        assert lr == pytest.approx(reference[i][1], rel=1e-6), i


def last_checkpoint(work_dir):
    return Path((Path(work_dir) / 'last_checkpoint').read_text().strip())


def load(path):
    """A checkpoint, read as ``--resume`` reads it (weights_only=True)."""
    return safe_torch_load(str(path))


NO_VAL = 'train_cfg.val_begin=100'
DET_OPTIONS = ('train_cfg.max_epochs=2', NO_VAL,
               'default_hooks.checkpoint.interval=100',
               'default_hooks.checkpoint.save_last=False')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """The runs that need no other, started at once: the uninterrupted
    reference, two in deterministic mode (2 epochs, no validation, no
    checkpoint: one is 240 MB) and the first of the fault chain, killed
    after iteration 6 (mid-epoch 2)."""
    folder = tmp_path_factory.mktemp('faults')
    config = write_config(folder, 'faults')
    deterministic = write_config(folder, 'deterministic', deterministic=True)
    started = dict(
        reference=Run(config, 'reference'),
        det1=Run(deterministic, 'det1', '--cfg-options', *DET_OPTIONS),
        det2=Run(deterministic, 'det2', '--cfg-options', *DET_OPTIONS),
        killed=Run(config, 'killed', kill_after_iter=6,
                   work_dir=folder / 'chain'))
    yield dict(started, config=config, folder=folder)
    for run in started.values():
        run.stop()


@pytest.fixture(scope='module')
def chain(runs):
    """The fault chain in one work dir, with what each kill left there:
    killed mid-epoch 2; ``--resume``, killed while writing epoch_3.pth (and
    never validating: RandomStateHook keeps validation out of the training
    stream, so the losses must not change); ``--resume`` to the end, beside
    a run given the half-written epoch_3.pth explicitly."""
    config, folder = runs['config'], runs['folder']
    steps = dict(killed=runs['killed'])
    left = {}

    def wait_killed(name):
        run = steps[name]
        code, output = run.wait()
        assert code == -signal.SIGKILL, output[-3000:]
        left[name] = dict(
            output=output, losses=run.read_losses(),
            files=sorted(p.name for p in run.work_dir.glob('*.pth')),
            last_checkpoint=last_checkpoint(run.work_dir))

    wait_killed('killed')
    steps['saving'] = Run(config, 'saving', '--resume', '--cfg-options',
                          NO_VAL, work_dir=folder / 'chain',
                          kill_saving='epoch_3.pth')
    wait_killed('saving')
    partial = folder / 'chain' / 'epoch_3.pth'
    left['partial_size'] = partial.stat().st_size
    copy = folder / 'partial_epoch_3.pth'
    copy.write_bytes(partial.read_bytes())
    steps['resumed'] = Run(config, 'resumed', '--resume',
                           work_dir=folder / 'chain')
    steps['explicit'] = Run(config, 'explicit', '--resume', str(copy))
    yield dict(steps=steps, left=left, copy=copy)
    for run in steps.values():
        run.stop()


@pytest.fixture(scope='module')
def reference(runs):
    code, output = runs['reference'].wait()
    assert code == 0, output[-3000:]
    return dict(run=runs['reference'], losses=runs['reference'].read_losses(),
                final=load(runs['reference'].work_dir / 'epoch_3.pth'))


def test_deterministic_mode_repeats_losses_exactly(runs):
    losses = []
    for run in (runs['det1'], runs['det2']):
        code, output = run.wait()
        assert code == 0, output[-3000:]
        assert 'deterministic: True' in output
        losses.append(run.read_losses())
    assert sorted(losses[0]) == list(range(1, 9))
    assert losses[0] == losses[1]  # every loss and lr, bit for bit


def assert_resumed(output, work_dir, checkpoint, iteration):
    """Auto-resume picked ``checkpoint`` and went on after ``iteration``."""
    epoch = int(checkpoint[len('epoch_'):-len('.pth')])
    assert ('Auto resumed from the latest checkpoint '
            f'{work_dir / checkpoint}') in output
    assert f'resumed epoch: {epoch}, iter: {iteration}' in output
    assert f'Epoch(train) [{epoch}]' not in output
    assert f'random state restored from iter {iteration}' in output


def test_killed_mid_epoch_resumes_the_same_curve(reference, chain):
    left = chain['left']['killed']
    assert_same_curve(left['losses'], reference['losses'], range(1, 7))
    assert left['files'] == ['epoch_1.pth']
    assert left['last_checkpoint'].name == 'epoch_1.pth'
    # the next run of the chain, up to its kill while saving epoch_3.pth:
    # model, optimizer, lr scheduler, iteration and random state came back
    left = chain['left']['saving']
    work_dir = chain['steps']['saving'].work_dir
    assert_resumed(left['output'], work_dir, 'epoch_1.pth', 4)
    assert 'Epoch(val)' not in left['output']
    assert_same_curve(left['losses'], reference['losses'], range(5, 13))


def test_killed_while_saving_resumes_from_last_complete_checkpoint(
        reference, chain):
    left = chain['left']['saving']
    # CheckpointHook deleted epoch_1.pth (max_keep_ckpts=2) before it began
    # epoch_3.pth, and writes last_checkpoint only once a file is complete
    assert left['files'] == ['epoch_2.pth', 'epoch_3.pth']
    assert left['last_checkpoint'].name == 'epoch_2.pth'
    complete = reference['run'].work_dir / 'epoch_3.pth'
    assert 0 < chain['left']['partial_size'] < complete.stat().st_size

    # the half-written file, named explicitly: refused, nothing trained
    explicit = chain['steps']['explicit']
    code, output = explicit.wait()
    assert code not in (0, -signal.SIGKILL), output[-3000:]
    assert 'corrupted' in output.strip().splitlines()[-1]
    assert 'Epoch(train)' not in output and not explicit.losses.exists()
    assert not list(explicit.work_dir.glob('*.pth'))

    # --resume (auto) takes epoch_2.pth and ends where the reference did
    resumed = chain['steps']['resumed']
    code, output = resumed.wait()
    assert code == 0, output[-3000:]
    assert_resumed(output, resumed.work_dir, 'epoch_2.pth', 8)
    assert_same_curve(resumed.read_losses(), reference['losses'],
                      range(9, 13))
    final = load(resumed.work_dir / 'epoch_3.pth')
    expected = reference['final']
    assert (final['meta']['epoch'], final['meta']['iter']) == (3, 12)
    assert final['param_schedulers'] == expected['param_schedulers']
    for key, value in expected['state_dict'].items():
        torch.testing.assert_close(final['state_dict'][key], value,
                                   rtol=LOSS_RTOL, atol=0, msg=key)
    for index, state in expected['optimizer']['state'].items():
        for name, value in state.items():
            torch.testing.assert_close(
                final['optimizer']['state'][index][name], value,
                rtol=LOSS_RTOL, atol=0)


def test_random_state_round_trip():
    """What RandomStateHook saves brings every generator back."""
    def draw():
        return (random.random(), np.random.rand(3).tolist(),
                np.random.randn(), torch.rand(3).tolist())

    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = get_random_state()
    first = draw()
    set_random_state(state)
    assert draw() == first


def test_random_state_in_checkpoint_loads_weights_only(reference):
    """The hook's entry holds tensors, ints, floats and strings only: it
    needs nothing on torch's weights_only allowlist."""
    state = reference['final']['random_state']
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(buffer) == []
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert torch.equal(loaded['torch'], state['torch'])
    assert loaded['numpy']['name'] == 'MT19937'
    assert loaded['python']['state'].dtype == torch.int64
