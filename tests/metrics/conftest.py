"""Seeded random COCO datasets with the cases that trip evaluators up."""

import copy
import io
from contextlib import redirect_stdout

import numpy as np
import pytest


def random_coco(
    seed: int,
    n_images: int = 40,
    n_cats: int = 5,
    ties: bool = False,
    integer: bool = False,
    crowd_rate: float = 0.1,
    crowded_group: int = 130,
    degenerate: bool = False,
) -> tuple[dict, list]:
    """(ground truth dict, result list) with crowd boxes, images without ground truth or without
    detections, a declared category without ground truth, detections of an undeclared category,
    exact duplicates of ground-truth boxes, score ties (``ties``), IoU ties (``integer`` boxes) and
    one (image, category) with ``crowded_group`` detections; ``degenerate`` adds detections with
    negative or zero width/height and infinite scores."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(int(c) for c in rng.choice(np.arange(1, 40), n_cats, replace=False))
    image_ids = [int(7 + 3 * i) for i in rng.permutation(n_images)]
    images = [{"id": i, "width": 400, "height": 300} for i in image_ids]
    anns, dets = [], []

    def box():
        w, h = np.exp(rng.uniform(np.log(2), np.log(250), 2))
        x, y = rng.uniform(0, 400 - min(w, 399)), rng.uniform(0, 300 - min(h, 299))
        b = [x, y, w, h]
        return [float(round(v)) if integer else float(v) for v in b]

    def score():
        s = rng.random()
        return float(round(s, 1)) if ties else float(s)

    for img in image_ids:
        n_gt = 0 if rng.random() < 0.2 else int(rng.integers(1, 9))
        for _ in range(n_gt):
            b = box()
            area = b[2] * b[3] * (1.0 if rng.random() < 0.3 else float(rng.uniform(0.3, 1.0)))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img,
                    "category_id": int(rng.choice(cat_ids[:-1])),
                    "bbox": b,
                    "area": area,
                    "iscrowd": int(rng.random() < crowd_rate),
                }
            )
        if rng.random() < 0.15:
            continue  # an image without detections
        mine = [a for a in anns if a["image_id"] == img]
        for a in mine:
            for _ in range(int(rng.integers(0, 3))):
                if rng.random() < 0.2:
                    b = list(a["bbox"])  # an exact duplicate: IoU 1
                else:
                    jitter = rng.normal(0, 0.12, 4) * np.array(a["bbox"])[[2, 3, 2, 3]]
                    b = [float(v) for v in np.array(a["bbox"]) + jitter]
                    b[2], b[3] = abs(b[2]) + 0.5, abs(b[3]) + 0.5
                    if integer:
                        b = [float(round(v)) for v in b]
                cat = a["category_id"] if rng.random() < 0.85 else int(rng.choice(cat_ids))
                dets.append({"image_id": img, "category_id": cat, "bbox": b, "score": score()})
        for _ in range(int(rng.integers(0, 6))):
            cat = int(rng.choice(cat_ids)) if rng.random() < 0.95 else 999  # 999: not declared
            dets.append({"image_id": img, "category_id": cat, "bbox": box(), "score": score()})
    # one crowded (image, category): more than 100 detections around its ground truth
    target = next(a for a in anns if not a["iscrowd"])
    for _ in range(crowded_group):
        jitter = rng.normal(0, 0.3, 4) * np.array(target["bbox"])[[2, 3, 2, 3]]
        b = [float(v) for v in np.array(target["bbox"]) + jitter]
        b[2], b[3] = abs(b[2]) + 0.5, abs(b[3]) + 0.5
        dets.append(
            {
                "image_id": target["image_id"],
                "category_id": target["category_id"],
                "bbox": b,
                "score": score(),
            }
        )
    if degenerate:
        for d in dets[:: max(len(dets) // 25, 1)]:
            d["bbox"] = [
                d["bbox"][0],
                d["bbox"][1],
                -d["bbox"][2],
                d["bbox"][3] * float(rng.choice([1, 0, -1])),
            ]
        dets[3]["score"], dets[7]["score"] = float("inf"), float("-inf")
    order = rng.permutation(len(dets))
    dets = [dets[i] for i in order]
    categories = [{"id": c, "name": f"class{c}"} for c in cat_ids]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def pycocotools_eval(gt: dict, dets: list, iou_type: str = "bbox", **overrides):
    """pycocotools' COCOeval after evaluate/accumulate/summarize, on copies of the inputs.

    overrides: iouThrs, maxDets, areaRng, recThrs for ``Params``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        res = coco.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco, res, iou_type)
        for key, value in overrides.items():
            setattr(ev.params, key, value)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.fixture
def make_coco():
    return random_coco


@pytest.fixture
def reference_eval():
    return pycocotools_eval
