"""tools/train.py, tools/test.py and tools/dist_train.sh as users run them:
real subprocesses on a tiny shapes set (64 px, 16 train / 8 val images)."""
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coco_check import OutputRecorder, assert_reported, coco_stats
from mmpoolformer.utils import cpu_bf16_supported
from test_detection import LossRecorder, write_tiny_config

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / 'tools' / 'train.py')
TEST = str(REPO / 'tools' / 'test.py')
DIST_TRAIN = str(REPO / 'tools' / 'dist_train.sh')
COPYPASTE = re.compile(r'bbox_mAP_copypaste: ([-\d. ]+)')


def run(args, cwd, env=None, timeout=300):
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, **(env or {})))
    return result.returncode, result.stdout + result.stderr


def train(cwd, *args):
    code, output = run([sys.executable, TRAIN, *args], cwd)
    assert code == 0, output[-3000:]
    return output


def copypaste(output):
    """The six COCO bbox numbers mmdet prints after an evaluation."""
    found = COPYPASTE.findall(output)
    assert found, output[-3000:]
    return [float(v) for v in found[-1].split()]


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return str(sock.getsockname()[1])


def dist_train(cwd, args, env, attempts=5):
    """tools/dist_train.sh on a free port. The port is free when picked but
    released before torchrun binds it (dist_train.sh takes a fixed PORT, and
    torchrun's static rendezvous cannot be given port 0), so another process
    can take it in between: torchrun then stops at once with EADDRINUSE,
    before starting any worker, and the run is repeated on another port."""
    for _ in range(attempts):
        code, output = run(['bash', DIST_TRAIN, *args], cwd,
                           env=dict(env, PORT=free_port()))
        if code == 0 or 'EADDRINUSE' not in output:
            return code, output
    raise AssertionError(f'no free port in {attempts} tries:\n' +
                         output[-3000:])


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """One epoch (4 iterations) of tiny RetinaNet through tools/train.py."""
    folder = tmp_path_factory.mktemp('trained')
    config = write_tiny_config(folder, 'retinanet')
    output = train(folder, config, '--work-dir', 'work')
    return dict(folder=folder, config=config, work_dir=folder / 'work',
                output=output)


@pytest.mark.parametrize('tool,detector', [('train', 'retinanet'),
                                           ('test', 'mask_rcnn')])
def test_missing_coco_stops_with_a_clear_message(tmp_path, tool, detector):
    config = str(REPO / 'configs' / 'detection' /
                 f'{detector}_poolformer_s12.py')
    args = ([TRAIN, config] if tool == 'train' else
            [TEST, config, 'no_such_checkpoint.pth'])
    # cwd without data/coco, so the config's relative data_root is missing
    code, output = run([sys.executable, *args], tmp_path)
    assert code != 0
    assert 'Traceback' not in output
    split = 'val' if tool == 'train' else 'test'
    for line in (f'{split}_dataloader: data/coco/val2017/',
                 f'{split}_evaluator: data/coco/annotations/'
                 'instances_val2017.json'):
        assert line in output
    if tool == 'train':
        assert 'train_dataloader: data/coco/train2017/' in output
    assert 'ln -s /path/to/copy data/coco' in output
    options = output.split('--cfg-options ')[1].split('\n')[0].split()
    assert f'{split}_dataloader.dataset.data_root=/path/to/copy/' in options
    assert (f'{split}_evaluator.ann_file=/path/to/copy/annotations/'
            'instances_val2017.json') in options
    demo = re.search(r'built-in demo: python tools/train.py (\S+)', output)
    assert demo and (REPO / demo.group(1)).is_file()
    assert not (tmp_path / 'work_dirs').exists()  # stopped before the Runner


def test_amp_bfloat16_and_auto_scale_lr_on_cpu(tmp_path):
    """--amp and --auto-scale-lr as tools/train.py passes them."""
    from mmpoolformer.runner import build_train_runner
    config = write_tiny_config(tmp_path, 'retinanet')
    runner = build_train_runner(
        config, work_dir=str(tmp_path / 'work'), amp=True, auto_scale_lr=True,
        cfg_options={'train_cfg.val_begin': 2})  # train only
    # mmengine's AmpOptimWrapper asserts a GPU; ours runs bf16 on a CPU
    assert runner.cfg.optim_wrapper.type == ('AmpOptimWrapper'
                                             if torch.cuda.is_available()
                                             else 'CPUAmpOptimWrapper')
    dtypes, losses = [], []
    runner.model.neck.fpn_convs[0].conv.register_forward_hook(
        lambda module, args, output: dtypes.append(output.dtype))
    runner.register_hook(LossRecorder(losses))
    runner.train()
    assert runner.iter == 4
    # autocast really ran, where the CPU has bf16 kernels (AVX2 only:
    # float32, see test_cpu_amp_pieces)
    assert dtypes == [torch.bfloat16 if cpu_bf16_supported()
                      else torch.float32] * 4
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    # 1 process x 4 images against the recipe's 16: a quarter of 1e-4
    lr = runner.optim_wrapper.optimizer.param_groups[0]['initial_lr']
    assert lr == pytest.approx(2.5e-5)


def test_checkpoints_load_weights_only_after_import(trained):
    """torch >= 2.6 refuses mmengine's checkpoints with weights_only=True
    (its default) until ``import mmpoolformer`` allowlists the few types
    mmengine writes (mmpoolformer.checkpoint.safe_load); a fresh process
    shows both."""
    checkpoint = trained['work_dir'] / 'epoch_1.pth'
    probe = ('import sys, torch\n'
             'if sys.argv[2] == "1": import mmpoolformer\n'
             'meta = torch.load(sys.argv[1])["meta"]\n'
             'print(meta["epoch"], meta["iter"])')
    code, output = run([sys.executable, '-c', probe, str(checkpoint), '0'],
                       trained['folder'])
    assert code != 0 and 'Weights only load failed' in output
    code, output = run([sys.executable, '-c', probe, str(checkpoint), '1'],
                       trained['folder'])
    assert code == 0, output[-3000:]
    assert output.split()[-2:] == ['1', '4']


def _assert_continued(output, work_dir):
    assert 'resumed epoch: 1, iter: 4' in output
    assert 'Epoch(train) [1]' not in output
    # warm-up (4 iterations) is over, so the scheduler state came back too
    first = re.search(r'Epoch\(train\) \[2\]\[1/4\]\s+lr: (\S+)', output)
    assert first and float(first.group(1)) == pytest.approx(1e-4)
    checkpoint = torch.load(work_dir / 'epoch_2.pth', weights_only=True)
    assert (checkpoint['meta']['epoch'], checkpoint['meta']['iter']) == (2, 8)
    # AdamW's step count went on from the resumed optimizer state
    steps = {float(state['step'])
             for state in checkpoint['optimizer']['state'].values()}
    assert steps == {8.0}


def test_resume_auto_continues_from_latest(trained, tmp_path):
    work_dir = tmp_path / 'work'
    shutil.copytree(trained['work_dir'], work_dir)
    output = train(tmp_path, trained['config'], '--work-dir', str(work_dir),
                   '--resume', '--cfg-options', 'train_cfg.max_epochs=2')
    assert 'Auto resumed from the latest checkpoint' in output
    _assert_continued(output, work_dir)


def test_resume_from_explicit_checkpoint(trained, tmp_path):
    checkpoint = str(trained['work_dir'] / 'epoch_1.pth')
    output = train(tmp_path, trained['config'], '--work-dir', 'work',
                   '--resume', checkpoint,
                   '--cfg-options', 'train_cfg.max_epochs=2')
    _assert_continued(output, tmp_path / 'work')


def predict(config, state_dict):
    """The predictions of ``config``'s detector with ``state_dict`` on its
    test set, computed here: the model and dataset built from the config by
    mmdet, the weights loaded strictly, batches of 4 as in the test run."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(config)
    init_default_scope('mmdet')
    from mmdet.registry import DATASETS, MODELS
    model = MODELS.build(cfg.model)
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    predictions = []
    for start in range(0, len(dataset), 4):
        batch = pseudo_collate([dataset[i] for i in
                                range(start, min(start + 4, len(dataset)))])
        with torch.no_grad():
            predictions += [sample.to_dict()
                            for sample in model.test_step(batch)]
    return predictions


def matched(predictions, expected):
    """Per image, the fraction of detections in ``predictions`` that
    ``expected`` has too (same class, box within 0.01 px, score within
    1e-5): 1 for the same weights, whatever order near-ties took."""
    fractions = []
    for got, want in zip(predictions, expected):
        assert got['img_id'] == want['img_id']
        got, want = got['pred_instances'], want['pred_instances']
        boxes = (got['bboxes'][:, None] - want['bboxes'][None]).abs()
        scores = (got['scores'][:, None] - want['scores'][None]).abs()
        same = ((boxes.amax(-1) < 1e-2) & (scores < 1e-5) &
                (got['labels'][:, None] == want['labels'][None]))
        fractions.append(same.any(1).float().mean().item())
    return fractions


def test_test_tool_reproduces_val_map_dumps_and_draws(trained, tmp_path):
    import cv2
    checkpoint = trained['work_dir'] / 'epoch_1.pth'
    saved = torch.load(checkpoint, weights_only=True)
    expected = predict(trained['config'], saved['state_dict'])
    # draw only detections above a score that 4 of the 8 images reach
    tops = sorted(p['pred_instances']['scores'].max().item()
                  for p in expected)
    threshold = (tops[3] + tops[4]) / 2
    code, output = run([
        sys.executable, TEST, trained['config'], str(checkpoint),
        '--work-dir', 'eval', '--out', 'preds.pkl', '--show-dir', 'shown',
        '--cfg-options',
        f'default_hooks.visualization.score_thr={threshold!r}'
    ], tmp_path)
    assert code == 0, output[-3000:]
    # the epoch-1 validation during training saw the same weights and data
    assert copypaste(output) == copypaste(trained['output'])
    with open(tmp_path / 'preds.pkl', 'rb') as file:
        predictions = pickle.load(file)
    assert len(predictions) == 8
    for prediction in predictions:
        boxes = prediction['pred_instances']['bboxes']
        assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0
    # they are the checkpoint's predictions: those of its weights here, not
    # those of weights 1% away from them
    assert matched(predictions, expected) == [1.] * 8
    generator = torch.Generator().manual_seed(0)
    perturbed = {
        key: (value * (1 + 0.01 * torch.randn(value.shape,
                                              generator=generator))
              if value.is_floating_point() else value)
        for key, value in saved['state_dict'].items()}
    other = predict(trained['config'], perturbed)
    assert max(matched(predictions, other)) < 0.5
    # ... and a checkpoint with those weights gives those predictions
    torch.save(dict(saved, state_dict=perturbed), tmp_path / 'other.pth')
    code, output_other = run([
        sys.executable, TEST, trained['config'], 'other.pth',
        '--work-dir', 'eval_other', '--out', 'other.pkl'], tmp_path)
    assert code == 0, output_other[-3000:]
    with open(tmp_path / 'other.pkl', 'rb') as file:
        assert matched(pickle.load(file), other) == [1.] * 8
    # the printed mAP is pycocotools' on the dumped predictions
    ann_file = str(Path(trained['config']).parent / 'shapes' / 'annotations'
                   / 'instances_val.json')
    stats = coco_stats(ann_file, predictions, ('circle', 'square',
                                               'triangle'))
    assert copypaste(output)[:3] == pytest.approx(stats, abs=5e-4 + 1e-9)
    # mmdet puts --show-dir under work_dir/<timestamp>/: each image with
    # its ground truth (left) and the detections above the threshold
    # (right) drawn on it
    drawn = {path.name: path for path in
             (tmp_path / 'eval').glob('*/shown/*.png')}
    assert len(drawn) == 8
    boxes_drawn = []
    for prediction in predictions:
        source = cv2.imread(prediction['img_path'])
        image = cv2.imread(str(drawn[Path(prediction['img_path']).name]))
        height, width = source.shape[:2]
        assert image.shape == (height, 2 * width, 3)
        assert (image[:, :width] != source).any()  # ground-truth boxes
        above = (prediction['pred_instances']['scores'] > threshold).any()
        assert (image[:, width:] != source).any() == bool(above)
        boxes_drawn.append(bool(above))
    assert sum(boxes_drawn) == 4


def test_dist_train_script_defaults(tmp_path):
    """The launcher's own defaults, printed instead of run (PYTHON=echo)."""
    env = {'PYTHON': 'echo'}
    env_without_port = {k: v for k, v in os.environ.items() if k != 'PORT'}
    result = subprocess.run(
        ['bash', DIST_TRAIN, 'cfg.py', '2', '--amp'], cwd=tmp_path,
        capture_output=True, text=True, env=dict(env_without_port, **env))
    assert result.returncode == 0, result.stderr
    command = result.stdout.split()
    port = int(next(a for a in command if a.startswith('--master_port=')
                    ).split('=')[1])
    assert 1024 <= port <= 65535
    assert '--nproc_per_node=2' in command
    script = next(arg for arg in command if arg.endswith('train.py'))
    assert Path(script).is_file() and script.endswith('tools/train.py')
    assert command[-4:] == ['cfg.py', '--launcher', 'pytorch', '--amp']


@pytest.mark.parametrize('fork_last3', [True, False])
def test_dist_train_two_processes(tmp_path, fork_last3):
    """RetinaNet never uses level 0: DDP needs fork_last3 (or
    find_unused_parameters) and names norm0 otherwise."""
    write_tiny_config(tmp_path, 'retinanet')
    options = ['train_dataloader.batch_size=2']  # 4 iterations per rank
    if not fork_last3:
        options.append('model.backbone.fork_last3=False')
    # a relative config path, from a cwd outside the repository
    code, output = dist_train(
        tmp_path, ['tiny_retinanet.py', '2', '--work-dir', 'work',
                   '--cfg-options', *options],
        # INFO makes DDP name the parameters (DETAIL crashes gloo on CPU)
        # OMP_NUM_THREADS=1 (as mmengine sets it for its own workers) made
        # a third of the runs abort at exit before tools/ closed the group
        env={'TORCH_DISTRIBUTED_DEBUG': 'INFO', 'OMP_NUM_THREADS': '1'})
    if fork_last3:
        assert code == 0, output[-3000:]
        assert 'Distributed training: True' in output
        assert 'Epoch(train) [1][4/4]' in output
        # total batch 4, not the recipe's 16: the config's lr all the same
        # (mmdet's way; --auto-scale-lr would scale it by 1/4). The line
        # of iteration 4 logs the lr after the 4-iteration warm-up.
        assert 'Scaling the original LR' not in output
        lr = re.search(r'Epoch\(train\) \[1\]\[4/4\]\s+lr: (\S+)', output)
        assert float(lr.group(1)) == pytest.approx(1e-4)
        assert len(copypaste(output)) == 6  # COCO eval gathered over ranks
        assert (tmp_path / 'work' / 'epoch_1.pth').is_file()
    else:
        assert code != 0
        unused = re.findall(
            r'Parameters which did not receive grad for rank \d: (.*)',
            output)
        assert unused, output[-3000:]
        assert {name.strip() for name in unused[0].split(',')} == {
            'backbone.norm0.weight', 'backbone.norm0.bias'}


TTA_CONFIG = """
_base_ = {base!r}
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(64, 64), keep_ratio=True),
         dict(type='Resize', scale=(96, 96), keep_ratio=True)],
        [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
        [dict(type='LoadAnnotations', with_bbox=True)],
        [dict(type='PackDetInputs',
              meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                         'scale_factor', 'flip', 'flip_direction'))]])
]
"""


def test_test_time_augmentation(trained, tmp_path):
    """--tta with the config's tta_pipeline (2 scales x 2 flips)."""
    from mmpoolformer.runner import build_test_runner
    config = tmp_path / 'tta.py'
    config.write_text(TTA_CONFIG.format(base=trained['config']))
    runner = build_test_runner(
        str(config), str(trained['work_dir'] / 'epoch_1.pth'),
        work_dir=str(tmp_path / 'work'), tta=True)
    assert type(runner.model).__name__ == 'DetTTAModel'
    augmented, outputs = [], []
    runner.model.module.register_forward_hook(
        lambda module, args, output: augmented.append(len(output)))
    runner.register_hook(OutputRecorder(outputs))
    metrics = runner.test()
    assert sum(augmented) == 4 * 8  # every image at 4 views
    # one merged prediction per image, and the reported numbers are
    # pycocotools' on those
    dataset = runner.test_dataloader.dataset
    assert sorted(o.img_id for o in outputs) == sorted(
        dataset.get_data_info(i)['img_id'] for i in range(len(dataset)))
    stats = coco_stats(dataset.ann_file, outputs,
                       dataset.metainfo['classes'])
    assert_reported(metrics, stats, 'coco/bbox')


def test_default_tta_for_mmdet_configs_without_one():
    from mmengine.config import Config

    from mmpoolformer.runner import enable_tta
    cfg = Config.fromfile(str(REPO / 'configs' / 'detection' /
                              'mask_rcnn_poolformer_s12.py'))
    assert 'tta_model' not in cfg and 'tta_pipeline' not in cfg
    test_pipeline = cfg.test_dataloader.dataset.pipeline
    enable_tta(cfg)
    assert cfg.model.type == 'DetTTAModel'
    assert cfg.model.module.backbone.type == 'PoolFormer'
    pipeline = cfg.test_dataloader.dataset.pipeline
    assert pipeline[:-1] == test_pipeline[:-1]
    flips, pack = pipeline[-1].transforms
    assert [flip.prob for flip in flips] == [1., 0.]
    assert pack[0].type == 'PackDetInputs' and 'flip' in pack[0].meta_keys
