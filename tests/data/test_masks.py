"""COCO RLE and polygon rasterisation against pycocotools and matplotlib."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.path import Path
from pycocotools import mask as coco_mask

from visionzoo.data.masks import mask_to_counts, mask_to_rle, polygon_to_mask, rle_to_mask, string_to_counts

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


def _random_masks(rng: np.random.Generator):
    for t in range(150):
        height, width = (int(v) for v in rng.integers(1, 60, size=2))
        if t % 3 == 0:
            mask = rng.random((height, width)) < rng.random()
        else:  # blobs: long runs, large counts
            mask = np.zeros((height, width), bool)
            y, x = rng.integers(0, height), rng.integers(0, width)
            mask[y : y + rng.integers(1, 40), x : x + rng.integers(1, 40)] = True
        yield mask
    yield np.zeros((40, 50), bool)
    yield np.ones((40, 50), bool)
    yield np.ones((300, 300), bool)  # runs too long for one 5-bit group


def test_rle_encoding_matches_pycocotools():
    rng = np.random.default_rng(0)
    for mask in _random_masks(rng):
        reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        ours = mask_to_rle(mask)
        assert ours["size"] == list(reference["size"])
        assert ours["counts"] == reference["counts"].decode("ascii")
        assert np.array_equal(rle_to_mask(ours), mask)
        assert np.array_equal(coco_mask.decode({"size": ours["size"], "counts": ours["counts"]}), mask)


def test_uncompressed_rle_decodes_like_pycocotools():
    rng = np.random.default_rng(1)
    for mask in list(_random_masks(rng))[:40]:
        uncompressed = {"size": list(mask.shape), "counts": mask_to_counts(mask)}
        assert np.array_equal(rle_to_mask(uncompressed), mask)
        compressed = coco_mask.frPyObjects(uncompressed, *mask.shape)
        assert np.array_equal(coco_mask.decode(compressed).astype(bool), mask)


def test_malformed_rle_raises():
    with pytest.raises(ValueError, match="expected 4x4"):
        rle_to_mask({"size": [4, 4], "counts": [3, 2]})
    with pytest.raises(ValueError, match="ends inside a run"):
        string_to_counts("0P")  # 'P' sets the continuation bit and nothing follows


def test_polygon_rasterisation_is_the_pixel_centre_rule():
    rng = np.random.default_rng(2)
    height, width = 50, 70
    ys, xs = np.mgrid[0:height, 0:width]
    centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
    for _ in range(60):
        points = rng.uniform(-10, 80, size=(int(rng.integers(3, 10)), 2))  # self-intersecting, partly outside
        expected = Path(points).contains_points(centres).reshape(height, width)  # even-odd
        assert np.array_equal(polygon_to_mask([points.ravel().tolist()], height, width), expected)
    square = polygon_to_mask([[0, 0, 10, 0, 10, 10, 0, 10]], 12, 12)
    assert square.sum() == 100 and square[:10, :10].all()


def test_polygons_agree_with_pycocotools():
    rng = np.random.default_rng(3)
    height, width = 80, 80
    ious = []
    for _ in range(120):
        centre, radius = rng.uniform(30, 50, size=2), rng.uniform(10, 25)
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(5, 10))))
        if (
            np.max(np.diff(np.r_[angles, angles[0] + 2 * np.pi])) > 2.2
        ):  # keep polygons fat: thin slivers measure rounding, not agreement
            continue
        rad = radius * rng.uniform(0.8, 1.0, size=len(angles))
        polygon = (
            np.stack([centre[0] + rad * np.cos(angles), centre[1] + rad * np.sin(angles)], 1).ravel().tolist()
        )
        reference = coco_mask.decode(coco_mask.frPyObjects([polygon], height, width))[..., 0].astype(bool)
        ours = polygon_to_mask([polygon], height, width)
        ious.append((ours & reference).sum() / (ours | reference).sum())
    assert len(ious) > 20
    assert np.mean(ious) > 0.97 and np.min(ious) > 0.9
