"""COCO segmentations and binary masks: run-length encoding (RLE) both ways and polygon rasterisation.

COCO stores a mask as runs over the pixels in column-major order, starting with a run of zeros;
``counts`` is either that list of ints ("uncompressed", used by crowd annotations) or a string
("compressed"): each run is stored as a difference to the run two places before it (from the
fourth run on) and written in 5-bit groups, least significant first, as characters from '0'
(bit 5 of a group: more groups follow; bit 4 of the last group: the sign). Polygons are lists of
``[x1, y1, x2, y2, ...]`` in pixel coordinates; a pixel belongs to a polygon when its centre does
(even-odd rule), which matches pycocotools' rasteriser closely.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of bool[H, W] ``mask`` in column-major order, starting with a (possibly empty) run of zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size]))).tolist()
    return [0, *runs] if flat[0] else runs


def counts_to_string(counts: Sequence[int]) -> str:
    """COCO's compressed string for a list of run lengths."""
    chars = []
    for i, run in enumerate(counts):
        value = int(run) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != (-1 if group & 0x10 else 0)
            chars.append(chr(48 + (group | (0x20 if more else 0))))
    return "".join(chars)


def string_to_counts(text: str) -> list[int]:
    """The run lengths of COCO's compressed string ``text`` (raises ValueError on a malformed string)."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("compressed RLE string ends inside a run")
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"compressed RLE string has an invalid character {text[position]!r}")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE ``{"size": [H, W], "counts": str}`` of bool[H, W] ``mask`` (pycocotools' encode)."""
    height, width = np.shape(mask)
    return {"size": [int(height), int(width)], "counts": counts_to_string(mask_to_counts(mask))}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """bool[H, W] mask of a COCO RLE with compressed (str) or uncompressed (list of ints) ``counts``."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = string_to_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise ValueError(
            f"RLE runs cover {sum(runs)} pixels with {len(runs)} runs, expected {height}x{width}"
        )
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(width, height).T.copy()


def polygon_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """bool[H, W]: the union of COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` (pixel centres inside, even-odd)."""
    mask = np.zeros((height, width + 1), dtype=np.int32)
    rows = np.arange(height) + 0.5
    for polygon in polygons:
        points = np.asarray(polygon, dtype=np.float64)
        if points.ndim != 1 or points.size < 6 or points.size % 2:
            raise ValueError(f"a polygon needs at least 3 (x, y) pairs, got {points.size} numbers")
        xy = points.reshape(-1, 2)
        x0, y0 = xy[:, 0], xy[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        low, high = np.minimum(y0, y1), np.maximum(y0, y1)
        # Half-open in y, so a vertex shared by two edges counts once.
        crossing = (rows[:, None] >= low) & (rows[:, None] < high)
        dy = np.where(y1 != y0, y1 - y0, 1.0)
        x = np.where(crossing, x0 + (rows[:, None] - y0) * (x1 - x0) / dy, np.inf)
        x.sort(axis=1)
        starts, ends = x[:, 0::2], x[:, 1::2]
        row, pair = np.nonzero(np.isfinite(starts[:, : ends.shape[1]]) & np.isfinite(ends))
        first = np.clip(np.ceil(starts[row, pair] - 0.5), 0, width).astype(np.int64)
        stop = np.clip(np.ceil(ends[row, pair] - 0.5), 0, width).astype(np.int64)
        span = np.zeros((height, width + 1), dtype=np.int32)
        np.add.at(span, (row, first), 1)
        np.add.at(span, (row, stop), -1)
        mask += np.cumsum(span, axis=1) > 0
    return mask[:, :width] > 0
