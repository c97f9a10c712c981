"""Deterministic synthetic "shapes" dataset for CPU-only demos.

Layout written under ``root``::

    meta.json                      generator version + parameters
    train/000000.png ...           RGB images
    val/000000.png ...
    annotations/instances_train.json   COCO instances (file_name relative
    annotations/instances_val.json     to the split folder)
    seg/train/000000.png ...       uint8 label maps: 0 background,
    seg/val/000000.png ...         1 circle, 2 square, 3 triangle

Pure numpy (+ cv2 or PIL for PNG files); no torch / mmdet / mmseg imports.
"""
import contextlib
import json
import os
import shutil
import sys
import time
import uuid
import zlib
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np

try:
    import cv2
except ImportError:  # PNGs via PIL, masks as RLE instead of polygons
    cv2 = None

__all__ = [
    'SHAPES_CLASSES', 'SHAPES_PALETTE', 'SEG_CLASSES', 'SEG_PALETTE',
    'DEFAULT_SHAPES_ROOT', 'GENERATOR_VERSION', 'ShapesDatasetMismatchError',
    'generate_shapes', 'ensure_shapes'
]

SHAPES_CLASSES = ('circle', 'square', 'triangle')
SHAPES_PALETTE = [(220, 20, 60), (30, 144, 255), (255, 190, 0)]
SEG_CLASSES = ('background', ) + SHAPES_CLASSES
SEG_PALETTE = [(0, 0, 0)] + SHAPES_PALETTE
DEFAULT_SHAPES_ROOT = 'data/shapes'

# Bump whenever the pixels or annotations a given parameter set produces
# change: ensure_shapes() then refuses to reuse an old folder.
GENERATOR_VERSION = 1

SPLITS = ('train', 'val')
META_FILE = 'meta.json'
MAX_OBJECTS = 6
SIZE_FRAC_RANGE = (0.10, 0.55)  # object extent / image side
MIN_OBJECT_PX = 8  # keeps the smallest objects drawable at small img_size
MIN_VISIBLE_FRAC = 0.3  # of the drawn area, after occlusion
MIN_VISIBLE_PX = 20
PLACEMENT_TRIES = 20
MIN_CONTRAST = 70.0  # RGB distance, 20th percentile over the covered pixels
# Polygons are traced on a mask upsampled by _POLY_UPSAMPLE and simplified
# by _POLY_EPS pixels; together they stay < 0.5 px from the pixel-edge
# outline, so pycocotools rasterises them back to exactly the same mask.
_POLY_UPSAMPLE = 4
_POLY_EPS = 0.25

# ensure_shapes() serialises generators with a file lock where the platform
# has one; the atomic rename alone keeps it correct without (tests flip it).
_LOCKING = True


class ShapesDatasetMismatchError(ValueError):
    """An existing shapes folder was made differently from what is asked."""


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # crc32, not hash(): str hashes are salted per process.
    entropy = [int(seed), zlib.crc32(split.encode()), int(index)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _gauss_1d(n: int, center: float, sigma: float) -> np.ndarray:
    x = np.arange(n, dtype=np.float32) + 0.5
    return np.exp(-0.5 * ((x - center) / sigma)**2)


def _render_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient + low-frequency blobs (+ stripes, + thin lines)."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    xx, yy = np.meshgrid(coords, coords)
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) / size
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]

    for _ in range(rng.integers(2, 6)):
        cx, cy = rng.uniform(0, size, 2)
        sigma = rng.uniform(0.12, 0.4) * size
        amp = rng.uniform(-60, 60, 3).astype(np.float32)
        blob = np.outer(_gauss_1d(size, cy, sigma), _gauss_1d(size, cx, sigma))
        img += blob[..., None] * amp

    if rng.random() < 0.4:
        period = rng.uniform(0.04, 0.2) * size
        b = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi / period * (xx * np.cos(b) + yy * np.sin(b)) +
                      phase)
        img += wave[..., None] * rng.uniform(10, 35, 3).astype(np.float32)

    # A few thin unlabelled lines, so straight edges alone do not mean
    # "object".
    for _ in range(rng.integers(0, 3)):
        p, q = rng.uniform(0, size, (2, 2))
        d = q - p
        proj = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) /
                       max(float(d @ d), 1e-6), 0, 1)
        dist = np.hypot(xx - p[0] - proj * d[0], yy - p[1] - proj * d[1])
        half_width = rng.uniform(0.4, 1.2)
        cover = np.clip(half_width + 0.5 - dist, 0, 1)[..., None]
        img = img * (1 - cover) + rng.uniform(0, 255, 3) * cover
    return img.astype(np.float32)


def _sample_shape(rng: np.random.Generator, size: int) -> dict:
    """Random class, extent, pose; all fits inside the image."""
    cls = int(rng.integers(len(SHAPES_CLASSES)))
    lo, hi = SIZE_FRAC_RANGE
    # Log-uniform: as many small objects as large ones.
    extent = max(size * float(np.exp(rng.uniform(np.log(lo), np.log(hi)))),
                 MIN_OBJECT_PX)
    if cls == 0:
        radius = extent / 2  # circle
        verts = None
    elif cls == 1:
        radius = extent / 2 * 1.15  # circumradius: side ~0.81 * extent
        a0 = rng.uniform(0, np.pi / 2)
        angles = a0 + np.arange(4) * np.pi / 2
    else:
        radius = extent / 2 * 1.25
        a0 = rng.uniform(0, 2 * np.pi)
        # Jittered vertex angles: not every triangle equilateral.
        angles = a0 + np.arange(3) * 2 * np.pi / 3 + rng.uniform(
            -0.2, 0.2, 3)
    margin = radius + 1
    cx, cy = rng.uniform(margin, max(size - margin, margin + 1e-3), 2)
    if cls != 0:
        verts = np.stack(
            [cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
    return dict(cls=cls, cx=cx, cy=cy, radius=radius, verts=verts)


def _coverage(shape: dict, size: int) -> Tuple[Tuple[slice, slice],
                                               np.ndarray]:
    """Antialiased coverage in [0, 1] of the shape's bounding window.

    From a signed distance at pixel centres, so coverage >= 0.5 is exactly
    "pixel centre inside the shape": that threshold defines the mask.
    """
    r = shape['radius']
    x0 = max(int(np.floor(shape['cx'] - r)) - 1, 0)
    y0 = max(int(np.floor(shape['cy'] - r)) - 1, 0)
    x1 = min(int(np.ceil(shape['cx'] + r)) + 2, size)
    y1 = min(int(np.ceil(shape['cy'] + r)) + 2, size)
    xs = np.arange(x0, x1, dtype=np.float64) + 0.5
    ys = np.arange(y0, y1, dtype=np.float64) + 0.5
    xx, yy = np.meshgrid(xs, ys)
    if shape['verts'] is None:
        sdf = np.hypot(xx - shape['cx'], yy - shape['cy']) - r
    else:
        # Convex polygon: max over edges of the outward half-plane distance.
        v = shape['verts']
        sdf = np.full(xx.shape, -np.inf)
        for i in range(len(v)):
            p, q = v[i], v[(i + 1) % len(v)]
            n = np.array([q[1] - p[1], p[0] - q[0]])
            n /= np.hypot(*n)
            # Orient outward (vertices may be in either winding order).
            if (np.array([shape['cx'], shape['cy']]) - p) @ n > 0:
                n = -n
            sdf = np.maximum(sdf, (xx - p[0]) * n[0] + (yy - p[1]) * n[1])
    cover = np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)
    return (slice(y0, y1), slice(x0, x1)), cover


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour that stands out from most pixels it will cover."""
    if len(under) > 512:
        under = under[np.linspace(0, len(under) - 1, 512).astype(int)]
    cands = rng.uniform(0, 255, (24, 3)).astype(np.float32)
    dist = np.linalg.norm(cands[:, None] - under[None], axis=-1)
    score = np.percentile(dist, 20, axis=1)
    ok = np.flatnonzero(score >= MIN_CONTRAST)
    return cands[ok[0]] if len(ok) else cands[int(np.argmax(score))]


def render_sample(rng: np.random.Generator, size: int):
    """Render one image.

    Returns (RGB uint8 image, uint8 label map, list of (class index, visible
    bool mask)) in drawing order; later objects occlude earlier ones.
    """
    canvas = _render_background(rng, size)
    label = np.zeros((size, size), np.uint8)
    owner = np.full((size, size), -1, np.int16)  # which object is visible
    drawn_area: List[int] = []
    visible_area: List[int] = []
    classes: List[int] = []

    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _ in range(PLACEMENT_TRIES):
            shape = _sample_shape(rng, size)
            win, cover = _coverage(shape, size)
            mask = cover >= 0.5
            area = int(mask.sum())
            if area < MIN_VISIBLE_PX:
                continue
            # Reject placements that would hide too much of an earlier
            # object, instead of dropping it afterwards: a dropped object's
            # pixels would stay in the image as an unlabelled fragment.
            hidden = np.bincount(owner[win][mask] + 1,
                                 minlength=len(classes) + 1)[1:]
            left = np.asarray(visible_area, dtype=np.int64) - hidden
            need = np.maximum(
                MIN_VISIBLE_FRAC * np.asarray(drawn_area, dtype=np.float64),
                MIN_VISIBLE_PX)
            if np.any(left < need):
                continue
            break
        else:
            continue
        idx = len(classes)
        colour = _pick_colour(rng, canvas[win][mask])
        # Mild linear shading so objects are not perfectly flat.
        sh_angle = rng.uniform(0, 2 * np.pi)
        ys = np.arange(win[0].start, win[0].stop, dtype=np.float32) + 0.5
        xs = np.arange(win[1].start, win[1].stop, dtype=np.float32) + 0.5
        ramp = ((xs[None] - shape['cx']) * np.cos(sh_angle) +
                (ys[:, None] - shape['cy']) * np.sin(sh_angle)) / max(
                    shape['radius'], 1.0)
        fill = colour + ramp[..., None] * np.float32(rng.uniform(0, 20))
        c = cover[..., None]
        canvas[win] = canvas[win] * (1 - c) + fill * c
        visible_area = [int(v) for v in left]
        owner[win][mask] = idx
        label[win][mask] = shape['cls'] + 1
        classes.append(shape['cls'])
        drawn_area.append(area)
        visible_area.append(area)

    canvas += rng.normal(0, rng.uniform(2, 8), canvas.shape).astype(
        np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    objects = [(c, owner == i) for i, c in enumerate(classes)]
    return image, label, objects


# --------------------------------------------------------------------------
# Annotation encoding and file writing
# --------------------------------------------------------------------------


def _rle_encode(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major runs, starting with zeros)."""
    flat = mask.ravel(order='F').astype(np.int8)
    bounds = np.concatenate(
        [[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {'size': [int(mask.shape[0]), int(mask.shape[1])],
            'counts': counts}


def _mask_to_segmentation(mask: np.ndarray) -> Union[List[List[float]], dict]:
    """COCO polygons that rasterise back to ``mask``; RLE where they can't.

    Polygons cannot express holes (pycocotools unions them), so a mask with
    a hole -- a small object on top of a larger one -- gets RLE instead.
    """
    if cv2 is None:
        return _rle_encode(mask)
    ys, xs = np.nonzero(mask)
    y0, x0 = int(ys.min()) - 1, int(xs.min()) - 1
    crop = np.zeros((ys.max() - y0 + 2, xs.max() - x0 + 2), np.uint8)
    crop[ys - y0, xs - x0] = 1
    k = _POLY_UPSAMPLE
    up = np.repeat(np.repeat(crop, k, 0), k, 1)
    found = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    contours, hierarchy = found[-2], found[-1]
    if hierarchy is None or np.any(hierarchy[0][:, 3] >= 0):
        return _rle_encode(mask)
    polygons = []
    for contour in contours:
        contour = cv2.approxPolyDP(contour, _POLY_EPS * k, True)
        if len(contour) < 3:
            return _rle_encode(mask)
        # Upsampled pixel u has its centre at (u + 0.5) / k in COCO's
        # continuous coordinates (pixel i spans [i, i + 1]).
        pts = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / k
        pts += (x0, y0)
        polygons.append([float(v) for v in pts.ravel()])
    return polygons


def _write_png(path: Path, array: np.ndarray) -> None:
    if cv2 is not None:
        if array.ndim == 3:
            array = np.ascontiguousarray(array[..., ::-1])  # RGB -> BGR
        if not cv2.imwrite(str(path), array):
            raise OSError(f'could not write {path}')
    else:
        from PIL import Image
        Image.fromarray(array).save(path)


def _write_json(path: Path, obj) -> None:
    with open(path, 'w') as f:
        json.dump(obj, f, separators=(',', ':'))


def _params(num_train: int, num_val: int, img_size: int, seed: int) -> dict:
    params = dict(num_train=int(num_train), num_val=int(num_val),
                  img_size=int(img_size), seed=int(seed))
    if params['num_train'] < 1 or params['num_val'] < 1:
        raise ValueError('num_train and num_val must be >= 1')
    if params['img_size'] < 32:
        raise ValueError('img_size must be >= 32')
    return params


def _meta(params: dict) -> dict:
    return dict(generator='mmpoolformer.data.shapes',
                version=GENERATOR_VERSION, params=params,
                classes=list(SHAPES_CLASSES), seg_classes=list(SEG_CLASSES))


def _generate_split(root: Path, split: str, num: int, img_size: int,
                    seed: int) -> None:
    (root / split).mkdir(parents=True)
    (root / 'seg' / split).mkdir(parents=True)
    images, annotations = [], []
    for index in range(num):
        image, label, objects = render_sample(
            _image_rng(seed, split, index), img_size)
        file_name = f'{index:06d}.png'
        _write_png(root / split / file_name, image)
        _write_png(root / 'seg' / split / file_name, label)
        # COCOeval treats id 0 as "unmatched", so ids start at 1.
        image_id = index + 1
        images.append(dict(id=image_id, file_name=file_name, width=img_size,
                           height=img_size))
        for cls, mask in objects:
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            annotations.append(
                dict(id=len(annotations) + 1, image_id=image_id,
                     category_id=cls + 1,
                     bbox=[x0, y0, int(xs.max()) - x0 + 1,
                           int(ys.max()) - y0 + 1],
                     area=int(len(xs)), iscrowd=0,
                     segmentation=_mask_to_segmentation(mask)))
    categories = [
        dict(id=i + 1, name=name, supercategory='shape')
        for i, name in enumerate(SHAPES_CLASSES)
    ]
    _write_json(
        root / 'annotations' / f'instances_{split}.json',
        dict(info=dict(description='mmpoolformer synthetic shapes',
                       version=str(GENERATOR_VERSION)),
             images=images, annotations=annotations, categories=categories))


def generate_shapes(root: Union[str, Path] = DEFAULT_SHAPES_ROOT,
                    num_train: int = 1000,
                    num_val: int = 200,
                    img_size: int = 160,
                    seed: int = 0) -> Path:
    """Write the dataset into ``root`` (must be absent or empty).

    Not safe against concurrent callers; use :func:`ensure_shapes` for that.
    """
    root = Path(root)
    params = _params(num_train, num_val, img_size, seed)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f'{root} exists and is not an empty directory')
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        # The split name is part of each image's seed: train != val.
        num = params['num_train'] if split == 'train' else params['num_val']
        _generate_split(root, split, num, params['img_size'], params['seed'])
    # Written last: its presence marks a complete dataset.
    _write_json(root / META_FILE, _meta(params))
    return root


# --------------------------------------------------------------------------
# Generate-on-first-use
# --------------------------------------------------------------------------


def _existing_is_valid(root: Path, params: dict) -> bool:
    """False if ``root`` is missing/empty, True if it matches, else raise."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return False
    fix = (f'Delete {str(root)!r} to regenerate it, or pass a different '
           f'root (data_root) for these parameters.')
    try:
        with open(root / META_FILE) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ShapesDatasetMismatchError(
            f'{str(root)!r} exists but is not a complete synthetic shapes '
            f'dataset (unreadable {META_FILE}: {e}). {fix}') from None
    have = dict(version=meta.get('version'), **meta.get('params', {}))
    want = dict(version=GENERATOR_VERSION, **params)
    if have != want:
        diff = ', '.join(f'{k}={have.get(k)!r} (requested {want[k]!r})'
                         for k in want if have.get(k) != want[k])
        raise ShapesDatasetMismatchError(
            f'The synthetic shapes dataset in {str(root)!r} was generated '
            f'with different parameters: {diff}. {fix}')
    missing = [
        p for p in ['annotations/instances_train.json',
                    'annotations/instances_val.json', 'train', 'val',
                    'seg/train', 'seg/val'] if not (root / p).exists()
    ]
    if missing:
        raise ShapesDatasetMismatchError(
            f'The synthetic shapes dataset in {str(root)!r} is missing '
            f'{missing}. {fix}')
    return True


@contextlib.contextmanager
def _generation_lock(root: Path):
    """Exclusive lock so concurrent ranks wait instead of all generating."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if not _LOCKING or fcntl is None:
        yield
        return
    try:
        f = open(root.parent / f'.{root.name}.lock', 'a')
    except OSError:
        yield
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            pass  # e.g. no lock support on this filesystem: rename suffices
        yield


def _generate_and_publish(root: Path, params: dict) -> None:
    """Generate in a private sibling folder, then rename it into place."""
    tmp = root.parent / f'.{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}'
    start = time.time()
    print(f'[mmpoolformer] generating synthetic shapes dataset in {root} '
          f'({params}) ...', file=sys.stderr, flush=True)
    try:
        generate_shapes(tmp, **params)
        with contextlib.suppress(OSError):
            root.rmdir()  # only succeeds on an empty placeholder folder
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / META_FILE).is_file():
                raise
            # Another process published first: keep theirs, drop ours.
            return
        print(f'[mmpoolformer] shapes dataset ready in '
              f'{time.time() - start:.1f} s', file=sys.stderr, flush=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_shapes(root: Union[str, Path] = DEFAULT_SHAPES_ROOT,
                  num_train: int = 1000,
                  num_val: int = 200,
                  img_size: int = 160,
                  seed: int = 0) -> Path:
    """Return ``root``, generating the dataset first if it is not there.

    Safe for concurrent callers (e.g. distributed ranks). Raises
    :class:`ShapesDatasetMismatchError` if ``root`` holds something else.
    """
    root = Path(root)
    params = _params(num_train, num_val, img_size, seed)
    if _existing_is_valid(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _generation_lock(root):
        if not _existing_is_valid(root, params):
            _generate_and_publish(root, params)
    if not _existing_is_valid(root, params):
        raise RuntimeError(f'failed to create the shapes dataset in {root}')
    return root
