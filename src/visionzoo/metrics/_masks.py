"""Mask IoU for ``segm`` evaluation, computed on run-length encodings.

Segmentations are read with :mod:`visionzoo.data.masks` (COCO RLE dicts, polygons, binary masks)
into :class:`~visionzoo.data.masks.Rle` runs; the intersection of two masks is counted run against
run, without decoding them to pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from visionzoo.data.masks import Rle, concat_runs, rle_area, rle_boxes, to_rles


def _covered(starts: np.ndarray, ends: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Foreground pixels before each position x, int64[X], of the sorted runs starts, ends int64[R]."""
    before = np.concatenate([[0], np.cumsum(ends - starts)])
    i = np.searchsorted(ends, x, side="right")  # the runs that end at or before x
    return before[i] + np.maximum(x - np.append(starts, np.iinfo(np.int64).max)[i], 0)


def rle_iou_pairs(
    dets: Sequence[Rle], gts: Sequence[Rle], det: np.ndarray, gt: np.ndarray, crowd: np.ndarray
) -> np.ndarray:
    """Mask IoU of the pairs (dets[det[p]], gts[gt[p]]), float64[P]; a crowd pair divides by the detection's area.

    dets: D masks, gts: G masks; det, gt: int[P]; crowd: bool[P]. As in pycocotools, a pair whose masks' boxes do
    not meet is 0 without counting. The others are counted at once: ground truth k's runs are moved to its own
    stretch [offset[k], offset[k] + height * width) of one pixel axis, so that all of them make one sorted list,
    each pair's detection runs are moved onto its ground truth's stretch, and the ground-truth pixels before each
    run's end and start are read from that list with one ``searchsorted``.
    """
    det, gt = np.asarray(det, dtype=np.int64), np.asarray(gt, dtype=np.int64)
    d_hw = np.array([(m.height, m.width) for m in dets], dtype=np.int64).reshape(-1, 2)
    g_hw = np.array([(m.height, m.width) for m in gts], dtype=np.int64).reshape(-1, 2)
    differ = np.flatnonzero((d_hw[det] != g_hw[gt]).any(axis=1))
    if len(differ):
        (dh, dw), (gh, gw) = d_hw[det[differ[0]]], g_hw[gt[differ[0]]]
        raise ValueError(f"mask sizes differ: detection {dh}x{dw}, ground truth {gh}x{gw}")

    d_starts, d_ends, d_bounds = concat_runs(dets)
    g_starts, g_ends, g_bounds = concat_runs(gts)
    d_box, g_box = rle_boxes(dets)[det], rle_boxes(gts)[gt]  # an empty mask's box [0, 0, 0, 0] meets no box
    meet = (d_box[:, :2] < g_box[:, :2] + g_box[:, 2:]) & (g_box[:, :2] < d_box[:, :2] + d_box[:, 2:])
    pair = np.flatnonzero(meet.all(axis=1))
    pd, pg = det[pair], gt[pair]

    offset = np.concatenate([[0], np.cumsum(g_hw.prod(axis=1))])[:-1]
    g_shift = np.repeat(offset, np.diff(g_bounds))
    n_runs = d_bounds[pd + 1] - d_bounds[pd]
    first = np.cumsum(n_runs) - n_runs
    run = np.repeat(d_bounds[pd] - first, n_runs) + np.arange(n_runs.sum())  # the detection runs of every pair
    shift = np.repeat(offset[pg], n_runs)
    x = np.concatenate([d_starts[run] + shift, d_ends[run] + shift])
    covered = _covered(g_starts + g_shift, g_ends + g_shift, x).reshape(2, -1)
    inter = np.bincount(np.repeat(np.arange(len(pair)), n_runs), covered[1] - covered[0], minlength=len(pair))

    d_area, g_area = rle_area(dets), rle_area(gts)
    union = np.where(crowd[pair], d_area[pd], d_area[pd] + g_area[pg] - inter)
    out = np.zeros(len(det))
    out[pair] = inter / union
    return out


def mask_iou(dets: Sequence[Any], gts: Sequence[Any], iscrowd: Sequence[bool] | None = None) -> np.ndarray:
    """IoU matrix float64[D, G] of segmentations (pycocotools' ``maskUtils.iou`` for masks).

    dets, gts: RLE dicts, :class:`~visionzoo.data.masks.Rle` or binary arrays [H, W] of one size;
    iscrowd: bool[G], a crowd ground truth's IoU is intersection over the detection's area.
    """
    d = to_rles(dets, [(None, None)] * len(dets), "detection")
    g = to_rles(gts, [(None, None)] * len(gts), "ground truth")
    crowd = np.zeros(len(g), dtype=bool) if iscrowd is None else np.asarray(iscrowd, dtype=bool).reshape(-1)
    if len(crowd) != len(g):
        raise ValueError(f"iscrowd needs one flag per ground truth: {len(g)} ground truths, {len(crowd)} flags")
    di, gi = np.meshgrid(np.arange(len(d)), np.arange(len(g)), indexing="ij")
    return rle_iou_pairs(d, g, di.ravel(), gi.ravel(), crowd[gi.ravel()]).reshape(len(d), len(g))
