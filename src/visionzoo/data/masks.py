"""COCO instance masks: run-length encodings (RLE), polygons, binary masks, their areas and boxes.

The one codec of the package: :class:`visionzoo.data.CocoDetection` decodes annotations with it and
:mod:`visionzoo.metrics` evaluates ``segm`` with it, so both agree with pycocotools pixel for pixel.
The forms of a mask:

- a binary mask bool[H, W];
- a COCO RLE dict ``{"size": [H, W], "counts": ...}``: run lengths over the pixels in column-major
  order (pixel ``x * H + y``), starting with a (possibly empty) run of zeros. ``counts`` is a list of
  ints ("uncompressed", used by crowd annotations) or a string ("compressed"): from the fourth run
  on each run is stored as its difference to the run two places before it, in 5-bit groups, least
  significant first, as characters from '0' (bit 5 of a character: more groups follow; bit 4 of the
  last group: the sign);
- polygons ``[[x0, y0, x1, y1, ...], ...]`` in pixel coordinates (their union), rasterised with
  pycocotools' rule: the outline is walked on a grid 5 times finer and, in each pixel column, the
  state flips between outside and inside where the outline crosses the column's centre line;
- :class:`Rle`: the foreground runs ``[starts, ends)`` int64[n] in column-major order, the form
  areas, boxes and mask IoUs are computed on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

_POLY_SCALE = 5  # pycocotools samples polygon outlines on a grid 5 times finer than the pixels


class Rle(NamedTuple):
    """Foreground runs of an h x w mask: ``starts``, ``ends`` int64[n], half-open, strictly increasing,
    over the column-major pixel index ``x * height + y``."""

    height: int
    width: int
    starts: np.ndarray
    ends: np.ndarray


def counts_to_string(counts: Sequence[int]) -> str:
    """COCO's compressed string for run lengths ``counts`` (ints, background first)."""
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


def _counts_of_strings(texts: Sequence[str | bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The run lengths of COCO's compressed strings ``texts``, decoded together (NumPy over all their characters).

    Returns ``counts`` int64[R] (Python ints, dtype object, where a run or a sum passes int64) and ``first``
    int64[K + 1]: text k's runs are ``counts[first[k]:first[k + 1]]``. Raises ValueError on an invalid character
    or a text that ends inside a run (for one text, the error :func:`string_to_counts` states).
    """
    texts = [t.decode("ascii", errors="replace") if isinstance(t, bytes) else t for t in texts]
    joined = "".join(texts)
    try:
        chars = np.frombuffer(joined.encode("ascii"), np.uint8)
    except UnicodeEncodeError:  # one code point per character, so that an index names the character
        chars = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), np.uint32)
    invalid = (chars < 48) | (chars >= 112)
    if invalid.any():
        raise ValueError(f"compressed RLE string has an invalid character {joined[int(invalid.argmax())]!r}")
    codes = (chars - 48).astype(np.uint8)  # 6 bits: bit 5 "more groups follow", bits 0-4 the group
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    text_end = np.cumsum(lengths)
    last = codes < 32  # bit 5 clear: a run's last group
    if not last[text_end[lengths > 0] - 1].all():
        raise ValueError("compressed RLE string ends inside a run")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))[: len(ends)]  # every text ends a run: none spans two texts
    groups = ends - starts + 1
    place = np.arange(len(codes)) - np.repeat(starts, groups)  # 0 for a run's least significant group
    kind = np.int64 if groups.max(initial=0) <= 12 else object  # 12 groups: 60 bits, an int64 with room for sums
    bits = (codes & 0x1F).astype(kind) << (5 * place).astype(kind)
    values = np.add.reduceat(bits, starts) if len(ends) else np.zeros(0, kind)  # disjoint bits: their sum is their OR
    negative = codes[ends] >= 16  # bit 4 of the last group: the sign
    values[negative] -= np.ones(int(negative.sum()), kind) << (5 * groups[negative]).astype(kind)
    if kind is np.int64 and float(np.abs(values).sum(dtype=np.float64)) >= 2**62:  # sums below could pass int64
        values = values.astype(object)
    first = np.append(np.searchsorted(ends, text_end - lengths), len(ends))
    # From its fourth run on, a text stores a run as the difference to the run two places before: a running sum
    # along every other run, restarting at each text's first three runs (run 0 stands alone, runs 1 and 2 start the
    # two chains). Both parities at once, as the columns of [R / 2, 2]: each the sum since its latest restart.
    heads = (first[:-1, None] + np.arange(3)).ravel()
    restart = np.zeros(len(ends) + len(ends) % 2, bool)
    restart[heads[heads < np.repeat(first[1:], 3)]] = True
    pairs = np.append(values, np.zeros(len(ends) % 2, kind)).reshape(-1, 2)
    sums = np.cumsum(pairs, axis=0)
    latest = np.maximum.accumulate(np.where(restart.reshape(-1, 2), np.arange(len(pairs))[:, None], 0), axis=0)
    counts = sums - np.take_along_axis(sums - pairs, latest, axis=0)
    return counts.ravel()[: len(ends)], first


def string_to_counts(text: str | bytes) -> list[int]:
    """The run lengths of COCO's compressed string ``text``; ValueError on a malformed string."""
    return _counts_of_strings([text])[0].tolist()


def _rle_of_flat(flat: np.ndarray, height: int, width: int) -> Rle:
    """:class:`Rle` of bool[height * width] ``flat`` (column-major pixels)."""
    padded = np.concatenate([[False], flat, [False]])
    change = np.flatnonzero(padded[1:] != padded[:-1])
    return Rle(height, width, change[0::2].astype(np.int64), change[1::2].astype(np.int64))


def _rles_of_counts(counts: np.ndarray, first: np.ndarray, heights: Sequence[int], widths: Sequence[int]) -> list[Rle] | None:
    """The :class:`Rle` of several masks at once: mask k has run lengths ``counts[first[k]:first[k + 1]]`` (int64[R],
    background first) and size heights[k] x widths[k]. None when a count is negative or a mask's counts do not
    cover its pixels (:func:`rle_from_counts` names the mask)."""
    try:
        pixels = np.array([h * w for h, w in zip(heights, widths)], dtype=np.int64)
    except OverflowError:
        return None
    if counts.dtype != np.int64 or (counts < 0).any() or float(pixels.sum(dtype=np.float64)) >= 2**62:
        return None
    edges = np.cumsum(counts)
    before = np.concatenate(([0], edges))[first]  # the pixels of the masks before each
    if (np.diff(before) != pixels).any():
        return None
    runs = np.diff(first)
    local = np.arange(len(counts)) - np.repeat(first[:-1], runs)  # a run's index in its mask
    foreground = np.flatnonzero((local % 2 == 1) & (counts > 0))
    owner = np.repeat(np.arange(len(runs)), runs)[foreground]
    ends = edges[foreground] - before[owner]
    starts = ends - counts[foreground]
    split = np.cumsum(np.bincount(owner, minlength=len(runs)))[:-1]
    return [Rle(int(h), int(w), s, e) for h, w, s, e in zip(heights, widths, np.split(starts, split), np.split(ends, split))]


def rle_from_counts(counts: Sequence[int] | np.ndarray, height: int, width: int, what: str = "RLE") -> Rle:
    """:class:`Rle` of run lengths ``counts`` (int[n], background first) of an h x w mask.

    Raises ValueError, naming ``what``, when a count is negative or they do not cover h * w pixels.
    """
    try:
        counts = np.asarray(counts, dtype=np.int64).ravel()
    except (OverflowError, TypeError, ValueError):
        raise ValueError(f"{what}: RLE counts must be integers") from None
    if counts.size and counts.min() < 0:
        raise ValueError(f"{what}: RLE counts must not be negative")
    total = int(counts.sum())
    if total != height * width:
        raise ValueError(f"{what}: RLE counts sum to {total}, expected {height}x{width} = {height * width}")
    edges = np.cumsum(counts)
    starts, ends = edges[0::2][: len(edges) // 2], edges[1::2]
    keep = ends > starts
    return Rle(height, width, starts[keep], ends[keep])


def json_whole_number(value: Any, minimum: int = 0) -> int | None:
    """A JSON field's ``value`` as an int when it is a whole number >= ``minimum`` (4, or 4.0 as some tools write
    it; NumPy's too; not True, "4", 4.5 or inf), else None."""
    if type(value) is int:  # the common case, read once per mask of a file: no isinstance chain
        return value if value >= minimum else None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    if isinstance(value, float | np.floating) and not float(value).is_integer():  # 4.5, inf, nan
        return None
    return int(value) if value >= minimum else None


def _rle_header(rle: Mapping[str, Any], what: str) -> tuple[int, int, Any]:
    """The checked height, width and counts of COCO RLE dict ``rle`` (counts as given: a list or a string)."""
    if "counts" not in rle or "size" not in rle:
        raise ValueError(f"{what}: an RLE needs 'size' and 'counts'")
    size = rle["size"]
    # a NumPy size (np.array(mask.shape)) too, as pycocotools reads it
    listed = isinstance(size, list | tuple) or (isinstance(size, np.ndarray) and size.ndim == 1)
    sides = [json_whole_number(side) for side in size] if listed else []
    if len(sides) != 2 or None in sides:
        raise ValueError(f"{what}: RLE size must be [height, width], two whole numbers, got {size!r:.80}")
    counts = rle["counts"]
    if isinstance(counts, str) and counts[:2] in ("b'", 'b"'):  # json.dump refuses bytes; str() "fixes" it
        raise ValueError(f"{what}: RLE counts {counts!r:.40} are the text of bytes (str(counts)); write "
                         "counts.decode() instead")
    return sides[0], sides[1], counts


def _rle_of_dict(rle: Mapping[str, Any], what: str) -> Rle:
    height, width, counts = _rle_header(rle, what)
    if isinstance(counts, str | bytes):
        try:
            counts = string_to_counts(counts)
        except ValueError as error:
            raise ValueError(f"{what}: {error}") from None
    return rle_from_counts(counts, height, width, what)


def rle_from_mask(mask: Any, what: str = "mask") -> Rle:
    """:class:`Rle` of a binary mask [H, W] (NumPy or torch, any dtype; nonzero is foreground).

    A floating-point mask must hold only 0 and 1: soft masks (probabilities) raise ValueError rather
    than count every pixel above 0 as foreground; threshold them first (``mask > 0.5``)."""
    array = np.asarray(mask.detach().cpu() if hasattr(mask, "cpu") else mask)
    if array.ndim != 2:
        hint = "; torchvision's Mask R-CNN gives masks [N, 1, H, W]: take masks[:, 0]" if array.shape[:1] == (1,) else ""
        raise ValueError(f"{what}: a mask must be [H, W], got shape {array.shape}{hint}")
    if array.dtype.kind in "fc":
        soft = (array != 0) & (array != 1)
        if soft.any():
            raise ValueError(f"{what}: a float mask must hold only 0 and 1, got {array[soft].flat[0]!r}; "
                             "threshold soft masks first (e.g. mask > 0.5)")
    return _rle_of_flat((array != 0).T.ravel(), array.shape[0], array.shape[1])


def mask_to_counts(mask: Any) -> list[int]:
    """COCO's uncompressed counts of binary mask [H, W]: run lengths in column-major order, background first."""
    rle = rle_from_mask(mask)
    edges = np.stack([rle.starts, rle.ends], axis=1).ravel()
    runs = np.diff(edges, prepend=0).tolist()
    size = rle.height * rle.width
    last = int(edges[-1]) if edges.size else 0
    return [*runs, size - last] if last < size else runs


def mask_to_rle(mask: Any) -> dict[str, Any]:
    """COCO compressed RLE ``{"size": [H, W], "counts": str}`` of binary mask [H, W] (pycocotools' encode)."""
    counts = mask_to_counts(mask)  # checks the shape before it is read
    height, width = np.shape(mask)
    return {"size": [int(height), int(width)], "counts": counts_to_string(counts)}


def rle_to_mask(rle: Rle | Mapping[str, Any]) -> np.ndarray:
    """bool[H, W] mask of an :class:`Rle` or a COCO RLE dict (compressed or uncompressed ``counts``)."""
    if not isinstance(rle, Rle):
        rle = _rle_of_dict(rle, "segmentation")
    edges = np.stack([rle.starts, rle.ends], axis=1).ravel()
    runs = np.diff(edges, prepend=0, append=rle.height * rle.width)
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(rle.width, rle.height).T


# pycocotools samples every edge at each 1/5 pixel along its longer axis, wherever it runs: a polygon's edges outside
# any image (a perimeter of 2 million pixels) would take gigabytes, and beyond int64 a crash.
MAX_POLYGON_SAMPLES = 10**7
MAX_POLYGON_IMAGE_PIXELS = 2**62


def _polygon_samples(xy: np.ndarray) -> float:
    """How many points :func:`_polygon_toggles` samples along polygon ``xy`` float64[2k] (counted in floats)."""
    x, y = np.trunc(_POLY_SCALE * xy[0::2] + 0.5), np.trunc(_POLY_SCALE * xy[1::2] + 0.5)
    return float(np.maximum(np.abs(np.roll(x, -1) - x), np.abs(np.roll(y, -1) - y)).sum() + len(x))


def _polygon_toggles(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Column-major pixel indices int64[t] where polygon ``xy`` float64[2k] flips outside/inside.

    pycocotools' rule: the vertices are rounded onto the 5x finer grid, each edge is sampled at
    every fine step along its longer axis (from its lower end, listed in walking order); where the
    walk steps across a pixel column's centre line, the pixel at the crossing's (upper) height is
    where that column flips.
    """
    x = np.trunc(_POLY_SCALE * xy[0::2] + 0.5).astype(np.int64)
    y = np.trunc(_POLY_SCALE * xy[1::2] + 0.5).astype(np.int64)
    x_end, y_end = np.roll(x, -1), np.roll(y, -1)
    dx, dy = np.abs(x_end - x), np.abs(y_end - y)
    along_x = dx >= dy
    flip = np.where(along_x, x > x_end, y > y_end)
    lo_x, hi_x = np.where(flip, x_end, x), np.where(flip, x, x_end)
    lo_y, hi_y = np.where(flip, y_end, y), np.where(flip, y, y_end)
    steps = np.where(along_x, dx, dy)
    rise = np.where(along_x, hi_y - lo_y, hi_x - lo_x)
    # A repeated vertex gives a 0-step edge: its one sample is the vertex (pycocotools' 0/0 there
    # never reaches the result, as the samples beside it share its column).
    slope = np.divide(rise, steps, out=np.zeros(len(steps)), where=steps > 0)
    edge = np.repeat(np.arange(len(steps)), steps + 1)
    first = np.cumsum(steps + 1) - (steps + 1)
    d = np.arange(len(edge)) - first[edge]
    t = np.where(flip[edge], steps[edge] - d, d)
    walked = t + np.where(along_x, lo_x, lo_y)[edge]
    slanted = np.trunc(np.where(along_x, lo_y, lo_x)[edge] + slope[edge] * t + 0.5).astype(np.int64)
    along = along_x[edge]
    u, v = np.where(along, walked, slanted), np.where(along, slanted, walked)

    step = np.flatnonzero(u[1:] != u[:-1]) + 1
    column = np.where(u[step] < u[step - 1], u[step], u[step] - 1)
    xd = (column + 0.5) / _POLY_SCALE - 0.5
    yd = (np.minimum(v[step], v[step - 1]) + 0.5) / _POLY_SCALE - 0.5
    on_column = (np.floor(xd) == xd) & (xd >= 0) & (xd <= width - 1)
    yd = np.ceil(np.clip(yd[on_column], 0, height))
    return xd[on_column].astype(np.int64) * height + yd.astype(np.int64)


def _runs_of_toggles(toggles: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs [starts, ends) of the pixels with an odd number of ``toggles`` int64[t] at or before them."""
    toggles = toggles[toggles < size]
    positions, multiplicity = np.unique(toggles, return_counts=True)
    flips = positions[multiplicity % 2 == 1]
    if len(flips) % 2:
        flips = np.append(flips, size)
    return flips[0::2], flips[1::2]


def _union(runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Union of several sets of runs [starts, ends), as strictly increasing runs."""
    if len(runs) == 1:
        return runs[0]
    starts = np.concatenate([s for s, _ in runs])
    ends = np.concatenate([e for _, e in runs])
    positions = np.concatenate([starts, ends])
    delta = np.concatenate([np.ones(len(starts), np.int64), -np.ones(len(ends), np.int64)])
    order = np.lexsort((-delta, positions))  # at one position, starts before ends: touching runs merge
    positions, delta = positions[order], delta[order]
    cover = np.cumsum(delta)
    opens = (delta > 0) & (cover == 1)
    closes = (delta < 0) & (cover == 0)
    return positions[opens], positions[closes]


def rle_from_polygons(
    polygons: Sequence[Sequence[float]], height: int, width: int, what: str = "polygon"
) -> Rle:
    """:class:`Rle` of the union of polygons ``[[x0, y0, x1, y1, ...], ...]`` on an h x w image.

    Pixel for pixel pycocotools' ``merge(frPyObjects(polygons, h, w))``: a polygon is its whole (x, y)
    pairs (an odd last coordinate is left out) and one of fewer than 3 points outlines nothing. Raises
    ValueError, naming ``what``, for a polygon that is not a list of finite numbers, or when no polygon
    has 3 points: the entry outlines nothing (pycocotools fails on it when its first polygon has at
    most 4 numbers, and gives an empty mask otherwise).
    """
    runs = []
    for polygon in polygons:
        try:
            xy = np.asarray(polygon, dtype=np.float64).ravel()
        except (TypeError, ValueError):  # an object or a ragged list among the coordinates
            xy = np.array([np.nan])
        if not np.isfinite(xy).all() or not isinstance(polygon, list | tuple | np.ndarray):
            raise ValueError(f"{what}: a polygon needs at least 3 finite (x, y) points, got {polygon!r:.80}")
        xy = xy[: xy.size // 2 * 2]
        if xy.size < 6:
            continue
        samples = _polygon_samples(xy)
        if samples > MAX_POLYGON_SAMPLES:
            raise ValueError(f"{what}: a polygon reaching {np.abs(xy).max():.3g} is too large to rasterise (its edges "
                             f"take {samples:.3g} samples, over {MAX_POLYGON_SAMPLES:.0e}): its points lie far outside "
                             f"the {width}x{height} image")
        runs.append(_runs_of_toggles(_polygon_toggles(xy, height, width), height * width))
    if not runs:
        if len(polygons):
            raise ValueError(f"{what}: a polygon needs at least 3 finite (x, y) points, got {polygons[0]!r:.80}")
        return Rle(height, width, np.zeros(0, np.int64), np.zeros(0, np.int64))
    starts, ends = _union(runs)
    return Rle(height, width, starts.astype(np.int64), ends.astype(np.int64))


def polygon_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """bool[H, W]: the union of COCO polygons ``[[x0, y0, x1, y1, ...], ...]``, as pycocotools rasterises it."""
    return rle_to_mask(rle_from_polygons(polygons, height, width))


def _union_of_rles(parts: list[Rle], what: str) -> Rle:
    """The union of RLEs ``parts`` of one size (pycocotools' ``merge``), naming ``what`` when their sizes differ."""
    sizes = sorted({(p.height, p.width) for p in parts})
    if len(sizes) > 1:
        (h0, w0), (h1, w1) = sizes[:2]
        raise ValueError(f"{what}: the RLEs of one segmentation differ in size: {h0}x{w0} and {h1}x{w1}")
    starts, ends = _union([(p.starts, p.ends) for p in parts])
    return Rle(parts[0].height, parts[0].width, starts.astype(np.int64), ends.astype(np.int64))


def to_rle(segmentation: Any, height: int | None, width: int | None, what: str = "segmentation") -> Rle:
    """:class:`Rle` of any supported segmentation: an :class:`Rle`, a COCO RLE dict, a list of them (their union, as
    pycocotools reads it), polygons (which need the image's ``height`` and ``width``) or a binary mask [H, W].
    Errors name ``what``."""
    if isinstance(segmentation, Rle):
        return segmentation
    if isinstance(segmentation, Mapping):
        return _rle_of_dict(segmentation, what)
    if isinstance(segmentation, list | tuple) and segmentation and all(isinstance(s, Mapping) for s in segmentation):
        return _union_of_rles([_rle_of_dict(part, what) for part in segmentation], what)
    if isinstance(segmentation, list | tuple):
        if height is None or width is None:
            raise ValueError(f"{what}: polygons need the image's 'height' and 'width'")
        if json_whole_number(height, 1) is None or json_whole_number(width, 1) is None:
            raise ValueError(f"{what}: the image's height and width must be positive integers, got {height!r:.40}, "
                             f"{width!r:.40}")
        if height * width > MAX_POLYGON_IMAGE_PIXELS:  # pixel indices are int64
            raise ValueError(f"{what}: an image of {height:.3g}x{width:.3g} pixels is too large to rasterise polygons in")
        return rle_from_polygons(segmentation, int(height), int(width), what)
    if hasattr(segmentation, "shape"):
        return rle_from_mask(segmentation, what)
    raise ValueError(f"{what}: unsupported segmentation of type {type(segmentation).__name__}")


DECODE_BATCH = 512  # compressed strings decoded per NumPy pass


def to_rles(segmentations: Sequence[Any], sizes: Sequence[tuple[Any, Any]], what: str = "segmentation") -> list[Rle]:
    """``[to_rle(segmentations[i], *sizes[i], f"{what} {i}") for i ...]``, ``sizes[i]`` the image's (height, width),
    with the compressed RLE strings among them decoded together, in NumPy passes over all their characters and runs
    (one at a time, a short string costs as much as a long one). The same masks, and the same first error, as one
    at a time."""
    rles = _to_rles_together(segmentations, sizes, what)
    if rles is None:  # an entry is bad: one at a time raises the first one's error
        rles = [to_rle(s, height, width, f"{what} {i}") for i, (s, (height, width)) in enumerate(zip(segmentations, sizes))]
    return rles


def _to_rles_together(segmentations: Sequence[Any], sizes: Sequence[tuple[Any, Any]], what: str) -> list[Rle] | None:
    """:func:`to_rles`, or None when an entry is bad (the batch may meet a later entry's error first)."""
    rles: list[Any] = [None] * len(segmentations)
    strings = []  # (index, height, width, text)
    try:
        for i, (segmentation, (height, width)) in enumerate(zip(segmentations, sizes)):
            if isinstance(segmentation, Mapping) and isinstance(segmentation.get("counts"), str | bytes):
                strings.append((i, *_rle_header(segmentation, f"{what} {i}")))
            else:
                rles[i] = to_rle(segmentation, height, width, f"{what} {i}")
    except ValueError:
        return None
    # In batches: the arrays of a whole file's characters (100k masks: tens of MB each) would be fresh memory,
    # page-faulted in at every call; a batch's fit the allocator's reused memory.
    for start in range(0, len(strings), DECODE_BATCH):
        batch = strings[start:start + DECODE_BATCH]
        try:
            counts, first = _counts_of_strings([text for *_, text in batch])
        except ValueError:
            return None
        decoded = _rles_of_counts(counts, first, [h for _, h, _, _ in batch], [w for _, _, w, _ in batch])
        if decoded is None:
            return None
        for (i, *_), rle in zip(batch, decoded):
            rles[i] = rle
    return rles


def concat_runs(masks: Sequence[Rle]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of N masks end to end: starts, ends int64[R]; mask k's are ``bounds[k]:bounds[k + 1]``, int64[N + 1]."""
    bounds = np.concatenate([[0], np.cumsum([len(m.starts) for m in masks], dtype=np.int64)])
    none = np.zeros(0, dtype=np.int64)
    starts = np.concatenate([none, *(m.starts for m in masks)]).astype(np.int64)
    ends = np.concatenate([none, *(m.ends for m in masks)]).astype(np.int64)
    return starts, ends, bounds


def rle_area(masks: Sequence[Rle]) -> np.ndarray:
    """Foreground pixel counts of N masks, float64[N] (pycocotools' ``area``)."""
    starts, ends, bounds = concat_runs(masks)
    covered = np.concatenate([[0], np.cumsum(ends - starts)])
    return (covered[bounds[1:]] - covered[bounds[:-1]]).astype(np.float64)


def rle_boxes(masks: Sequence[Rle]) -> np.ndarray:
    """Tight ``[x, y, w, h]`` boxes of N masks, float64[N, 4], zeros for an empty mask (pycocotools' ``toBbox``)."""
    out = np.zeros((len(masks), 4))
    starts, ends, bounds = concat_runs(masks)
    n_runs = np.diff(bounds)
    full = n_runs > 0
    if not full.any():
        return out
    first = bounds[:-1][full]  # reduceat's segments: an empty mask between two full ones holds no run
    h = np.repeat(np.array([m.height for m in masks], dtype=np.int64), n_runs)
    last = ends - 1
    x_start, x_end = starts // h, last // h
    wraps = x_end > x_start  # a run that wraps into the next column spans every row
    y_min = np.minimum.reduceat(np.where(wraps, 0, starts % h), first)
    y_max = np.maximum.reduceat(np.where(wraps, h - 1, last % h), first)
    x_min, x_max = x_start[first], x_end[bounds[1:][full] - 1]  # runs are sorted
    out[full] = np.stack([x_min, y_min, x_max - x_min + 1, y_max - y_min + 1], axis=1)
    return out
    n_runs = np.array([len(masks[k].starts) for k in full])
    first = np.cumsum(n_runs) - n_runs
    h = np.repeat([masks[k].height for k in full], n_runs)
    starts = np.concatenate([masks[k].starts for k in full])
    last = np.concatenate([masks[k].ends for k in full]) - 1
    x_start, x_end = starts // h, last // h
    wraps = x_end > x_start  # a run that wraps into the next column spans every row
    y_min = np.minimum.reduceat(np.where(wraps, 0, starts % h), first)
    y_max = np.maximum.reduceat(np.where(wraps, h - 1, last % h), first)
    x_min, x_max = x_start[first], x_end[first + n_runs - 1]  # runs are sorted
    out[full] = np.stack([x_min, y_min, x_max - x_min + 1, y_max - y_min + 1], axis=1)
    return out
