"""COCO detection evaluation with pycocotools' rules, vectorised with NumPy.

The work is split as pycocotools splits it: :func:`evaluate` matches detections to ground truth
per (image, category) at every IoU threshold and area range, :func:`accumulate` turns the matches
into the precision/recall arrays, :func:`summarize` reads the 12 standard numbers off them.
:func:`coco_evaluate` runs the three from COCO JSON files or dicts. Inside, nothing loops over
images or categories: IoUs are computed for all (detection, ground truth) pairs of every group at
once; detections that compete with no other for a ground truth are matched in one step, the rest
by walking score ranks (at most ``max_dets[-1]`` steps) over all groups, thresholds and area
ranges together; precision is read only at true positives, with segmented reductions.

Conventions (pycocotools'): detection boxes are ``[x, y, w, h]``; a detection's area is ``w * h``
(for ``"segm"`` its mask area, or its ``bbox``'s when the results carry boxes); a ground truth's
area is its ``area`` field; crowd ground truth is ignored and its IoU divides by the detection's
area; detections are ranked by score with ties kept in input order; precision uses the 101-point
interpolated envelope; -1 marks undefined.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionzoo.data.masks import json_whole_number, rle_area, rle_boxes, to_rles
from visionzoo.metrics._masks import rle_iou_pairs

SUMMARY_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")
DEFAULT_AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
# pycocotools caps the IoU needed for a match just below 1 so that a perfect overlap always matches.
_MAX_IOU_THRESHOLD = 1 - 1e-10

# pycocotools' value of a metric with nothing to score: no ground truth of its kind (a class, an area range)
NO_GROUND_TRUTH = -1.0


def no_ground_truth_note(figures: Iterable[float], source: str) -> str | None:
    """The one-line note (without "note: ") for pycocotools' ``figures`` of ``source`` (a file, "the val split")
    when every one is -1, what it gives where nothing was there to score; None when one is not, or there are none."""
    figures = list(figures)
    if not figures or any(value != NO_GROUND_TRUTH for value in figures):
        return None
    return (f"{source} holds no ground-truth objects to score (no annotations, as an image-info file, or only crowd "
            "regions): every metric is -1, pycocotools' mark for nothing to score")


@dataclass(frozen=True, eq=False)
class CocoParams:
    """Evaluation settings, pycocotools' ``Params`` for ``bbox``/``segm``.

    iou_thresholds: float64[T]; rec_thresholds: float64[R]; max_dets: sorted ints [M];
    area_ranges: float64[A, 2] ``[low, high]`` inclusive on both ends; area_labels: A names.
    """

    iou_type: str
    iou_thresholds: np.ndarray
    rec_thresholds: np.ndarray
    max_dets: tuple[int, ...]
    area_ranges: np.ndarray
    area_labels: tuple[str, ...]


# pycocotools' defaults, in float64: 0.5:0.05:0.95 and 0:0.01:1 (torchmetrics' are float32, 0.6 -> 0.60000002).
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
COCO_REC_THRESHOLDS = np.linspace(0.0, 1.0, 101)


def make_params(
    iou_type: str = "bbox",
    iou_thresholds: Sequence[float] | np.ndarray | None = None,
    max_dets: Sequence[int] = (1, 10, 100),
    area_ranges: Mapping[str, Sequence[float]] | Sequence[Sequence[float]] | None = None,
    rec_thresholds: Sequence[float] | np.ndarray | None = None,
) -> CocoParams:
    """Validate and build :class:`CocoParams`; ``None`` means pycocotools' default.

    ``area_ranges`` is ``{label: (low, high)}`` or four ``(low, high)`` pairs read as
    ``all, small, medium, large`` (what overriding ``Params.areaRng`` does). ``max_dets`` is sorted
    as pycocotools sorts it and needs at least three values: the summary reads AR1/AR10/AR100 at
    ``max_dets[0]``, ``[1]`` and ``[2]``.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    ious = COCO_IOU_THRESHOLDS if iou_thresholds is None else np.asarray(iou_thresholds, dtype=np.float64)
    recs = COCO_REC_THRESHOLDS if rec_thresholds is None else np.asarray(rec_thresholds, dtype=np.float64)
    for name, values in (("iou_thresholds", ious), ("rec_thresholds", recs)):
        if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
            raise ValueError(f"{name} must be a non-empty list of finite numbers, got {values.tolist()}")
        if np.any(np.diff(values) <= 0):
            raise ValueError(f"{name} must be strictly increasing, got {values.tolist()}")
    dets = sorted(int(m) for m in max_dets)
    if len(dets) < 3 or dets[0] < 1:
        raise ValueError(
            f"max_dets needs at least three positive values (AR1, AR10, AR100), got {list(max_dets)}"
        )
    if area_ranges is None:
        area_ranges = DEFAULT_AREA_RANGES
    if isinstance(area_ranges, Mapping):
        labels = tuple(str(k) for k in area_ranges)
        ranges = [area_ranges[k] for k in area_ranges]
    else:
        ranges = list(area_ranges)
        if len(ranges) != len(DEFAULT_AREA_RANGES):
            raise ValueError(
                f"area_ranges as a list needs {len(DEFAULT_AREA_RANGES)} (low, high) pairs "
                f"(all, small, medium, large), got {len(ranges)}; pass a dict to name them"
            )
        labels = tuple(DEFAULT_AREA_RANGES)
    try:
        rng = np.asarray(ranges, dtype=np.float64).reshape(len(ranges), 2)
    except ValueError as error:
        raise ValueError(f"area_ranges must be (low, high) pairs, got {ranges}") from error
    if len(rng) == 0:
        raise ValueError("area_ranges must not be empty")
    return CocoParams(iou_type, ious, recs, tuple(dets), rng, labels)


@dataclass(eq=False)
class CocoGroundTruth:
    """Columnar COCO ground truth.

    image_ids: [I] sorted unique image ids; category_ids: [K] sorted unique category ids;
    category_names: K names. Per annotation, in file order: image, category: int64[G] indices into
    those; boxes: float64[G, 4] xywh; area: float64[G]; iscrowd: bool[G]; ids: int64[G];
    masks: G :class:`visionzoo.data.masks.Rle` for ``segm``, else None; image_sizes: ``{image id: (height, width)}``
    as the images list gives them (None where absent).
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    category_names: tuple[str, ...]
    image: np.ndarray
    category: np.ndarray
    boxes: np.ndarray
    area: np.ndarray
    iscrowd: np.ndarray
    ids: np.ndarray
    masks: list | None = None
    image_sizes: dict | None = None


@dataclass(eq=False)
class CocoDetections:
    """Columnar detections, in input order (the order breaks score ties).

    image, category: int64[D] indices into the ground truth's ids; boxes: float64[D, 4] xywh;
    scores: float64[D]; area: float64[D]; masks: D :class:`visionzoo.data.masks.Rle` for ``segm``, else None;
    num_dropped: detections left out because their category is not among the ground truth's.
    """

    image: np.ndarray
    category: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    area: np.ndarray
    masks: list | None = None
    num_dropped: int = 0


@dataclass(eq=False)
class CocoEvaluation:
    """Result of :func:`evaluate`: what pycocotools keeps in ``evalImgs``, as flat arrays.

    One entry per kept detection (the ``max_dets[-1]`` best of each (image, category)), sorted by
    image, category, decreasing score and input index (:func:`accumulate` relies on it):
    image, category, rank (position by score in its group), order (input index): int64[D];
    scores: float64[D]; matched, ignored: bool[A, T, D] (matched a ground truth / ignored at area
    range a and IoU threshold t). num_positives: int64[K, A], the non-ignored ground truth.
    """

    params: CocoParams
    image: np.ndarray
    category: np.ndarray
    rank: np.ndarray
    order: np.ndarray
    scores: np.ndarray
    matched: np.ndarray
    ignored: np.ndarray
    num_positives: np.ndarray


# ----------------------------------------------------------------------------------------------
# Loading


def _read_json(source: str | os.PathLike, what: str) -> Any:
    path = Path(source)
    if path.is_dir():  # it exists: "not found" sent the user looking for a typo
        found = sorted(path.glob("annotations/*.json")) or sorted(path.glob("*.json"))
        hint = f", e.g. {found[0]}" if found else ""
        raise IsADirectoryError(f"{what} file {path} is a folder; give the .json file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: malformed JSON at line {error.lineno} column {error.colno} (char {error.pos}): {error.msg}"
        ) from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text at byte {error.start}") from None


def _column(records: list, key: str, what: str, default: Any = KeyError) -> list:
    """``[r[key] for r in records]``, naming the first record that lacks the key."""
    try:
        if default is KeyError:
            return [r[key] for r in records]
        return [r.get(key, default) for r in records]
    except (KeyError, TypeError, AttributeError):
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise ValueError(f"{what} {i} is not an object: {r!r:.80}") from None
            if key not in r and default is KeyError:
                raise ValueError(f"{what} {i} has no {key!r}: {r!r:.120}") from None
        raise


def _flat_array(values: list) -> np.ndarray | None:
    """``np.asarray(values)`` when that gives one element per value, else None (nested or ragged values)."""
    try:
        out = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        return None
    return out if out.shape == (len(values),) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float_matrix(values: list, width: int, what: str, field: str) -> np.ndarray:
    if not values:
        return np.zeros((0, width))
    try:
        out = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        out = None
    # numpy would read null as NaN and "1" as 1.0: only plain numbers are accepted
    if out is not None and out.shape == (len(values), width) and out.dtype.kind in "iuf":
        return out.astype(np.float64)
    for i, v in enumerate(values):
        if not isinstance(v, list | tuple) or len(v) != width or not all(_is_number(x) for x in v):
            raise ValueError(f"{what} {i}: {field} must be {width} numbers, got {v!r:.80}")
    raise ValueError(f"{what}: {field} must be numbers")


def _float_vector(values: list, what: str, field: str) -> np.ndarray:
    out = _flat_array(values)
    if out is not None and out.dtype.kind in "iuf":
        return out.astype(np.float64)
    for i, v in enumerate(values):
        if not _is_number(v):
            raise ValueError(f"{what} {i}: {field} must be a number, got {v!r:.80}")
    try:
        return np.asarray(values, dtype=np.float64)  # integers too large for int64
    except OverflowError:
        raise ValueError(f"{what}: {field} values must be numbers within float64's range") from None


def _id_array(values: list, what: str, field: str) -> np.ndarray:
    """Ids as a 1-D array of numbers or of strings; a ValueError names the first entry whose id is
    neither (null, a list, an object), or a string among numbers (numpy would turn all into strings)."""
    out = _flat_array(values)
    if out is not None and (
        out.dtype.kind in "biuf" or (out.dtype.kind == "U" and all(type(v) is str for v in values))
    ):
        return out
    for i, v in enumerate(values):
        if not isinstance(v, int | float | str):
            raise ValueError(f"{what} {i}: {field} must be a number or a string, got {v!r:.80}")
    first_str = next((i for i, v in enumerate(values) if isinstance(v, str)), None)
    first_number = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if first_str is not None and first_number is not None:
        i, j = max(first_str, first_number), min(first_str, first_number)
        raise ValueError(
            f"{what} {i}: {field} {values[i]!r:.80} mixes strings and numbers (entry {j} has {values[j]!r:.80})"
        )
    raise ValueError(f"{what}: {field} values must be numbers that fit in 64 bits or strings")


def _crowd_flags(values: list, what: str, ids: np.ndarray) -> np.ndarray:
    """bool[G] from ``iscrowd`` values, which must be 0, 1, true or false (as pycocotools' data is)."""
    flags = _flat_array(values)
    if flags is not None and flags.dtype.kind in "biuf" and np.isin(flags, (0, 1)).all():
        return flags.astype(bool)
    i = next(i for i, v in enumerate(values) if not (isinstance(v, int | float) and v in (0, 1)))
    raise ValueError(f"{what} {i} (id {ids[i].tolist()!r}): iscrowd must be 0 or 1, got {values[i]!r:.80}")


def _index_of(ids: np.ndarray, sorted_ids: np.ndarray, what: str, name: str) -> np.ndarray:
    """Positions of ``ids`` in ``sorted_ids``; a ValueError names the first id not there."""
    if len(sorted_ids) == 0:
        if len(ids):
            raise ValueError(f"{what} 0 has {name} {ids[0].tolist()!r}, absent from the ground truth")
        return np.zeros(0, dtype=np.int64)
    try:
        pos = np.searchsorted(sorted_ids, ids)
    except TypeError:
        raise ValueError(f"{what}: {name} values are not comparable with the ground truth's ids") from None
    pos = np.minimum(pos, len(sorted_ids) - 1)
    missing = sorted_ids[pos] != ids
    if np.any(missing):
        i = int(np.flatnonzero(missing)[0])
        raise ValueError(f"{what} {i} has {name} {ids[i].tolist()!r}, absent from the ground truth")
    return pos.astype(np.int64)


def _check_same_id_kind(ids: np.ndarray, gt_ids: np.ndarray, what: str, name: str) -> None:
    """Raise ValueError when ``ids`` are strings and the ground truth's numbers, or the other way round: no id
    could match (a result's category would be left out as absent, an image's reported absent)."""
    if len(ids) and len(gt_ids) and (ids.dtype.kind == "U") != (gt_ids.dtype.kind == "U"):
        kinds = ("a string", "numbers") if ids.dtype.kind == "U" else ("a number", "strings")
        raise ValueError(f"{what} 0 has {name} {ids[0].tolist()!r}, {kinds[0]}, but the ground truth's {name}s are "
                         f"{kinds[1]}: ids must match in type")


def _check_mask_sizes(masks: list, image_ids: list, sizes: Mapping, what: str) -> None:
    """Raise ValueError naming the first mask whose size is not its image's ``(height, width)`` (when known: an RLE
    carries its own size, and pycocotools reads it whatever the image entry holds, "480" or nothing)."""
    expected = {image_id: tuple(json_whole_number(side, 1) for side in sizes.get(image_id, (None, None)))
                for image_id in set(image_ids)}  # read once per image, not once per mask
    for i, (mask, image_id) in enumerate(zip(masks, image_ids)):
        height, width = expected[image_id]
        if height is not None and width is not None and (mask.height, mask.width) != (height, width):
            raise ValueError(
                f"{what} {i}: mask is {mask.height}x{mask.width} but image {image_id!r} is {height}x{width}"
            )


def load_ground_truth(gt: Mapping | str | os.PathLike, iou_type: str = "bbox") -> CocoGroundTruth:
    """Read a COCO ground-truth dict or JSON file into columns.

    Needs ``images`` and ``categories``; each annotation needs ``id``, ``image_id``,
    ``category_id`` and ``bbox`` (``segmentation`` for ``segm``). ``iscrowd`` defaults to 0 and
    ``area`` to the box (or mask) area. Raises ValueError naming the file and the offending entry
    for an annotation of an unknown image or category, duplicate annotation ids, bad values, or (for
    ``segm``) a mask whose size is not its image's ``height`` x ``width``.
    """
    name = str(gt) if isinstance(gt, str | os.PathLike) else "ground truth"
    data = _read_json(gt, "ground-truth") if isinstance(gt, str | os.PathLike) else gt
    if not isinstance(data, Mapping):
        if isinstance(data, list | tuple) and data and isinstance(data[0], Mapping) and "score" in data[0]:
            # `coco-eval DETS GT`: the two files the other way round
            raise ValueError(f"{name}: looks like a results file (a list of result objects), not ground truth: "
                             "coco-eval takes the ground truth first (a JSON object with images, annotations, "
                             "categories) and the results second")
        raise ValueError(
            f"{name}: expected a COCO dict with 'images' and 'categories', got {type(data).__name__}"
        )
    for key in ("images", "categories"):
        if key not in data:
            raise ValueError(f"{name}: no {key!r} list")
    for key in ("images", "categories", "annotations"):  # an object would be read as its keys
        if not isinstance(data.get(key, []), list | tuple) and not (key == "annotations" and data[key] is None):
            raise ValueError(f"{name}: {key!r} must be a list, got {type(data[key]).__name__}")
    images, categories = data["images"], data["categories"]
    anns = data.get("annotations") or []
    image_ids = np.unique(_id_array(_column(images, "id", f"{name}: image"), f"{name}: image", "id"))
    cat_ids_raw = _id_array(_column(categories, "id", f"{name}: category"), f"{name}: category", "id")
    cat_ids, first = np.unique(cat_ids_raw, return_index=True)
    cat_names = tuple(str(categories[i].get("name", cat_ids_raw[i])) for i in first)
    what = f"{name}: annotation"
    ann_image = _id_array(_column(anns, "image_id", what), what, "image_id")
    ann_cat = _id_array(_column(anns, "category_id", what), what, "category_id")
    ids = _id_array(_column(anns, "id", what), what, "id")
    image = _index_of(ann_image, image_ids, what, "image_id")
    category = _index_of(ann_cat, cat_ids, what, "category_id")
    if len(ids) and len(np.unique(ids)) != len(ids):
        uniq, counts = np.unique(ids, return_counts=True)
        raise ValueError(f"{what} id {uniq[counts > 1][0].tolist()!r} is used more than once")
    iscrowd = _crowd_flags(_column(anns, "iscrowd", what, 0), what, ids)
    masks = None
    sizes = {i["id"]: (i.get("height"), i.get("width")) for i in images}  # also for results read as masks
    if iou_type == "segm":
        masks = to_rles(_column(anns, "segmentation", what), [sizes[img] for img in ann_image.tolist()], what)
        _check_mask_sizes(masks, ann_image.tolist(), sizes, what)
        boxes = rle_boxes(masks)
        default_area = rle_area(masks)
    else:
        # refused, as results' boxes are: pycocotools' matching goes astray on the NaN IoU of a NaN box
        boxes = _finite_boxes(_column(anns, "bbox", what), what)
        default_area = boxes[:, 2] * boxes[:, 3]
    areas = _column(anns, "area", what, None)
    area = _float_vector([d if a is None else a for a, d in zip(areas, default_area.tolist())], what, "area")
    if not np.isfinite(area).all():  # NaN falls in no area range
        i = int(np.flatnonzero(~np.isfinite(area))[0])
        raise ValueError(f"{what} {i} has a non-finite area {area[i]}")
    return CocoGroundTruth(
        image_ids, cat_ids, cat_names, image, category, boxes, area, iscrowd, ids, masks, sizes
    )


def _finite_boxes(values: list, what: str) -> np.ndarray:
    """float64[D, 4] of every entry's ``bbox`` ``values`` (results' or annotations'); a ValueError names the first
    without 4 finite numbers."""
    boxes = _float_matrix(values, 4, what, "bbox")
    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what} {i} has a non-finite bbox {boxes[i].tolist()}")
    return boxes


def load_detections(
    dets: Sequence[Mapping] | str | os.PathLike, gt: CocoGroundTruth, iou_type: str = "bbox"
) -> CocoDetections:
    """Read COCO results (a list of dicts or a JSON file) into columns against ``gt``.

    Each result needs ``image_id``, ``category_id``, ``score`` and ``bbox`` (``[x, y, w, h]``) or,
    for ``segm``, ``segmentation`` (an RLE; when the first result also has a ``bbox``, as
    Detectron2's and MMDetection's do, every result needs one and its ``w * h`` is the area the
    area ranges test, as in pycocotools). When the first result has a ``segmentation`` and no ``bbox``, a ``bbox``
    evaluation reads the results as pycocotools' ``loadRes`` does: a result's box is its mask's tight box (unless
    it has its own) and its area the mask's. Raises ValueError for an image id absent from the
    ground truth (pycocotools asserts), ids that are strings where the ground truth's are numbers (or the other
    way round), a NaN score (an infinite one too, in a JSON file), a non-finite box or a mask of another size than
    its image, naming the entry.
    Results of a category the ground truth does not list are left out, as pycocotools leaves them
    out; their count is ``num_dropped``.
    """
    name = str(dets) if isinstance(dets, str | os.PathLike) else "detections"
    data = _read_json(dets, "detections") if isinstance(dets, str | os.PathLike) else dets
    if not isinstance(data, list | tuple):
        keys = [key for key in ("images", "annotations", "categories") if isinstance(data, Mapping) and key in data]
        if keys:  # `coco-eval GT GT`, or the two files given the other way round
            shape = "bbox" if iou_type == "bbox" else "segmentation"
            raise ValueError(f"{name}: looks like a ground-truth annotation file (it has {', '.join(keys)}), not "
                             "results: coco-eval takes the ground truth first and the results second, a JSON list of "
                             f"{{image_id, category_id, {shape}, score}} objects (as predict --coco-json writes)")
        raise ValueError(f"{name}: expected a list of result objects, got {type(data).__name__}")
    what = f"{name}: result"
    det_image = _id_array(_column(data, "image_id", what), what, "image_id")
    det_cat = _id_array(_column(data, "category_id", what), what, "category_id")
    scores = _float_vector(_column(data, "score", what), what, "score")
    _check_same_id_kind(det_image, gt.image_ids, what, "image_id")
    _check_same_id_kind(det_cat, gt.category_ids, what, "category_id")
    image = _index_of(det_image, gt.image_ids, what, "image_id")
    if np.isnan(scores).any():
        raise ValueError(f"{what} {int(np.flatnonzero(np.isnan(scores))[0])} has a NaN score")
    if isinstance(dets, str | os.PathLike) and np.isinf(scores).any():
        # JSON has no Infinity: Python's json (and so pycocotools) reads the token, and the result would rank first
        # or last of all without a word. Results given as Python objects keep pycocotools' ranking of +-inf.
        i = int(np.flatnonzero(np.isinf(scores))[0])
        raise ValueError(f"{what} {i} has a non-finite score {scores[i]}")
    masks = None
    first = data[0] if data and isinstance(data[0], Mapping) else {}
    has_boxes = first.get("bbox") is not None and len(first["bbox"]) > 0
    # pycocotools' loadRes reads results as masks when the first one has a segmentation and no bbox, whatever the
    # evaluation: a box evaluation then takes each result's box from its mask (where it has none of its own)
    if iou_type == "segm" or (not has_boxes and "segmentation" in first):
        sizes = gt.image_sizes or {}
        masks = to_rles(_column(data, "segmentation", what), [sizes.get(img, (None, None)) for img in det_image.tolist()],
                        what)
        _check_mask_sizes(masks, det_image.tolist(), sizes, what)
        boxes = rle_boxes(masks)
        area = rle_area(masks)
        if has_boxes:
            # pycocotools' loadRes reads results as boxes when the first one has a bbox: every
            # result's area (what the area ranges test) is then its bbox's w * h, not its mask's
            boxes = _finite_boxes(_column(data, "bbox", what), what)
            area = boxes[:, 2] * boxes[:, 3]
        elif iou_type == "bbox":
            boxes = _finite_boxes([r.get("bbox", b) for r, b in zip(data, boxes.tolist())], what)
        if iou_type == "bbox":
            masks = None
    else:
        boxes = _finite_boxes(_column(data, "bbox", what), what)
        area = boxes[:, 2] * boxes[:, 3]
    if len(gt.category_ids):
        pos = np.minimum(np.searchsorted(gt.category_ids, det_cat), len(gt.category_ids) - 1)
        known = gt.category_ids[pos] == det_cat
    else:
        pos = np.zeros(len(det_cat), dtype=np.int64)
        known = np.zeros(len(det_cat), dtype=bool)
    keep = np.flatnonzero(known)
    if masks is not None:
        masks = [masks[i] for i in keep]
    return CocoDetections(
        image[keep],
        pos[keep].astype(np.int64),
        boxes[keep],
        scores[keep],
        area[keep],
        masks,
        len(data) - len(keep),
    )


# ----------------------------------------------------------------------------------------------
# IoU of (detection, ground truth) pairs


def _box_iou_pairs(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of xywh box pairs d[P, 4], g[P, 4], float64[P]; a crowd pair divides by d's area.

    The arithmetic is the order pycocotools' C code uses, so the values are the same bits.
    """
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    inter = w * h
    d_area = d[:, 2] * d[:, 3]
    union = np.where(crowd, d_area, d_area + g[:, 2] * g[:, 3] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _pair_ious(
    gt: CocoGroundTruth, dt: CocoDetections, det: np.ndarray, g: np.ndarray, iou_type: str
) -> np.ndarray:
    if iou_type == "bbox":
        return _box_iou_pairs(dt.boxes[det], gt.boxes[g], gt.iscrowd[g])
    return rle_iou_pairs(dt.masks, gt.masks, det, g, gt.iscrowd[g])


# ----------------------------------------------------------------------------------------------
# evaluate: greedy matching


def _segment_last_best(
    mask: np.ndarray, values: np.ndarray, starts: np.ndarray, seg: np.ndarray
) -> np.ndarray:
    """Per segment, the last index of the largest ``values`` where ``mask``; -1 where none.

    mask: bool[..., P]; values: float[P] (>= 0); starts: [S] segment starts; seg: [P] segment of
    each position. Returns int64[..., S]. "Last of the largest" is pycocotools' ``>=`` scan.
    """
    masked = np.where(mask, values, -1.0)
    best = np.maximum.reduceat(masked, starts, axis=-1)
    hit = mask & (masked == best[..., seg])
    return np.maximum.reduceat(np.where(hit, np.arange(values.shape[-1]), -1), starts, axis=-1)


def evaluate(gt: CocoGroundTruth, dt: CocoDetections, params: CocoParams) -> CocoEvaluation:
    """Match detections to ground truth per (image, category), pycocotools' ``evaluate()``.

    Within a group, detections go by decreasing score (ties in input order), only the
    ``max_dets[-1]`` best kept. At each IoU threshold and area range a detection takes the
    unmatched, non-ignored ground truth of highest IoU (the later one on ties); failing that an
    ignored one (crowd ground truth may take any number of detections). Ground truth is ignored
    when crowd or its area is outside the range; an unmatched detection whose area is outside
    the range is ignored too.
    """
    n_cat = len(gt.category_ids)
    thr = np.minimum(params.iou_thresholds, _MAX_IOU_THRESHOLD)
    lo, hi = params.area_ranges[:, 0:1], params.area_ranges[:, 1:2]
    n_area, n_thr = len(lo), len(thr)

    gkey = gt.image * n_cat + gt.category
    gorder = np.argsort(gkey, kind="stable")
    gkey_sorted = gkey[gorder]
    gt_ignore = gt.iscrowd[None, :] | (gt.area[None, :] < lo) | (gt.area[None, :] > hi)  # [A, G]
    num_positives = np.zeros((n_cat, n_area), dtype=np.int64)
    for a in range(n_area):
        num_positives[:, a] = np.bincount(gt.category[~gt_ignore[a]], minlength=n_cat)

    n_det = len(dt.scores)
    dkey = dt.image * n_cat + dt.category
    dorder = np.lexsort((-dt.scores, dkey))  # stable: score ties stay in input order
    dkey_sorted = dkey[dorder]
    first = np.ones(n_det, dtype=bool)
    first[1:] = dkey_sorted[1:] != dkey_sorted[:-1]
    group_start = np.flatnonzero(first)
    rank = np.arange(n_det) - np.repeat(group_start, np.diff(np.append(group_start, n_det)))
    keep = rank < params.max_dets[-1]
    kept, kept_key, rank = dorder[keep], dkey_sorted[keep], rank[keep]
    n_kept = len(kept)

    # every (kept detection, ground truth of its group) pair, ground truth in file order
    g_lo = np.searchsorted(gkey_sorted, kept_key, side="left")
    counts = np.searchsorted(gkey_sorted, kept_key, side="right") - g_lo
    pair_det = np.repeat(np.arange(n_kept), counts)
    offsets = np.cumsum(counts) - counts
    pair_gt = gorder[np.arange(len(pair_det)) - np.repeat(offsets - g_lo, counts)]
    ious = _pair_ious(gt, dt, kept[pair_det], pair_gt, params.iou_type)

    # a pair below the lowest threshold can never match
    cand = np.flatnonzero(ious >= thr.min())
    c_det, c_gt, c_iou = pair_det[cand], pair_gt[cand], ious[cand]
    matched = np.zeros((n_area, n_thr, n_kept), dtype=bool)
    ignored = np.zeros((n_area, n_thr, n_kept), dtype=bool)
    taken = np.zeros((n_area, n_thr, len(gt.ids)), dtype=bool)

    def step(d: np.ndarray, g: np.ndarray, v: np.ndarray, contested: bool) -> None:
        """Match detections d (pairs grouped by detection, ground truth in file order) at once."""
        new = np.ones(len(d), dtype=bool)
        new[1:] = d[1:] != d[:-1]
        starts = np.flatnonzero(new)
        seg = np.cumsum(new) - 1
        ig = gt_ignore[:, g][:, None, :]  # [A, 1, P]
        if contested:
            above = (v[None, :] >= thr[:, None])[None]  # [1, T, P]
            free = ~taken[:, :, g]  # [A, T, P]
            regular = _segment_last_best(above & free & ~ig, v, starts, seg)
            fallback = _segment_last_best(above & (free | gt.iscrowd[g]) & ig, v, starts, seg)
        else:
            # nothing is taken, so the best pair does not depend on the threshold: pick it once per
            # area range, then keep it where its IoU clears the threshold
            ig2 = ig[:, 0, :]
            best_reg = _segment_last_best(~ig2, v, starts, seg)[:, None, :]  # [A, 1, S]
            best_ign = _segment_last_best(ig2, v, starts, seg)[:, None, :]
            thr_col = thr[None, :, None]
            regular = np.where((best_reg >= 0) & (v[best_reg] >= thr_col), best_reg, -1)
            fallback = np.where((best_ign >= 0) & (v[best_ign] >= thr_col), best_ign, -1)
        pick = np.where(regular >= 0, regular, fallback)  # [A, T, S]
        ai, ti, si = np.nonzero(pick >= 0)
        p = pick[ai, ti, si]
        if contested:
            taken[ai, ti, g[p]] = True
        matched[ai, ti, d[p]] = True
        ignored[ai, ti, d[p]] = ig[ai, 0, p]

    # Detections whose candidate ground truth no other detection wants cannot be affected by the
    # order of matching: match them all at once. The rest go rank by rank (score order).
    wanted = np.bincount(c_gt, minlength=len(gt.ids))[c_gt] > 1
    contested_det = np.zeros(n_kept, dtype=bool)
    contested_det[c_det[wanted]] = True
    alone = ~contested_det[c_det]
    if alone.any():
        step(c_det[alone], c_gt[alone], c_iou[alone], contested=False)
    rest = np.flatnonzero(~alone)
    rest = rest[np.argsort(rank[c_det[rest]], kind="stable")]
    r_det, r_gt, r_iou = c_det[rest], c_gt[rest], c_iou[rest]
    bounds = np.searchsorted(rank[r_det], np.arange(params.max_dets[-1] + 1))
    for r in np.flatnonzero(np.diff(bounds)):
        s, e = bounds[r], bounds[r + 1]
        step(r_det[s:e], r_gt[s:e], r_iou[s:e], contested=True)

    det_area = dt.area[kept]
    outside = (det_area[None, :] < lo) | (det_area[None, :] > hi)  # [A, D]
    ignored |= ~matched & outside[:, None, :]
    return CocoEvaluation(
        params,
        dt.image[kept],
        dt.category[kept],
        rank,
        kept,
        dt.scores[kept],
        matched,
        ignored,
        num_positives,
    )


# ----------------------------------------------------------------------------------------------
# accumulate: precision / recall arrays


def _first_count_reaching(n: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Smallest integer j >= 0 with float64(j) / n >= threshold, for n int[...] and thresholds [R].

    Recall after the j-th true positive is ``j / n``; comparing counts with this is comparing
    recalls with the threshold bit for bit (division is monotonic), as pycocotools' searchsorted does.
    """
    nf = n.astype(np.float64)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        j = np.maximum(np.ceil(thresholds * nf), 0.0)
        for _ in range(2):
            j = np.where((j >= 1) & ((j - 1) / nf >= thresholds), j - 1, j)
            j = np.where(j / nf < thresholds, j + 1, j)
    return np.where(n[..., None] > 0, j, 0).astype(np.int64)


def accumulate(ev: CocoEvaluation) -> dict[str, np.ndarray]:
    """Precision and recall from matches, pycocotools' ``accumulate()``.

    Returns ``precision``: float64[T, R, K, A, M] (interpolated precision at each recall
    threshold), ``recall``: float64[T, K, A, M] (final recall) and ``scores``: float64[T, R, K, A, M]
    (the score where each recall threshold is reached); -1 where a category has no non-ignored
    ground truth in the area range.

    Per category, detections are ranked by score (ties by image, then input order, as pycocotools'
    concatenation and mergesort rank them). Precision only rises at true positives, so the
    interpolated precision at a recall threshold is the largest precision over the true positives
    from the one that first reaches it to the category's last: only true positives are visited.
    """
    p = ev.params
    n_thr, n_rec, n_area = len(p.iou_thresholds), len(p.rec_thresholds), len(p.area_ranges)
    n_cat = ev.num_positives.shape[0]
    shape = (n_thr, n_rec, n_cat, n_area, len(p.max_dets))
    precision, scores = -np.ones(shape), -np.ones(shape)
    recall = -np.ones((n_thr, n_cat, n_area, len(p.max_dets)))
    # ev is in (image, category, score, input) order, so a stable sort by (category, score) leaves
    # ties in (image, input) order
    order = np.lexsort((-ev.scores, ev.category))
    rank = ev.rank[order]
    counted = ~ev.ignored
    true_pos = np.take(ev.matched & counted, order, axis=2).view(np.int8)
    counted = np.take(counted, order, axis=2).view(np.int8)
    npig = ev.num_positives.T  # [A, K]
    has_gt = npig[:, None, :, None] > 0  # [A, 1, K, 1]
    need = _first_count_reaching(npig, p.rec_thresholds)[:, None]  # [A, 1, K, R] true positives needed
    rows = n_area * n_thr
    previous = -1
    for m, max_det in enumerate(p.max_dets):
        keep = rank < max_det
        n = int(keep.sum())
        if n == previous:  # no group has more detections than the previous max_dets: same numbers
            precision[..., m], recall[..., m], scores[..., m] = (
                precision[..., m - 1],
                recall[..., m - 1],
                scores[..., m - 1],
            )
            continue
        previous = n
        everything = n == len(rank)
        tp_flag = true_pos if everything else np.compress(keep, true_pos, axis=2)
        det_cat = ev.category[order[keep]]
        det_scores = ev.scores[order[keep]]
        seg_start = np.searchsorted(det_cat, np.arange(n_cat), side="left")
        seg_end = np.searchsorted(det_cat, np.arange(n_cat), side="right")
        row_base = (np.arange(rows) * n).reshape(n_area, n_thr, 1)

        # true positives: flat positions (row-major over [A, T, n]), and each category's range of them
        events = np.flatnonzero(tp_flag.reshape(-1))
        ev_pos = events - (events // max(n, 1)) * n
        ev_begin = np.searchsorted(events, row_base + seg_start)  # [A, T, K]
        ev_end = np.searchsorted(events, row_base + seg_end)
        n_tp = ev_end - ev_begin

        # precision at each true positive: its rank among the category's true positives over the
        # detections counted so far (pycocotools' tp / (fp + tp + eps))
        counted_m = counted if everything else np.compress(keep, counted, axis=2)
        den = np.cumsum(counted_m, axis=-1, dtype=np.int32).reshape(-1)
        den_before = np.concatenate(
            [np.zeros((n_area, n_thr, 1), np.int32), den.reshape(n_area, n_thr, n)], axis=-1
        )[:, :, seg_start]  # [A, T, K]
        ev_row_cat = (events // max(n, 1)) * n_cat + det_cat[ev_pos] if n else events
        tp_rank = np.arange(1, len(events) + 1) - ev_begin.reshape(-1)[ev_row_cat]
        pr = np.empty(len(events) + 1)
        np.add(den[events] - den_before.reshape(-1)[ev_row_cat], np.spacing(1), out=pr[:-1])
        np.divide(tp_rank, pr[:-1], out=pr[:-1])
        pr[-1] = 0.0

        with np.errstate(divide="ignore", invalid="ignore"):
            final = np.where(seg_end > seg_start, n_tp / npig[:, None, :], 0.0)  # [A, T, K]

        # the true positive reaching each recall threshold (need = 0: the category's first detection)
        begin, end = ev_begin[..., None], ev_end[..., None]
        valid = (seg_end > seg_start)[None, None, :, None] & (need <= n_tp[..., None])  # [A, T, K, R]
        first = np.where(valid, begin + np.maximum(need - 1, 0), end)
        bounds = np.concatenate([first, end], axis=-1)
        chunks = np.maximum.reduceat(pr, bounds.reshape(-1)).reshape(bounds.shape)[..., :-1]
        chunks[first >= end] = -np.inf  # empty ranges (reduceat would give the next element)
        envelope = np.maximum.accumulate(chunks[..., ::-1], axis=-1)[..., ::-1]
        q = np.where(valid, np.maximum(envelope, 0.0), 0.0)
        at = np.where(
            need > 0,
            ev_pos[np.minimum(first, len(events) - 1)] if len(events) else 0,
            seg_start[None, None, :, None],
        )
        ss = np.where(valid, det_scores[np.minimum(at, max(n - 1, 0))] if n else 0.0, 0.0)

        precision[..., m] = np.where(has_gt, q, -1.0).transpose(1, 3, 2, 0)
        scores[..., m] = np.where(has_gt, ss, -1.0).transpose(1, 3, 2, 0)
        recall[..., m] = np.where(has_gt[..., 0], final, -1.0).transpose(1, 2, 0)
    return {"precision": precision, "recall": recall, "scores": scores}


# ----------------------------------------------------------------------------------------------
# summarize


def _summary_value(
    arrays: Mapping[str, np.ndarray], params: CocoParams, ap: bool, iou: float | None, area: str, max_det: int
) -> float:
    """pycocotools' ``_summarize``: the mean of the defined (> -1) entries at a setting, else -1."""
    aind = [i for i, label in enumerate(params.area_labels) if label == area]
    mind = [i for i, m in enumerate(params.max_dets) if m == max_det]
    s = arrays["precision"] if ap else arrays["recall"]
    if iou is not None:
        s = s[np.where(iou == params.iou_thresholds)[0]]
    s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
    defined = s[s > -1]
    return float(np.mean(defined)) if defined.size else NO_GROUND_TRUTH


def summarize(
    arrays: Mapping[str, np.ndarray], params: CocoParams, style: str = "pycocotools"
) -> dict[str, float]:
    """The 12 standard numbers (:data:`SUMMARY_NAMES`) from :func:`accumulate`'s arrays.

    ``style="pycocotools"`` reads them as pycocotools' ``summarize()`` does: AP at maxDets 100 exactly
    (-1 if 100 is not among ``max_dets``), AP50/AP75/APs/APm/APl and ARs/ARm/ARl at ``max_dets[2]``,
    AR1/AR10/AR100 at ``max_dets[0..2]``, AP50/AP75 at IoU exactly 0.5/0.75 (-1 if absent), areas by
    label. ``style="faster_coco_eval"`` reads every AP and the area ARs at ``max_dets[-1]`` instead.
    """
    if style not in ("pycocotools", "faster_coco_eval"):
        raise ValueError(f"style must be 'pycocotools' or 'faster_coco_eval', got {style!r}")
    md = params.max_dets
    top = md[2] if style == "pycocotools" else md[-1]
    settings = [
        (True, None, "all", 100 if style == "pycocotools" else md[-1]),
        (True, 0.5, "all", top),
        (True, 0.75, "all", top),
        (True, None, "small", top),
        (True, None, "medium", top),
        (True, None, "large", top),
        (False, None, "all", md[0]),
        (False, None, "all", md[1]),
        (False, None, "all", md[2]),
        (False, None, "small", top),
        (False, None, "medium", top),
        (False, None, "large", top),
    ]
    return {name: _summary_value(arrays, params, *s) for name, s in zip(SUMMARY_NAMES, settings)}


def per_category(
    arrays: Mapping[str, np.ndarray], params: CocoParams, max_det: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """AP and AR per category: float64[K] each, at area ``all`` and ``max_det`` (default ``max_dets[-1]``).

    A category's AP is the mean of its defined precision entries over IoU and recall thresholds
    (what pycocotools' summary gives when ``catIds`` is that category alone), its AR the mean of its
    defined recalls over IoU thresholds; -1 where undefined.
    """
    a = params.area_labels.index("all") if "all" in params.area_labels else 0
    m = params.max_dets.index(params.max_dets[-1] if max_det is None else max_det)
    out = np.full((2, arrays["recall"].shape[1]), -1.0)
    for k in range(out.shape[1]):
        for row, s in enumerate((arrays["precision"][:, :, k, a, m], arrays["recall"][:, k, a, m])):
            defined = s[s > -1]
            if defined.size:
                out[row, k] = np.mean(defined)
    return out[0], out[1]


def coco_evaluate(
    gt: Mapping | str | os.PathLike | CocoGroundTruth,
    dets: Sequence[Mapping] | str | os.PathLike | CocoDetections,
    iou_type: str = "bbox",
    iou_thresholds: Sequence[float] | None = None,
    max_dets: Sequence[int] = (1, 10, 100),
    area_ranges: Mapping[str, Sequence[float]] | Sequence[Sequence[float]] | None = None,
    rec_thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """COCO evaluation of detections, with pycocotools' rules and numbers.

    gt: a COCO dict or JSON path (``images``, ``annotations``, ``categories``); dets: a list of
    result dicts ``{image_id, category_id, bbox: [x, y, w, h], score}`` (``segmentation`` RLE for
    ``iou_type="segm"``) or a JSON path. ``iou_thresholds``, ``max_dets``, ``area_ranges`` and
    ``rec_thresholds`` override pycocotools' ``Params`` (see :func:`make_params`).

    Returns a dict: the 12 numbers by name (``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100,
    ARs, ARm, ARl``; -1 where undefined, e.g. no ground truth in an area range);
    ``per_category``: ``{category_id: {"name", "AP", "AR"}}``; ``precision`` float64[T, R, K, A, M],
    ``recall`` float64[T, K, A, M], ``scores`` float64[T, R, K, A, M] (pycocotools' ``eval`` arrays,
    categories in sorted id order ``category_ids``); ``params``; ``num_dropped_detections``.

    Bad input raises ValueError naming the file and entry: malformed JSON (with its position), a
    detection for an image id absent from the ground truth, a NaN score, a non-finite box.
    Degenerate boxes follow pycocotools: a box with w <= 0 or h <= 0 overlaps nothing (IoU 0); such
    a detection is then a false positive, except that a negative area ``w * h`` lies outside every
    area range, which makes it ignored (neither true nor false positive). Scores of +-inf rank
    first / last (in ``dets`` given as dicts; a JSON file's Infinity is refused).
    Empty detections give AP/AR 0 where there is ground truth and -1 elsewhere. One difference
    from pycocotools: it never counts a match with a ground truth whose id is 0 (it stores match
    ids with 0 meaning "none"); here an annotation id of 0 is an id like any other.
    """
    params = make_params(iou_type, iou_thresholds, max_dets, area_ranges, rec_thresholds)
    ground = gt if isinstance(gt, CocoGroundTruth) else load_ground_truth(gt, iou_type)
    results = dets if isinstance(dets, CocoDetections) else load_detections(dets, ground, iou_type)
    if iou_type == "segm":
        for what, columns in (("the ground truth has", ground), ("the detections have", results)):
            if columns.masks is None:
                raise ValueError(f"{what} no masks (loaded for 'bbox'): load it with iou_type='segm'")
    arrays = accumulate(evaluate(ground, results, params))
    stats: dict[str, Any] = summarize(arrays, params)
    ap, ar = per_category(arrays, params)
    stats["per_category"] = {
        ground.category_ids[k].item(): {
            "name": ground.category_names[k],
            "AP": float(ap[k]),
            "AR": float(ar[k]),
        }
        for k in range(len(ground.category_ids))
    }
    stats.update(arrays)
    stats["category_ids"] = ground.category_ids
    stats["params"] = params
    stats["num_dropped_detections"] = results.num_dropped
    return stats
