"""mmcv's average RoIAlign for CPUs, as two matrix products.

mmcv's CPU ``roi_align`` computes its backward one output element at a
time on one thread: in the Mask R-CNN shapes demo it was 28% of a training
step (142 ms of ~510 ms on 2 cores of an AMD EPYC, 8 images x 64 RoIs),
against 13% for its forward.

Average RoIAlign is separable. Each output bin is the mean of a grid of
bilinear samples, and a bilinear sample at ``(y, x)`` weighs row ``r`` and
column ``s`` by ``wy(r) * wx(s)``; a sample outside the map
(``y < -1 or y > H``, or the same for ``x``) counts as zero, which is a
product of a row and a column condition too. So for RoI ``k`` on image
``b``::

    out[k, c, p, q] = sum_{r, s} Ay[k, p, r] * Ax[k, q, s] * F[b, c, r, s]

where ``Ay[k, p, :]`` is the mean over bin ``p``'s sample rows of their
bilinear row weights (and ``Ax`` the same for columns). The samples, their
weights and the clamping at the borders are mmcv's (``roi_align.cpp``:
``aligned``, ``sampling_ratio`` 0 meaning ``ceil(roi size / bins)`` samples
a bin, ``count = max(grid, 1)``), so the output equals mmcv's up to float
rounding; autograd gives the features' gradient through the same two
products, and the RoIs get none, as in mmcv.

Per image the first product is one GEMM over the NHWC map
(``(k * bins, H) @ (H, W * C)``), the second a batched GEMM. Forward and
backward on the demo's finest level (8 x 128 x 40 x 40, 512 RoIs of 7x7):
37 ms against mmcv's 143 ms (``tools/analysis_tools/roi_align_speed.py``,
same machine).

The products cost in proportion to the map's area, mmcv's loops to the RoIs'
sample counts, so the separable form pays on small maps only. Forward and
backward of 512 RoIs of up to 28 feature pixels on 2 x 256 x H x W,
separable against mmcv (``roi_align_speed.py --shape 2 256 H W --rois 512
--box 112``): 25 x 42 132 against 381 ms, 50 x 84 281 against 474, 64 x 96
405 against 569, 75 x 126 482 against 651, 100 x 168 768 against 664,
200 x 336 2868 against 1015. :func:`separable_pays` draws the line at
:data:`MAX_SEPARABLE_PIXELS`; the RoIAlign guard asks it. The first
product's output is computed for at most :data:`CHUNK_BYTES` of RoIs at a
time.
"""
from typing import Tuple

import torch

__all__ = ['MAX_SEPARABLE_PIXELS', 'roi_align_separable', 'separable_pays']

# maps of at most 96 x 96 cells: the demo's (40 x 40 and smaller), and
# COCO's levels of stride 16 and 32
MAX_SEPARABLE_PIXELS = 96 * 96
CHUNK_BYTES = 64 << 20


def separable_pays(features: torch.Tensor) -> bool:
    """Whether :func:`roi_align_separable` beats mmcv's CPU kernel on maps
    of this size (see the module docstring)."""
    return features.shape[-2] * features.shape[-1] <= MAX_SEPARABLE_PIXELS


def _axis_weights(start: torch.Tensor, bin_size: torch.Tensor,
                  grid: torch.Tensor, bins: int, size: int) -> torch.Tensor:
    """``(K, bins, size)``: for each RoI and bin, the mean over the bin's
    samples along one axis of their bilinear weights on the ``size``
    rows (or columns) of the map."""
    rois = start.shape[0]
    samples = max(int(grid.max().item()), 1)
    dtype = start.dtype
    index = torch.arange(bins, dtype=dtype).view(1, bins, 1)
    sample = torch.arange(samples, dtype=dtype).view(1, 1, samples)
    grid = grid.view(rois, 1, 1)
    bin_size = bin_size.view(rois, 1, 1)
    coord = (start.view(rois, 1, 1) + index * bin_size +
             (sample + .5) * bin_size / grid.clamp(min=1))
    # mmcv: a sample beyond [-1, size] is empty; others clamp at 0 and at
    # the last row
    used = (sample < grid) & (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.floor().long()
    last = low >= size - 1
    low = torch.where(last, torch.full_like(low, size - 1), low)
    high = torch.where(last, low, low + 1)
    frac = torch.where(last, torch.zeros_like(coord), coord - low)
    weights = coord.new_zeros(rois, bins, size)
    weights.scatter_add_(2, low, (1 - frac) * used)
    weights.scatter_add_(2, high, frac * used)
    return weights / grid.clamp(min=1)


def roi_align_separable(features: torch.Tensor, rois: torch.Tensor,
                        output_size: Tuple[int, int],
                        spatial_scale: float = 1.0, sampling_ratio: int = 0,
                        aligned: bool = True) -> torch.Tensor:
    """mmcv's ``roi_align(..., pool_mode='avg')`` on a CPU.

    Args:
        features (Tensor): ``(N, C, H, W)``, any memory layout and floating
            dtype; computed in float32 (float64 stays float64).
        rois (Tensor): ``(K, 5)``: image index, x1, y1, x2, y2.
        output_size (tuple[int, int]): bins ``(height, width)``.
        spatial_scale (float): from image to feature coordinates.
        sampling_ratio (int): samples per bin and axis; 0: adaptive.
        aligned (bool): shift by half a pixel (mmcv's ``aligned``).

    Returns:
        Tensor: ``(K, C, *output_size)`` in the computing dtype (a
        channels_last-strided view).
    """
    bins_h, bins_w = output_size
    batch, channels, height, width = features.shape
    dtype = torch.promote_types(features.dtype, torch.float32)
    rois = rois.detach().to(dtype)
    if rois.shape[0] == 0:
        return features.new_zeros(0, channels, bins_h, bins_w, dtype=dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset
                      for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.), roi_h.clamp(min=1.)
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full_like(roi_h, sampling_ratio)
    else:
        grid_h, grid_w = torch.ceil(roi_h / bins_h), torch.ceil(roi_w / bins_w)
    rows = _axis_weights(y1, roi_h / bins_h, grid_h, bins_h, height)
    cols = _axis_weights(x1, roi_w / bins_w, grid_w, bins_w, width)

    nhwc = features.to(dtype).permute(0, 2, 3, 1)
    if not nhwc.is_contiguous():
        nhwc = nhwc.contiguous()
    image = rois[:, 0].long()
    order = None
    if bool((image[1:] < image[:-1]).any()):  # mmdet's are sorted already
        order = torch.argsort(image, stable=True)
        image, rows, cols = image[order], rows[order], cols[order]
    # unbind, not nhwc[b]: its backward stacks the images' gradients once,
    # where each indexing would add a zero-filled map of the whole batch
    maps = nhwc.unbind(0)
    chunk = max(1, CHUNK_BYTES // (bins_h * width * channels *
                                   nhwc.element_size()))
    pieces, start = [], 0
    for b, count in enumerate(
            torch.bincount(image, minlength=batch).tolist()):
        for first in range(start, start + count, chunk):
            k = min(chunk, start + count - first)
            part = slice(first, first + k)
            # (k * bins_h, H) @ (H, W * C): the rows of each bin
            per_row = rows[part].reshape(k * bins_h, height) @ \
                maps[b].reshape(height, width * channels)
            # then the columns, one (bins_w, W) @ (W, C) per RoI and row bin
            weights = cols[part].unsqueeze(1).expand(k, bins_h, bins_w,
                                                     width)
            pieces.append(torch.bmm(
                weights.reshape(k * bins_h, bins_w, width),
                per_row.view(k * bins_h, width, channels)))
        start += count
    out = torch.cat(pieces).view(-1, bins_h, bins_w, channels)
    if order is not None:
        out = out[torch.argsort(order)]
    return out.permute(0, 3, 1, 2)
