"""Tests for the synthetic shapes dataset (tiny sets, a few seconds)."""
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from mmpoolformer.data import (SEG_CLASSES, SHAPES_CLASSES,
                               ShapesDatasetMismatchError, ensure_shapes,
                               generate_shapes)
from mmpoolformer.data import shapes

# pycocotools 2.0.x + numpy 2 warn on every decode; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    'ignore:__array__ implementation:DeprecationWarning')

SMALL = dict(num_train=12, num_val=4, img_size=64, seed=0)


def _tree(root: Path) -> dict:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob('*')) if p.is_file()
    }


def _read_png(path: Path) -> np.ndarray:
    try:
        import cv2
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        return img if img.ndim == 2 else img[..., ::-1]
    except ImportError:
        from PIL import Image
        return np.asarray(Image.open(path))


@pytest.fixture(scope='module')
def small_set(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp('shapes') / 'ds', **SMALL)


def test_generation_is_deterministic(tmp_path, small_set):
    again = _tree(generate_shapes(tmp_path / 'a', **SMALL))
    assert again == _tree(small_set)
    other = _tree(generate_shapes(tmp_path / 'b', **dict(SMALL, seed=1)))
    assert other.keys() == again.keys()
    assert other['train/000000.png'] != again['train/000000.png']
    assert (other['annotations/instances_train.json'] !=
            again['annotations/instances_train.json'])
    # train and val are drawn from different per-image seeds
    assert again['train/000000.png'] != again['val/000000.png']


@pytest.mark.parametrize('split', ['train', 'val'])
def test_coco_matches_label_maps(small_set, split):
    from pycocotools.coco import COCO
    num = SMALL[f'num_{split}']
    size = SMALL['img_size']
    coco = COCO(str(small_set / 'annotations' / f'instances_{split}.json'))
    assert [(c['id'], c['name']) for c in coco.loadCats(coco.getCatIds())
            ] == list(enumerate(SHAPES_CLASSES, 1))
    assert len(coco.imgs) == num
    ann_ids = [a['id'] for a in coco.anns.values()]
    assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) >= 1

    for img_id, info in coco.imgs.items():
        assert (info['width'], info['height']) == (size, size)
        image = _read_png(small_set / split / info['file_name'])
        label = _read_png(small_set / 'seg' / split / info['file_name'])
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        assert label.shape == (size, size) and label.dtype == np.uint8
        assert set(np.unique(label)) <= {0, 1, 2, 3}

        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        assert 1 <= len(anns) <= 6
        covered = np.zeros((size, size), np.int32)
        for ann in anns:
            assert ann['iscrowd'] == 0 and ann['category_id'] in (1, 2, 3)
            mask = coco.annToMask(ann).astype(bool)
            covered += mask
            # the visible part only: it is labelled with its own class
            on_class = (label[mask] == ann['category_id']).mean()
            assert on_class >= 0.98, (info['file_name'], ann['id'])
            assert abs(int(mask.sum()) - ann['area']) <= 0.02 * ann['area']
            assert ann['area'] >= shapes.MIN_VISIBLE_PX
            x, y, w, h = ann['bbox']
            assert 0 <= x and 0 <= y and x + w <= size and y + h <= size
            ys, xs = np.nonzero(mask)
            tight = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert np.abs(np.subtract(tight, [x, y, x + w, y + h])).max() <= 1
        # visible masks do not overlap, and every labelled pixel is owned
        assert covered.max() <= 1
        assert ((covered > 0) != (label > 0)).sum() <= 0.01 * size * size


def test_set_statistics(small_set):
    anns = json.loads(
        (small_set / 'annotations' / 'instances_train.json').read_text())
    per_image = np.bincount([a['image_id'] for a in anns['annotations']],
                            minlength=SMALL['num_train'] + 1)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 6
    assert len(set(per_image.tolist())) >= 3
    assert {a['category_id'] for a in anns['annotations']} == {1, 2, 3}
    sides = np.sqrt([a['area'] for a in anns['annotations']])
    assert sides.max() / sides.min() >= 3
    meta = json.loads((small_set / 'meta.json').read_text())
    assert meta['params'] == SMALL
    assert meta['seg_classes'] == list(SEG_CLASSES)


def test_objects_contrast_with_surroundings(small_set):
    """Objects must be learnable: their colour differs from just outside."""
    from pycocotools.coco import COCO
    coco = COCO(str(small_set / 'annotations' / 'instances_train.json'))
    dists = []
    for ann in coco.anns.values():
        name = coco.imgs[ann['image_id']]['file_name']
        image = _read_png(small_set / 'train' / name).astype(float)
        mask = coco.annToMask(ann).astype(bool)
        ring = np.zeros_like(mask)
        ys, xs = np.nonzero(mask)
        for dy in (-2, 0, 2):
            for dx in (-2, 0, 2):
                ring[np.clip(ys + dy, 0, mask.shape[0] - 1),
                     np.clip(xs + dx, 0, mask.shape[1] - 1)] = True
        ring &= ~mask
        dists.append(
            np.linalg.norm(image[mask].mean(0) - image[ring].mean(0)))
    assert np.mean(np.asarray(dists) > 40) >= 0.9


def test_segmentation_encoding_round_trips(monkeypatch):
    from pycocotools import mask as mask_utils

    def decode(seg, h, w):
        rles = mask_utils.frPyObjects(seg, h, w)
        rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
        return mask_utils.decode(rle).astype(bool)

    rng = np.random.default_rng(0)
    for i in range(20):
        img, _, objects = shapes.render_sample(rng, 64)
        for _, mask in objects:
            seg = shapes._mask_to_segmentation(mask)
            assert np.array_equal(decode(seg, 64, 64), mask)

    yy, xx = np.mgrid[:40, :50]
    ring = np.hypot(yy - 20, xx - 25) < 15
    ring &= ~(np.hypot(yy - 20, xx - 25) < 5)  # a hole: not a polygon
    seg = shapes._mask_to_segmentation(ring)
    assert isinstance(seg, dict)
    assert np.array_equal(decode(seg, 40, 50), ring)

    monkeypatch.setattr(shapes, 'cv2', None)  # no OpenCV: RLE only
    blob = np.hypot(yy - 20, xx - 25) < 9
    seg = shapes._mask_to_segmentation(blob)
    assert isinstance(seg, dict)
    assert np.array_equal(decode(seg, 40, 50), blob)


def test_ensure_is_idempotent(tmp_path, small_set):
    root = tmp_path / 'data' / 'shapes'
    assert ensure_shapes(root, **SMALL) == root
    first = _tree(root)
    assert first == _tree(small_set)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob('*')}
    start = time.perf_counter()
    assert ensure_shapes(str(root), **SMALL) == root
    assert time.perf_counter() - start < 0.5
    assert {p: p.stat().st_mtime_ns for p in root.rglob('*')} == mtimes
    leftovers = [p.name for p in root.parent.iterdir() if '.tmp-' in p.name]
    assert leftovers == []


def test_ensure_fills_empty_placeholder(tmp_path, small_set):
    root = tmp_path / 'shapes'
    root.mkdir()
    ensure_shapes(root, **SMALL)
    assert _tree(root) == _tree(small_set)


def _concurrent_worker(root, locking, barrier):
    shapes._LOCKING = locking
    barrier.wait(timeout=30)
    ensure_shapes(root, **SMALL)


@pytest.mark.parametrize('locking', [True, False])
def test_ensure_concurrent_callers(tmp_path, small_set, locking):
    ctx = multiprocessing.get_context(
        'fork' if 'fork' in multiprocessing.get_all_start_methods() else
        'spawn')
    root = tmp_path / 'shapes'
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_concurrent_worker, args=(root, locking, barrier))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert _tree(root) == _tree(small_set)
    assert [p.name for p in tmp_path.iterdir() if '.tmp-' in p.name] == []


def test_losing_the_race_keeps_the_winner(tmp_path):
    root = ensure_shapes(tmp_path / 'shapes', **SMALL)
    before = _tree(root)
    # What a process that generated in parallel does when it finishes last.
    shapes._generate_and_publish(root, shapes._params(**SMALL))
    assert _tree(root) == before
    assert [p.name for p in tmp_path.iterdir() if '.tmp-' in p.name] == []


def test_parameter_mismatch_raises(tmp_path):
    root = ensure_shapes(tmp_path / 'shapes', **SMALL)
    with pytest.raises(ShapesDatasetMismatchError,
                       match=r'img_size=64 \(requested 72\).*Delete'):
        ensure_shapes(root, **dict(SMALL, img_size=72))
    with pytest.raises(ShapesDatasetMismatchError, match='seed=0'):
        ensure_shapes(root, **dict(SMALL, seed=3))

    meta = json.loads((root / 'meta.json').read_text())
    meta['version'] = shapes.GENERATOR_VERSION - 1
    (root / 'meta.json').write_text(json.dumps(meta))
    with pytest.raises(ShapesDatasetMismatchError, match='version'):
        ensure_shapes(root, **SMALL)

    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'something.txt').write_text('not a dataset')
    with pytest.raises(ShapesDatasetMismatchError,
                       match='not a complete synthetic shapes dataset'):
        ensure_shapes(foreign, **SMALL)
    with pytest.raises(FileExistsError):
        generate_shapes(foreign, **SMALL)
