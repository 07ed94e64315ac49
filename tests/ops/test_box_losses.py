"""GIoU, DIoU and CIoU losses of paired boxes, and masks' boxes, against torchvision.ops on the same inputs:
values and gradients."""

import pytest
import torch
from torchvision import ops as tv

from visionzoo.ops import (
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    masks_to_boxes,
)

LOSSES = [
    (generalized_box_iou_loss, tv.generalized_box_iou_loss),
    (distance_box_iou_loss, tv.distance_box_iou_loss),
    (complete_box_iou_loss, tv.complete_box_iou_loss),
]


def _pairs(shape, seed, dtype=torch.float32):
    """Predictions and targets that overlap, miss, touch, coincide or nest: every branch of the losses."""
    gen = torch.Generator().manual_seed(seed)

    def boxes():
        corner, size = torch.rand(*shape, 2, generator=gen) * 60, 1 + torch.rand(*shape, 2, generator=gen) * 40
        if len(shape) == 1:  # whole pixels: the boxes made to touch below touch exactly
            corner, size = corner.round(), size.round()
        return torch.cat([corner, corner + size], -1).to(dtype)

    predictions, targets = boxes(), boxes()
    if len(shape) == 1 and shape[0] >= 4:
        targets[0] = predictions[0]  # the same box
        targets[1] = predictions[1] + torch.tensor([0.5, 0.5, -0.5, -0.5], dtype=dtype)  # inside
        width = predictions[2, 2] - predictions[2, 0]
        targets[2] = predictions[2] + torch.stack([width, 0 * width, width, 0 * width])  # touching edges
    return predictions, targets


@pytest.mark.parametrize("ours, theirs", LOSSES, ids=["giou", "diou", "ciou"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_losses_and_gradients_equal_torchvisions(ours, theirs, reduction, dtype):
    predictions, targets = _pairs((40,), seed=1, dtype=dtype)
    mine_in, their_in = predictions.clone().requires_grad_(), predictions.clone().requires_grad_()
    got, expected = ours(mine_in, targets, reduction=reduction), theirs(their_in, targets, reduction=reduction)
    assert got.dtype == expected.dtype == dtype and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    (got.sum() if reduction == "none" else got).backward()
    (expected.sum() if reduction == "none" else expected).backward()
    torch.testing.assert_close(mine_in.grad, their_in.grad, rtol=1e-5, atol=1e-6)
    assert (got.detach() > 0).any()  # not a vacuous comparison of zeros


@pytest.mark.parametrize("ours, theirs", LOSSES, ids=["giou", "diou", "ciou"])
def test_batched_half_integer_single_and_empty_inputs_as_torchvision(ours, theirs):
    predictions, targets = _pairs((3, 5), seed=2)
    torch.testing.assert_close(ours(predictions, targets), theirs(predictions, targets))  # [..., 4] pairs
    torch.testing.assert_close(ours(predictions[0, 0], targets[0, 0]), theirs(predictions[0, 0], targets[0, 0]))
    half = predictions.half(), targets.half()
    assert ours(*half).dtype == torch.float32  # computed in float32, as torchvision does
    torch.testing.assert_close(ours(*half), theirs(*half))
    integers = (predictions * 10).long(), (targets * 10).long() + 1
    torch.testing.assert_close(ours(*integers), theirs(*integers))
    empty = torch.zeros(0, 4, requires_grad=True)
    for reduction in ("none", "mean", "sum"):
        got, expected = ours(empty, torch.zeros(0, 4), reduction=reduction), theirs(empty, torch.zeros(0, 4),
                                                                                     reduction=reduction)
        assert got.shape == expected.shape and torch.equal(got.detach(), expected.detach())
    assert ours(empty, torch.zeros(0, 4), reduction="mean").requires_grad  # 0 that still backpropagates


@pytest.mark.parametrize("ours", [loss for loss, _ in LOSSES], ids=["giou", "diou", "ciou"])
def test_bad_arguments_are_one_clear_error_each(ours):
    boxes = torch.rand(3, 4)
    with pytest.raises(ValueError, match=r"reduction must be one of none, mean, sum, got 'avg'"):
        ours(boxes, boxes, reduction="avg")
    with pytest.raises(ValueError, match=r"boxes2 must be Tensor\[\.\.\., 4\] \(x1, y1, x2, y2\), got shape \(3, 5\)"):
        ours(boxes, torch.rand(3, 5))
    with pytest.raises(ValueError, match=r"compares boxes1\[i\] with boxes2\[i\]: their shapes \(3, 4\) and \(2, 4\)"):
        ours(boxes, torch.rand(2, 4))
    with pytest.raises(ValueError, match=r"boxes1 must be Tensor\[\.\.\., 4\].*got list"):
        ours([[0, 0, 1, 1]], boxes)


def test_the_complete_loss_compares_the_aspect_of_the_prediction_with_the_targets():
    """CIoU is not symmetric: its alpha · v term weighs the prediction's aspect against the target's IoU."""
    square, wide = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[0.0, 0.0, 20.0, 5.0]])
    assert complete_box_iou_loss(square, wide) > distance_box_iou_loss(square, wide)
    torch.testing.assert_close(complete_box_iou_loss(wide, square), tv.complete_box_iou_loss(wide, square))


def test_masks_to_boxes_equals_torchvisions():
    gen = torch.Generator().manual_seed(3)
    masks = torch.zeros(6, 20, 30, dtype=torch.uint8)
    for index in range(4):
        y1, x1 = torch.randint(0, 15, (2,), generator=gen).tolist()
        masks[index, y1:y1 + 1 + index, x1:x1 + 2 + 3 * index] = 1
    masks[3, 19, 29] = 1  # a second, distant part
    masks[4, 7, 11] = 1  # one pixel: x1 == x2, y1 == y2
    # masks[5] stays empty: [0, 0, 0, 0]
    for kind in (masks, masks.bool(), masks.float() * 0.5):
        got = masks_to_boxes(kind)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, tv.masks_to_boxes(kind), rtol=0, atol=0)
    assert masks_to_boxes(masks)[4].tolist() == [11.0, 7.0, 11.0, 7.0] and masks_to_boxes(masks)[5].tolist() == [0.0] * 4
    assert masks_to_boxes(torch.zeros(0, 20, 30)).shape == (0, 4)
    assert masks_to_boxes(torch.zeros(2, 0, 30)).tolist() == [[0.0] * 4] * 2  # torchvision: no boxes at all
    with pytest.raises(ValueError, match=r"masks_to_boxes takes masks Tensor\[N, H, W\], got shape \(20, 30\)"):
        masks_to_boxes(masks[0])
