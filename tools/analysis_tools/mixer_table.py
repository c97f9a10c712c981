"""The MetaFormer claim on the shapes data: token mixers against accuracy at
equal training wall time.

Each run is the Semantic FPN shapes demo
(``configs/segmentation/fpn_poolformer_s12_shapes.py``: data, neck, head,
optimizer, hooks) with its backbone replaced by a ``MetaFormer`` of the S12
shape (layers 2/2/6/2, widths 64/128/320/512, LayerNorm, StarReLU MLPs,
from scratch) that differs only in its token mixers. Each mixer's step time
is measured first (a short run), and its schedule is then sized so that
training takes ``--budget`` minutes; the table gives iterations, step time,
wall time and val mIoU.

    python tools/analysis_tools/mixer_table.py --budget 4 \\
        [--mixers identity pool sepconv sepconv-attention] [--out table.md]
"""
import argparse
import copy
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(
    __file__)))))
from mmengine.hooks import Hook  # noqa: E402

from mmpoolformer.runner import build_train_runner, load_config  # noqa: E402

CONFIG = 'configs/segmentation/fpn_poolformer_s12_shapes.py'
S12 = dict(layers=(2, 2, 6, 2), embed_dims=(64, 128, 320, 512))
# name: token mixers per stage (as the MetaFormer families use them)
MIXERS = {
    'identity': 'identity',            # IdentityFormer
    'pool': 'pool',                    # PoolFormer(V2)
    'random': ('identity', 'identity', 'random', 'random'),  # RandFormer
    'sepconv': 'sepconv',              # ConvFormer
    'sepconv-attention': ('sepconv', 'sepconv', 'attention',
                          'attention'),  # CAFormer
}
CALIBRATION_ITERS = 30


class _KeepMetrics(Hook):
    """Keeps the last validation metrics."""

    def __init__(self):
        self.metrics = {}

    def after_val_epoch(self, runner, metrics=None):
        self.metrics = dict(metrics or {})


def mixer_config(base, mixers, iters: int, work_dir: str, validate: bool):
    cfg = copy.deepcopy(base)
    cfg.model.backbone = dict(type='MetaFormer', arch=S12,
                              token_mixers=mixers, fork_last3=False,
                              init_cfg=None)
    cfg.model.neck.in_channels = list(S12['embed_dims'])
    warmup = min(200, max(iters // 10, 1))
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.001, begin=0, end=warmup,
             by_epoch=False),
        dict(type='CosineAnnealingLR', eta_min_ratio=0.01, begin=0,
             end=iters, by_epoch=False)
    ]
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters,
                         val_interval=iters if validate else iters + 1)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook',
                                        interval=iters + 1)
    cfg.work_dir = work_dir
    return cfg


def run(cfg, path: str):
    cfg.dump(path)
    runner = build_train_runner(path, work_dir=cfg.work_dir)
    keep = _KeepMetrics()
    runner.register_hook(keep, priority='LOWEST')
    start = time.perf_counter()
    runner.train()
    wall = time.perf_counter() - start
    step = runner.message_hub.get_scalar('train/time')
    return wall, step, keep.metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--budget', type=float, default=4.,
                        help='training minutes per mixer')
    parser.add_argument('--mixers', nargs='+', default=list(MIXERS),
                        choices=list(MIXERS))
    parser.add_argument('--work-dir', default='work_dirs/mixer_table')
    parser.add_argument('--out', help='also write the table to this file')
    args = parser.parse_args(argv)
    base = load_config(CONFIG)
    os.makedirs(args.work_dir, exist_ok=True)
    rows = []
    for name in args.mixers:
        folder = osp.join(args.work_dir, name)
        cfg = mixer_config(base, MIXERS[name], CALIBRATION_ITERS,
                           osp.join(folder, 'calibration'), validate=False)
        _, step, _ = run(cfg, osp.join(args.work_dir, f'{name}_calib.py'))
        seconds = step.mean(CALIBRATION_ITERS - 10)  # without warm-up
        iters = max(int(args.budget * 60 / seconds), 50)
        cfg = mixer_config(base, MIXERS[name], iters, folder, validate=True)
        wall, step, metrics = run(cfg, osp.join(args.work_dir,
                                                f'{name}.py'))
        rows.append((name, iters, step.mean(iters), wall,
                     metrics.get('mIoU')))
        print(f'{name}: {iters} iterations, {rows[-1][2]:.3f} s/step, '
              f'{wall / 60:.1f} min with val, mIoU {rows[-1][4]}',
              flush=True)
    table = ['| token mixer | iterations | s / step | wall (train + val) '
             '| val mIoU |', '|---|---|---|---|---|']
    for name, iters, step, wall, miou in rows:
        miou = '-' if miou is None else f'{miou:.1f}'
        table.append(f'| {name} | {iters} | {step:.3f} | '
                     f'{wall / 60:.1f} min | {miou} |')
    print('\n'.join(table))
    if args.out:
        with open(args.out, 'w') as file:
            file.write('\n'.join(table) + '\n')


if __name__ == '__main__':
    main()
