"""Non-maximum suppression: greedy (``nms``), per category (``batched_nms``) and soft (``soft_nms``).

``nms`` keeps exactly the boxes torchvision's C++ kernel keeps: boxes are visited by decreasing score
(ties in index order) and a box is dropped when ``inter / (area_i + area_j - inter) > iou_threshold``
against an already kept box, evaluated with the same float operations in the boxes' dtype.

The greedy pass is sequential by nature; here it runs in score blocks of growing size. Each block's
candidates are first tested against the boxes kept so far, then the survivors are resolved among
themselves (a suppression graph, settled in a few vectorised rounds; split by score into halves
while it would hold more than EDGE_LIMIT pairs, and walked box by box when a long suppression
chain would need more than MAX_ROUNDS rounds). Both tests only look at pairs that can overlap
enough: for ``IoU > t > 0`` the areas are within a factor 1/t and the corners of two boxes are
closer than ``(1 - t) / t * min(w_i, w_j)`` in x (and likewise in y), so with the reference
boxes sorted by (category, area class, y strip, x1), a run of 16 nearby candidates needs a few
contiguous slices of them. The slices, padded to a power of two, are tested in batches of
[runs, 16, columns] tensors: a dozen broadcast operations per batch, no Python loop over boxes
(outside that walk). ``batched_nms`` with small categories skips the blocks and tests all pairs
within each category. Problems with few pairs are tested all against all.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = ["nms", "batched_nms", "soft_nms"]

# Candidates are taken in runs of CHUNK_ROWS; one batch of windows holds at most BATCH_ELEMS pairs, so
# that its float intermediates stay in the L2 cache; a longer window is cut into MAX_WINDOW pieces.
CHUNK_ROWS = 16
BATCH_ELEMS = 1 << 18
MAX_WINDOW = 4096
# Below this many candidate/reference pairs, testing all of them beats building search windows.
DENSE_PAIRS = 1 << 21
# Boxes per (category, area class, y strip) group that make a finer split worth its extra searches.
GROUP_BOXES = 32
# batched_nms with categories small enough that all pairs within them number at most this: every
# pair is tested at once (no blocks, no search windows).
CATEGORY_PAIRS = 1 << 23
# Unless the pairs above IoU (both directions) number more than this: categories whose boxes mostly
# overlap each other are then suppressed in score blocks like nms', whose memory stays bounded.
CATEGORY_EDGE_LIMIT = 1 << 20
# Score blocks: the first has FIRST_BLOCK boxes; later ones are sized so that about
# TARGET_SURVIVORS candidates survive the kept boxes, judging by the last block's survival rate.
FIRST_BLOCK = 512
TARGET_SURVIVORS = 8192
# Most box pairs (both directions) a block's survivors may hold as suppression edges at once; above it
# (survivors that mostly overlap each other) they are resolved in two halves by score, recursively.
EDGE_LIMIT = 1 << 16
# Rounds of the vectorised suppression-graph solution before the (at most EDGE_LIMIT) edges are
# walked one box at a time instead.
MAX_ROUNDS = 32
# torchvision switches from the coordinate-offset trick to a per-category loop above this many
# box coordinates on the CPU; the two give different float roundings, so we switch at the same place.
BATCHED_NMS_OFFSET_LIMIT = 4000


def _check_inputs(boxes: Tensor, scores: Tensor, name: str) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name}: boxes must be Tensor[N, 4] xyxy, got shape {tuple(boxes.shape)}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{name}: scores must be Tensor[N] with N = {boxes.shape[0]}, got shape {tuple(scores.shape)}"
        )
    if boxes.shape[0] == 0:
        return
    if torch.isnan(scores.amax()):  # NaN propagates through amax: one reduction instead of a mask
        raise ValueError(f"{name}: scores contain NaN at index {int(torch.isnan(scores).nonzero()[0])}")
    if boxes.is_floating_point() and not (torch.isfinite(boxes.amax()) and torch.isfinite(boxes.amin())):
        row = int((~torch.isfinite(boxes)).any(1).nonzero()[0])
        raise ValueError(f"{name}: boxes contain NaN or inf in row {row}: {boxes[row].tolist()}")


def _work_dtype(boxes: Tensor) -> torch.dtype:
    # torchvision's CPU kernel has no half/bfloat16 version; float32 is what autocast would run.
    return boxes.dtype if boxes.dtype in (torch.float32, torch.float64) else torch.float32


def _threshold_below(threshold: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value ``<= threshold``: ``x > it`` in ``dtype`` equals ``x > threshold`` in float64.

    torchvision compares the float IoU with the double threshold; a tensor comparison against a Python
    float would first round the threshold to ``dtype`` (e.g. 0.3 -> 0.30000001), changing the answer
    for an IoU of exactly float32(0.3).
    """
    t = torch.tensor(threshold, dtype=torch.float64)
    rounded = t.to(dtype)
    if rounded.double() > t:
        rounded = torch.nextafter(rounded, torch.tensor(-math.inf, dtype=dtype))
    return float(rounded)


def _dense_ids(ids: Tensor) -> Tensor:
    """Long[N]: ``ids`` renumbered 0, 1, ... in increasing order (a lookup table when their range is
    small, which avoids the sort inside ``torch.unique``)."""
    ids = ids.long()
    low, high = int(ids.min()), int(ids.max())
    if high - low > 4 * ids.numel():
        return torch.unique(ids, return_inverse=True)[1]
    present = torch.zeros(high - low + 1, dtype=torch.long, device=ids.device)
    present[ids - low] = 1
    return (present.cumsum(0) - 1)[ids - low]


class _Boxes:
    """The N boxes as the IoU tests want them: x1, y1, x2, y2, area as rows of ``floats`` (Tensor[5, N+1]
    in the working dtype) and score rank and category as rows of ``ints`` (Tensor[2, N+1]); column N
    is a NaN box, padding that never passes the IoU test."""

    def __init__(self, boxes: Tensor, scores: Tensor, iou_threshold: float, cats: Tensor | None):
        n = boxes.shape[0]
        device = boxes.device
        self.n = n
        self.iou_threshold = iou_threshold
        self.dtype = _work_dtype(boxes)
        cols = boxes.to(self.dtype).t()
        area = (cols[2] - cols[0]) * (cols[3] - cols[1])
        nan = torch.full((5, 1), math.nan, dtype=self.dtype, device=device)
        self.floats = torch.cat([torch.cat([cols, area[None]]), nan], 1)
        self.thr_f = _threshold_below(iou_threshold, self.dtype)
        self.order = scores.sort(descending=True, stable=True)[1]
        self.rank = torch.empty(n, dtype=torch.long, device=device)
        self.rank[self.order] = torch.arange(n, device=device)
        self.has_cats = cats is not None
        cat = _dense_ids(cats) if self.has_cats else torch.zeros_like(self.rank)
        self.ints = torch.cat([torch.stack([self.rank, cat]), torch.full((2, 1), -1, device=device)], 1)
        if iou_threshold >= 0:
            # A box with no width or height has zero intersection with everything, so its IoU is
            # 0, -0 or NaN and never above a non-negative threshold: it is kept and suppresses nothing.
            self.active = (cols[2] > cols[0]) & (cols[3] > cols[1])
        else:
            self.active = torch.ones(n, dtype=torch.bool, device=device)
        self._spatial: _Spatial | None = None

    @property
    def spatial(self) -> _Spatial:
        if self._spatial is None:
            self._spatial = _Spatial(self)
        return self._spatial


class _Spatial:
    """Everything about the N boxes that does not change from block to block.

    Reference boxes are ordered by (category, area class, y strip, x1) through one float64 key with
    gaps between groups wider than any search, so a (category, class, strip, x range) query is one
    ``searchsorted`` range. Candidates are ordered the same way and taken in chunks of CHUNK_ROWS,
    whose members then have close, alike search ranges. A pair can only have IoU > t > 0 if
    (i) its areas are within a factor 1/t (IoU <= min(a)/max(a)), so a box looks at the area
    classes around its own, and (ii) |x1_i - x1_j| < (1 - t)/t * min(w_i, w_j) and likewise in y
    (IoU is at most the 1-D IoU of the x extents, which is at most min(w)/union_x).
    """

    def __init__(self, boxes: _Boxes):
        iou_threshold = boxes.iou_threshold
        device = boxes.floats.device
        act = boxes.active
        cat = boxes.ints[1, : boxes.n]
        x1, y1 = boxes.floats[0, : boxes.n].double(), boxes.floats[1, : boxes.n].double()
        w, h = boxes.floats[2, : boxes.n].double() - x1, boxes.floats[3, : boxes.n].double() - y1
        max_w = float(w[act].max()) if act.any() else 0.0
        max_h = float(h[act].max()) if act.any() else 0.0
        x_min, y_min = float(x1.min()), float(y1.min())
        x_span, y_span = float(x1.max()) - x_min, float(y1.max()) - y_min
        # Area classes of `width` octaves; wider when the boxes per category are few, so that a
        # (category, class, strip) group holds about GROUP_BOXES boxes or more.
        n_active = int(act.sum())
        per_cat = n_active / max(1, int(cat[act].unique().numel()) if n_active else 1)
        log_area = torch.log2((w * h).clamp(min=1e-300))
        area_min = float(log_area[act].min()) if n_active else 0.0
        octaves = float(log_area[act].max()) - area_min + 1.0 if n_active else 1.0
        width = max(1.0, octaves * GROUP_BOXES / max(per_cat, 1.0))
        size_class = torch.where(act, ((log_area - area_min) / width).floor(), 0.0).clamp(min=0)
        n_classes = int(size_class.max()) + 1
        if iou_threshold > 0:
            # A little below: float rounding of an IoU cannot escape. Any threshold above 1 admits no
            # pair, as 2 does; capping it keeps (1 - t) / t finite for an infinite threshold.
            t = min(iou_threshold, 2.0) * (1.0 - 1e-5)
            reach_x, reach_y = w * ((1.0 - t) / t), h * ((1.0 - t) / t)
            left_x, right_x = reach_x.clamp(max=max_w), torch.minimum(reach_x, w)
            left_y, right_y = reach_y.clamp(max=max_h), torch.minimum(reach_y, h)
            class_lo = ((log_area + math.log2(t) - area_min) / width).floor()
            class_hi = ((log_area - math.log2(t) - area_min) / width).floor()
        else:
            if iou_threshold == 0:  # any overlap: x1_i - w_j < x1_j < x2_i
                left_x, right_x = torch.full_like(w, max_w), w.clamp(min=0)
                left_y, right_y = torch.full_like(h, max_h), h.clamp(min=0)
            else:  # every pair of a category interacts
                left_x = right_x = torch.full_like(w, x_span + 1.0)
                left_y = right_y = torch.full_like(h, y_span + 1.0)
            class_lo, class_hi = torch.zeros_like(w), torch.full_like(w, n_classes - 1.0)
        reach_max = max(float(left_x.max()), float(right_x.max()))
        # Strip height per area class: the mean y search range of its boxes, or taller where the
        # class has few boxes per category. (Any height is correct; these keep windows small.)
        cls = size_class.long()
        count = torch.bincount(cls[act], minlength=n_classes).double()
        mean_range_y = torch.bincount(cls[act], (left_y + right_y)[act], minlength=n_classes) / count.clamp(min=1)
        mean_range_x = torch.bincount(cls[act], (left_x + right_x)[act], minlength=n_classes) / count.clamp(min=1)
        if iou_threshold >= 0:
            sparse = y_span * GROUP_BOXES / (per_cat * count / max(n_active, 1)).clamp(min=1.0)
            heights = torch.maximum(mean_range_y, sparse)
        else:
            heights = torch.full_like(count, y_span + 1.0)
        self.heights = heights.clamp(min=max(y_span / 1024, 1e-6))
        strip = ((y1 - y_min) / self.heights[size_class.long()]).floor()
        self.n_strips = int(strip.max()) + 1
        self.y_min = y_min
        self.x_origin = x_min - reach_max - 2.0
        self.x_gap = x_span + 2 * reach_max + 4.0
        self.n_classes = n_classes
        key = self.key(cat.double(), size_class, strip, x1)
        # Slack for the rounding of the float64 keys (a few ulps of the largest).
        self.slack = 8 * math.ulp(float(key.abs().max())) + 1e-9
        self.order = key.argsort()
        self.ref_key = key
        # Candidates are chunked along a Z-order curve over cells about one search range wide, within
        # (category, class): consecutive candidates are then close in x and y, and a chunk's search
        # windows stay small.
        cell_w = mean_range_x.clamp(min=max(x_span / 65535, 1e-6))
        cell_h = self.heights.clamp(min=max(y_span / 65535, 1e-6))
        qx = ((x1 - x_min) / cell_w[cls]).floor().long().clamp(0, 65535)
        qy = ((y1 - y_min) / cell_h[cls]).floor().long().clamp(0, 65535)
        group = cat * n_classes + cls
        self.chunk_order = ((group << 32) | (_spread_bits(qx) << 1) | _spread_bits(qy)).argsort()
        # Per-box search bounds; the lower ones negated so that one amax reduces a chunk.
        bounds = torch.stack([-(x1 - left_x), x1 + right_x, -(y1 - left_y), y1 + right_y,
                              -class_lo.clamp(min=0), class_hi.clamp(max=n_classes - 1),
                              -cat.double(), cat.double()], 1)
        self.bounds = torch.cat([bounds, torch.full((1, 8), -math.inf, dtype=torch.float64, device=device)])

    def key(self, cat: Tensor, size_class: Tensor, strip: Tensor, x: Tensor) -> Tensor:
        group = (cat * self.n_classes + size_class) * self.n_strips + strip
        return group * self.x_gap + (x - self.x_origin)


def _spread_bits(v: Tensor) -> Tensor:
    """Int64 with the 16 low bits of ``v`` at the even positions (half of a Morton code)."""
    v = (v | (v << 8)) & 0x00FF00FF
    v = (v | (v << 4)) & 0x0F0F0F0F
    v = (v | (v << 2)) & 0x33333333
    return (v | (v << 1)) & 0x55555555


class _Batch:
    """Reusable buffers for the IoU-above-threshold test (fresh memory per batch is slow)."""

    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.bufs = [torch.empty(BATCH_ELEMS, dtype=dtype, device=device) for _ in range(3)]

    def above(self, rows: Tensor, cols: Tensor, thr: float) -> Tensor:
        """Float[T, R, L], 1 where IoU(rows[:, t, r], cols[:, t, l]) > thr, else 0 (also for NaN).

        rows: Tensor[5, T, R] and cols: Tensor[5, T, L], each x1, y1, x2, y2, area first. The IoU is
        computed with torchvision's operations, in its order and dtype.
        """
        shape = (rows.shape[1], rows.shape[2], cols.shape[2])
        size = shape[0] * shape[1] * shape[2]
        a, b, c = (buf[:size].view(shape) for buf in self.bufs)
        r, q = rows[..., None], cols[:, :, None, :]
        torch.minimum(r[2], q[2], out=a)
        torch.maximum(r[0], q[0], out=b)
        a.sub_(b).clamp_(min=0)
        torch.minimum(r[3], q[3], out=b)
        torch.maximum(r[1], q[1], out=c)
        b.sub_(c).clamp_(min=0)
        inter = a.mul_(b)
        union = torch.add(r[4], q[4], out=b).sub_(inter)
        return inter.div_(union).gt_(thr)


def _expand(counts: Tensor) -> tuple[Tensor, Tensor]:
    """For counts c_k: (k repeated c_k times, 0..c_k-1 for each k)."""
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    offset = torch.arange(owner.numel(), device=counts.device) - (counts.cumsum(0) - counts)[owner]
    return owner, offset


def _windows(space: _Spatial, chunks: Tensor, ref: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Search windows (chunk id, first, length) into ``ref``, by chunk, covering every pair a chunk may need."""
    b = space.bounds[chunks].amax(1)
    x_lo, x_hi, y_lo, y_hi = -b[:, 0], b[:, 1], -b[:, 2], b[:, 3]
    k_lo, k_hi, c_lo, c_hi = -b[:, 4], b[:, 5], -b[:, 6], b[:, 7]
    n_k = (k_hi - k_lo + 1).long().clamp(min=0)  # 0 for a threshold above 1: no partner class
    chunk, offset = _expand((c_hi - c_lo + 1).long() * n_k)
    cat = c_lo[chunk] + (offset // n_k[chunk]).double()
    cls = k_lo[chunk] + (offset % n_k[chunk]).double()
    height = space.heights[cls.long()]
    s_lo = ((y_lo[chunk] - space.y_min) / height).floor().clamp(min=0)
    s_hi = ((y_hi[chunk] - space.y_min) / height).floor().clamp(max=space.n_strips - 1)
    triple, offset = _expand((s_hi - s_lo + 1).long().clamp(min=0))
    chunk, cat, cls = chunk[triple], cat[triple], cls[triple]
    strip = s_lo[triple] + offset.double()
    ref_key = space.ref_key[ref].contiguous()
    lo = torch.searchsorted(ref_key, space.key(cat, cls, strip, x_lo[chunk]) - space.slack, side="left")
    hi = torch.searchsorted(ref_key, space.key(cat, cls, strip, x_hi[chunk]) + space.slack, side="right")
    return chunk, lo, (hi - lo).clamp(min=0)


def _chunks(boxes: _Boxes, cand: Tensor, by_category: bool, values: Tensor | None = None, fill: int | None = None) -> Tensor:
    """Long[C, CHUNK_ROWS]: ``cand`` cut in runs (of one category if ``by_category``: ``cand`` is then
    grouped by category), padded with the NaN box N. With ``values``, the table holds
    ``values[i]`` where it would hold ``cand[i]``, and ``fill`` as padding."""
    values = cand if values is None else values
    fill = boxes.n if fill is None else fill
    if not by_category:
        pad = -cand.numel() % CHUNK_ROWS
        return torch.nn.functional.pad(values, (0, pad), value=fill).view(-1, CHUNK_ROWS)
    cats = boxes.ints[1, cand]
    counts = torch.bincount(cats)
    per_cat = (counts + CHUNK_ROWS - 1) // CHUNK_ROWS
    position = torch.arange(cand.numel(), device=cand.device) - (counts.cumsum(0) - counts)[cats]
    slot = ((per_cat.cumsum(0) - per_cat)[cats] + position // CHUNK_ROWS) * CHUNK_ROWS + position % CHUNK_ROWS
    table = torch.full((int(per_cat.sum()) * CHUNK_ROWS,), fill, dtype=values.dtype, device=cand.device)
    table[slot] = values
    return table.view(-1, CHUNK_ROWS)


def _tiles(boxes: _Boxes, cand: Tensor, ref: Tensor, limit: int | None = None):
    """Yield (rows Long[T, R], cols Long[T, L], mixed) box ids such that every (cand, ref) pair of one
    category that may have IoU > thr is in some tile; ``mixed``: the tile may pair categories.

    Few pairs are tested all against all. Otherwise ``cand`` and ``ref`` come in spatial order:
    each chunk's columns are the concatenation of its search windows, and chunks with alike column
    counts are batched, padded with the NaN box N. If the windows hold more than ``limit`` columns
    in all, yields only None (their column lists would be built at once).
    """
    if cand.numel() * ref.numel() <= DENSE_PAIRS:
        chunks = _chunks(boxes, cand, by_category=False)
        for first in range(0, ref.numel(), MAX_WINDOW):
            cols = ref[first : first + MAX_WINDOW]
            per_batch = max(1, BATCH_ELEMS // (CHUNK_ROWS * cols.numel()))
            for s in range(0, chunks.shape[0], per_batch):
                rows = chunks[s : s + per_batch]
                yield rows, cols.expand(rows.shape[0], -1), boxes.has_cats
        return
    chunks = _chunks(boxes, cand, by_category=boxes.has_cats)
    n_chunks = chunks.shape[0]
    chunk, lo, length = _windows(boxes.spatial, chunks, ref)
    if limit is not None and int(length.sum()) > limit:
        yield None
        return
    window, offset = _expand(length)
    owner = chunk[window]
    column = ref[lo[window] + offset]
    total = torch.bincount(owner, minlength=n_chunks)
    position = torch.arange(owner.numel(), device=ref.device) - (total.cumsum(0) - total)[owner]
    # A chunk with more than MAX_WINDOW columns is split into several pieces with the same rows.
    pieces = (total + MAX_WINDOW - 1) // MAX_WINDOW
    piece_rows = torch.repeat_interleave(torch.arange(n_chunks, device=ref.device), pieces)
    owner = (pieces.cumsum(0) - pieces)[owner] + position // MAX_WINDOW
    position = position % MAX_WINDOW
    piece_len = torch.bincount(owner, minlength=piece_rows.numel())
    # Lay all pieces out in one flat table, grouped by padded width (the next power of two), so one
    # scatter fills every column list; each group is then a [pieces, width] view.
    bucket = torch.ceil(torch.log2(piece_len.clamp(min=8).double())).long()
    bucket = torch.where(piece_len > 0, bucket, -1)
    bucket, by_width = bucket.sort(stable=True)
    width = torch.where(bucket >= 0, 1 << bucket.clamp(min=0), 0)
    base = torch.empty_like(width)
    base[by_width] = width.cumsum(0) - width
    flat = torch.full((int(width.sum()),), boxes.n, dtype=ref.dtype, device=ref.device)
    flat[base[owner] + position] = column
    piece_rows = piece_rows[by_width]
    groups = torch.unique_consecutive(bucket, return_counts=True)
    first_piece, first_slot = 0, 0
    for b, count in zip(groups[0].tolist(), groups[1].tolist(), strict=True):
        if b >= 0:
            w = 1 << b
            cols = flat[first_slot : first_slot + count * w].view(count, w)
            rows = chunks[piece_rows[first_piece : first_piece + count]]
            per_batch = max(1, BATCH_ELEMS // (CHUNK_ROWS * w))
            for s in range(0, count, per_batch):
                yield rows[s : s + per_batch], cols[s : s + per_batch], False
            first_slot += count * w
        first_piece += count


def _category_tiles(boxes: _Boxes):
    """Tiles (as from ``_tiles``) pairing every active box with the active boxes of its category
    whose x1 is within its search range (all of them for a threshold <= 0)."""
    members = _indices(boxes.active)
    x1 = boxes.floats[0, members].double()
    widths = boxes.floats[2, members].double() - x1
    span = float(x1.max() - x1.min()) if members.numel() else 0.0
    max_w = float(widths.max()) if members.numel() else 0.0
    thr = boxes.iou_threshold
    if thr > 0:
        t = min(thr, 2.0) * (1.0 - 1e-5)  # a little below (see _Spatial); capped: finite for thr = inf
        reach = widths * ((1.0 - t) / t) + 1e-6
        left, right = reach.clamp(max=max_w + 1e-6), torch.minimum(reach, widths + 1e-6)
    else:
        left = right = torch.full_like(x1, span + max_w + 1.0)
    gap = 2 * span + 4 * max_w + 8.0  # wider than any range: categories never meet
    key = boxes.ints[1, members].double() * gap + (x1 - (x1.min() if members.numel() else 0.0))
    key, order = key.sort()
    members, left, right = members[order], left[order], right[order]
    chunks = _chunks(boxes, members, by_category=True)
    # Position in ``members`` of each chunk row (-1: padding, which reads the +-inf entry appended below).
    slot = _chunks(boxes, members, True, torch.arange(members.numel(), device=members.device), -1)
    pad = torch.tensor([math.inf], dtype=key.dtype, device=key.device)
    lows = torch.cat([key - left, pad])[slot].amin(1)
    highs = torch.cat([key + right, -pad])[slot].amax(1)
    lo = torch.searchsorted(key, lows, side="left")
    length = torch.searchsorted(key, highs, side="right") - lo
    padded = torch.nn.functional.pad(members, (0, 1), value=boxes.n)
    bucket = torch.ceil(torch.log2(length.clamp(min=8).double())).long()
    for b in torch.unique(bucket).tolist():
        ids = _indices(bucket == b)
        width = 1 << b
        offs = torch.arange(width, device=members.device)
        cols = padded[torch.where(offs < length[ids, None], lo[ids, None] + offs, members.numel())]
        per_batch = max(1, BATCH_ELEMS // (CHUNK_ROWS * width))
        for s in range(0, ids.numel(), per_batch):
            yield chunks[ids[s : s + per_batch]], cols[s : s + per_batch], False


def _pairs(boxes: _Boxes, tiles, work: _Batch, edges: bool, limit: int | None = None):
    """IoU > threshold for the (row, column) box pairs of ``tiles`` (see ``_tiles``).

    With ``edges`` False, returns Bool[N] marking the row boxes some column box suppresses; with
    ``edges`` True, the pairs (i, j) of box indices with rank_i < rank_j, or None as soon as more
    than ``limit`` pairs (counted in both directions) are found.
    """
    device = boxes.floats.device
    hit = torch.zeros(boxes.n + 1, dtype=torch.bool, device=device)
    firsts, seconds = [], []
    found = 0
    for tile in tiles:
        if tile is None:
            return None
        rows, cols, mixed = tile
        row_boxes = boxes.floats.index_select(1, rows.reshape(-1)).view(5, *rows.shape)
        col_boxes = boxes.floats.index_select(1, cols.reshape(-1)).view(5, *cols.shape)
        above = work.above(row_boxes, col_boxes, boxes.thr_f)
        if mixed:
            above.mul_(boxes.ints[1, rows][..., None] == boxes.ints[1, cols][:, None, :])
        row_hit = above.amax(2) > 0
        if not edges:
            hit.index_fill_(0, rows.masked_select(row_hit), True)
        elif bool(row_hit.any()):
            t, r = row_hit.nonzero(as_tuple=True)
            p, q = above[t, r].nonzero(as_tuple=True)
            firsts.append(rows[t[p], r[p]])
            seconds.append(cols[t[p], q])
            found += p.numel()
            if limit is not None and found > limit:
                return None
    if not edges:
        return hit[: boxes.n]
    if not firsts:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty
    first, second = torch.cat(firsts), torch.cat(seconds)
    # Both directions of each pair were found; keep the one from the higher-scoring box (which also
    # drops a box paired with itself; the NaN padding box N never passes the test).
    forward = boxes.ints[0, first] < boxes.ints[0, second]
    return first[forward], second[forward]


def _greedy_on_edges(members: Tensor, first: Tensor, second: Tensor, max_rounds: int | None = None) -> Tensor | None:
    """Bool[N]: the ``members`` greedy keeps when box ``first[e]`` (earlier) suppresses ``second[e]`` if kept;
    None if that takes more than ``max_rounds`` rounds.

    The answer is the unique solution of keep[j] = not any(keep[i] for edges i -> j); iterating that
    equation from all-kept settles every box once its predecessors have settled, so the loop runs
    as many rounds as the longest suppression chain (a few, on real and random sets).
    """
    keep = members
    rounds = 0
    while first.numel():
        if rounds == max_rounds:
            return None
        new = members.clone()
        new[second[keep[first]]] = False
        if torch.equal(new, keep):
            break
        keep = new
        rounds += 1
    return keep


def _greedy_in_order(boxes: _Boxes, members: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """Bool[N]: as :func:`_greedy_on_edges`, visiting the ``members`` one at a time by score: for a long
    suppression chain (boxes overlapping their neighbours along a row, scores falling along it), where
    the rounds would number a sizeable fraction of the boxes."""
    successors: dict[int, list[int]] = {}
    for i, j in zip(first.tolist(), second.tolist(), strict=True):
        successors.setdefault(i, []).append(j)
    suppressed: set[int] = set()
    kept = []
    for i in boxes.order.masked_select(members[boxes.order]).tolist():
        if i not in suppressed:
            kept.append(i)
            suppressed.update(successors.get(i, ()))
    keep = torch.zeros_like(members)
    keep[torch.tensor(kept, dtype=torch.long, device=members.device)] = True
    return keep


def _indices(mask: Tensor) -> Tensor:
    return torch.arange(mask.numel(), device=mask.device).masked_select(mask)


def _greedy_nms(boxes: _Boxes) -> Tensor:
    """Bool[N]: which boxes greedy NMS keeps; boxes of different categories never suppress each other."""
    n = boxes.n
    work = _Batch(boxes.dtype, boxes.floats.device)
    kept = ~boxes.active
    if boxes.has_cats:
        counts = torch.bincount(boxes.ints[1, : boxes.n][boxes.active]).double()
        if float((counts * counts).sum()) <= CATEGORY_PAIRS:
            found = _pairs(boxes, _category_tiles(boxes), work, edges=True, limit=CATEGORY_EDGE_LIMIT)
            if found is not None:
                return kept | _greedy_on_edges(boxes.active, *found)
    start, block = 0, FIRST_BLOCK
    while start < n:
        stop = min(n, start + block)
        in_block = torch.zeros(n, dtype=torch.bool, device=kept.device)
        in_block[boxes.order[start:stop]] = True
        in_block &= boxes.active
        tiles = _tiles(boxes, *_in_order(boxes, in_block, kept & boxes.active))
        in_block &= ~_pairs(boxes, tiles, work, edges=False)
        kept |= _resolve(boxes, in_block, work)
        survival = max(int(in_block.sum()) / (stop - start), 1.0 / 256)
        start, block = stop, max(FIRST_BLOCK, int(TARGET_SURVIVORS / survival))
    return kept


def _resolve(boxes: _Boxes, cand: Tensor, work: _Batch) -> Tensor:
    """Bool[N]: the boxes of mask ``cand`` greedy keeps, when no box outside ``cand`` suppresses any of them.

    Their suppression edges are found all at once unless there are more than EDGE_LIMIT pairs (boxes
    that mostly overlap each other, such as an object first met at lower scores, give one per pair):
    the candidates are then split by score, the upper half resolved first and its kept boxes tested
    against the lower half before that is resolved, so memory stays bounded as in a sequential pass.
    """
    count = int(cand.sum())
    limit = EDGE_LIMIT if count > 1 else None
    found = _pairs(boxes, _tiles(boxes, *_in_order(boxes, cand, cand), limit), work, edges=True, limit=limit)
    if found is not None:
        settled = _greedy_on_edges(cand, *found, MAX_ROUNDS)
        return _greedy_in_order(boxes, cand, *found) if settled is None else settled
    ranked = boxes.order.masked_select(cand[boxes.order])
    upper = torch.zeros_like(cand)
    upper[ranked[: count // 2]] = True
    kept = _resolve(boxes, upper, work)
    lower = cand & ~upper
    lower &= ~_pairs(boxes, _tiles(boxes, *_in_order(boxes, lower, kept)), work, edges=False)
    return kept | _resolve(boxes, lower, work)


def _in_order(boxes: _Boxes, cand: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of the boxes in masks ``cand`` and ``ref``, in spatial key order unless the pairs are few."""
    if int(cand.sum()) * int(ref.sum()) <= DENSE_PAIRS:
        return _indices(cand), _indices(ref)
    space = boxes.spatial
    return space.chunk_order.masked_select(cand[space.chunk_order]), space.order.masked_select(ref[space.order])


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression; the indices torchvision.ops.nms keeps.

    Args:
        boxes: Tensor[N, 4] xyxy, float32/float64 (float16/bfloat16 are computed in float32).
        scores: Tensor[N], any real dtype; ties are visited in index order.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box is > this.

    Returns:
        Tensor[K] int64: indices of the kept boxes, by decreasing score. Boxes and scores may require
        gradients (a detector's outputs); the indices carry none.

    Bad input: N = 0 gives an empty result. NaN scores, or NaN/inf box coordinates, raise ValueError;
    +-inf scores are ordinary (largest/smallest). A box with ``x2 <= x1`` or ``y2 <= y1`` has zero
    intersection with every box (torchvision's clamped overlap), so for ``iou_threshold >= 0`` it
    is always kept and never suppresses another box; with a negative threshold every pair with a
    non-zero union counts as overlapping, as in torchvision.
    """
    _check_inputs(boxes, scores, "nms")
    boxes, scores = boxes.detach(), scores.detach()  # indices carry no gradient; the IoU buffers take none
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    table = _Boxes(boxes, scores, float(iou_threshold), None)
    keep = _greedy_nms(table)
    return table.order.masked_select(keep[table.order])


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS within each category; the indices torchvision.ops.batched_nms keeps.

    Args:
        boxes: Tensor[N, 4] xyxy, float (float16/bfloat16 are computed in float32, as for :func:`nms`).
        scores: Tensor[N]. idxs: Tensor[N] integer category of each box.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box of its category is > this.

    Returns:
        Tensor[K] int64: kept indices by decreasing score.

    Like torchvision, up to 1,000 boxes (4,000 coordinates) are shifted apart by category and run
    through one ``nms`` (the shift rounds coordinates, which can change an IoU in the last bit);
    above that each category is suppressed on its own coordinates. So are boxes whose shift would
    overflow the dtype (coordinates near its largest value), where torchvision's shifted boxes become
    infinite and are all kept. Bad input as for :func:`nms`.
    """
    _check_inputs(boxes, scores, "batched_nms")
    if idxs.shape != scores.shape:
        raise ValueError(f"batched_nms: idxs must be Tensor[N] like scores, got shape {tuple(idxs.shape)}")
    if idxs.is_floating_point() and not bool((idxs == idxs.trunc()).all()):
        # the per-category path reads them as integers, which would merge categories 0.2 and 0.5
        raise ValueError("batched_nms: idxs must hold integer categories, got fractional values")
    boxes, scores = boxes.detach(), scores.detach()
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if boxes.numel() <= BATCHED_NMS_OFFSET_LIMIT:
        # Shifted in float32, not half: in float16/bfloat16 the shift would round each category's
        # coordinates to a coarser grid the larger its id (bfloat16: whole pixels from 128 on).
        work = boxes.to(_work_dtype(boxes)) if boxes.is_floating_point() else boxes
        shifted = work + (idxs.to(work) * (work.max() + torch.tensor(1).to(work)))[:, None]
        if not shifted.is_floating_point() or bool(shifted.isfinite().all()):
            return nms(shifted, scores, iou_threshold)
        # The shift overflowed (coordinates near the dtype's largest value): per category below.
    table = _Boxes(boxes, scores, float(iou_threshold), idxs)
    keep = _greedy_nms(table)
    # torchvision orders the kept boxes with an unstable sort; that is the score order unless scores tie.
    in_order = table.order.masked_select(keep[table.order])
    kept_scores = scores[in_order]
    if in_order.numel() < 2 or bool((kept_scores[1:] < kept_scores[:-1]).all()):
        return in_order
    idx = _indices(keep)
    return idx[scores[idx].sort(descending=True)[1]]


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    method: Literal["gaussian", "linear"] = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al., 2017): decay the scores of overlapping boxes instead of dropping them.

    Repeatedly takes the box M with the highest current score (the first on ties), keeps it, and
    multiplies the score s_i of every remaining box b_i by
      ``"linear"``:   1 - IoU(M, b_i) if IoU(M, b_i) >= iou_threshold, else 1;
      ``"gaussian"``: exp(-IoU(M, b_i)**2 / sigma) (``iou_threshold`` is not used, as in the paper).
    A box whose score falls below ``score_threshold`` is discarded.

    Args:
        boxes: Tensor[N, 4] xyxy, float. scores: Tensor[N] float.

    Returns:
        (keep Tensor[K] int64, new_scores Tensor[K] scores.dtype): kept indices in selection order
        (decreasing decayed score) and their decayed scores.

    Bad input: N = 0 gives empty results; NaN scores or NaN/inf box coordinates raise ValueError; an
    unknown ``method`` or ``sigma <= 0`` raises ValueError. A box with ``x2 <= x1`` or ``y2 <= y1``
    has zero intersection with every box (IoU 0, also when the union is 0 too), so it neither
    decays nor is decayed. The loop runs once per kept box, each step O(N).
    """
    _check_inputs(boxes, scores, "soft_nms")
    if method not in ("gaussian", "linear"):
        raise ValueError(f"soft_nms: method must be 'gaussian' or 'linear', got {method!r}")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"soft_nms: sigma must be > 0, got {sigma}")
    dtype = _work_dtype(boxes)
    b = boxes.to(dtype)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    current = scores.clone()
    alive = current >= score_threshold
    keep, kept_scores = [], []
    while bool(alive.any()):
        best = int(torch.where(alive, current, -math.inf).argmax())
        keep.append(best)
        kept_scores.append(current[best])
        alive[best] = False
        wh = (torch.minimum(b[best, 2:], b[:, 2:]) - torch.maximum(b[best, :2], b[:, :2])).clamp(min=0)
        inter = wh[:, 0] * wh[:, 1]
        union = area[best] + area - inter
        iou = torch.where(union != 0, inter / union, 0.0)
        if method == "linear":
            decay = torch.where(iou >= iou_threshold, 1.0 - iou, 1.0)
        else:
            decay = torch.exp(-(iou * iou) / sigma)
        current = torch.where(alive, current * decay.to(current.dtype), current)
        alive &= current >= score_threshold
    if not keep:
        return torch.empty(0, dtype=torch.int64, device=boxes.device), scores[:0].clone()
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device), torch.stack(kept_scores)
