"""Draw a detector's or segmentor's predictions on images.

    python tools/image_demo.py IMAGE_OR_FOLDER CONFIG CHECKPOINT \\
        --out-dir DIR [--device cpu] [--score-thr 0.3] [--opacity 0.5]

The config's scope decides: mmdet configs go through mmdet's
``init_detector`` + ``inference_detector`` and ``DetLocalVisualizer``
(boxes with class and score, and masks for Mask R-CNN), mmseg configs
through ``init_model`` + ``inference_model`` and ``SegLocalVisualizer``
(a colour overlay per class). Each picture is written to DIR under the
image's file name, and a line per image says what was found. The class
names and colours come from the checkpoint's ``meta`` (as tools/train.py
writes it), else from the config's test dataset. The checkpoint is read
with ``weights_only=True``; nothing downloads.
"""
import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
from mmpoolformer.analysis import (  # noqa: E402
    checkpoint_dataset_meta, load_model_checkpoint, quiet_mmengine)
from mmpoolformer.runner import load_config  # noqa: E402

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff',
                    '.webp')


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('images', help='an image file or a folder of them')
    parser.add_argument('config', help='mmdet or mmseg config file')
    parser.add_argument('checkpoint', help='checkpoint of the whole model')
    parser.add_argument('--out-dir', required=True,
                        help='where the pictures go')
    parser.add_argument('--device', default='cpu',
                        help="'cpu' or a GPU such as 'cuda:0'")
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='mmdet: draw boxes scoring at least this')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='mmseg: opacity of the colour overlay')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries')
    return parser.parse_args(argv)


def list_images(source: str):
    if os.path.isfile(source):
        return [source]
    if not os.path.isdir(source):
        sys.exit(f'{source} is neither an image file nor a folder')
    files = [os.path.join(source, name) for name in sorted(
        os.listdir(source)) if name.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        sys.exit(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {source}')
    return files


def _without_annotations(pipeline):
    """Inference has no annotations to load: drop LoadAnnotations."""
    if pipeline is not None:
        pipeline[:] = [t for t in pipeline
                       if 'LoadAnnotations' not in t.get('type', '')]


def _class_name(classes, label: int) -> str:
    return classes[label] if classes and label < len(classes) else \
        f'class {label}'


def detect(args, cfg, files):
    from mmdet.apis import inference_detector, init_detector
    from mmdet.utils import get_test_pipeline_cfg
    from mmdet.visualization import DetLocalVisualizer
    _without_annotations(get_test_pipeline_cfg(cfg))
    # the classes are set below from the checkpoint: no COCO warning
    with warnings.catch_warnings(record=True), quiet_mmengine():
        model = init_detector(cfg, None, palette='random',
                              device=args.device)
    checkpoint = load_model_checkpoint(model, args.checkpoint)
    model.dataset_meta = checkpoint_dataset_meta(checkpoint, cfg)
    visualizer = DetLocalVisualizer(name='image_demo')
    visualizer.dataset_meta = model.dataset_meta
    classes = model.dataset_meta.get('classes')
    for path in files:
        result = inference_detector(model, path)
        out_file = os.path.join(args.out_dir, os.path.basename(path))
        visualizer.add_datasample(
            'image', _read_rgb(path), data_sample=result, draw_gt=False,
            pred_score_thr=args.score_thr, out_file=out_file)
        pred = result.pred_instances
        keep = pred.scores >= args.score_thr
        found = ', '.join(
            f'{_class_name(classes, int(label))} {float(score):.2f}'
            for label, score in list(zip(pred.labels[keep],
                                         pred.scores[keep]))[:5])
        masks = ' with masks' if 'masks' in pred else ''
        more = ', ...' if int(keep.sum()) > 5 else ''
        print(f'{path}: {int(keep.sum())} boxes{masks} scoring >= '
              f'{args.score_thr:g}{": " + found + more if found else ""} '
              f'-> {out_file}')


def segment(args, cfg, files):
    import torch
    from mmengine.model import revert_sync_batchnorm
    from mmseg.apis import inference_model, init_model
    from mmseg.visualization import SegLocalVisualizer
    _without_annotations(cfg.get('test_pipeline'))
    with warnings.catch_warnings(record=True), quiet_mmengine():
        model = revert_sync_batchnorm(init_model(cfg, None, args.device))
    checkpoint = load_model_checkpoint(model, args.checkpoint)
    model.dataset_meta = checkpoint_dataset_meta(checkpoint, cfg)
    visualizer = SegLocalVisualizer(name='image_demo', alpha=args.opacity)
    visualizer.dataset_meta = model.dataset_meta
    classes = model.dataset_meta.get('classes')
    for path in files:
        result = inference_model(model, path)
        out_file = os.path.join(args.out_dir, os.path.basename(path))
        visualizer.add_datasample('image', _read_rgb(path), result,
                                  draw_gt=False, out_file=out_file)
        labels = result.pred_sem_seg.data.flatten()
        counts = torch.bincount(labels.cpu(), minlength=1)
        shares = sorted(((int(n), i) for i, n in enumerate(counts) if n),
                        reverse=True)
        found = ', '.join(f'{_class_name(classes, i)} '
                          f'{100 * n / labels.numel():.1f}%'
                          for n, i in shares[:5])
        print(f'{path}: {found} -> {out_file}')


def _read_rgb(path):
    import mmcv
    return mmcv.imread(path, channel_order='rgb')


def main(argv=None):
    args = parse_args(argv)
    files = list_images(args.images)
    cfg = load_config(args.config, args.cfg_options)
    os.makedirs(args.out_dir, exist_ok=True)
    if cfg.default_scope == 'mmdet':
        detect(args, cfg, files)
    else:
        segment(args, cfg, files)


if __name__ == '__main__':
    main()
