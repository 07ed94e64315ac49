"""coco_evaluate against pycocotools on random datasets, overridden Params, and bad input."""

import copy
import json

import numpy as np
import pytest

from visionzoo.metrics import coco_evaluate
from visionzoo.metrics.coco import SUMMARY_NAMES, no_ground_truth_note


def assert_same_as_pycocotools(ours, ref):
    stats = np.array([ours[name] for name in SUMMARY_NAMES])
    np.testing.assert_allclose(stats, ref.stats, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours["precision"], ref.eval["precision"])
    np.testing.assert_array_equal(ours["recall"], ref.eval["recall"])
    np.testing.assert_array_equal(ours["scores"], ref.eval["scores"])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("variant", ["plain", "ties", "integer", "degenerate"])
def test_equals_pycocotools_on_random_datasets(seed, variant, make_coco, reference_eval):
    """Degenerate: boxes with w < 0 or h <= 0 (IoU 0, area outside every range) and +-inf scores."""
    gt, dets = make_coco(
        seed, ties=variant == "ties", integer=variant == "integer", degenerate=variant == "degenerate"
    )
    ref = reference_eval(gt, dets)
    ours = coco_evaluate(gt, dets)
    assert_same_as_pycocotools(ours, ref)
    assert ours["num_dropped_detections"] == sum(d["category_id"] == 999 for d in dets)
    assert ours["AP"] > 0.05  # the dataset is not degenerate


@pytest.mark.parametrize(
    "overrides",
    [
        {"iou_thresholds": [0.3, 0.5, 0.62, 0.75, 1.0]},
        {"max_dets": [1, 5, 20]},
        {"max_dets": [2, 10, 100, 300]},
        {"area_ranges": [[0, 1e10], [0, 400], [400, 5000], [5000, 1e10]]},
        {"iou_thresholds": [0.1, 0.55], "max_dets": [3, 7, 100], "rec_thresholds": np.linspace(0, 1, 11)},
    ],
    ids=["iou", "maxdets3", "maxdets4", "areas", "mixed"],
)
def test_overridden_params_equal_pycocotools(overrides, make_coco, reference_eval):
    gt, dets = make_coco(11, ties=True)
    names = {
        "iou_thresholds": "iouThrs",
        "max_dets": "maxDets",
        "area_ranges": "areaRng",
        "rec_thresholds": "recThrs",
    }
    ref_params = {
        names[k]: np.array(v, dtype=float) if k != "max_dets" else list(v) for k, v in overrides.items()
    }
    if "area_ranges" in ref_params:
        ref_params["areaRng"] = ref_params["areaRng"].tolist()
    ref = reference_eval(gt, dets, **ref_params)
    ours = coco_evaluate(gt, dets, **overrides)
    assert_same_as_pycocotools(ours, ref)


def test_named_area_ranges_select_by_label(make_coco, reference_eval):
    gt, dets = make_coco(5)
    ranges = {"all": (0, 1e10), "small": (0, 900), "medium": (900, 10000), "large": (10000, 1e10)}
    ours = coco_evaluate(gt, dets, area_ranges=ranges)
    ref = reference_eval(gt, dets, areaRng=[list(v) for v in ranges.values()])
    assert_same_as_pycocotools(ours, ref)
    only_all = coco_evaluate(gt, dets, area_ranges={"all": (0, 1e10)})
    assert only_all["AP"] == ours["AP"] and only_all["APs"] == -1 and only_all["ARl"] == -1


def test_json_files_give_the_same_numbers_as_dicts(tmp_path, make_coco):
    gt, dets = make_coco(3)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    from_files = coco_evaluate(tmp_path / "gt.json", str(tmp_path / "dt.json"))
    from_dicts = coco_evaluate(gt, dets)
    assert {k: from_files[k] for k in SUMMARY_NAMES} == {k: from_dicts[k] for k in SUMMARY_NAMES}


def test_per_category_ap_is_the_mean_of_its_precision_and_names_it(make_coco):
    gt, dets = make_coco(2)
    out = coco_evaluate(gt, dets)
    cats = sorted(c["id"] for c in gt["categories"])
    assert list(out["per_category"]) == cats
    for k, cid in enumerate(cats):
        p = out["precision"][:, :, k, 0, -1]
        expected = p[p > -1].mean() if (p > -1).any() else -1.0
        assert out["per_category"][cid]["AP"] == pytest.approx(expected, abs=1e-12)
        assert out["per_category"][cid]["name"] == f"class{cid}"
    # the last declared category has no ground truth at all
    assert out["per_category"][cats[-1]]["AP"] == -1


def test_empty_detections_give_zero_where_there_is_ground_truth(make_coco):
    gt, _ = make_coco(1)
    out = coco_evaluate(gt, [])
    assert out["AP"] == 0 and out["AR100"] == 0 and out["AP50"] == 0
    has_gt = {a["category_id"] for a in gt["annotations"] if not a["iscrowd"]}
    for cid, row in out["per_category"].items():
        assert row["AP"] == (0.0 if cid in has_gt else -1.0)


def test_no_ground_truth_anywhere_gives_minus_one(make_coco):
    gt, dets = make_coco(1)
    gt = dict(gt, annotations=[])
    out = coco_evaluate(gt, dets)
    assert all(out[name] == -1 for name in SUMMARY_NAMES)


def test_annotation_id_zero_counts_like_any_id(make_coco, reference_eval):
    """pycocotools never counts a match with annotation id 0; we do (and equal it with ids >= 1)."""
    gt, dets = make_coco(4)
    shifted = copy.deepcopy(gt)
    for a in shifted["annotations"]:
        a["id"] -= 1  # ids 0 .. G-1
    ours = coco_evaluate(shifted, dets)
    assert_same_as_pycocotools(ours, reference_eval(gt, dets))


def test_perfect_detections_score_one(make_coco):
    gt, _ = make_coco(6, crowd_rate=0.0)
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
    ]
    out = coco_evaluate(gt, dets, max_dets=(1, 10, 1000))
    assert out["AP50"] == 1.0 and out["AP75"] == 1.0 and out["AR10"] <= 1.0


def test_detection_for_an_unknown_image_raises_naming_it(make_coco):
    gt, dets = make_coco(0)
    dets = dets + [
        {"image_id": 123456, "category_id": gt["categories"][0]["id"], "bbox": [1, 2, 3, 4], "score": 0.5}
    ]
    with pytest.raises(ValueError, match=r"result \d+ has image_id 123456, absent from the ground truth"):
        coco_evaluate(gt, dets)


def test_nan_score_and_bad_boxes_raise(make_coco):
    gt, dets = make_coco(0)
    bad = copy.deepcopy(dets)
    bad[3]["score"] = float("nan")
    with pytest.raises(ValueError, match="result 3 has a NaN score"):
        coco_evaluate(gt, bad)
    bad = copy.deepcopy(dets)
    bad[2]["bbox"] = [0, 0, float("inf"), 3]
    with pytest.raises(ValueError, match="result 2 has a non-finite bbox"):
        coco_evaluate(gt, bad)
    bad = copy.deepcopy(dets)
    bad[1]["bbox"] = [0, 0, 3]
    with pytest.raises(ValueError, match="result 1: bbox must be 4 numbers"):
        coco_evaluate(gt, bad)
    bad = copy.deepcopy(dets)
    del bad[4]["score"]
    with pytest.raises(ValueError, match="result 4 has no 'score'"):
        coco_evaluate(gt, bad)


def test_bad_ground_truth_raises(make_coco):
    gt, dets = make_coco(0)
    with pytest.raises(ValueError, match="no 'categories'"):
        coco_evaluate({"images": gt["images"], "annotations": []}, dets)
    broken = copy.deepcopy(gt)
    broken["annotations"][2]["image_id"] = -5
    with pytest.raises(ValueError, match="annotation 2 has image_id -5"):
        coco_evaluate(broken, dets)
    broken = copy.deepcopy(gt)
    broken["annotations"][1]["id"] = broken["annotations"][0]["id"]
    with pytest.raises(ValueError, match="used more than once"):
        coco_evaluate(broken, dets)


def test_malformed_json_names_file_and_position(tmp_path, make_coco):
    gt, dets = make_coco(0)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    text = json.dumps(dets[:3], indent=1)
    (tmp_path / "dt.json").write_text(text[:-40] + "}{" + text[-40:])
    with pytest.raises(ValueError, match=r"dt\.json: malformed JSON at line \d+ column \d+"):
        coco_evaluate(tmp_path / "gt.json", tmp_path / "dt.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        coco_evaluate(tmp_path / "gt.json", tmp_path / "missing.json")


def test_bad_params_raise():
    gt = {"images": [], "annotations": [], "categories": []}
    with pytest.raises(ValueError, match="iou_type"):
        coco_evaluate(gt, [], iou_type="keypoints")
    with pytest.raises(ValueError, match="max_dets needs at least three"):
        coco_evaluate(gt, [], max_dets=(10, 100))
    with pytest.raises(ValueError, match="strictly increasing"):
        coco_evaluate(gt, [], iou_thresholds=[0.5, 0.5])


def test_iscrowd_as_bools_gives_the_same_numbers_as_ints(make_coco):
    gt, dets = make_coco(0)
    as_bools = copy.deepcopy(gt)
    for a in as_bools["annotations"]:
        a["iscrowd"] = bool(a["iscrowd"])
    assert any(a["iscrowd"] for a in as_bools["annotations"])
    ours, theirs = coco_evaluate(as_bools, dets), coco_evaluate(gt, dets)
    np.testing.assert_array_equal(ours["precision"], theirs["precision"])


@pytest.mark.parametrize("value", ["0", "false", None, 2, 0.5, [0]])
def test_iscrowd_other_than_zero_or_one_raises_naming_the_annotation(make_coco, value):
    gt, dets = make_coco(0)
    gt["annotations"][3]["iscrowd"] = value
    ann_id = gt["annotations"][3]["id"]
    with pytest.raises(ValueError, match=rf"annotation 3 \(id {ann_id}\): iscrowd must be 0 or 1, got"):
        coco_evaluate(gt, dets)


@pytest.mark.parametrize(
    "where, field, value, message",
    [
        ("annotations", "id", None, r"annotation 2: id must be a number or a string, got None"),
        ("annotations", "image_id", [7], r"annotation 2: image_id must be a number or a string, got \[7\]"),
        ("annotations", "category_id", {"id": 1}, r"annotation 2: category_id must be a number or a string"),
        ("annotations", "image_id", "7", r"annotation 2: image_id '7' mixes strings and numbers \(entry 0"),
        ("images", "id", None, r"image 2: id must be a number or a string, got None"),
        ("categories", "id", [1], r"category 2: id must be a number or a string, got \[1\]"),
    ],
)
def test_bad_ground_truth_ids_raise_naming_the_entry(make_coco, where, field, value, message):
    gt, dets = make_coco(0)
    gt[where][2][field] = value
    with pytest.raises(ValueError, match=r"ground truth: " + message):
        coco_evaluate(gt, dets)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("category_id", None, r"result 4: category_id must be a number or a string, got None"),
        ("image_id", [0], r"result 4: image_id must be a number or a string, got \[0\]"),
        ("score", None, r"result 4: score must be a number, got None"),
        ("score", "0.5", r"result 4: score must be a number, got '0.5'"),
        ("bbox", [1, None, 3, 4], r"result 4: bbox must be 4 numbers, got \[1, None, 3, 4\]"),
        ("bbox", [1, "2", 3, 4], r"result 4: bbox must be 4 numbers"),
    ],
)
def test_bad_result_values_raise_naming_the_result(make_coco, field, value, message):
    gt, dets = make_coco(0)
    dets[4][field] = value
    with pytest.raises(ValueError, match=r"detections: " + message):
        coco_evaluate(gt, dets)


def test_bad_ground_truth_box_and_area_name_the_annotation(make_coco):
    gt, dets = make_coco(0)
    broken = copy.deepcopy(gt)
    broken["annotations"][1]["bbox"] = [1, 2, None, 4]
    with pytest.raises(ValueError, match=r"annotation 1: bbox must be 4 numbers, got \[1, 2, None, 4\]"):
        coco_evaluate(broken, dets)
    broken = copy.deepcopy(gt)
    broken["annotations"][1]["area"] = "400"
    with pytest.raises(ValueError, match=r"annotation 1: area must be a number, got '400'"):
        coco_evaluate(broken, dets)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_ground_truth_box_raises_naming_the_annotation(make_coco, value):
    """A NaN in a ground-truth bbox was read silently and gave other numbers than pycocotools, whose C IoU lets a NaN
    overlap win the match; results with such a box were already refused, as CocoDetection refuses it."""
    gt, dets = make_coco(0)
    gt["annotations"][1]["bbox"][2] = value
    with pytest.raises(ValueError, match=r"ground truth: annotation 1 has a non-finite bbox \[.*(nan|inf)"):
        coco_evaluate(gt, dets)


def test_a_non_finite_ground_truth_box_or_area_is_refused_naming_the_annotation(make_coco):
    """A result's NaN score or infinite box was refused, but the same in the ground truth was scored: an infinite box
    matched nothing (AP 0 for its category, without a word) and a NaN area fell in no area range as the file said
    nothing of it. Both are refused, naming the annotation, as a result's are."""
    gt, dets = make_coco(0)
    broken = copy.deepcopy(gt)
    broken["annotations"][1]["bbox"] = [1, 2, float("inf"), 4]
    with pytest.raises(ValueError, match=r"annotation 1 has a non-finite bbox \[1.0, 2.0, inf, 4.0\]"):
        coco_evaluate(broken, dets)
    broken = copy.deepcopy(gt)
    broken["annotations"][2]["area"] = float("nan")
    with pytest.raises(ValueError, match=r"annotation 2 has a non-finite area nan"):
        coco_evaluate(broken, dets)


def test_the_note_of_nothing_to_score_needs_every_figure_at_minus_one():
    """train, eval and coco-eval share this note; one figure scored, or none at all, is no such case."""
    assert no_ground_truth_note([-1.0] * 12, "gt.json").startswith("gt.json holds no ground-truth objects to score")
    assert no_ground_truth_note([-1.0, 0.0], "the val split") is None
    assert no_ground_truth_note([], "the val split") is None
