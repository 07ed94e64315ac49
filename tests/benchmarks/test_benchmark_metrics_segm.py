"""metrics.py --only segm: coco_evaluate's mask mAP from JSON files beside pycocotools' (and faster-coco-eval's where
installed), its rows filed among the results file's rows of the other parts."""

import importlib.util
import json
import sys

import pytest
from benchmark_helpers import load

pytest.importorskip("pycocotools")


def test_segm_data_is_seeded_masks_as_compressed_rle_with_their_area():
    from pycocotools import mask as mask_utils

    module = load("metrics")
    gt, dets = module.make_coco_segm(12, 200)
    assert (gt, dets) == module.make_coco_segm(12, 200)
    assert len(dets) == 200 and len({a["category_id"] for a in gt["annotations"]}) > 1
    for a in gt["annotations"]:
        assert isinstance(a["segmentation"]["counts"], str) and a["segmentation"]["size"] == [480, 640]
        assert a["area"] == mask_utils.area(a["segmentation"]) > 0
    assert all(set(d) == {"image_id", "category_id", "segmentation", "score"} for d in dets)  # no box to take an area from
    assert sum(mask_utils.area(d["segmentation"]) > 0 for d in dets) > 150


def test_only_segm_measures_equal_numbers_and_keeps_the_other_parts_rows(monkeypatch, tmp_path):
    module = load("metrics")
    measure, sizes = module.segm_rows, []

    def tiny(images, dets, repeats, slow_repeats):
        sizes.append((images, dets, repeats, slow_repeats))
        return measure(10, 150, repeats, slow_repeats)

    monkeypatch.setattr(module, "segm_rows", tiny)
    for other in ("coco_rows", "mean_ap_rows", "frechet_rows"):
        monkeypatch.setattr(module, other, lambda *args, other=other: pytest.fail(f"--only segm ran {other}"))
    out = tmp_path / "metrics.json"
    earlier = [{"part": part, "quick": True, "clock": "wall", "earlier": True} for part in ("coco", "mean_ap", "frechet")]
    out.write_text(json.dumps({"rows": earlier}))
    monkeypatch.setattr(sys, "argv", ["metrics.py", "--only", "segm", "--quick", "--out", str(out)])
    module.main()
    assert sizes == [(1000, 20_000, 1, 1)]
    rows = json.loads(out.read_text())["rows"]
    segm = [row for row in rows if row["part"] == "segm"]
    assert [row for row in rows if row["part"] != "segm"] == earlier
    assert [row["part"] for row in rows] == ["coco", *["segm"] * len(segm), "mean_ap", "frechet"]
    faster = importlib.util.find_spec("faster_coco_eval") is not None
    assert [row["reference"] for row in segm] == ["faster-coco-eval"] * faster + ["pycocotools"]
    for row in segm:
        assert row["equal"] and row["max_difference"] <= 1e-9 and row["quick"] and row["clock"] == "wall"
        assert row["what"] == "coco_evaluate segm (12 numbers)" and "10 images / 150 dets" in row["size"]
        assert row["reference_ms"] > 0 and row["visionzoo_ms"] > 0
