"""PASCAL VOC average precision: the devkit's ``voc_ap`` and a vectorised ``voc_evaluate``.

The rules are the VOC devkit's: per class, detections in decreasing score order each look at
the ground truth of the same class in their image with the highest IoU (boxes measured in
inclusive pixels: ``x2 - x1 + 1``); above ``iou_threshold`` (strictly) they are true positives if
that ground truth is not yet taken, false positives if it is, and neither if it is "difficult";
below it they are false positives. Difficult ground truth does not count towards recall.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# the devkit's 0:0.1:1, accumulated as NumPy's arange does (0.30000000000000004, ...)
_VOC07_RECALLS = np.arange(0.0, 1.1, 0.1)


def voc_ap(
    recall: Sequence[float] | np.ndarray, precision: Sequence[float] | np.ndarray, use_07_metric: bool = False
) -> float:
    """Average precision from a precision/recall curve, as the VOC devkit computes it.

    recall, precision: float[N], cumulative values in decreasing-score order. ``use_07_metric``:
    VOC2007's 11-point interpolation (mean over recall 0, 0.1, ..., 1 of the best precision at
    recall >= r); otherwise the area under the monotone precision envelope (VOC2010+).
    Empty curves give 0.
    """
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall and precision must have the same length, got {rec.size} and {prec.size}")
    for name, values in (("recall", rec), ("precision", prec)):
        if not np.isfinite(values).all():  # else NaN flows into the area (or the 11-point maximum skips it)
            raise ValueError(f"recall and precision must be finite, got NaN or infinity in {name}")
    if use_07_metric:
        reached = rec[None, :] >= _VOC07_RECALLS[:, None]
        best = np.where(reached, prec[None, :], -np.inf).max(axis=1, initial=-np.inf)
        ap = 0.0
        for p in np.where(reached.any(axis=1), best, 0.0).tolist():
            ap += p / 11.0  # summed in order, as the devkit does
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.maximum.accumulate(np.concatenate(([0.0], prec, [0.0]))[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _array(item: dict, key: str, shape_tail: tuple, dtype: Any, where: str) -> np.ndarray:
    value = item[key]
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if dtype is np.int64:  # a label of 1.7 would be counted as class 1
        given = np.asarray(value)
        if given.dtype.kind not in "biuf" or (given.dtype.kind == "f" and not np.all(np.mod(given, 1) == 0)):
            raise ValueError(f"{where}: {key!r} must be whole numbers (class labels), got {given.reshape(-1)[:5].tolist()!r:.80}")
    out = np.asarray(value, dtype=dtype)
    if out.size == 0:
        return out.reshape((0, *shape_tail))
    try:
        return out.reshape((-1, *shape_tail))
    except ValueError:
        raise ValueError(
            f"{where}: {key!r} must have shape [N{', 4' if shape_tail else ''}], got {out.shape}"
        ) from None


def _columns(items: Sequence[dict], keys: tuple[str, ...], side: str) -> dict[str, np.ndarray]:
    cols: dict[str, list] = {k: [] for k in (*keys, "image")}
    for i, item in enumerate(items):
        for key in keys:
            if key not in item and key != "difficult":
                raise ValueError(f"{side} {i} has no {key!r}")
        where = f"{side} {i}"
        boxes = _array(item, "boxes", (4,), np.float64, where)
        n = len(boxes)
        cols["boxes"].append(boxes)
        for key in keys:
            if key == "boxes":
                continue
            if key == "difficult" and key not in item:
                values = np.zeros(n, dtype=bool)
            else:
                values = _array(
                    item, key, (), {"labels": np.int64, "scores": np.float64}.get(key, bool), where
                )
            if len(values) != n:
                raise ValueError(f"{where}: {n} boxes but {len(values)} {key}")
            cols[key].append(values)
        cols["image"].append(np.full(n, i, dtype=np.int64))
    out = {k: np.concatenate(v) if v else np.zeros((0, 4) if k == "boxes" else 0) for k, v in cols.items()}
    if not np.isfinite(out["boxes"]).all():
        raise ValueError(f"{side}: boxes must be finite")
    return out


def _class_curve(
    det: dict[str, np.ndarray], gt: dict[str, np.ndarray], iou_threshold: float, pixel_offset: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Cumulative (tp, fp) float64[D] in decreasing-score order and the number of positives."""
    order = np.argsort(-det["scores"], kind="stable")
    d_img, d_box = det["image"][order], det["boxes"][order]
    g_order = np.argsort(gt["image"], kind="stable")
    g_img, g_box, g_diff = gt["image"][g_order], gt["boxes"][g_order], gt["difficult"][g_order]
    lo = np.searchsorted(g_img, d_img, side="left")
    counts = np.searchsorted(g_img, d_img, side="right") - lo
    pair_det = np.repeat(np.arange(len(d_img)), counts)
    pair_gt = np.arange(len(pair_det)) - np.repeat(np.cumsum(counts) - counts - lo, counts)
    b, g = d_box[pair_det], g_box[pair_gt]
    iw = np.maximum(np.minimum(b[:, 2], g[:, 2]) - np.maximum(b[:, 0], g[:, 0]) + pixel_offset, 0.0)
    ih = np.maximum(np.minimum(b[:, 3], g[:, 3]) - np.maximum(b[:, 1], g[:, 1]) + pixel_offset, 0.0)
    inter = iw * ih
    union = (
        (b[:, 2] - b[:, 0] + pixel_offset) * (b[:, 3] - b[:, 1] + pixel_offset)
        + (g[:, 2] - g[:, 0] + pixel_offset) * (g[:, 3] - g[:, 1] + pixel_offset)
        - inter
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        overlap = inter / union
    tp = np.zeros(len(d_img))
    has_gt = counts > 0
    if len(pair_det):
        starts = (np.cumsum(counts) - counts)[has_gt]
        best = np.maximum.reduceat(overlap, starts)
        first = np.minimum.reduceat(
            np.where(overlap == np.repeat(best, counts[has_gt]), np.arange(len(overlap)), len(overlap)),
            starts,
        )
        first = np.minimum(first, len(overlap) - 1)  # a NaN overlap (0/0) is a miss anyway
        hit = np.zeros(len(d_img), dtype=bool)
        target = np.zeros(len(d_img), dtype=np.int64)
        hit[has_gt] = best > iou_threshold
        target[has_gt] = pair_gt[first]
        counted = hit & ~g_diff[target]
        # the first (highest-scoring) detection on a ground truth is the true positive
        _, first_on_gt = np.unique(target[counted], return_index=True)
        tp[np.flatnonzero(counted)[first_on_gt]] = 1.0
        fp = (~hit | counted).astype(np.float64) - tp
    else:
        fp = np.ones(len(d_img))
    return np.cumsum(tp), np.cumsum(fp), int((~gt["difficult"]).sum())


def voc_evaluate(
    detections: Sequence[dict],
    ground_truths: Sequence[dict],
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    classes: Sequence[int] | None = None,
    pixel_offset: float = 1.0,
) -> dict[str, Any]:
    """PASCAL VOC evaluation: per-class AP and their mean.

    detections[i] and ground_truths[i] describe image i: ``{"boxes": [N, 4] xyxy, "scores": [N],
    "labels": [N] int}`` and ``{"boxes": [M, 4] xyxy, "labels": [M] int, optional "difficult": [M]
    bool}`` (NumPy arrays, tensors or lists). ``classes``: the labels to evaluate (default: those
    in the ground truth). ``pixel_offset``: 1 for the devkit's inclusive-pixel boxes, 0 for
    continuous coordinates. Score ties keep input order (the MATLAB devkit's stable sort).

    Returns ``{"mAP": float, "per_class": {label: {"AP", "num_positives", "num_detections",
    "recall": float64[D], "precision": float64[D]}}}``; a class without non-difficult ground truth
    has AP -1 and is left out of the mean (the devkit would divide by zero).
    """
    if len(detections) != len(ground_truths):
        raise ValueError(
            f"detections and ground_truths must have one entry per image, got {len(detections)} and {len(ground_truths)}"
        )
    det = _columns(detections, ("boxes", "scores", "labels"), "detections")
    gt = _columns(ground_truths, ("boxes", "labels", "difficult"), "ground_truths")
    if np.isnan(det["scores"]).any():
        raise ValueError("detections: scores must not be NaN")
    labels = np.unique(gt["labels"]) if classes is None else np.asarray(list(classes), dtype=np.int64)
    per_class: dict[int, dict[str, Any]] = {}
    for label in labels.tolist():
        d = {k: v[det["labels"] == label] for k, v in det.items()}
        g = {k: v[gt["labels"] == label] for k, v in gt.items()}
        tp, fp, npos = _class_curve(d, g, iou_threshold, pixel_offset)
        with np.errstate(divide="ignore", invalid="ignore"):
            rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap = voc_ap(rec, prec, use_07_metric) if npos > 0 else -1.0
        per_class[label] = {
            "AP": ap,
            "num_positives": npos,
            "num_detections": len(tp),
            "recall": rec,
            "precision": prec,
        }
    defined = [c["AP"] for c in per_class.values() if c["AP"] >= 0]
    return {"mAP": float(np.mean(defined)) if defined else -1.0, "per_class": per_class}
