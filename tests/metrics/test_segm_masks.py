"""Mask IoU and ``segm`` evaluation against pycocotools (the mask codec itself: tests/data/test_masks.py)."""

import copy
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from visionzoo.data.masks import rle_from_mask, rle_from_polygons, string_to_counts
from visionzoo.metrics import coco_evaluate, mask_iou
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


def test_mask_iou_equals_pycocotools_including_crowd():
    rng = np.random.default_rng(1)
    dets = [mask_utils.encode(np.asfortranarray(m)) for m in random_masks(rng, 7, 20, 24)]
    gts = [mask_utils.encode(np.asfortranarray(m)) for m in random_masks(rng, 5, 20, 24)]
    crowd = [0, 1, 0, 1, 0]
    np.testing.assert_array_equal(mask_iou(dets, gts, crowd), mask_utils.iou(dets, gts, crowd))
    with pytest.raises(ValueError, match="mask sizes differ"):
        mask_iou(dets[:1], [mask_utils.encode(np.asfortranarray(np.ones((3, 3), np.uint8)))])


def _scattered_masks(rng, n, h, w):
    """Small boxes anywhere (many pairs with disjoint bounding boxes), some speckled so that runs wrap
    into the next column, one empty and one full mask."""
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for m in masks:
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        m[y0 : y0 + rng.integers(1, max(h // 3, 2)), x0 : x0 + rng.integers(1, max(w // 3, 2))] = 1
        if rng.random() < 0.3:
            m[rng.random((h, w)) < 0.1] ^= 1
    masks[1] = 0
    masks[2] = 1
    return masks


@pytest.mark.parametrize("height, width", [(23, 31), (1, 40), (37, 1)])
def test_mask_iou_of_many_pairs_equals_pycocotools_bit_for_bit(height, width):
    rng = np.random.default_rng(height * 100 + width)
    dets = [mask_utils.encode(np.asfortranarray(m)) for m in _scattered_masks(rng, 60, height, width)]
    gts = [mask_utils.encode(np.asfortranarray(m)) for m in _scattered_masks(rng, 40, height, width)]
    crowd = rng.random(40) < 0.3
    expected = mask_utils.iou(dets, gts, crowd.astype(np.uint8))
    ours = mask_iou(dets, gts, crowd)
    assert ours.dtype == np.float64 and ours.shape == (60, 40)
    np.testing.assert_array_equal(ours, expected)
    disjoint = mask_utils.toBbox(dets)[:, None, 0] >= (mask_utils.toBbox(gts)[None, :, [0, 2]].sum(-1))
    assert (expected == 0).sum() > 100 and (expected > 0).sum() > 100 and disjoint.any()
    assert (ours[:, crowd] != mask_iou(dets, gts)[:, crowd]).any()  # the crowd rule is applied
    assert not ours[1].any() and not ours[:, 1].any()  # empty masks
    np.testing.assert_array_equal(mask_iou(dets, gts[:0]), np.zeros((60, 0)))
    np.testing.assert_array_equal(mask_iou(dets[:0], gts, crowd), np.zeros((0, 40)))


def test_mask_iou_of_polygons_arrays_and_dicts_equals_pycocotools():
    rng = np.random.default_rng(2)
    h, w = 30, 40
    polygons = []
    for _ in range(6):
        centre, angles = rng.uniform(12, 28, 2), np.sort(rng.uniform(0, 2 * np.pi, 7))
        radius = rng.uniform(4, 12, 7)
        polygons.append(
            (centre + radius[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)).ravel().tolist()
        )
    reference = [mask_utils.merge(mask_utils.frPyObjects([p], h, w)) for p in polygons]
    expected = mask_utils.iou(reference[:3], reference[3:], [0, 1, 0])
    assert (expected > 0).sum() >= 5  # overlapping pairs, not only zeros
    runs = [rle_from_polygons([p], h, w) for p in polygons]
    arrays = [mask_utils.decode(r) for r in reference]
    np.testing.assert_array_equal(mask_iou(runs[:3], runs[3:], [0, 1, 0]), expected)
    np.testing.assert_array_equal(mask_iou(arrays[:3], reference[3:], [0, 1, 0]), expected)
    np.testing.assert_array_equal(
        mask_iou([rle_from_mask(a) for a in arrays[:3]], runs[3:], [0, 1, 0]), expected
    )


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
            a["segmentation"] = {"size": [h, w], "counts": string_to_counts(enc["counts"])}
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


def test_soft_float_masks_are_refused_not_counted_as_foreground_wherever_above_zero():
    # before: a probability mask (0.01 outside the object, 0.99 inside) had IoU 1.0 with the whole image
    inside = np.zeros((6, 8), bool)
    inside[1:4, 2:6] = True
    soft = np.where(inside, 0.99, 0.01).astype(np.float32)
    with pytest.raises(ValueError, match=r"detection 0: a float mask must hold only 0 and 1.*mask > 0\.5"):
        mask_iou([soft], [np.ones((6, 8), bool)])
    expected = inside.sum() / inside.size
    assert mask_iou([(soft > 0.5).astype(np.float32)], [np.ones((6, 8), bool)])[0, 0] == pytest.approx(expected)


def test_iscrowd_of_another_length_than_the_ground_truth_is_named():
    # before: "cannot reshape array of size 1 into shape (2,)"
    mask = np.zeros((4, 4), bool)
    mask[:2] = True
    with pytest.raises(ValueError, match="iscrowd needs one flag per ground truth: 2 ground truths, 1 flags"):
        mask_iou([mask], [mask, mask], [0])
    assert mask_iou([mask], [mask, ~mask], [1, 0]).tolist() == [[1.0, 0.0]]


def _box_rle(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    enc = mask_utils.encode(np.asfortranarray(m))
    enc["counts"] = enc["counts"].decode()
    return enc


def test_segm_results_with_boxes_take_their_area_from_the_box_as_pycocotools(reference_eval):
    # before: a false positive with a 20x20 mask but a 40x40 bbox (Detectron2 and MMDetection write
    # both) was ignored in the medium range, giving APm 1.0 where pycocotools gives 0.5
    h, w = 100, 120
    gt = {
        "images": [{"id": 1, "height": h, "width": w}],
        "categories": [{"id": 1}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": _box_rle(h, w, 10, 10, 50, 50),
             "area": 1600.0, "bbox": [10, 10, 40, 40], "iscrowd": 0}
        ],
    }
    dets = [
        {"image_id": 1, "category_id": 1, "segmentation": _box_rle(h, w, 80, 60, 100, 80),
         "bbox": [0, 0, 40, 40], "score": 0.9},
        {"image_id": 1, "category_id": 1, "segmentation": _box_rle(h, w, 10, 10, 50, 50),
         "bbox": [10, 10, 40, 40], "score": 0.5},
    ]
    ref = reference_eval(gt, dets, iou_type="segm")
    ours = coco_evaluate(gt, dets, iou_type="segm")
    np.testing.assert_allclose([ours[n] for n in SUMMARY_NAMES], ref.stats, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours["precision"], ref.eval["precision"])
    assert ours["APm"] == pytest.approx(0.5)
    as_arrays = [dict(d, bbox=np.array(d["bbox"], dtype=float)) for d in dets]
    assert coco_evaluate(gt, as_arrays, iou_type="segm")["APm"] == pytest.approx(0.5)
    without_boxes = [{k: v for k, v in d.items() if k != "bbox"} for d in dets]
    assert coco_evaluate(gt, without_boxes, iou_type="segm")["APm"] == pytest.approx(1.0)  # the mask's area
    dets[1].pop("bbox")
    with pytest.raises(ValueError, match=r"result 1 has no 'bbox'"):
        coco_evaluate(gt, dets, iou_type="segm")


def test_a_mask_of_another_size_than_its_image_is_named(tmp_path):
    # before: "mask sizes differ: detection 120x100, ground truth 100x120", naming neither the file nor
    # the result, and only when the mask met a ground truth (else it was evaluated as if it fitted)
    h, w = 100, 120
    gt = {
        "images": [{"id": 1, "height": h, "width": w}, {"id": 2, "height": h, "width": w}],
        "categories": [{"id": 1}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": _box_rle(h, w, 10, 10, 50, 50),
                         "area": 1600.0, "iscrowd": 0}],
    }
    good = {"image_id": 1, "category_id": 1, "segmentation": _box_rle(h, w, 10, 10, 50, 50), "score": 0.9}
    for image_id in (1, 2):
        bad = {"image_id": image_id, "category_id": 1, "segmentation": _box_rle(w, h, 10, 10, 50, 50), "score": 0.8}
        path = tmp_path / "results.json"
        path.write_text(json.dumps([good, bad]))
        with pytest.raises(ValueError, match=rf"results\.json: result 1: mask is 120x100 but image {image_id} is 100x120"):
            coco_evaluate(gt, path, iou_type="segm")
    gt["annotations"][0]["segmentation"] = _box_rle(w, h, 10, 10, 50, 50)
    with pytest.raises(ValueError, match=r"ground truth: annotation 0: mask is 120x100 but image 1 is 100x120"):
        coco_evaluate(gt, [good], iou_type="segm")
    gt["images"][0].pop("height")  # no size to check against: the masks are compared with each other
    with pytest.raises(ValueError, match="mask sizes differ"):
        coco_evaluate(gt, [good], iou_type="segm")


def test_columns_loaded_for_bbox_are_refused_for_segm_by_name():
    # before: TypeError "'NoneType' object is not subscriptable" from the mask IoU
    from visionzoo.metrics.coco import load_detections, load_ground_truth

    h, w = 100, 120
    rle = _box_rle(h, w, 10, 10, 50, 50)
    gt = {"images": [{"id": 1, "height": h, "width": w}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle, "bbox": [10, 10, 40, 40],
                           "area": 1600.0, "iscrowd": 0}]}
    dets = [{"image_id": 1, "category_id": 1, "segmentation": rle, "bbox": [10, 10, 40, 40], "score": 0.9}]
    with pytest.raises(ValueError, match=r"the ground truth has no masks \(loaded for 'bbox'\): load it with "
                                         r"iou_type='segm'"):
        coco_evaluate(load_ground_truth(gt), dets, iou_type="segm")
    ground = load_ground_truth(gt, "segm")
    with pytest.raises(ValueError, match=r"the detections have no masks \(loaded for 'bbox'\)"):
        coco_evaluate(ground, load_detections(dets, ground), iou_type="segm")
    assert coco_evaluate(ground, load_detections(dets, ground, "segm"), iou_type="segm")["AP"] == pytest.approx(1.0)


def test_mask_rcnn_masks_of_shape_n_1_h_w_are_refused_by_name_with_the_fix():
    """torchvision's Mask R-CNN gives masks [N, 1, H, W]: mask_to_rle(output["masks"][i]) ended in "too many values
    to unpack (expected 2)", and mask_iou(output["masks"] > 0.5, ...) in "a mask must be [H, W]" naming no mask."""
    from visionzoo.data.masks import mask_to_rle

    masks = torch.rand(3, 1, 8, 10, generator=torch.Generator().manual_seed(0)) > 0.5
    with pytest.raises(ValueError, match=r"^mask: a mask must be \[H, W\], got shape \(1, 8, 10\); .*\[:, 0\]"):
        mask_to_rle(masks[0])
    with pytest.raises(ValueError, match=r"^detection 0: a mask must be \[H, W\], got shape \(1, 8, 10\)"):
        mask_iou(masks, masks[:, 0])
    reference = mask_utils.encode(np.asfortranarray(masks[0, 0].numpy().astype(np.uint8)))
    assert mask_to_rle(masks[0, 0])["counts"] == reference["counts"].decode()
    np.testing.assert_array_equal(mask_iou(masks[:, 0], masks[:, 0]).diagonal(), [1.0, 1.0, 1.0])


@pytest.mark.parametrize("height, width", [("100", "120"), (100.5, 120), (0, 0)])
def test_an_image_size_that_is_no_whole_number_is_not_held_against_rle_masks(height, width, reference_eval):
    """An image whose height and width were strings ("100") stopped coco-eval --iou-type segm with "annotation 0: mask
    is 100x120 but image 1 is 100x120", where pycocotools, which reads an RLE's own size, evaluates the file; such a
    size is now not checked against (polygons, which need it, still name it)."""
    h, w = 100, 120
    gt = {
        "images": [{"id": 1, "height": height, "width": width}],
        "categories": [{"id": 1}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": _box_rle(h, w, 10, 10, 50, 50),
                         "area": 1600.0, "iscrowd": 0}],
    }
    dets = [{"image_id": 1, "category_id": 1, "segmentation": _box_rle(h, w, 10, 10, 40, 50), "score": 0.9},
            {"image_id": 1, "category_id": 1, "segmentation": _box_rle(h, w, 10, 10, 50, 50), "score": 0.5}]
    ref = reference_eval(gt, dets, iou_type="segm")
    ours = coco_evaluate(gt, dets, iou_type="segm")
    np.testing.assert_allclose([ours[n] for n in SUMMARY_NAMES], ref.stats, rtol=0, atol=1e-12)
    gt["annotations"][0]["segmentation"] = [[10, 10, 50, 10, 50, 50, 10, 50]]
    with pytest.raises(ValueError, match="annotation 0: the image's height and width must be positive integers"):
        coco_evaluate(gt, dets, iou_type="segm")


def test_box_evaluation_of_results_that_carry_only_masks_takes_their_boxes_from_the_masks_as_pycocotools(
    make_coco, reference_eval
):
    """Results of a mask-only model ({image_id, category_id, segmentation, score}, as SOLO-style models write them)
    scored with the default --iou-type bbox stopped at "result 0 has no 'bbox'", where pycocotools' loadRes gives each
    the tight box of its mask (a result's own bbox where it has one) and its mask's area for the area ranges."""
    rng = np.random.default_rng(5)
    gt, dets = make_coco(11, n_images=15, crowded_group=15)
    h, w = 300, 400
    results = []
    for i, d in enumerate(dets):
        x, y, bw, bh = d["bbox"]
        m = np.zeros((h, w), np.uint8)
        m[max(int(y), 0) : int(y + bh) + 1, max(int(x), 0) : int(x + bw) + 1] = 1
        m[rng.random((h, w)) < 0.3] = 0  # the mask's area: well under its box's
        enc = mask_utils.encode(np.asfortranarray(m))
        result = {"image_id": d["image_id"], "category_id": d["category_id"], "segmentation": enc, "score": d["score"]}
        if i % 10 == 5:
            result["bbox"] = d["bbox"]  # pycocotools keeps a result's own box
        if i % 2:
            enc["counts"] = enc["counts"].decode()  # as read from JSON
        results.append(result)
    ref = reference_eval(gt, results, iou_type="bbox")
    ours = coco_evaluate(gt, results, iou_type="bbox")
    np.testing.assert_allclose([ours[n] for n in SUMMARY_NAMES], ref.stats, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours["precision"], ref.eval["precision"])
    assert ours["AP50"] > 0.1
