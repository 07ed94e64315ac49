"""VOC AP against a direct transcription of the devkit (py-faster-rcnn's voc_eval.py), and known cases."""

import numpy as np
import pytest
import torch

from visionzoo.metrics.voc import voc_ap, voc_evaluate


def devkit_voc_ap(rec, prec, use_07_metric=False):
    """The devkit's voc_ap, transcribed."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
    else:
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap


def devkit_voc_eval(dets, gts, classname, ovthresh=0.5, use_07_metric=False):
    """The devkit's voc_eval loop for one class, transcribed (stable sort for score ties)."""
    class_recs = {}
    npos = 0
    for i, g in enumerate(gts):
        keep = np.asarray(g["labels"]) == classname
        bbox = np.asarray(g["boxes"], dtype=float).reshape(-1, 4)[keep]
        difficult = np.asarray(g.get("difficult", np.zeros(len(keep))), dtype=bool)[keep]
        npos = npos + sum(~difficult)
        class_recs[i] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(bbox)}
    image_ids, confidence, BB = [], [], []
    for i, d in enumerate(dets):
        keep = np.asarray(d["labels"]) == classname
        image_ids += [i] * int(keep.sum())
        confidence += list(np.asarray(d["scores"], dtype=float)[keep])
        BB += list(np.asarray(d["boxes"], dtype=float).reshape(-1, 4)[keep])
    confidence = np.array(confidence)
    BB = np.array(BB).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
                - inters
            )
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return devkit_voc_ap(rec, prec, use_07_metric)


KNOWN = [
    # (recall, precision, all-point AP, 11-point AP) worked by hand
    ([0.5, 1.0], [1.0, 0.5], 0.75, 8.5 / 11),
    (
        [0.25, 0.25, 0.5, 0.75],
        [1.0, 0.5, 0.667, 0.75],
        0.25 * 1.0 + 0.25 * 0.75 + 0.25 * 0.75,
        3 / 11 + 5 * 0.75 / 11,
    ),
    ([0.0, 0.0], [0.0, 0.0], 0.0, 0.0),
    (
        [0.3, 0.3, 0.6],
        [1.0, 0.5, 0.4],
        0.3 * 1.0 + 0.3 * 0.4,
        3 / 11 + 3 * 0.4 / 11,
    ),  # recall 0.3 vs the 0.3 step
    ([], [], 0.0, 0.0),
]


@pytest.mark.parametrize(("rec", "prec", "all_point", "eleven"), KNOWN)
def test_voc_ap_known_cases(rec, prec, all_point, eleven):
    rec, prec = np.array(rec, dtype=float), np.array(prec, dtype=float)
    assert voc_ap(rec, prec) == devkit_voc_ap(rec, prec)
    assert voc_ap(rec, prec, use_07_metric=True) == devkit_voc_ap(rec, prec, use_07_metric=True)
    assert voc_ap(rec, prec) == pytest.approx(all_point, abs=1e-12)
    if rec.size:
        assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(eleven, abs=1e-12)


def test_voc07_threshold_is_the_devkits_accumulated_0_3():
    """arange gives 0.30000000000000004 and 0.6000000000000001: recalls of exactly 0.3 and 0.6 miss those steps."""
    rec, prec = np.array([0.3, 0.3, 0.6]), np.array([1.0, 0.5, 0.4])
    # steps 0, 0.1, 0.2 see precision 1; 0.3+, 0.4, 0.5 see 0.4; 0.6+ and above see nothing
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((3 * 1.0 + 3 * 0.4) / 11, abs=1e-15)


def test_voc_ap_random_curves_equal_devkit():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 60))
        hits = rng.random(n) < 0.6
        tp, fp = np.cumsum(hits), np.cumsum(~hits)
        npos = int(hits.sum() + rng.integers(0, 5)) or 1
        rec, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(float).eps)
        for use_07 in (False, True):
            assert voc_ap(rec, prec, use_07) == devkit_voc_ap(rec, prec, use_07)


def random_voc(seed, n_images=30, n_classes=4):
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(n_images):
        m = int(rng.integers(0, 6))
        xy = rng.integers(0, 300, (m, 2)).astype(float)
        wh = rng.integers(5, 150, (m, 2)).astype(float)
        g_boxes = np.concatenate([xy, xy + wh], 1)
        g_labels = rng.integers(0, n_classes, m)
        gts.append({"boxes": g_boxes, "labels": g_labels, "difficult": rng.random(m) < 0.15})
        src = rng.integers(0, max(m, 1), int(rng.integers(0, 8))) if m else np.zeros(0, int)
        jitter = rng.integers(-12, 13, (len(src), 4)).astype(float)
        d_boxes = g_boxes[src] + jitter if m else np.zeros((0, 4))
        d_boxes[:, 2:] = np.maximum(d_boxes[:, 2:], d_boxes[:, :2] + 1)
        labels = np.where(
            rng.random(len(src)) < 0.85, g_labels[src] if m else 0, rng.integers(0, n_classes, len(src))
        )
        scores = np.round(rng.random(len(src)), 1)  # ties
        dets.append({"boxes": d_boxes, "scores": scores, "labels": labels})
    return dets, gts


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("use_07", [False, True])
def test_voc_evaluate_equals_devkit_loop(seed, use_07):
    dets, gts = random_voc(seed)
    out = voc_evaluate(dets, gts, use_07_metric=use_07)
    for label, row in out["per_class"].items():
        assert row["AP"] == devkit_voc_eval(dets, gts, label, use_07_metric=use_07), label
    assert out["mAP"] == pytest.approx(np.mean([r["AP"] for r in out["per_class"].values()]))
    assert 0.1 < out["mAP"] < 1


def test_voc_evaluate_hand_worked_image():
    gts = [
        {
            "boxes": [[0, 0, 9, 9], [20, 20, 29, 29], [50, 50, 59, 59]],
            "labels": [1, 1, 1],
            "difficult": [False, False, True],
        }
    ]
    dets = [
        {
            "boxes": [[0, 0, 9, 9], [0, 0, 9, 9], [50, 50, 59, 59], [100, 100, 110, 110]],
            "scores": [0.9, 0.8, 0.7, 0.6],
            "labels": [1, 1, 1, 1],
        }
    ]
    row = voc_evaluate(dets, gts)["per_class"][1]
    # tp, duplicate (fp), difficult (neither), miss (fp): recall 1/2 at precision 1, then 1/2, 1/3
    np.testing.assert_allclose(row["recall"], [0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(row["precision"], [1.0, 0.5, 0.5, 1 / 3])
    assert row["AP"] == 0.5 and row["num_positives"] == 2


def test_voc_evaluate_edge_cases():
    gts = [
        {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)},
        {"boxes": [[0, 0, 5, 5]], "labels": [2], "difficult": [True]},
    ]
    dets = [
        {"boxes": [[0, 0, 5, 5]], "scores": [0.5], "labels": [2]},
        {"boxes": np.zeros((0, 4)), "scores": [], "labels": []},
    ]
    out = voc_evaluate(dets, gts, classes=[2, 3])
    assert out["per_class"][2]["AP"] == -1 and out["per_class"][3]["AP"] == -1 and out["mAP"] == -1
    with pytest.raises(ValueError, match="one entry per image"):
        voc_evaluate(dets, gts[:1])
    with pytest.raises(ValueError, match="NaN"):
        voc_evaluate([{"boxes": [[0, 0, 5, 5]], "scores": [float("nan")], "labels": [2]}], gts[:1])
    with pytest.raises(ValueError, match="detections 0: 1 boxes but 2 scores"):
        voc_evaluate([{"boxes": [[0, 0, 5, 5]], "scores": [0.1, 0.2], "labels": [2]}], gts[:1])


@pytest.mark.parametrize("side", ["detections", "ground_truths"])
def test_fractional_labels_are_refused_naming_the_entry_not_truncated(side):
    """A label of 1.7 was counted as class 1."""
    detections = [{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [1]}]
    ground_truths = [{"boxes": [[0, 0, 10, 10]], "labels": [1]}]
    entries = {"detections": detections, "ground_truths": ground_truths}
    entries[side][0]["labels"] = torch.tensor([1.7])
    with pytest.raises(ValueError, match=f"{side} 0: 'labels' must be whole numbers"):
        voc_evaluate(detections, ground_truths)
    entries[side][0]["labels"] = np.array([1.0])  # whole floats are class indices still
    assert voc_evaluate(detections, ground_truths)["mAP"] == pytest.approx(1.0)


@pytest.mark.parametrize("use_07", [False, True])
def test_voc_ap_refuses_a_curve_holding_nan(use_07):
    # before: voc_ap([0.5, nan], [1, 0.5]) returned nan (and with use_07_metric a number that skipped the NaN point)
    with pytest.raises(ValueError, match=r"recall and precision must be finite, got NaN or infinity in recall"):
        voc_ap([0.5, float("nan")], [1.0, 0.5], use_07_metric=use_07)
    with pytest.raises(ValueError, match=r"in precision"):
        voc_ap([0.5, 1.0], [float("inf"), 0.5], use_07_metric=use_07)
