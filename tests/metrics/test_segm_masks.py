"""Mask encodings, polygon rasterisation and mask IoU against pycocotools' mask API."""

import copy

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from visionzoo.metrics import coco_evaluate
from visionzoo.metrics._masks import (
    decode_counts_string,
    encode_counts_string,
    mask_iou,
    rle_area,
    rle_boxes,
    rle_from_mask,
    rle_from_polygons,
    rle_to_mask,
    to_rle,
)
from visionzoo.metrics.coco import SUMMARY_NAMES

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def random_masks(rng, n, h, w):
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for m in masks:
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.integers(0, w), rng.integers(0, h)
            m[y0 : y0 + rng.integers(1, h), x0 : x0 + rng.integers(1, w)] = 1
        m[rng.random((h, w)) < 0.05] ^= 1
    masks[0] = 0  # an empty mask
    return masks


def random_polygon(rng, h, w):
    cx, cy = rng.uniform(-5, w + 5), rng.uniform(-5, h + 5)
    n = rng.integers(3, 12)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = rng.uniform(1, max(h, w) / 2, n)
    xy = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
    if rng.random() < 0.3:
        xy = np.round(xy * 2) / 2  # on the half-pixel grid: exact boundary cases
    return xy.ravel().tolist()


def test_compressed_counts_round_trip_and_match_pycocotools():
    rng = np.random.default_rng(0)
    masks = random_masks(rng, 12, 23, 31)
    for m in masks:
        ref = mask_utils.encode(np.asfortranarray(m))
        ours = to_rle(ref, None, None)
        np.testing.assert_array_equal(rle_to_mask(ours), m.astype(bool))
        np.testing.assert_array_equal(rle_to_mask(rle_from_mask(m)), m.astype(bool))
        counts = decode_counts_string(ref["counts"])
        assert encode_counts_string(counts) == ref["counts"].decode()
        assert rle_area([ours])[0] == mask_utils.area(ref)
        np.testing.assert_array_equal(rle_boxes([ours])[0], mask_utils.toBbox(ref))


def test_uncompressed_rle_is_read():
    m = np.zeros((4, 5), dtype=np.uint8)
    m[1:3, 2:4] = 1
    counts = [9, 2, 2, 2, 5]  # column-major runs: background first
    np.testing.assert_array_equal(
        rle_to_mask(to_rle({"size": [4, 5], "counts": counts}, None, None)), m.astype(bool)
    )
    with pytest.raises(ValueError, match="sum to 19"):
        to_rle({"size": [4, 5], "counts": [9, 2, 2, 2, 4]}, None, None)


@pytest.mark.parametrize("seed", range(3))
def test_polygons_rasterise_like_pycocotools(seed):
    rng = np.random.default_rng(seed)
    h, w = 37, 52
    for _ in range(40):
        polys = [random_polygon(rng, h, w) for _ in range(rng.integers(1, 3))]
        ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(bool)
        np.testing.assert_array_equal(rle_to_mask(rle_from_polygons(polys, h, w)), ref)


def test_mask_iou_equals_pycocotools_including_crowd():
    rng = np.random.default_rng(1)
    dets = [mask_utils.encode(np.asfortranarray(m)) for m in random_masks(rng, 7, 20, 24)]
    gts = [mask_utils.encode(np.asfortranarray(m)) for m in random_masks(rng, 5, 20, 24)]
    crowd = [0, 1, 0, 1, 0]
    np.testing.assert_array_equal(mask_iou(dets, gts, crowd), mask_utils.iou(dets, gts, crowd))
    with pytest.raises(ValueError, match="mask sizes differ"):
        mask_iou(dets[:1], [mask_utils.encode(np.asfortranarray(np.ones((3, 3), np.uint8)))])


def test_segm_evaluation_equals_pycocotools(make_coco, reference_eval):
    """Ground truth as polygons (crowd as uncompressed RLE), results as compressed RLE."""
    rng = np.random.default_rng(3)
    gt, dets = make_coco(8, n_images=25, crowded_group=20)
    h, w = 300, 400
    for a in gt["annotations"]:
        x, y, bw, bh = a["bbox"]
        if a["iscrowd"]:
            m = np.zeros((h, w), np.uint8)
            m[int(y) : int(y + bh) + 1, int(x) : int(x + bw) + 1] = 1
            enc = mask_utils.encode(np.asfortranarray(m))
            a["segmentation"] = {"size": [h, w], "counts": decode_counts_string(enc["counts"]).tolist()}
        else:
            a["segmentation"] = [[x, y, x + bw, y + bh * 0.3, x + bw * 0.7, y + bh, x, y + bh]]
        a.pop("area")  # pycocotools needs it: set below from the mask, ours defaults to the mask area
    for a in gt["annotations"]:
        ref_rle = (
            mask_utils.merge(mask_utils.frPyObjects(copy.deepcopy(a["segmentation"]), h, w))
            if not a["iscrowd"]
            else mask_utils.frPyObjects(copy.deepcopy(a["segmentation"]), h, w)
        )
        a["area"] = float(mask_utils.area(ref_rle))
    results = []
    for d in dets:
        x, y, bw, bh = d["bbox"]
        m = np.zeros((h, w), np.uint8)
        m[max(int(y), 0) : int(y + bh) + 1, max(int(x), 0) : int(x + bw) + 1] = 1
        m[rng.random((h, w)) < 0.002] = 0
        enc = mask_utils.encode(np.asfortranarray(m))
        enc["counts"] = enc["counts"].decode()
        results.append(
            {
                "image_id": d["image_id"],
                "category_id": d["category_id"],
                "segmentation": enc,
                "score": d["score"],
            }
        )
    ref = reference_eval(gt, results, iou_type="segm")
    ours = coco_evaluate(gt, results, iou_type="segm")
    np.testing.assert_allclose([ours[n] for n in SUMMARY_NAMES], ref.stats, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours["precision"], ref.eval["precision"])
    assert ours["AP50"] > 0.1
