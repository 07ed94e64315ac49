"""Selective Search: output contract, a complete hierarchy, the similarity measures, recall on Shapes, bad inputs."""

import numpy as np
import pytest
import torch
from PIL import Image

from visionzoo.data import Shapes
from visionzoo.detection import selective_search
from visionzoo.detection.proposals import (
    _group,
    _regions,
    fill_similarity,
    histogram_intersection,
    size_similarity,
)
from visionzoo.ops import box_iou


@pytest.fixture(scope="module")
def shapes_image():
    return Shapes("val")[3][0]


def two_rectangles() -> torch.Tensor:
    """Tensor[3, 64, 80]: flat grey with a red box over x 8..29, y 10..24 and a blue one over x 40..69, y 35..54."""
    image = torch.full((3, 64, 80), 0.5)
    image[:, 10:25, 8:30] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    image[:, 35:55, 40:70] = torch.tensor([0.1, 0.2, 0.9])[:, None, None]
    return image


def test_boxes_contract(shapes_image):
    boxes = selective_search(shapes_image, mode="fast")
    _, h, w = shapes_image.shape
    assert boxes.dtype == torch.float32 and boxes.dim() == 2 and boxes.shape[1] == 4
    assert 100 < len(boxes) <= 2000
    x1, y1, x2, y2 = boxes.unbind(1)
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= w).all() and (y2 <= h).all()
    assert (x2 > x1).all() and (y2 > y1).all()
    assert len(torch.unique(boxes, dim=0)) == len(boxes)
    assert torch.equal(boxes, selective_search(shapes_image, mode="fast"))
    assert not torch.equal(boxes, selective_search(shapes_image, mode="fast", seed=1))
    # The cap keeps the best-ranked boxes: a prefix of the full ranking.
    assert torch.equal(selective_search(shapes_image, mode="fast", max_proposals=50), boxes[:50])


def test_min_size_drops_small_boxes(shapes_image):
    boxes = selective_search(shapes_image, mode="single", max_proposals=10_000, min_size=1)
    wide = selective_search(shapes_image, mode="single", max_proposals=10_000, min_size=10)
    keep = (boxes[:, 2] - boxes[:, 0] >= 10) & (boxes[:, 3] - boxes[:, 1] >= 10)
    assert 0 < len(wide) < len(boxes)
    assert torch.equal(wide, boxes[keep])


def test_input_types_agree(shapes_image):
    pixels = (shapes_image * 255).round().to(torch.uint8)
    array = pixels.permute(1, 2, 0).numpy()
    expected = selective_search(pixels.float() / 255, mode="single")
    assert torch.equal(selective_search(array, mode="single"), expected)
    assert torch.equal(selective_search(Image.fromarray(array), mode="single"), expected)
    grey = shapes_image.mean(0, keepdim=True)
    assert torch.equal(selective_search(grey, mode="single"), selective_search(grey.expand(3, -1, -1), mode="single"))



def test_a_sixteen_bit_pil_image_is_read_scaled_not_clipped():
    values = (two_rectangles().mean(0) * 65535).round().to(torch.int32).numpy().astype(np.uint16)
    scaled = torch.from_numpy(values.astype(np.float32) / 65535)[None].expand(3, -1, -1)
    boxes = selective_search(Image.fromarray(values), mode="single")  # mode I;16: was clipped to one white image
    assert torch.equal(boxes, selective_search(scaled, mode="single")) and len(boxes) > 1


@pytest.mark.parametrize("mode", ["single", "fast"])
def test_hierarchy_reaches_objects_and_whole_image(mode):
    boxes = selective_search(two_rectangles(), mode=mode, max_proposals=10_000).tolist()
    assert [8, 10, 30, 25] in boxes
    assert [40, 35, 70, 55] in boxes
    assert [0, 0, 80, 64] in boxes


def test_group_merges_the_most_similar_pair_first():
    # Three regions in a row: 0 and 1 have equal colour histograms, 2 differs; all the same size.
    labels = np.array([[0, 0, 1, 1, 2, 2]] * 2)
    labels, sizes, boxes, pairs = _regions(labels)
    assert sizes.tolist() == [4, 4, 4]
    assert boxes.tolist() == [[0, 0, 2, 2], [2, 0, 4, 2], [4, 0, 6, 2]]
    assert pairs.tolist() == [[0, 1], [1, 2]]
    colour = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    out = _group(colour, colour, sizes, boxes, pairs, "C", labels.size)
    assert out.tolist() == [[0, 0, 2, 2], [2, 0, 4, 2], [4, 0, 6, 2], [0, 0, 4, 2], [0, 0, 6, 2]]


def test_regions_neighbours_are_4_connected():
    labels = np.array([[0, 1], [1, 0]])  # 0 and 0 touch only diagonally
    _, sizes, boxes, pairs = _regions(labels)
    assert sizes.tolist() == [2, 2]
    assert boxes.tolist() == [[0, 0, 2, 2], [0, 0, 2, 2]]
    assert pairs.tolist() == [[0, 1]]
    _, _, _, pairs = _regions(np.array([[5, 5, 9], [7, 7, 7]]))  # labels renumbered 0, 1, 2
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 2]]


def test_similarity_measures_by_hand():
    assert histogram_intersection(np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.25, 0.5])) == pytest.approx(0.5)
    assert histogram_intersection(np.array([0.2, 0.8]), np.array([0.2, 0.8])) == pytest.approx(1.0)
    assert size_similarity(np.float64(10), np.float64(30), 100) == pytest.approx(0.6)
    # A 2x2 region and a 2x1 region beside it: their box is 4x2 = 8 px, 2 of them empty, over 16 px.
    left, right = np.array([0, 0, 2, 2]), np.array([2, 0, 4, 1])
    assert fill_similarity(left, right, 4, 2, 16) == pytest.approx(1 - 2 / 16)
    # Far apart regions leave most of their box empty.
    assert fill_similarity(np.array([0, 0, 1, 1]), np.array([3, 3, 4, 4]), 1, 1, 16) == pytest.approx(1 - 14 / 16)


def test_recall_on_shapes():
    dataset = Shapes("val")
    hits = []
    for index in range(10):
        image, target = dataset[index]
        best = box_iou(target["boxes"], selective_search(image, mode="fast")).amax(1)
        hits.append(best >= 0.5)
    assert torch.cat(hits).float().mean().item() >= 0.95


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image": torch.rand(4, 16, 16)}, r"image.*\(4, 16, 16\)"),
        ({"image": torch.rand(2, 16, 16)}, r"image.*\(2, 16, 16\)"),
        ({"image": torch.rand(16, 16)}, r"image.*\(16, 16\)"),
        ({"image": torch.rand(1, 3, 16, 16)}, r"image.*\(1, 3, 16, 16\)"),
        ({"image": np.zeros((16, 16), np.uint8)}, r"image.*\[16, 16\]"),
        ({"image": np.zeros((16, 16, 3), np.float32)}, r"image.*float32"),
        ({"image": [[0.0]]}, r"image.*list"),
        ({"mode": "slow"}, r"mode.*'slow'"),
        ({"max_proposals": 0}, r"max_proposals.*0"),
        ({"max_proposals": -5}, r"max_proposals.*-5"),
        ({"min_size": -1}, r"min_size.*-1"),
    ],
)
def test_bad_inputs(kwargs, match):
    arguments = {"image": torch.rand(3, 16, 16), **kwargs}
    with pytest.raises(ValueError, match=match):
        selective_search(**arguments)
