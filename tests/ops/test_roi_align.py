"""roi_align / roi_pool against torchvision: forward and input gradient on the same random inputs."""

import importlib

import numpy as np
import pytest
import torch
from torchvision import ops as tv

from visionzoo.ops import MultiScaleRoIAlign, boxes_to_rois, roi_align, roi_pool

roi_align_module = importlib.import_module("visionzoo.ops.roi_align")  # `roi_align` is also the function


def random_rois(k, gen, height, width, n_images=2, dtype=torch.float32):
    """Boxes of all kinds: inside, crossing and fully outside the map, tiny, zero-size and flipped."""
    centre = torch.rand(k, 2, generator=gen, dtype=torch.float64) * torch.tensor([width + 16.0, height + 16.0]) - 8
    size = torch.empty(k, 2, dtype=torch.float64).uniform_(-6, 1.3 * max(height, width), generator=gen)
    size[::9] = 0.0  # zero-size boxes
    size[1::11] = torch.rand(size[1::11].shape, generator=gen, dtype=torch.float64)  # smaller than a cell
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)  # negative sizes: flipped boxes
    batch = torch.randint(0, n_images, (k, 1), generator=gen).double()
    return torch.cat([batch, boxes], 1).to(dtype)


@pytest.fixture(params=["auto", "blocks", "sampled"])
def layout(request, monkeypatch):
    """Read RoIs as strided blocks, as lists of sampled rows/columns, or let the op choose."""
    fraction = {"auto": roi_align_module.SPARSE_FRACTION, "blocks": 0.0, "sampled": 2.0}[request.param]
    monkeypatch.setattr(roi_align_module, "SPARSE_FRACTION", fraction)
    return request.param


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
def test_roi_align_forward_and_gradient_match_torchvision(aligned, sampling_ratio, layout):
    gen = torch.Generator().manual_seed(sampling_ratio + 10 * aligned)
    x = torch.randn(2, 6, 23, 31, generator=gen)
    rois = random_rois(120, gen, 46, 62)  # image coordinates, scale 0.5
    ours_x, their_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = roi_align(ours_x, rois, (5, 4), 0.5, sampling_ratio, aligned)
    theirs = tv.roi_align(their_x, rois, (5, 4), 0.5, sampling_ratio, aligned)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    grad = torch.randn(theirs.shape, generator=gen)
    (ours * grad).sum().backward()
    (theirs * grad).sum().backward()
    torch.testing.assert_close(ours_x.grad, their_x.grad, rtol=1e-5, atol=1e-5)


def test_roi_align_float64_is_exact_to_rounding():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 17, 20, generator=gen, dtype=torch.float64)
    rois = random_rois(200, gen, 17, 20, dtype=torch.float64)
    for scale, ratio, aligned in [(1.0, -1, False), (0.75, 2, True), (1.3, -1, False), (0.9, -1, True)]:
        ours = roi_align(x, rois, 7, scale, ratio, aligned)
        torch.testing.assert_close(ours, tv.roi_align(x, rois, 7, scale, ratio, aligned), rtol=1e-12, atol=1e-12)


def test_roi_align_flipped_box_with_aligned_adaptive_grid_gives_zero():
    # x2 - x1 < -PW with aligned=True makes the adaptive grid negative in x only; torchvision's CPU
    # kernel then fails to allocate a negative-sized buffer. Here the RoI simply has no samples.
    x = torch.randn(1, 2, 10, 10)
    rois = torch.tensor([[0.0, 9.0, 1.0, 1.0, 8.0], [0.0, 1.0, 1.0, 8.0, 8.0]])
    out = roi_align(x, rois, 2, 1.0, -1, aligned=True)
    assert torch.equal(out[0], torch.zeros(2, 2, 2))
    with pytest.raises(Exception, match="vector"):
        tv.roi_align(x, rois, 2, 1.0, -1, aligned=True)
    torch.testing.assert_close(out[1:], tv.roi_align(x, rois[1:], 2, 1.0, -1, aligned=True))


def test_roi_align_list_of_boxes_and_output_sizes():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 20, 24, generator=gen)
    boxes = [random_rois(n, gen, 20, 24, n_images=1)[:, 1:] for n in (5, 0, 9)]
    for size in (7, (2, 9), [3, 3]):
        ours = roi_align(x, boxes, size, 1.0, 2)
        torch.testing.assert_close(ours, tv.roi_align(x, boxes, size, 1.0, 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        boxes_to_rois(boxes)[:, 0], torch.tensor([0.0] * 5 + [2.0] * 9)
    )  # the image index column


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_roi_align_half_precision_computes_in_float32(dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 16, 16, generator=gen)
    rois = random_rois(40, gen, 16, 16, n_images=1)
    ours = roi_align(x.to(dtype), rois.to(dtype), 3, 1.0, 2, True)
    assert ours.dtype == dtype
    reference = tv.roi_align(x.to(dtype).float(), rois.to(dtype).float(), 3, 1.0, 2, True)
    torch.testing.assert_close(ours.float(), reference, rtol=0, atol=1e-2 if dtype == torch.float16 else 4e-2)


def test_roi_align_under_autocast_stays_float32():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 12, 12, generator=gen)
    rois = random_rois(30, gen, 12, 12)
    plain = roi_align(x, rois, 4, 1.0, -1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = roi_align(x, rois, 4, 1.0, -1)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


def test_roi_align_known_value():
    # A linear ramp f(y, x) = x is reproduced exactly by bilinear sampling: each bin averages x over it.
    x = torch.arange(10.0).repeat(10, 1)[None, None]
    out = roi_align(x, torch.tensor([[0.0, 2.0, 2.0, 6.0, 6.0]]), 2, 1.0, 2, aligned=False)
    # Bins [2, 4) and [4, 6): samples at 2.5, 3.5 and 4.5, 5.5.
    torch.testing.assert_close(out[0, 0], torch.tensor([[3.0, 5.0], [3.0, 5.0]]))


def test_roi_align_bad_input():
    x = torch.zeros(2, 3, 8, 8)
    assert roi_align(x, torch.zeros(0, 5), 7).shape == (0, 3, 7, 7)
    assert roi_align(x, [], 2).shape == (0, 3, 2, 2)
    with pytest.raises(ValueError, match="batch index"):
        roi_align(x, torch.tensor([[2.0, 0, 0, 4, 4]]), 2)
    with pytest.raises(ValueError, match="Tensor\\[K, 5\\]"):
        roi_align(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="boxes\\[1\\] must be Tensor\\[L, 4\\]"):
        roi_align(x, [torch.zeros(1, 4), torch.zeros(1, 5)], 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_align(x, torch.zeros(1, 5), (2, -1))


@pytest.mark.parametrize("size", [1.5, None, (2, "a"), (2, float("nan")), (float("inf"), 2)])
def test_an_output_size_that_is_no_whole_number_is_refused_naming_it(size):
    """output_size=1.5 (or None, (2, "a")) failed with "TypeError: object of type 'float' has no len()" or int()'s
    ValueError, naming no argument."""
    x = torch.zeros(1, 3, 8, 8)
    for op in (roi_align, roi_pool):
        with pytest.raises(ValueError, match=r"^output_size must be a non-negative int or \(height, width\)"):
            op(x, torch.zeros(1, 5), size)


def test_numpy_integers_are_output_sizes_as_in_torchvision():
    x = torch.rand(1, 3, 8, 8)
    rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0]])
    for size in (np.int64(2), (np.int64(2), 3)):
        torch.testing.assert_close(roi_align(x, rois, size), tv.roi_align(x, rois, size))
        torch.testing.assert_close(roi_pool(x, rois, size), tv.roi_pool(x, rois, size))


@pytest.mark.parametrize("size", [0, (0, 7), (7, 0)])
def test_zero_output_size_gives_an_empty_result_like_torchvision(size):
    """An output_size of 0 (or (0, 7)) raised ValueError where torchvision returns Tensor[K, C, PH, PW]
    with no elements and a zero input gradient."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 10, 10, generator=gen)
    for rois in (random_rois(6, gen, 10, 10), torch.zeros(0, 5)):
        for ours_op, their_op in [
            (lambda f, r: roi_align(f, r, size, 1.0, -1), lambda f, r: tv.roi_align(f, r, size, 1.0, -1)),
            (lambda f, r: roi_align(f, r, size, 0.5, 2, True), lambda f, r: tv.roi_align(f, r, size, 0.5, 2, True)),
            (lambda f, r: roi_pool(f, r, size), lambda f, r: tv.roi_pool(f, r, size)),
        ]:
            ours_x, their_x = x.clone().requires_grad_(), x.clone().requires_grad_()
            ours, theirs = ours_op(ours_x, rois), their_op(their_x, rois)
            assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
            ours.sum().backward()
            theirs.sum().backward()
            torch.testing.assert_close(ours_x.grad, their_x.grad, rtol=0, atol=0)


def test_roi_pool_forward_and_gradient_match_torchvision():
    gen = torch.Generator().manual_seed(5)
    # ReLU-like features: many exact ties at 0, where the gradient must go to the first maximum.
    x = torch.randn(2, 5, 21, 26, generator=gen).clamp(min=0)
    rois = random_rois(150, gen, 42, 52)
    for scale, size in [(0.5, (7, 7)), (0.37, (3, 5)), (1.0, 2)]:
        ours_x, their_x = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours = roi_pool(ours_x, rois, size, scale)
        theirs = tv.roi_pool(their_x, rois, size, scale)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        grad = torch.randn(theirs.shape, generator=gen)
        (ours * grad).sum().backward()
        (theirs * grad).sum().backward()
        torch.testing.assert_close(ours_x.grad, their_x.grad, rtol=1e-5, atol=1e-5)  # summation order


def test_roi_pool_rounds_half_away_from_zero_and_list_boxes():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    # x2 = 4.5 rounds to 5 (C round), not 4 (round half to even): the max of row 1, cols 1..5 is 13.
    box = [torch.tensor([[1.0, 1.0, 4.5, 1.0]])]
    assert roi_pool(x, box, 1).item() == 13.0 == tv.roi_pool(x, box, 1).item()
    assert roi_pool(x, torch.zeros(0, 5), 3).shape == (0, 1, 3, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_roi_pool_half_precision(dtype):
    # The maximum of rounded values is one of them: exact against torchvision on the float32 copy.
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 3, 12, 12, generator=gen).to(dtype)
    rois = random_rois(25, gen, 12, 12, n_images=1).to(dtype)
    out = roi_pool(x, rois, 3)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), tv.roi_pool(x.float(), rois.float(), 3), rtol=0, atol=0)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_non_finite_features_reach_only_the_bins_that_sample_them(aligned, sampling_ratio, layout):
    # A NaN or infinite feature value was multiplied by the zero weights of every other bin of a RoI
    # whose window held it (0 * nan = nan), so the whole RoI came out NaN; torchvision reads a value
    # only at the bins whose samples touch it: inf where weighted, NaN where read with weight 0.
    gen = torch.Generator().manual_seed(11 + sampling_ratio + 5 * aligned)
    x = torch.randn(2, 3, 23, 31, generator=gen)
    bad = torch.randint(1, 23 * 31, (40,), generator=gen)  # never (0, 0): torchvision's CPU kernel reads it
    values = torch.tensor([float("nan"), float("inf"), -float("inf")])[torch.arange(40) % 3]
    x.view(6, -1)[torch.arange(40) % 6, bad] = values
    rois = random_rois(150, gen, 46, 62)
    ours_x, their_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = roi_align(ours_x, rois, (5, 4), 0.5, sampling_ratio, aligned)
    theirs = tv.roi_align(their_x, rois, (5, 4), 0.5, sampling_ratio, aligned)
    assert 0.5 < theirs.isfinite().float().mean() < 0.99  # the case is meaningful: most bins never see them
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5, equal_nan=True)
    grad = torch.randn(theirs.shape, generator=gen)
    (ours * grad).sum().backward()
    (theirs * grad).sum().backward()
    torch.testing.assert_close(ours_x.grad, their_x.grad, rtol=1e-5, atol=1e-5)


def test_roi_align_and_roi_pool_on_the_meta_device_give_torchvisions_shapes():
    # before: "Tensor.item() cannot be called on meta tensors" from the batch-index check
    x = torch.empty(2, 3, 8, 8, device="meta", dtype=torch.float16)
    rois = torch.empty(4, 5, device="meta", dtype=torch.float16)
    for ours, theirs in [(roi_align, tv.roi_align), (roi_pool, tv.roi_pool)]:
        for boxes in (rois, [torch.empty(3, 4, device="meta", dtype=torch.float16)], torch.tensor([[0.0, 1, 1, 4, 4]]).half()):
            out, expected = ours(x, boxes, (2, 3)), theirs(x, boxes, (2, 3))
            assert (out.device, out.dtype, out.shape) == (expected.device, expected.dtype, expected.shape)
        with pytest.raises(ValueError, match="boxes are on the meta device but input is on cpu"):
            ours(torch.zeros(2, 3, 8, 8), rois.float(), 2)  # torchvision: uninitialised memory
    pooler = MultiScaleRoIAlign(["0"], 7, 2)
    out = pooler({"0": torch.empty(2, 3, 8, 8, device="meta")}, [torch.empty(5, 4, device="meta")], [(32, 32)])
    assert out.device.type == "meta" and out.shape == (5, 3, 7, 7)


@pytest.mark.parametrize("op", [roi_align, roi_pool])
def test_non_finite_box_coordinates_raise_naming_the_box(op):
    # before: zeros, silently (torchvision: NaN for a fixed grid, zeros, or a crash for an infinite box)
    x = torch.randn(2, 3, 8, 8)
    rois = torch.tensor([[0.0, 1, 1, 4, 4], [1.0, 2, float("nan"), 5, 5], [0.0, 1, 1, float("inf"), 4]])
    with pytest.raises(ValueError, match=r"boxes\[1\] has a NaN or infinite coordinate: \[2.0, nan, 5.0, 5.0\]"):
        op(x, rois, 2)
    with pytest.raises(ValueError, match=r"boxes\[2\] has a NaN or infinite coordinate"):
        op(x, rois[[0, 0, 2]], 2)
    with pytest.raises(ValueError, match=r"box 2 of the lists \(image 1\) has a NaN or infinite coordinate"):
        op(x, [rois[:1, 1:], torch.cat([rois[:1, 1:], rois[2:, 1:]])], 2)
    assert op(x, rois[:1], 2).isfinite().all()


@pytest.mark.parametrize("op", [roi_align, roi_pool])
def test_boxes_as_python_lists_raise_naming_the_argument(op):
    # before: AttributeError: 'list' object has no attribute 'dim' (torchvision: ... no attribute 'size')
    x = torch.zeros(1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"boxes\[0\] must be Tensor\[L, 4\], got list"):
        op(x, [[0.0, 1.0, 1.0, 4.0, 4.0]], 2)
    with pytest.raises(ValueError, match=r"boxes\[0\] must be Tensor\[L, 4\], got list"):
        boxes_to_rois([[1.0, 1.0, 4.0, 4.0]])



def test_box_lists_of_mixed_dtypes_are_promoted_not_cast_to_the_first():
    """An image without boxes given as an int64 Tensor[0, 4] ahead of float boxes truncated those boxes to whole pixels
    (boxes_to_rois cast every list to the first one's dtype), so roi_align and MultiScaleRoIAlign pooled the wrong windows."""
    empty, floats = torch.zeros(0, 4, dtype=torch.long), torch.tensor([[1.5, 2.5, 6.5, 7.5]])
    assert torch.equal(boxes_to_rois([empty, floats]), torch.tensor([[1.0, 1.5, 2.5, 6.5, 7.5]]))
    assert torch.equal(boxes_to_rois([floats.long(), floats]), torch.tensor([[0.0, 1, 2, 6, 7], [1.0, 1.5, 2.5, 6.5, 7.5]]))
    assert torch.equal(boxes_to_rois([floats.half(), floats * 100]),
                       torch.tensor([[0.0, 1.5, 2.5, 6.5, 7.5], [1.0, 150.0, 250.0, 650.0, 750.0]]))
    x = torch.arange(2 * 16 * 16.0).view(2, 1, 16, 16)
    expected = tv.roi_align(x, [empty, floats], 2, 0.25, 2)
    torch.testing.assert_close(expected, tv.roi_align(x, torch.tensor([[1.0, 1.5, 2.5, 6.5, 7.5]]), 2, 0.25, 2))
    torch.testing.assert_close(roi_align(x, [empty, floats], 2, 0.25, 2), expected)
    pooled = MultiScaleRoIAlign(["0"], 2, 2)({"0": x}, [empty, floats], [(64, 64), (64, 64)])
    torch.testing.assert_close(pooled, expected)


@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_outputs_are_contiguous_like_torchvisions(op):
    """roi_align and roi_pool returned a channels-last strided view, so the usual flattening of pooled features,
    ``pooled.view(len(pooled), -1)``, raised "view size is not compatible with input tensor's size and stride"
    where torchvision's contiguous result works."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 10, 12, generator=gen)
    rois = random_rois(6, gen, 10, 12)
    ours, theirs = getattr(roi_align_module, op)(x, rois, (3, 2)), getattr(tv, op)(x, rois, (3, 2))
    assert ours.is_contiguous() and theirs.is_contiguous()
    torch.testing.assert_close(ours.view(6, -1), theirs.view(6, -1))
    single_level = MultiScaleRoIAlign(["0"], 2, 2)({"0": x}, [rois[:3, 1:], rois[3:, 1:]], [(10, 12)] * 2)
    assert single_level.view(6, -1).shape == (6, 3 * 2 * 2)


def test_roi_align_and_roi_pool_modules_are_torchvisions():
    """torchvision.ops.RoIAlign / RoIPool, the modules a custom box head holds, had no counterpart: `from
    visionzoo.ops import RoIAlign` raised ImportError. They take torchvision's arguments and give its results."""
    from visionzoo.ops import RoIAlign, RoIPool

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 20, 24, generator=gen)
    rois = random_rois(12, gen, 80, 96)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    cases = [((7, 5), 0.25, 2, True), (3, 1 / 3, -1, False), ([4, 4], 0.5, 0, False)]
    for output_size, scale, ratio, aligned in cases:
        ours, theirs = RoIAlign(output_size, scale, ratio, aligned), tv.RoIAlign(output_size, scale, ratio, aligned)
        assert repr(ours) == repr(theirs)
        for boxes in (rois, per_image):
            torch.testing.assert_close(ours(x, boxes), theirs(x, boxes))
        ours, theirs = RoIPool(output_size, scale), tv.RoIPool(output_size, scale)
        assert repr(ours) == repr(theirs)
        for boxes in (rois, per_image):
            torch.testing.assert_close(ours(x, boxes), theirs(x, boxes))
    with pytest.raises(ValueError, match=r"RoIAlign output_size must be a non-negative int or \(height, width\)"):
        RoIAlign(1.5, 1.0, 2)
    with pytest.raises(ValueError, match=r"RoIPool output_size must be a non-negative int or \(height, width\)"):
        RoIPool((2, "a"), 1.0)
