"""MultiScaleRoIAlign against torchvision's on an FPN-like pyramid: level mapping, scales, outputs, gradients."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision

from visionzoo.ops import MultiScaleRoIAlign
from visionzoo.ops.poolers import fpn_levels, infer_scale


def pyramid(gen, channels=6, size=(96, 128)):
    """Levels '0'..'3' at strides 4..32 and an unused 'pool' map, like torchvision's FPN output."""
    x = OrderedDict()
    for i, stride in enumerate((4, 8, 16, 32)):
        x[str(i)] = torch.randn(2, channels, size[0] // stride, size[1] // stride, generator=gen)
    x["pool"] = torch.randn(2, channels, 2, 2, generator=gen)
    return x


def image_boxes(n, gen, height, width):
    """Boxes from 2 px to the whole image (so every level gets some), a few flipped or empty."""
    size = torch.exp(torch.empty(n, 2).uniform_(0.7, 5.2, generator=gen))
    corner = torch.rand(n, 2, generator=gen) * torch.tensor([width, height])
    boxes = torch.cat([corner, corner + size], 1)
    boxes[::13] = boxes[::13][:, [2, 1, 0, 3]]  # x2 < x1: negative area
    boxes[5] = torch.tensor([10.0, 10.0, 10.0, 10.0])  # zero area: level k_min
    return boxes


@pytest.mark.parametrize("names", [["0", "1", "2", "3"], ["0", "1", "2"], ["2"], ["3", "1"]])
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_matches_torchvision(names, sampling_ratio):
    gen = torch.Generator().manual_seed(len(names) + sampling_ratio)
    x = pyramid(gen)
    boxes = [image_boxes(60, gen, 90, 120), image_boxes(35, gen, 96, 128)]
    shapes = [(90, 120), (96, 128)]
    ours_x = OrderedDict((k, v.clone().requires_grad_()) for k, v in x.items())
    their_x = OrderedDict((k, v.clone().requires_grad_()) for k, v in x.items())
    ours = MultiScaleRoIAlign(names, (7, 7), sampling_ratio)(ours_x, boxes, shapes)
    theirs = torchvision.ops.MultiScaleRoIAlign(names, (7, 7), sampling_ratio)(their_x, boxes, shapes)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    grad = torch.randn(theirs.shape, generator=gen)
    (ours * grad).sum().backward()
    (theirs * grad).sum().backward()
    for k in names:
        torch.testing.assert_close(ours_x[k].grad, their_x[k].grad, rtol=1e-5, atol=1e-5)


def test_level_mapping_by_hand():
    # FPN Eq. 1: k = floor(4 + log2(sqrt(wh) / 224)), clamped to [2, 5]; returned as k - 2.
    boxes = [torch.tensor([[0.0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 111, 111], [0, 0, 10, 10], [0, 0, 900, 900]])]
    assert fpn_levels(boxes, 2, 5).tolist() == [2, 1, 0, 0, 3]
    assert infer_scale((25, 32), (100, 128)) == 0.25
    assert infer_scale((13, 16), (100, 128)) == 0.125  # 0.13 -> 2 ** round(log2 0.13) = 2 ** -3


def test_single_level_and_empty_boxes():
    gen = torch.Generator().manual_seed(7)
    x = pyramid(gen)
    pooler = MultiScaleRoIAlign(["1"], 3, 2)
    empty = pooler(x, [torch.zeros(0, 4), torch.zeros(0, 4)], [(96, 128)] * 2)
    assert empty.shape == (0, 6, 3, 3)
    boxes = [image_boxes(10, gen, 96, 128)]
    reference = torchvision.ops.MultiScaleRoIAlign(["1"], 3, 2)(x, boxes, [(96, 128)])
    torch.testing.assert_close(pooler(x, boxes, [(96, 128)]), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("names", [["1"], ["0", "1", "2"]])
def test_zero_output_size_gives_an_empty_result_like_torchvision(names):
    """MultiScaleRoIAlign with output_size 0 or (0, 7) raised ValueError where torchvision's pools to
    Tensor[K, C, 0, 0] (or [K, C, 0, 7])."""
    gen = torch.Generator().manual_seed(9)
    x = pyramid(gen)
    boxes = [image_boxes(8, gen, 96, 128), image_boxes(6, gen, 96, 128)]
    for size in (0, (0, 7)):
        ours = MultiScaleRoIAlign(names, size, 2)(x, boxes, [(96, 128)] * 2)
        theirs = torchvision.ops.MultiScaleRoIAlign(names, size, 2)(x, boxes, [(96, 128)] * 2)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype


def test_bad_input():
    gen = torch.Generator().manual_seed(8)
    x = pyramid(gen)
    with pytest.raises(ValueError, match="none of featmap_names"):
        MultiScaleRoIAlign(["p2"], 7, 2)(x, [torch.zeros(1, 4)], [(96, 128)])
    with pytest.raises(ValueError, match="image_shapes is empty"):
        MultiScaleRoIAlign(["0"], 7, 2)(x, [torch.zeros(1, 4)], [])


@pytest.mark.parametrize("size", [1.5, None, "7", (2, "a"), float("nan")])
def test_a_bad_output_size_is_a_value_error_naming_it_when_the_pooler_is_built(size):
    """MultiScaleRoIAlign(output_size=1.5) failed when built with TypeError "'float' object is not iterable",
    which names no argument (roi_align itself already names it)."""
    with pytest.raises(ValueError, match="output_size"):
        MultiScaleRoIAlign(["0"], size, 2)


def test_a_numpy_integer_output_size_is_taken_as_roi_align_takes_it():
    """(torchvision's pooler fails on one with TypeError; its roi_align takes it.)"""
    assert MultiScaleRoIAlign(["0"], np.int64(3), 2).output_size == (3, 3)
