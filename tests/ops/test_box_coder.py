"""BoxCoder against torchvision's Faster R-CNN BoxCoder, and against the notes' formulas by hand."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from visionzoo.ops import BoxCoder


def random_boxes(n, gen, dtype=torch.float32):
    b = torch.rand(n, 4, generator=gen, dtype=torch.float64) * 200
    b[:, 2:] = b[:, :2] + 1 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 150
    return b.to(dtype)


@pytest.mark.parametrize("weights", [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0), (1 / 3, 7.0, 0.1, 2.5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encode_decode_equal_torchvision(weights, dtype):
    gen = torch.Generator().manual_seed(0)
    gt, anchors = random_boxes(500, gen, dtype), random_boxes(500, gen, dtype)
    ours, theirs = BoxCoder(weights), TorchvisionBoxCoder(weights)
    deltas = ours.encode(gt, anchors)
    torch.testing.assert_close(deltas, theirs.encode_single(gt, anchors), rtol=0, atol=0)
    codes = torch.randn(500, 12, generator=gen, dtype=dtype) * 2  # 3 classes per anchor
    codes[:7, 2] = 50.0  # beyond the clamp
    torch.testing.assert_close(ours.decode(codes, anchors), theirs.decode_single(codes, anchors), rtol=0, atol=0)


def test_notes_formulas_by_hand():
    # Anchor centre (15, 30), size 10 x 20; target centre (17, 26), size 30 x 5.
    anchor = torch.tensor([[10.0, 20.0, 20.0, 40.0]], dtype=torch.float64)
    gt = torch.tensor([[2.0, 23.5, 32.0, 28.5]], dtype=torch.float64)
    t = [(17 - 15) / 10, (26 - 30) / 20, math.log(30 / 10), math.log(5 / 20)]
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    expected = torch.tensor([[10 * t[0], 10 * t[1], 5 * t[2], 5 * t[3]]], dtype=torch.float64)
    torch.testing.assert_close(coder.encode(gt, anchor), expected)
    # b_x = p_x + p_w t_x, b_w = p_w exp(t_w): decoding gives the box back.
    torch.testing.assert_close(coder.decode(expected, anchor), gt)


def test_decode_clamps_size_deltas():
    anchor = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    box = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), anchor)
    # exp(log(1000/16)) * 16 = 1000: the box is at most 1000 wide, centred on the anchor.
    torch.testing.assert_close(box, torch.tensor([[8.0 - 500, 8.0 - 500, 8.0 + 500, 8.0 + 500]]))


def test_round_trip_and_shapes():
    gen = torch.Generator().manual_seed(1)
    gt, anchors = random_boxes(64, gen, torch.float64), random_boxes(64, gen, torch.float64)
    coder = BoxCoder()
    torch.testing.assert_close(coder.decode(coder.encode(gt, anchors), anchors), gt)
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)


def test_bad_input():
    coder = BoxCoder()
    with pytest.raises(ValueError, match="Tensor\\[N, 4\\]"):
        coder.encode(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="Tensor\\[N, 4K\\]"):
        coder.decode(torch.zeros(3, 6), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="4 numbers"):
        BoxCoder((1.0, 1.0))
    # A zero-width anchor divides by zero, as in torchvision: inf/NaN, never a silent finite number.
    deltas = coder.encode(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([[1.0, 0.0, 1.0, 4.0]]))
    assert not torch.isfinite(deltas[0, [0, 2]]).any()


@pytest.mark.parametrize("weights", [(0.0, 0.0, 0.0, 0.0), (10.0, 10.0, 0.0, 5.0), (float("nan"),) * 4,
                                     (10.0, float("inf"), 5.0, 5.0)])
def test_a_zero_or_non_finite_weight_is_refused(weights):
    """BoxCoder took a zero, NaN or infinite weight, then decoded every delta to inf/NaN boxes (or encoded
    targets to inf/NaN) without a word."""
    with pytest.raises(ValueError, match=r"BoxCoder weights must be finite and non-zero"):
        BoxCoder(weights)
    # negative weights encode and decode consistently, as in torchvision
    coder = BoxCoder((-10.0, -10.0, -5.0, -5.0))
    anchors, gt = torch.tensor([[0.0, 0.0, 4.0, 6.0]]), torch.tensor([[1.0, 2.0, 5.0, 5.0]])
    torch.testing.assert_close(coder.decode(coder.encode(gt, anchors), anchors), gt)


def test_a_nan_clip_is_refused():
    """BoxCoder(bbox_xform_clip=nan) decoded every box to NaN (a clamp to NaN); inf still means no clamp."""
    with pytest.raises(ValueError, match=r"bbox_xform_clip must be a number or inf, got nan"):
        BoxCoder(bbox_xform_clip=float("nan"))
    boxes = BoxCoder(bbox_xform_clip=math.inf).decode(torch.tensor([[0.0, 0.0, 5.0, 5.0]]),
                                                       torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    assert torch.isfinite(boxes).all()


def test_torchvisions_per_image_box_lists_are_refused_naming_the_argument():
    """torchvision's BoxCoder.encode/decode take per-image lists of boxes; ours (its encode_single and
    decode_single) ended in "'list' object has no attribute 'dim'" given them, naming no argument."""
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    with pytest.raises(ValueError, match=r"BoxCoder.decode: anchors must be Tensor\[N, 4\], got a list.*torch.cat"):
        coder.decode(torch.zeros(1, 4), [anchors])
    with pytest.raises(ValueError, match=r"BoxCoder.encode: gt_boxes must be Tensor\[N, 4\], got a list.*torch.cat"):
        coder.encode([anchors], [anchors])
    with pytest.raises(ValueError, match=r"BoxCoder.encode: anchors must be Tensor\[N, 4\], got a tuple"):
        coder.encode(anchors, (anchors,))
    with pytest.raises(ValueError, match=r"BoxCoder.decode: deltas must be Tensor\[N, 4K\], got a list"):
        coder.decode([torch.zeros(1, 4)], anchors)
