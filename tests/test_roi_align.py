"""``mmpoolformer.ops.roi_align_separable`` against mmcv's own CPU kernel,
and the RoIAlign guard that uses it.

mmcv's ``roi_align`` (compiled ops) is the reference: same outputs and the
same feature gradients on RoIs that cover its corner cases (partly and
wholly outside the map, smaller than a pixel, of zero size, unsorted image
indices, an image without RoIs), for both ``aligned`` settings, adaptive
and fixed sampling, odd map sizes and non-square bins.
"""
import pytest
import torch
from mmcv.ops import RoIAlign, roi_align

from mmpoolformer.engine.op_guards import guard_roi_align
from mmpoolformer.ops import roi_align_separable


def _rois(generator, images=3, count=40, size=(13, 17), scale=0.25):
    """Boxes in image coordinates over a map of ``size`` at ``scale``, with
    the awkward cases spelled out at the front."""
    h, w = size[0] / scale, size[1] / scale
    special = torch.tensor([
        [2, -30., -30., -10., -10.],           # wholly outside, above-left
        [0, w + 20, h + 20, w + 60, h + 60],   # wholly outside, below-right
        [1, -8., -6., 20., 30.],               # partly outside
        [0, w - 10, h - 12, w + 15, h + 9],    # over the last row/column
        [2, 10., 12., 10., 12.],               # zero size
        [1, 20.3, 7.1, 20.9, 7.4],             # under a pixel
        [0, 0., 0., w, h],                     # the whole map
    ])
    xy = torch.rand(count, 2, generator=generator) * torch.tensor([w, h])
    wh = torch.rand(count, 2, generator=generator) * torch.tensor([w, h])
    index = torch.randint(0, images - 1, (count, 1), generator=generator)
    boxes = torch.cat([index.float(), xy - 4, xy + wh], dim=1)
    # images in no particular order, and image 3 (of 4) has no RoIs
    return torch.cat([special, boxes])[torch.randperm(
        count + len(special), generator=generator)]


@pytest.mark.parametrize('sampling_ratio', [0, 2])
@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('bins,scale', [((7, 7), 0.25), ((3, 5), 0.5)])
def test_same_outputs_and_gradients_as_mmcv(sampling_ratio, aligned, bins,
                                            scale):
    generator = torch.Generator().manual_seed(sampling_ratio + 2 * aligned)
    features = torch.randn(4, 6, 13, 17, generator=generator)
    rois = _rois(generator, images=4, scale=scale)
    ours_in = features.clone().requires_grad_()
    mmcv_in = features.clone().requires_grad_()
    ours = roi_align_separable(ours_in, rois, bins, scale, sampling_ratio,
                               aligned)
    expected = roi_align(mmcv_in, rois, bins, scale, sampling_ratio, 'avg',
                         aligned)
    assert ours.shape == expected.shape == (len(rois), 6, *bins)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert expected.abs().sum() > 0 and (expected == 0).any()
    upstream = torch.randn(expected.shape, generator=generator)
    ours.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(ours_in.grad, mmcv_in.grad, atol=1e-5,
                               rtol=1e-5)
    assert mmcv_in.grad[3].abs().sum() == 0  # no RoIs on image 3


def test_float64_empty_and_channels_last():
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(3, 4, 10, 12, generator=generator,
                           dtype=torch.float64)
    rois = _rois(generator, size=(10, 12)).double()
    out = roi_align_separable(features, rois, (7, 7), 0.25)
    assert out.dtype == torch.float64
    torch.testing.assert_close(
        out, roi_align(features, rois, (7, 7), 0.25, 0, 'avg', True),
        atol=1e-12, rtol=1e-12)
    nhwc = features.float().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        roi_align_separable(nhwc, rois.float(), (7, 7), 0.25),
        out.float(), atol=1e-5, rtol=1e-5)
    empty = roi_align_separable(features, rois[:0], (7, 7), 0.25)
    assert empty.shape == (0, 4, 7, 7)


def test_guarded_layer_computes_separably_in_any_layout_and_dtype():
    generator = torch.Generator().manual_seed(1)
    layer = RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=0)
    assert guard_roi_align(layer) == 1
    assert guard_roi_align(layer) == 0  # idempotent
    features = torch.randn(3, 8, 13, 17, generator=generator)
    rois = _rois(generator)
    expected = roi_align(features, rois, (7, 7), 0.25, 0, 'avg', True)
    nhwc = features.bfloat16().contiguous(memory_format=torch.channels_last)
    nhwc.requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(nhwc, rois)
    assert out.dtype == torch.bfloat16
    # the separable op ran, not mmcv's autograd function
    assert 'RoIAlign' not in type(out.grad_fn.next_functions[0][0]).__name__
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
    out.float().sum().backward()
    assert nhwc.grad.dtype == torch.bfloat16 and nhwc.grad.abs().sum() > 0


def test_guarded_layer_leaves_other_cases_to_mmcv():
    features = torch.randn(1, 2, 8, 8)
    # aligned RoIs of negative size: mmcv's own error
    layer = RoIAlign((2, 2), 1.0, 0)
    guard_roi_align(layer)
    with pytest.raises(RuntimeError, match='non-negative size'):
        layer(features, torch.tensor([[0., 6., 6., 2., 2.]]))
    # max pooling: mmcv's kernel, whose output the guard hands back
    layer = RoIAlign((2, 2), 1.0, 0, pool_mode='max')
    guard_roi_align(layer)
    rois = torch.tensor([[0., 1., 1., 6., 6.]])
    out = layer(features.requires_grad_(), rois)
    assert 'RoIAlign' in type(out.grad_fn).__name__
    torch.testing.assert_close(
        out, roi_align(features, rois, (2, 2), 1.0, 0, 'max', True))


def test_rois_in_chunks_give_the_same(monkeypatch):
    """Few RoIs at a time (as on large maps): the same as all at once."""
    import mmpoolformer.ops.roi_align as module
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(3, 5, 13, 17, generator=generator)
    rois = _rois(generator, images=3)
    expected = roi_align(features, rois, (7, 7), 0.25, 0, 'avg', True)
    # three RoIs a chunk: 3 x 7 bins x 17 columns x 5 channels x 4 bytes
    monkeypatch.setattr(module, 'CHUNK_BYTES', 3 * 7 * 17 * 5 * 4)
    chunked_in = features.clone().requires_grad_()
    chunked = roi_align_separable(chunked_in, rois, (7, 7), 0.25)
    torch.testing.assert_close(chunked, expected, atol=1e-5, rtol=1e-5)
    chunked.sum().backward()
    whole_in = features.clone().requires_grad_()
    monkeypatch.undo()
    roi_align_separable(whole_in, rois, (7, 7), 0.25).sum().backward()
    torch.testing.assert_close(chunked_in.grad, whole_in.grad)


@pytest.mark.parametrize('size,separable', [((96, 96), True),
                                            ((96, 97), False)])
def test_guard_leaves_large_maps_to_mmcv(size, separable):
    """The matrix products cost in proportion to the map's area: beyond
    96 x 96 cells mmcv's kernel is the faster one and runs."""
    layer = RoIAlign((7, 7), 0.25, 0)
    guard_roi_align(layer)
    features = torch.randn(2, 3, *size).requires_grad_()
    rois = torch.tensor([[0., 10., 20., 90., 120.], [1., 0., 0., 40., 30.]])
    out = layer(features, rois)
    ran_mmcv = 'RoIAlign' in type(out.grad_fn).__name__ or any(
        'RoIAlign' in type(f).__name__
        for f, _ in out.grad_fn.next_functions if f is not None)
    assert ran_mmcv is not separable
    torch.testing.assert_close(
        out, roi_align(features, rois, (7, 7), 0.25, 0, 'avg', True),
        atol=1e-5, rtol=1e-5)
