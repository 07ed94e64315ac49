"""Mask IoU for ``segm`` evaluation, computed on run-length encodings.

Segmentations are read with :mod:`visionzoo.data.masks` (COCO RLE dicts, polygons, binary masks)
into :class:`~visionzoo.data.masks.Rle` runs; the intersection of two masks is counted run against
run, without decoding them to pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from visionzoo.data.masks import Rle, to_rle


def _covered(m: Rle, x: np.ndarray) -> np.ndarray:
    """Foreground pixels of ``m`` before each position x (int64[...])."""
    cum = np.concatenate([[0], np.cumsum(m.ends - m.starts)])
    i = np.searchsorted(m.ends, x, side="right")
    nxt = np.minimum(i, max(len(m.starts) - 1, 0))
    partial = np.where(i < len(m.starts), np.maximum(x - m.starts[nxt] if len(m.starts) else 0, 0), 0)
    return cum[i] + partial


def _intersection(a: Rle, b: Rle) -> int:
    if len(a.starts) == 0 or len(b.starts) == 0:
        return 0
    return int((_covered(b, a.ends) - _covered(b, a.starts)).sum())


def rle_iou_pairs(dets: Sequence[Rle], gts: Sequence[Rle], crowd: np.ndarray) -> np.ndarray:
    """Mask IoU of pairs (dets[i], gts[i]), float64[P]; a crowd pair divides by the detection's area."""
    out = np.zeros(len(dets))
    for i, (d, g) in enumerate(zip(dets, gts)):
        if (d.height, d.width) != (g.height, g.width):
            raise ValueError(
                f"mask sizes differ: detection {d.height}x{d.width}, ground truth {g.height}x{g.width}"
            )
        inter = _intersection(d, g)
        if inter == 0:
            continue
        d_area = int((d.ends - d.starts).sum())
        union = d_area if crowd[i] else d_area + int((g.ends - g.starts).sum()) - inter
        out[i] = inter / union
    return out


def mask_iou(dets: Sequence[Any], gts: Sequence[Any], iscrowd: Sequence[bool] | None = None) -> np.ndarray:
    """IoU matrix float64[D, G] of segmentations (pycocotools' ``maskUtils.iou`` for masks).

    dets, gts: RLE dicts, :class:`~visionzoo.data.masks.Rle` or binary arrays [H, W] of one size;
    iscrowd: bool[G], a crowd ground truth's IoU is intersection over the detection's area.
    """
    d = [to_rle(s, None, None, f"detection {i}") for i, s in enumerate(dets)]
    g = [to_rle(s, None, None, f"ground truth {i}") for i, s in enumerate(gts)]
    crowd = np.zeros(len(g), dtype=bool) if iscrowd is None else np.asarray(iscrowd, dtype=bool).reshape(-1)
    if len(crowd) != len(g):
        raise ValueError(f"iscrowd needs one flag per ground truth: {len(g)} ground truths, {len(crowd)} flags")
    di, gi = np.meshgrid(np.arange(len(d)), np.arange(len(g)), indexing="ij")
    di, gi = di.ravel(), gi.ravel()
    return rle_iou_pairs([d[i] for i in di], [g[i] for i in gi], crowd[gi]).reshape(len(d), len(g))
