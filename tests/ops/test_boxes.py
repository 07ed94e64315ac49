"""Box geometry against torchvision.ops on the same random boxes: equal results (same float operations)."""

import math

import pytest
import torch
from torchvision import ops as tv

from visionzoo.ops import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
    remove_small_boxes,
)


def random_boxes(shape, gen, dtype=torch.float32, flipped=0.0):
    """xyxy boxes; a fraction ``flipped`` of them with x2 < x1 and/or y2 < y1."""
    b = torch.rand(*shape, 4, generator=gen, dtype=torch.float64) * 100
    b[..., 2:] += b[..., :2] * torch.rand(*shape, 2, generator=gen, dtype=torch.float64)
    if flipped:
        flip = torch.rand(*shape, generator=gen) < flipped
        b[flip] = b[flip][..., [2, 3, 0, 1]]
    return b.to(dtype)


def assert_same(ours, theirs):
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int16])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (0,)])
def test_box_convert_and_area(dtype, shape):
    gen = torch.Generator().manual_seed(0)
    boxes = random_boxes(shape, gen, flipped=0.2)
    boxes = boxes.round().to(dtype) if not dtype.is_floating_point else boxes.to(dtype)
    for in_fmt in ("xyxy", "xywh", "cxcywh"):
        for out_fmt in ("xyxy", "xywh", "cxcywh"):
            assert_same(box_convert(boxes, in_fmt, out_fmt), tv.box_convert(boxes, in_fmt, out_fmt))
        assert_same(box_area(boxes, in_fmt), tv.box_area(boxes, in_fmt))


def test_box_convert_round_trip_and_known_values():
    b = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert box_convert(b, "xyxy", "cxcywh").tolist() == [[20.0, 40.0, 20.0, 40.0]]
    assert box_convert(b, "xyxy", "xywh").tolist() == [[10.0, 20.0, 20.0, 40.0]]
    assert box_area(b).tolist() == [800.0]
    out = box_convert(b, "xyxy", "xyxy")
    assert torch.equal(out, b) and out.data_ptr() != b.data_ptr()  # a copy, like torchvision


@pytest.mark.parametrize("fn", [box_iou, generalized_box_iou, distance_box_iou, complete_box_iou])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32])
def test_iou_family_matches_torchvision(fn, dtype):
    gen = torch.Generator().manual_seed(1)
    a = random_boxes((40,), gen, flipped=0.1)
    b = random_boxes((25,), gen, flipped=0.1)
    a[3] = b[4]  # identical pair: IoU 1
    a[5] = torch.tensor([10.0, 10.0, 10.0, 10.0], dtype=a.dtype)  # empty box
    b[6] = torch.tensor([10.0, 10.0, 10.0, 10.0], dtype=b.dtype)  # empty vs empty: 0 / 0
    a, b = (a, b) if dtype.is_floating_point else (a.round(), b.round())
    a, b = a.to(dtype), b.to(dtype)
    reference = getattr(tv, fn.__name__)
    assert_same(fn(a, b), reference(a, b))


@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_box_iou_formats_and_batch_dims(fmt):
    gen = torch.Generator().manual_seed(2)
    a = box_convert(random_boxes((2, 3, 6), gen), "xyxy", fmt)
    b = box_convert(random_boxes((2, 3, 4), gen), "xyxy", fmt)
    assert_same(box_iou(a, b, fmt), tv.box_iou(a, b, fmt))
    assert box_iou(a, b, fmt).shape == (2, 3, 6, 4)


def test_iou_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0]])
    # intersection 1, union 7; disjoint: 0. Enclosing boxes 3x3 (GIoU 1/7 - 2/9) and 6x2 (0 - 4/12).
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 0.0]]))
    torch.testing.assert_close(generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, -1 / 3]]))
    # DIoU: centres (1,1)-(2,2): 2 / 18; (1,1)-(5,1): 16 / 40.
    torch.testing.assert_close(distance_box_iou(a, b, eps=0.0), torch.tensor([[1 / 7 - 2 / 18, -16 / 40]]))


def test_complete_box_iou_alpha_has_no_gradient():
    gen = torch.Generator().manual_seed(3)
    a = random_boxes((5,), gen, dtype=torch.float64).requires_grad_()
    b = random_boxes((4,), gen, dtype=torch.float64)
    a_ref = a.detach().clone().requires_grad_()
    complete_box_iou(a, b).sum().backward()
    tv.complete_box_iou(a_ref, b).sum().backward()
    torch.testing.assert_close(a.grad, a_ref.grad)


def test_flipped_boxes_behave_like_torchvision():
    # x2 < x1: negative width and area, zero intersection with anything.
    flipped = torch.tensor([[5.0, 0.0, 1.0, 4.0]])
    normal = torch.tensor([[0.0, 0.0, 6.0, 6.0]])
    assert box_area(flipped).item() == -16.0
    assert box_iou(flipped, normal).item() == 0.0  # 0 / (-16 + 36)
    assert math.isnan(box_iou(flipped, flipped).item()) == math.isnan(tv.box_iou(flipped, flipped).item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_clip_and_remove_small(dtype):
    gen = torch.Generator().manual_seed(4)
    boxes = (random_boxes((2, 30), gen, flipped=0.2) * 1.5 - 20).round().to(dtype)
    assert_same(clip_boxes_to_image(boxes, (60, 90)), tv.clip_boxes_to_image(boxes, (60, 90)))
    flat = boxes.reshape(-1, 4)
    for min_size in (0.0, 1.0, 12.5):
        assert_same(remove_small_boxes(flat, min_size), tv.remove_small_boxes(flat, min_size))
    assert clip_boxes_to_image(torch.tensor([[-5, 3, 200, 90]]), (50, 100)).tolist() == [[0, 3, 100, 50]]


def test_empty_inputs():
    empty = torch.empty(0, 4)
    assert box_iou(empty, torch.rand(3, 4)).shape == (0, 3)
    assert generalized_box_iou(torch.rand(2, 4), empty).shape == (2, 0)
    assert box_area(empty).shape == (0,)
    assert remove_small_boxes(empty, 1.0).shape == (0,)
    assert clip_boxes_to_image(empty, (5, 5)).shape == (0, 4)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="in_fmt must be one of"):
        box_convert(torch.zeros(1, 4), "xyxyr", "xyxy")
    with pytest.raises(ValueError, match="fmt must be one of"):
        box_area(torch.zeros(1, 4), "yxyx")
    with pytest.raises(ValueError, match="Tensor\\[..., 4\\]"):
        box_iou(torch.zeros(2, 5), torch.zeros(2, 4))


@pytest.mark.parametrize(
    "ours, theirs",
    [(box_iou, tv.box_iou), (generalized_box_iou, tv.generalized_box_iou), (distance_box_iou, tv.distance_box_iou),
     (complete_box_iou, tv.complete_box_iou)],
)
def test_a_single_box_is_a_set_of_one(ours, theirs):
    # before: IndexError for a Tensor[4], which torchvision takes as boxes1 (result [1, M])
    one = torch.tensor([0.0, 0.0, 2.0, 2.0])
    many = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 3.0, 3.0], [0.5, 0.0, 4.0, 1.5]])
    expected = theirs(one, many)
    assert expected.shape == (1, 3)
    torch.testing.assert_close(ours(one, many), expected, rtol=0, atol=0)
    torch.testing.assert_close(ours(many, one), theirs(many, one[None]), rtol=0, atol=0)  # torchvision: IndexError
    torch.testing.assert_close(ours(one, one), theirs(one[None], one[None]), rtol=0, atol=0)
