"""Instance masks for ``segm`` evaluation: COCO run-length encodings, polygons, mask IoU.

A mask is kept as its runs of foreground pixels in COCO's column-major pixel order
(:class:`Rle`: ``starts``/``ends`` int64[n], half-open). Inputs understood: a compressed RLE
``{"size": [h, w], "counts": "<string>"}``, an uncompressed one (``counts`` a list), a list of
polygons ``[[x0, y0, x1, y1, ...], ...]`` (rasterised with pycocotools' rule: pixel centres inside
the outline sampled at 1/5 pixel, so areas and IoUs match its numbers) or a binary array [H, W].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

_POLY_SCALE = 5.0


class Rle(NamedTuple):
    """Foreground runs [starts, ends) over the column-major (x * height + y) pixels of an h x w image."""

    height: int
    width: int
    starts: np.ndarray
    ends: np.ndarray


def _runs_from_counts(counts: np.ndarray, height: int, width: int, what: str) -> Rle:
    """counts: int[n] alternating background/foreground run lengths, background first."""
    if counts.size and counts.min() < 0:
        raise ValueError(f"{what}: RLE counts must not be negative")
    if int(counts.sum()) != height * width:
        raise ValueError(f"{what}: RLE counts sum to {int(counts.sum())}, expected {height}*{width}")
    edges = np.cumsum(counts)
    starts, ends = edges[0::2][: len(edges) // 2], edges[1::2]
    keep = ends > starts
    return Rle(height, width, starts[keep].astype(np.int64), ends[keep].astype(np.int64))


def decode_counts_string(text: str | bytes) -> np.ndarray:
    """COCO's compressed counts (6 bits per character from '0', deltas from the count two back) -> int64[n]."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    counts: list[int] = []
    value, shift = 0, 0
    for char in text:
        code = ord(char) - 48
        if not 0 <= code < 64:
            raise ValueError(f"invalid character {char!r} in compressed RLE counts")
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift  # the last group's top bit is a sign bit
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        value, shift = 0, 0
    return np.asarray(counts, dtype=np.int64)


def encode_counts_string(counts: Sequence[int]) -> str:
    """Inverse of :func:`decode_counts_string`."""
    out = []
    counts = [int(c) for c in counts]
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        while True:
            group = x & 0x1F
            x >>= 5
            more = x != -1 if group & 0x10 else x != 0
            out.append(chr(48 + (group | (0x20 if more else 0))))
            if not more:
                break
    return "".join(out)


def rle_from_mask(mask: Any) -> Rle:
    """A binary mask [H, W] (NumPy or torch, any dtype; nonzero is foreground) -> :class:`Rle`."""
    array = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask)
    if array.ndim != 2:
        raise ValueError(f"a mask must be [H, W], got shape {array.shape}")
    flat = np.concatenate([[False], (array != 0).T.ravel(), [False]])
    change = np.flatnonzero(flat[1:] != flat[:-1])
    return Rle(array.shape[0], array.shape[1], change[0::2].astype(np.int64), change[1::2].astype(np.int64))


def rle_to_mask(rle: Rle) -> np.ndarray:
    """The binary mask bool[H, W] of an :class:`Rle`."""
    flips = np.zeros(rle.height * rle.width + 1, dtype=np.int8)
    np.add.at(flips, rle.starts, 1)
    np.add.at(flips, rle.ends, -1)
    return np.cumsum(flips[:-1]).astype(bool).reshape(rle.width, rle.height).T


def _polygon_toggles(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Column-major pixel positions where the polygon's outline toggles the inside/outside state.

    The outline is walked on a grid 5 times finer (one sample per fine step along the longer axis
    of each edge); each time it crosses a pixel-centre column, the pixel below the crossing in that
    column starts (or stops) being inside.
    """
    fine_x = np.trunc(_POLY_SCALE * xy[0::2] + 0.5).astype(np.int64)
    fine_y = np.trunc(_POLY_SCALE * xy[1::2] + 0.5).astype(np.int64)
    x0, y0 = fine_x, fine_y
    x1, y1 = np.roll(fine_x, -1), np.roll(fine_y, -1)
    us, vs = [], []
    for xs, ys, xe, ye in zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist()):
        dx, dy = abs(xe - xs), abs(ye - ys)
        along_x = dx >= dy
        # sample from the lower end so that both directions of an edge give the same points
        backwards = (along_x and xs > xe) or (not along_x and ys > ye)
        if backwards:
            xs, xe, ys, ye = xe, xs, ye, ys
        n = dx if along_x else dy
        if n == 0:
            us.append(np.array([xs]))
            vs.append(np.array([ys]))
            continue
        t = np.arange(n + 1)
        if backwards:
            t = t[::-1]
        if along_x:
            slope = (ye - ys) / dx
            us.append(t + xs)
            vs.append(np.trunc(ys + slope * t + 0.5).astype(np.int64))
        else:
            slope = (xe - xs) / dy
            vs.append(t + ys)
            us.append(np.trunc(xs + slope * t + 0.5).astype(np.int64))
    u, v = np.concatenate(us), np.concatenate(vs)
    step = np.flatnonzero(u[1:] != u[:-1]) + 1
    cur_u, prev_u = u[step], u[step - 1]
    xd = np.where(cur_u < prev_u, cur_u, cur_u - 1).astype(np.float64)
    xd = (xd + 0.5) / _POLY_SCALE - 0.5
    yd = np.minimum(v[step], v[step - 1]).astype(np.float64)
    yd = (yd + 0.5) / _POLY_SCALE - 0.5
    on_column = (np.floor(xd) == xd) & (xd >= 0) & (xd <= width - 1)
    yd = np.ceil(np.clip(yd, 0, height))
    return (xd[on_column].astype(np.int64) * height + yd[on_column].astype(np.int64)).astype(np.int64)


def _flat_from_toggles(toggles: np.ndarray, size: int) -> np.ndarray:
    """bool[size]: pixel i is inside when an odd number of toggles lie at or before i."""
    flips = np.bincount(toggles[toggles < size], minlength=size) & 1
    return (np.cumsum(flips) & 1).astype(bool)


def rle_from_polygons(
    polygons: Sequence[Sequence[float]], height: int, width: int, what: str = "polygon"
) -> Rle:
    """Union of polygons ``[x0, y0, x1, y1, ...]`` (at least 3 points each) on an h x w image."""
    inside = np.zeros(height * width, dtype=bool)
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).ravel()
        if xy.size < 6 or xy.size % 2 or not np.isfinite(xy).all():
            raise ValueError(f"{what}: a polygon needs at least 3 finite (x, y) points, got {list(poly)[:8]}")
        inside |= _flat_from_toggles(_polygon_toggles(xy, height, width), height * width)
    flat = np.concatenate([[False], inside, [False]])
    change = np.flatnonzero(flat[1:] != flat[:-1])
    return Rle(height, width, change[0::2].astype(np.int64), change[1::2].astype(np.int64))


def to_rle(segmentation: Any, height: int | None, width: int | None, what: str = "segmentation") -> Rle:
    """Any supported segmentation -> :class:`Rle`; polygons need the image's height and width."""
    if isinstance(segmentation, Rle):
        return segmentation
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise ValueError(f"{what}: an RLE needs 'size' and 'counts'")
        h, w = (int(s) for s in segmentation["size"])
        counts = segmentation["counts"]
        if isinstance(counts, str | bytes):
            try:
                values = decode_counts_string(counts)
            except ValueError as error:
                raise ValueError(f"{what}: {error}") from None
        else:
            values = np.asarray(counts, dtype=np.int64).ravel()
        return _runs_from_counts(values, h, w, what)
    if isinstance(segmentation, list | tuple):
        if height is None or width is None:
            raise ValueError(f"{what}: polygons need the image's 'height' and 'width' in the ground truth")
        return rle_from_polygons(segmentation, int(height), int(width), what)
    if hasattr(segmentation, "shape"):
        return rle_from_mask(segmentation)
    raise ValueError(f"{what}: unsupported segmentation of type {type(segmentation).__name__}")


def rle_area(masks: Sequence[Rle]) -> np.ndarray:
    """Foreground pixel counts, float64[N]."""
    return np.array([float((m.ends - m.starts).sum()) for m in masks], dtype=np.float64).reshape(len(masks))


def rle_boxes(masks: Sequence[Rle]) -> np.ndarray:
    """Tight xywh boxes of the masks, float64[N, 4] (zeros for an empty mask)."""
    out = np.zeros((len(masks), 4))
    for i, m in enumerate(masks):
        if len(m.starts) == 0:
            continue
        last = m.ends - 1
        x_start, x_end = m.starts // m.height, last // m.height
        if np.any(x_end > x_start):
            y_min, y_max = 0, m.height - 1
        else:
            y_min, y_max = int((m.starts % m.height).min()), int((last % m.height).max())
        out[i] = (x_start.min(), y_min, x_end.max() - x_start.min() + 1, y_max - y_min + 1)
    return out


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

    dets, gts: RLE dicts, :class:`Rle` or binary arrays [H, W] of one size; iscrowd: bool[G], a crowd
    ground truth's IoU is intersection over the detection's area.
    """
    d = [to_rle(s, None, None, f"detection {i}") for i, s in enumerate(dets)]
    g = [to_rle(s, None, None, f"ground truth {i}") for i, s in enumerate(gts)]
    crowd = (
        np.zeros(len(g), dtype=bool) if iscrowd is None else np.asarray(iscrowd, dtype=bool).reshape(len(g))
    )
    di, gi = np.meshgrid(np.arange(len(d)), np.arange(len(g)), indexing="ij")
    di, gi = di.ravel(), gi.ravel()
    return rle_iou_pairs([d[i] for i in di], [g[i] for i in gi], crowd[gi]).reshape(len(d), len(g))
