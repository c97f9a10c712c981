"""NonFiniteCheckHook: a NaN loss or gradient stops tools/train.py at once,
with a message naming the iteration and the term, and no checkpoint is
written from that state.

The NaN is injected by a test-only hook (written into tmp and imported by
the training process through custom_imports) into a real RetinaNet run.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_detection import write_tiny_config

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / 'tools' / 'train.py')

INJECT = '''
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class InjectNaN(Hook):
    """At iteration ``at`` (1-based): a NaN in one layer scale (the forward
    goes NaN), sqrt(0) whose backward is NaN, or a NaN put into one
    gradient by a hook (the loss stays finite in both)."""

    def __init__(self, at, what, rank=None):
        self.at, self.what, self.rank = at, what, rank

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 != self.at or self.rank not in (
                None, runner.rank):
            return
        model = runner.model.module if hasattr(runner.model, 'module') \\
            else runner.model
        block = model.backbone.network[4][1]
        if self.what == 'forward':
            with torch.no_grad():
                block.layer_scale_2[3] = float('nan')
        elif self.what == 'backward':  # finite forward, NaN backward
            block.mlp.fc2.register_forward_hook(
                lambda module, args, out:
                out + torch.sqrt(out[:1, :1, :1, :1] * 0) * 0)
        else:
            block.mlp.fc2.weight.register_hook(
                lambda grad: grad * float('nan'))
'''


def _train(tmp_path, what, at):
    (tmp_path / 'inject_nan.py').write_text(INJECT)
    tiny = write_tiny_config(tmp_path, 'retinanet', max_epochs=2)
    config = tmp_path / 'nan.py'
    config.write_text(
        f'_base_ = {tiny!r}\n'
        "custom_imports = dict(imports=['mmpoolformer', 'inject_nan'])\n"
        f"custom_hooks = [dict(type='InjectNaN', at={at}, what={what!r})]\n"
        'train_cfg = dict(val_interval=5)\n')
    result = subprocess.run(
        [sys.executable, TRAIN, str(config), '--work-dir', 'work'],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(tmp_path),
                 PYTHONDONTWRITEBYTECODE='1'))
    return result.returncode, result.stdout + result.stderr


def _assert_stopped_before_saving(tmp_path, output, code):
    assert code != 0
    assert 'Traceback' not in output, output[-3000:]
    # 4 iterations an epoch: iteration 6 is the 2nd of epoch 2
    assert 'Epoch(train) [2][1/4]' in output
    assert 'Epoch(train) [2][2/4]' not in output
    work = tmp_path / 'work'
    assert (work / 'epoch_1.pth').is_file()
    assert not (work / 'epoch_2.pth').exists()
    saved = torch.load(work / 'epoch_1.pth', weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved['state_dict'].values()
               if v.is_floating_point())
    return output[output.index('error: '):]


def test_nan_loss_stops_with_the_term_iteration_and_module(tmp_path):
    code, output = _train(tmp_path, 'forward', at=6)
    message = _assert_stopped_before_saving(tmp_path, output, code)
    assert 'Non-finite loss at iteration 6 (epoch 2)' in message
    assert re.search(r'loss_cls=nan', message)
    # the re-run of the batch finds the block whose layer scale is NaN
    assert ('First non-finite forward output: backbone.network.4.1 '
            '(PoolFormerBlock') in message
    assert 'no checkpoint was written' in message


def test_nan_gradient_stops_before_the_step(tmp_path):
    code, output = _train(tmp_path, 'grad', at=6)
    message = _assert_stopped_before_saving(tmp_path, output, code)
    assert 'Non-finite gradients at iteration 6 (epoch 2)' in message
    assert 'backbone.network.4.1.mlp.fc2.weight' in message
    assert 'while the loss was finite' in message


def test_hook_is_added_once_by_the_tools(tmp_path):
    from mmpoolformer.runner import build_train_runner
    config = write_tiny_config(tmp_path, 'retinanet')
    runner = build_train_runner(
        config, work_dir=str(tmp_path / 'work'),
        cfg_options={'custom_hooks': []})
    names = [type(hook).__name__ for hook in runner.hooks]
    assert names.count('NonFiniteCheckHook') == 1
    # and it runs before the checkpoint hook in each iteration
    assert names.index('NonFiniteCheckHook') < names.index('CheckpointHook')


@pytest.mark.parametrize('scaled', [False, True])
def test_gradient_check_leaves_fp16_loss_scaling_alone(scaled):
    """With an active float16 loss scaler, inf gradients are the scaler's
    business (it skips that step); otherwise the hook stops."""
    from mmengine.optim import OptimWrapper

    from mmpoolformer.engine.hooks import NonFiniteCheckHook

    model = torch.nn.Linear(2, 1)
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    if scaled:
        wrapper.loss_scaler = torch.amp.GradScaler('cpu', enabled=True)

    class Runner:
        iter, epoch, optim_wrapper = 0, 0, wrapper

    hook = NonFiniteCheckHook()
    hook._wrap_step(Runner, model, wrapper)
    model.weight.grad = torch.tensor([[float('inf'), 0.]])
    model.bias.grad = torch.zeros(1)
    if scaled:
        wrapper.step()  # SGD steps (the scaler would have skipped)
    else:
        with pytest.raises(FloatingPointError, match='weight'):
            wrapper.step()
        assert torch.isfinite(model.weight).all()  # no step was taken


def test_nan_made_in_backward_is_located_by_anomaly_mode(tmp_path):
    code, output = _train(tmp_path, 'backward', at=6)
    message = _assert_stopped_before_saving(tmp_path, output, code)
    assert 'Non-finite gradients at iteration 6 (epoch 2)' in message
    assert "Function 'SqrtBackward0' returned nan values" in message
    assert 'inject_nan.py' in message  # the forward line that made it


def test_all_ranks_stop_together_when_one_loss_is_nan(tmp_path):
    """Two processes (gloo): rank 1's loss goes NaN, rank 0's does not.
    Both stop before backward, each saying why (rank 0 is not left waiting
    in the gradient all-reduce)."""
    from test_tools import dist_train
    (tmp_path / 'inject_nan.py').write_text(INJECT)
    tiny = write_tiny_config(tmp_path, 'retinanet', max_epochs=2)
    (tmp_path / 'nan.py').write_text(
        f'_base_ = {tiny!r}\n'
        "custom_imports = dict(imports=['mmpoolformer', 'inject_nan'])\n"
        "custom_hooks = [dict(type='InjectNaN', at=3, what='forward', "
        'rank=1)]\n'
        'train_dataloader = dict(batch_size=2)\n'
        'train_cfg = dict(val_interval=5)\n')
    code, output = dist_train(
        tmp_path, ['nan.py', '2', '--work-dir', 'work'],
        env={'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(tmp_path)})
    assert code != 0
    assert 'Non-finite loss at iteration 3 (epoch 1): loss_cls=nan' in output
    assert 'Non-finite loss on another rank at iteration 3' in output
    assert not list((tmp_path / 'work').glob('epoch_*.pth'))
