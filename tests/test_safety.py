"""Checkpoints cannot run code, and importing mmpoolformer changes nothing
in mmengine, mmcv, mmdet or mmseg.

The checkpoints are real ones: written by tools/train.py (the real mmengine
Runner) for a tiny RetinaNet, then loaded by tools/test.py, --resume,
load_from and mmdet's own ``init_detector``. Payload files are those
checkpoints with one pickled object added to ``meta``.
"""
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from test_detection import write_tiny_config

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / 'tools' / 'train.py')
TEST = str(REPO / 'tools' / 'test.py')


class _RunsShell:
    """Unpickling this calls os.system: the attack the loaders refuse."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def _run(args, cwd):
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True,
        timeout=300, env=dict(os.environ, PYTHONDONTWRITEBYTECODE='1'))
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """One epoch of the tiny RetinaNet through tools/train.py."""
    folder = tmp_path_factory.mktemp('safety')
    config = write_tiny_config(folder, 'retinanet')
    code, output = _run([TRAIN, config, '--work-dir', 'work',
                         '--cfg-options', 'train_cfg.val_interval=5'],
                        folder)
    assert code == 0, output[-3000:]
    return dict(folder=folder, config=config,
                checkpoint=folder / 'work' / 'epoch_1.pth')


def _with_payload(checkpoint, destination, payload):
    data = torch.load(checkpoint, weights_only=True)
    data['meta']['note'] = payload
    torch.save(data, destination)
    return str(destination)


def test_own_checkpoints_load_with_weights_only(trained):
    # what mmengine writes: message hub (HistoryBuffer, numpy), optimizer
    # and scheduler states; all of it loads without weights_only=False
    data = torch.load(trained['checkpoint'], weights_only=True)
    assert {'meta', 'state_dict', 'message_hub', 'optimizer',
            'param_schedulers'} <= set(data)
    buffer = data['message_hub']['log_scalars']['train/loss']
    assert type(buffer).__name__ == 'HistoryBuffer'
    assert len(buffer.data[0]) == 4  # one loss per iteration


def test_mmdet_init_detector_loads_our_checkpoint(trained):
    from mmdet.apis import inference_detector, init_detector
    model = init_detector(trained['config'], str(trained['checkpoint']),
                          device='cpu')
    saved = torch.load(trained['checkpoint'], weights_only=True)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved['state_dict'][key])
    image = next((trained['folder'] / 'shapes' / 'val').glob('*.png'))
    result = inference_detector(model, str(image))
    assert result.pred_instances.bboxes.shape[1] == 4


@pytest.mark.parametrize('how', ['test', 'resume', 'load_from'])
def test_payload_is_refused_and_never_runs(trained, tmp_path, how):
    marker = tmp_path / 'pwned'
    evil = _with_payload(trained['checkpoint'], tmp_path / 'evil.pth',
                         _RunsShell(marker))
    if how == 'test':
        args = [TEST, trained['config'], evil, '--work-dir', 'eval']
    elif how == 'resume':
        args = [TRAIN, trained['config'], '--work-dir', 'work', '--resume',
                evil, '--cfg-options', 'train_cfg.max_epochs=2']
    else:
        args = [TRAIN, trained['config'], '--work-dir', 'work',
                '--cfg-options', f'load_from={evil}']
    code, output = _run(args, tmp_path)
    assert not marker.exists()
    assert code != 0
    assert 'Traceback' not in output, output[-3000:]
    message = output[output.index('error: '):]
    assert 'posix.system' in message  # names the offending type
    assert '--trust-checkpoint' in message  # and the opt-in
    assert 'Nothing was loaded' in message
    assert not list(tmp_path.glob('work/epoch_*.pth'))


def test_trust_checkpoint_is_an_explicit_opt_in(trained, tmp_path):
    """A harmless but non-allowlisted type: refused by default, loaded with
    --trust-checkpoint, and the log says it was trusted."""
    import datetime
    odd = _with_payload(trained['checkpoint'], tmp_path / 'odd.pth',
                        datetime.timedelta(seconds=3))
    code, output = _run([TEST, trained['config'], odd, '--work-dir', 'a'],
                        tmp_path)
    assert code != 0 and 'datetime.timedelta' in output
    code, output = _run([TEST, trained['config'], odd, '--work-dir', 'b',
                         '--trust-checkpoint'], tmp_path)
    assert code == 0, output[-3000:]
    assert 'trusted: weights_only=False' in output
    assert 'bbox_mAP_copypaste' in output


def test_getattr_is_not_allowlisted(tmp_path):
    """mmengine's files need getattr(HistoryBuffer, 'min'/...); the name
    builtins.getattr resolves to a function that allows that and only
    that."""
    from mmengine.logging.history_buffer import HistoryBuffer

    from mmpoolformer.checkpoint.safe_load import (UnsafeCheckpointError,
                                                   safe_torch_load)

    class Reach:

        def __init__(self, obj, name):
            self.args = (obj, name)

        def __reduce__(self):
            return (getattr, self.args)

    torch.save({'fine': Reach(HistoryBuffer, 'mean')}, tmp_path / 'a.pth')
    assert safe_torch_load(str(tmp_path / 'a.pth'))['fine'] is \
        HistoryBuffer.mean
    for obj, name in ((HistoryBuffer, '__init__'), (HistoryBuffer, 'update'),
                      (HistoryBuffer, '__class__')):
        path = tmp_path / 'b.pth'
        torch.save({'x': Reach(obj, name)}, path)
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)
        with pytest.raises(UnsafeCheckpointError):
            safe_torch_load(str(path))


SNAPSHOT = textwrap.dedent('''
    import json, sys
    import torch
    import mmdet.registry, mmseg.registry
    from mmcv.ops.nms import NMSop
    from mmcv.ops.roi_align import RoIAlign, RoIAlignFunction
    import mmengine.registry as mmengine_registry
    from mmengine.runner import CheckpointLoader

    def registries():
        out = {}
        for name in dir(mmengine_registry):
            registry = getattr(mmengine_registry, name)
            if isinstance(registry, mmengine_registry.Registry):
                out['mmengine.' + name] = registry
        for lib in (mmdet.registry, mmseg.registry):
            for name in dir(lib):
                registry = getattr(lib, name)
                if isinstance(registry, mmengine_registry.Registry):
                    out[lib.__name__ + '.' + name] = registry
        return out

    def snapshot():
        snap = {}
        for key, registry in registries().items():
            for name, obj in registry.module_dict.items():
                snap[f'{key}[{name}]'] = id(obj)
        for owner in (NMSop, RoIAlign, RoIAlignFunction):
            for attr, value in vars(owner).items():
                snap[f'{owner.__qualname__}.{attr}'] = id(value)
        for prefix, loader in CheckpointLoader._schemes.items():
            snap[f'CheckpointLoader[{prefix}]'] = id(loader)
        snap['torch.load'] = id(torch.load)
        return snap

    before = snapshot()
    import mmpoolformer, mmpoolformer.hooks, mmpoolformer.runner  # noqa
    import mmpoolformer.engine.op_guards  # noqa
    # what a config's custom_imports does, and building a model with it
    from mmengine.config import Config
    cfg = Config.fromfile(sys.argv[1])
    after = snapshot()
    changed = sorted(k for k in before if after.get(k) != before[k])
    added = sorted(k for k in after if k not in before)
    print(json.dumps(dict(changed=changed, added=added)))
''')


def test_import_changes_nothing_in_the_stack(tmp_path):
    """Fresh process: every object of mmengine, mmcv, mmdet and mmseg that
    existed before ``import mmpoolformer`` is the same object after it;
    only new registry entries under new names appear."""
    import json
    config = REPO / 'configs' / 'detection' / \
        'mask_rcnn_poolformer_s12_shapes.py'
    script = tmp_path / 'snapshot.py'
    script.write_text(SNAPSHOT)
    code, output = _run([str(script), str(config)], tmp_path)
    assert code == 0, output[-3000:]
    result = json.loads(next(line for line in output.splitlines()
                             if line.startswith('{"changed"')))
    assert result['changed'] == []
    added = {entry.split('[')[1].rstrip(']') for entry in result['added']}
    assert {'PoolFormer', 'ChannelsLastHook', 'NonFiniteCheckHook',
            'CPUAmpOptimWrapper', 'ShapesDataset'} <= added
    assert 'AmpOptimWrapper' not in added


def test_amp_wrapper_guards_only_its_own_model():
    """The CPU AMP wrapper makes RoIAlign/NMS inputs float32 for the model
    it trains; the same mmcv op in another model is mmcv's."""
    from mmcv.ops import RoIAlign
    from mmengine.optim import build_optim_wrapper

    import mmpoolformer  # noqa: F401

    def model():
        return torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1),
                                   RoIAlign(2, 1.0, 0))

    trained, other = model(), model()
    wrapper = build_optim_wrapper(trained, dict(
        type='CPUAmpOptimWrapper', dtype='bfloat16', cpu_bf16=True,
        optimizer=dict(type='SGD', lr=0.1)))
    features = torch.randn(1, 4, 8, 8)
    rois = torch.tensor([[0., 1., 1., 6., 6.]])
    with wrapper.optim_context(trained):
        out = trained[1](trained[0](features), rois)
    assert out.dtype == torch.bfloat16  # ran in fp32, handed back in bf16
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match='(?i)float|bfloat'):
            other[1](other[0](features), rois)  # mmcv's own behaviour
