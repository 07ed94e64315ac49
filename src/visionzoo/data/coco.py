"""A detection dataset read from a COCO-format folder: images plus an instances JSON file.

The annotation file is read and checked when the dataset is built, so bad input stops a run before
training starts: a JSON syntax error (file, line and column), a missing key (file and entry), an
annotation naming an unknown image or category, a missing image file (path and image id), a value
of the wrong type (an id that is not an integer or a string, a width that is not a positive
integer, an ``iscrowd`` other than 0 or 1, a negative area), two categories of one name, no images at all, or a
box with no area inside its image (file and annotation id) raises one ``ValueError`` or ``FileNotFoundError``. Boxes
that run partly outside their image are clipped to it, as real COCO files need. Images are decoded
only when a sample is read; one that cannot be decoded raises ``ValueError`` naming its file.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from visionzoo.data.masks import json_whole_number, rle_to_mask, to_rle
from visionzoo.utils import image_array, require_integers

log = logging.getLogger(__name__)

EXIF_ORIENTATION = 0x0112
EXIF_QUARTER_TURNS = (5, 6, 7, 8)  # orientations that swap width and height when applied

Transform = Callable[[torch.Tensor, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]


def read_json(path: str | Path) -> Any:
    """The parsed JSON of ``path`` (UTF-8, with or without a byte order mark); a syntax error names the file, line
    and column, bytes that are not UTF-8 the file, byte offset and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    data = path.read_bytes()
    # a byte order mark (Notepad's, PowerShell's) is skipped, as coco-eval's json.load skips it
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as error:
        at = start + error.start
        line = data.count(b"\n", 0, at) + 1
        raise ValueError(
            f"{path}: not UTF-8 text (byte {at}, line {line}: {data[at]:#04x}); JSON files are UTF-8: save it as UTF-8"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None


def _require(entry: Any, keys: tuple[str, ...], where: str, ann_file: Path) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{ann_file}: {where} is not a JSON object")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{ann_file}: {where} is missing {', '.join(repr(k) for k in missing)}")


def _entry_name(kind: str, position: int, entry: Any) -> str:
    """'annotation id 7' when the entry has an id, else 'annotations[3]'."""
    if isinstance(entry, dict) and "id" in entry:
        return f"{kind} id {entry['id']}"
    return f"{kind}s[{position}]"


def _is_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _check_id(value: Any, field: str, where: str, ann_file: Path) -> None:
    if not _is_id(value):
        raise ValueError(f"{ann_file}: {where}: {field} must be an integer or a string, got {value!r:.80}")


def _check_same_kind(ids: list[Any], kind: str, ann_file: Path) -> None:
    """Raise when ``ids`` mix integers and strings (they could not be sorted)."""
    first_type = type(ids[0]) if ids else None
    odd = next((i for i in ids if type(i) is not first_type), None)
    if odd is not None:
        kinds = {int: "an integer", str: "a string"}
        raise ValueError(
            f"{ann_file}: {kind} id {odd!r} is {kinds[type(odd)]} but {kind} id {ids[0]!r} is "
            f"{kinds[first_type]}: {kind} ids must be all integers or all strings"
        )


def _other_type_hint(value: int | str, known: Any) -> str:
    """' (which has 3, an integer)' when ``value`` is '3' and ``known`` holds 3, or the other way round; else ''."""
    other = str(value) if isinstance(value, int) else int(value) if value.strip().lstrip("-").isdigit() else None
    if other is None or other not in known:
        return ""
    return f" (which has {other!r}, {'a string' if isinstance(other, str) else 'an integer'}: ids must match in type)"


def _is_area(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf


def _read_image_size(path: Path, where: str, ann_file: Path) -> tuple[int, int]:
    """(width, height) from the image file's header."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, Image.DecompressionBombError) as error:  # the bomb error is no OSError: it named no file
        raise ValueError(f"{ann_file}: {where}: image {path} cannot be read: {error}") from None


_JPEG_END = b"\xff\xd9"  # the end-of-image marker, a JPEG's last bytes


def _check_whole_jpeg(file: Image.Image, path: Path) -> None:
    """Raise OSError where the JPEG ``file`` (just opened from ``path``) is cut short, as decoding it would. A file
    that ends in the end-of-image marker is whole, at the cost of reading its last bytes; one that does not (cut
    short, or with bytes after its image: a phone's motion photo appends a video) is decoded at 1/8 scale, which
    reads all its image data."""
    with open(path, "rb") as raw:
        raw.seek(-len(_JPEG_END), os.SEEK_END)
        if raw.read() == _JPEG_END:
            return
    file.draft(file.mode, (max(1, file.width // 8), max(1, file.height // 8)))
    file.load()


def clip_box(bbox: Any, width: int, height: int) -> tuple[float, float, float, float] | None:
    """COCO ``[x, y, w, h]`` as xyxy clipped to the image, or None when no area is left inside it at float32
    precision (the targets' dtype: a box 1e-6 wide at x = 30 has none there).

    Raises ValueError when ``bbox`` is not four finite numbers.
    """
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        raise ValueError(f"bbox must be [x, y, width, height], got {bbox!r}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        raise ValueError(f"bbox must hold four numbers, got {bbox!r}")  # float() would take "12" and True
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"bbox must hold finite numbers, got {bbox!r}")
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    x1, y1, x2, y2 = (float(np.float32(v)) for v in (x1, y1, x2, y2))
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def _xyxy(bbox: list[float]) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` (checked by :func:`clip_box`) as xyxy, unclipped."""
    x, y, w, h = (float(v) for v in bbox)
    return x, y, x + w, y + h


def _why_no_area(bbox: list[float], width: int, height: int) -> str:
    """What leaves a COCO ``[x, y, w, h]`` that :func:`clip_box` refused without area (a phrase)."""
    sizes = dict(zip(("width", "height"), bbox[2:]))
    negative = [f"{side} {value}" for side, value in sizes.items() if value < 0]
    if negative:
        return f"has a negative {' and '.join(negative)} (COCO's bbox is [x, y, width, height])"
    zero = [side for side, value in sizes.items() if value == 0]
    if zero:
        return f"has zero {' and '.join(zero)}"
    x, y, w, h = bbox
    if x < width and y < height and x + w > 0 and y + h > 0:
        return "is too thin for float32 (the boxes' precision)"
    return "has no area inside its image"


def _check_segmentation(segmentation: Any, width: int, height: int) -> str | None:
    """Why ``segmentation`` cannot be decoded for a width x height image, or None when it can."""
    if isinstance(segmentation, list) and segmentation and all(isinstance(part, dict) for part in segmentation):
        # a list of RLEs: their union, as pycocotools reads it
        return next(filter(None, (_check_segmentation(part, width, height) for part in segmentation)), None)
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list):
                return "a polygon must be a list of at least 3 (x, y) pairs"
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in polygon):
                return "a polygon must hold finite numbers"
        # beside a real polygon, one of fewer than 3 points outlines nothing (as pycocotools rasterises it)
        if segmentation and all(len(polygon) < 6 for polygon in segmentation):
            return "a polygon must be a list of at least 3 (x, y) pairs"
        return None
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            return "an RLE segmentation needs 'size' and 'counts'"
        size = segmentation["size"]
        if not isinstance(size, list) or len(size) != 2 or None in (json_whole_number(side, 1) for side in size):
            return f"RLE size must be [height, width], got {size!r:.80}"
        if [int(side) for side in size] != [height, width]:
            return f"RLE size {size} differs from the image's [{height}, {width}]"
        counts = segmentation["counts"]
        if not isinstance(counts, str) and not (
            isinstance(counts, list) and all(json_whole_number(c) is not None for c in counts)
        ):
            return "RLE counts must be a string (compressed) or a list of non-negative whole numbers"
        return None
    return f"segmentation must be polygons or RLE, got {type(segmentation).__name__}"


def _image_size(entry: dict[str, Any], path: Path, where: str, ann_file: Path) -> tuple[int, int]:
    """(width, height) from the JSON entry, or from the image file's header when the entry lacks them."""
    if "width" not in entry or "height" not in entry:
        return _read_image_size(path, where, ann_file)
    size = json_whole_number(entry["width"], 1), json_whole_number(entry["height"], 1)
    for field, value in zip(("width", "height"), size):
        if value is None:
            raise ValueError(
                f"{ann_file}: {where}: {field} must be a positive integer, got {entry[field]!r:.80}"
            )
    return size


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """bool[H, W] mask of a COCO segmentation: polygons (rasterised as pycocotools does), or RLE with
    compressed or uncompressed counts. Errors start with 'segmentation: '."""
    return rle_to_mask(to_rle(segmentation, height, width, "segmentation"))


class CocoDetection(Dataset):
    """Images and instance annotations in COCO's format, returned like :class:`visionzoo.data.Shapes`.

    ``ds[i]`` returns ``(image, target)``: ``image`` float32 Tensor[3, H, W] in [0, 1] (read with
    PIL as RGB; 16-bit greyscale divided by 65535; pixels as stored: an EXIF orientation tag is not
    applied, as in torchvision's ``read_image`` and ``CocoDetection``, so COCO's width, height and
    boxes refer to the stored pixels); ``target``: ``boxes`` float32 Tensor[N, 4] xyxy in pixels (COCO's xywh converted
    and clipped to the image), ``unclipped_boxes`` the same unclipped (what evaluation scores against, as
    pycocotools does), ``labels`` int64 Tensor[N] in 1..K (the sorted category ids mapped
    to contiguous labels; ``label_to_cat_id`` maps back), ``area`` float32 Tensor[N] (the file's,
    else its box's w * h, unclipped, as coco-eval takes it), ``iscrowd`` int64 Tensor[N] (crowd regions are kept; training code
    should ignore them and evaluation does), ``image_id`` int (COCO's id) and, when every
    annotation has a segmentation and ``load_masks`` is set, ``masks`` bool Tensor[N, H, W]
    (polygons rasterised pixel for pixel as pycocotools does; RLE with compressed or uncompressed
    counts; when only some annotations have one, a warning names the count and the first without).
    With ``image_size`` (see :func:`resize_sample`), ``unclipped_boxes`` and ``area`` stay in the file's
    pixels, where evaluation scores, and ``original_size`` int64 Tensor[2] gives the file's (height, width).

    Args:
        images_dir: folder that the images' ``file_name`` entries are relative to.
        ann_file: the instances JSON file.
        skip_invalid: drop boxes with no area inside their image from ``boxes`` instead of raising; the
            count is logged and kept in ``num_skipped``. As pycocotools still scores them (as misses), an
            image's skipped annotations come as ``skipped_boxes`` (the file's, xyxy), ``skipped_labels``,
            ``skipped_area`` (the file's, else its box's w * h) and ``skipped_iscrowd``, which only evaluation reads.
        transform: optional callable ``(image, target) -> (image, target)``.
        load_masks: decode segmentations into ``masks`` (costs time; detection alone needs none). Without it
            segmentations are neither read nor checked.
        image_size: resize every image to ``image_size`` x ``image_size`` (bilinear, aspect not
            kept), scaling boxes and masks with it (not what evaluation reads, see above); None keeps the
            files' sizes.
        read_boxes: False for a reader of the images alone (masked patch prediction, tokenizers, priors): the
            boxes ``skip_invalid`` drops cost it nothing, so their count is logged at debug level, not warned of
            as boxes left out of training, and a file without ``annotations`` (an image-info file) is read as
            images without objects; True refuses such a file, naming it.
        content: the parsed JSON of ``ann_file`` where the caller has read it already (:func:`create_dataset`,
            to find the images folder), so that a large file is not parsed twice; None reads ``ann_file``.

    Attributes: ``classes`` (category names, ``classes[label - 1]``), ``cat_ids`` (sorted COCO
    category ids), ``label_to_cat_id`` / ``cat_id_to_label`` (dicts), ``image_ids`` (sorted),
    ``num_skipped``, ``num_objects`` (the boxes kept that are not crowd regions: what a detector learns to find),
    ``has_masks``.
    """

    def __init__(
        self,
        images_dir: str | Path,
        ann_file: str | Path,
        skip_invalid: bool = False,
        transform: Transform | None = None,
        load_masks: bool = True,
        image_size: int | None = None,
        read_boxes: bool = True,
        content: Any = None,
    ):
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        self.skip_invalid = skip_invalid
        self.transform = transform
        self.load_masks = load_masks
        require_integers("CocoDetection", image_size=image_size)
        if image_size is not None and image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = image_size
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images folder not found: {self.images_dir}")
        data = read_json(self.ann_file) if content is None else content
        if not isinstance(data, dict):
            raise ValueError(f"{self.ann_file}: expected a JSON object with images, annotations, categories")
        _require(data, ("images", "categories"), "the top level", self.ann_file)
        if "annotations" not in data and read_boxes:
            raise ValueError(
                f"{self.ann_file}: it holds no 'annotations', as an image-info file (images alone, like COCO's "
                "image_info_test2017.json): training or scoring a detector needs an instances file with boxes"
            )
        self._read_categories(data["categories"])
        self._read_images(data["images"])
        # a reader of the images alone takes an image-info file, as pycocotools and torchvision load it
        self.num_skipped = self._read_annotations(data.get("annotations", []))
        if self.num_skipped and not read_boxes:
            log.debug("%s: skipped %d boxes with no area inside their image (the images alone are read)",
                      self.ann_file, self.num_skipped)
        elif self.num_skipped:
            log.warning(
                "%s: skipped %d boxes with no area inside their image (left out of training; evaluation "
                "scores them, as pycocotools does, as objects not found)", self.ann_file, self.num_skipped
            )

    def _read_categories(self, categories: Any) -> None:
        if not isinstance(categories, list):
            raise ValueError(f"{self.ann_file}: 'categories' must be a list")
        names: dict[int, str] = {}
        ids_of: dict[str, int] = {}
        for position, entry in enumerate(categories):
            where = _entry_name("category", position, entry)
            _require(entry, ("id", "name"), where, self.ann_file)
            _check_id(entry["id"], "id", where, self.ann_file)
            if entry["id"] in names:
                raise ValueError(f"{self.ann_file}: category id {entry['id']} appears twice")
            name = str(entry["name"])
            if name in ids_of:  # classes are known by name: a detector's ap/NAME, a checkpoint's classes
                raise ValueError(f"{self.ann_file}: category ids {ids_of[name]} and {entry['id']} are both named "
                                 f"{name!r}; give each category its own name")
            names[entry["id"]], ids_of[name] = name, entry["id"]
        _check_same_kind(list(names), "category", self.ann_file)
        self.cat_ids = sorted(names)
        self.classes = [names[c] for c in self.cat_ids]
        self.cat_id_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id = {i + 1: c for i, c in enumerate(self.cat_ids)}

    def _read_images(self, images: Any) -> None:
        if not isinstance(images, list):
            raise ValueError(f"{self.ann_file}: 'images' must be a list")
        if not images:
            raise ValueError(f"{self.ann_file}: 'images' is empty: it lists no images to read")
        self._images: dict[Any, dict[str, Any]] = {}
        missing: list[tuple[Any, Path]] = []
        for position, entry in enumerate(images):
            where = _entry_name("image", position, entry)
            _require(entry, ("id", "file_name"), where, self.ann_file)
            _check_id(entry["id"], "id", where, self.ann_file)
            image_id = entry["id"]
            if image_id in self._images:
                raise ValueError(f"{self.ann_file}: image id {image_id} appears twice")
            if not isinstance(entry["file_name"], str) or not entry["file_name"]:
                raise ValueError(
                    f"{self.ann_file}: {where}: file_name must be a non-empty string, got {entry['file_name']!r:.80}"
                )
            path = self.images_dir / entry["file_name"]
            if not path.is_file():  # counted, so that a download missing several says so at once
                missing.append((image_id, path))
                continue
            width, height = _image_size(entry, path, where, self.ann_file)
            self._images[image_id] = {"path": path, "width": width, "height": height, "annotations": [],
                                      "skipped": []}
        if missing:
            (image_id, path), rest = missing[0], missing[1:]
            more = ""
            if rest:
                more = (f" (and {len(rest)} more of its {len(images)} images: image id {rest[0][0]}, "
                        f"{rest[0][1].name}{', ...' if len(rest) > 1 else ''})")
            raise FileNotFoundError(f"{self.ann_file}: image id {image_id}: file not found: {path}{more}")
        _check_same_kind(list(self._images), "image", self.ann_file)
        self.image_ids = sorted(self._images)

    def _read_annotations(self, annotations: Any) -> int:
        if not isinstance(annotations, list):
            raise ValueError(f"{self.ann_file}: 'annotations' must be a list")
        seen: set[Any] = set()
        for position, entry in enumerate(annotations):
            name = _entry_name("annotation", position, entry)
            _require(entry, ("id", "image_id", "category_id", "bbox"), name, self.ann_file)
            for field in ("id", "image_id", "category_id"):
                _check_id(entry[field], field, name, self.ann_file)
            if entry["id"] in seen:
                raise ValueError(f"{self.ann_file}: annotation id {entry['id']} appears twice")
            seen.add(entry["id"])
            image = self._images.get(entry["image_id"])
            if image is None:
                raise ValueError(
                    f"{self.ann_file}: {name} refers to image id {entry['image_id']!r}, not in 'images'"
                    + _other_type_hint(entry["image_id"], self._images)
                )
            if entry["category_id"] not in self.cat_id_to_label:
                raise ValueError(
                    f"{self.ann_file}: {name} has category_id {entry['category_id']!r}, not in 'categories'"
                    + _other_type_hint(entry["category_id"], self.cat_id_to_label)
                )
            try:
                box = clip_box(entry["bbox"], image["width"], image["height"])
            except ValueError as error:
                raise ValueError(f"{self.ann_file}: {name}: {error}") from None
            if box is None and not self.skip_invalid:
                raise ValueError(
                    f"{self.ann_file}: {name}: box {entry['bbox']} {_why_no_area(entry['bbox'], image['width'], image['height'])} "
                    f"(image id {entry['image_id']!r}, {image['width']}x{image['height']}); "
                    "pass skip_invalid=True (`visionzoo train --skip-invalid-boxes`) to drop such boxes"
                )
            segmentation = entry.get("segmentation")
            # never decoded otherwise (as in a bbox evaluation), nor for a skipped box
            if segmentation is not None and self.load_masks and box is not None:
                problem = _check_segmentation(segmentation, image["width"], image["height"])
                if problem:
                    # the image entry's width/height may be what is wrong: blame it when its file says so
                    self._check_size_against_header(image, entry["image_id"])
                    raise ValueError(f"{self.ann_file}: {name}: {problem}")
            area = entry.get("area")
            if area is None:  # the file's w * h (not the clipped box's), as coco-eval reads a file without areas
                area = entry["bbox"][2] * entry["bbox"][3]
            elif not _is_area(area):
                raise ValueError(
                    f"{self.ann_file}: {name}: area must be a non-negative number, got {area!r:.80}"
                )
            iscrowd = entry.get("iscrowd", 0)
            if not isinstance(iscrowd, int | float) or iscrowd not in (0, 1):
                raise ValueError(f"{self.ann_file}: {name}: iscrowd must be 0 or 1, got {iscrowd!r:.80}")
            # a skipped box is out of training but still scored, as pycocotools scores the file: a miss
            image["annotations" if box is not None else "skipped"].append(
                {
                    "box": box,
                    "unclipped_box": _xyxy(entry["bbox"]),
                    "label": self.cat_id_to_label[entry["category_id"]],
                    "area": float(area),
                    "iscrowd": int(iscrowd),
                    "segmentation": segmentation,
                    "id": entry["id"],
                }
            )
        kept = [a for image in self._images.values() for a in image["annotations"]]
        self.num_objects = sum(1 for a in kept if not a["iscrowd"])
        without = [a["id"] for a in kept if not a["segmentation"]]
        self.has_masks = bool(kept) and not without
        if self.load_masks and 0 < len(without) < len(kept):
            log.warning(
                "%s: %d of %d annotations have no segmentation (the first: annotation id %r), so no sample "
                "carries masks, only boxes", self.ann_file, len(without), len(kept), without[0]
            )
        return sum(len(image["skipped"]) for image in self._images.values())

    @property
    def cache_key(self) -> str | None:
        """A name for this data set's images (for caches of derived data, e.g. region proposals): the
        annotation file's path, size and modification time, those of every image file (an image replaced
        under the same name changes it) and the image size. None with a transform."""
        if self.transform is not None:
            return None
        stat = self.ann_file.stat()
        text = f"{self.ann_file.resolve()}|{self.images_dir.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.image_size}"
        digest = hashlib.sha1(text.encode())
        for image_id in self.image_ids:
            path = self._images[image_id]["path"]
            try:
                image_stat = path.stat()
                digest.update(f"|{path}|{image_stat.st_size}|{image_stat.st_mtime_ns}".encode())
            except OSError:  # gone since the data set was opened: reading it will name the file
                digest.update(f"|{path}|missing".encode())
        return f"coco-{self.ann_file.stem}-{digest.hexdigest()[:16]}"

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        """The file of sample ``index``."""
        return self._images[self.image_ids[index]]["path"]

    def stored_size(self, index: int) -> tuple[int, int]:
        """(width, height) of sample ``index``'s file, as the annotation file gives it (else the file's header);
        reading the sample checks it against the file."""
        record = self._images[self.image_ids[index]]
        return record["width"], record["height"]

    def _check_size(self, record: dict[str, Any], image_id: Any, size: tuple[int, int], orientation: Any = None) -> None:
        """Raise when ``size`` (width, height), read from the image file, differs from the entry's;
        ``orientation``: the file's EXIF orientation tag, which explains a swapped size."""
        if size != (record["width"], record["height"]):
            turned = ""
            if orientation in EXIF_QUARTER_TURNS and size[::-1] == (record["width"], record["height"]):
                turned = (
                    f"; its EXIF orientation {orientation} shows it turned to {size[1]}x{size[0]}, but images are "
                    "read as stored, without it (as torchvision's read_image): annotate the stored pixels or "
                    "save the image turned"
                )
            raise ValueError(
                f"{self.ann_file}: image id {image_id}: {record['path']} is {size[0]}x{size[1]}, "
                f"the annotations say {record['width']}x{record['height']}{turned}"
            )

    def _check_size_against_header(self, record: dict[str, Any], image_id: Any) -> None:
        """Raise when the image file's header disagrees with the entry's width and height."""
        where = f"image id {image_id}"
        self._check_size(record, image_id, _read_image_size(record["path"], where, self.ann_file))

    def check_files(self, count: int | None = None) -> None:
        """Raise ValueError naming the file when one of the first ``count`` images (all with None) cannot be read
        (not an image, a truncated PNG or JPEG) or its header's size differs from its entry's: what reading it would
        find, at the cost of its header and, for a PNG, its chunks' checksums, for a JPEG its last bytes (see
        :func:`_check_whole_jpeg`), not of decoding its pixels (a split that a run evaluates only at the end is
        checked so before training)."""
        for image_id in self.image_ids[:count]:
            record = self._images[image_id]
            try:
                with Image.open(record["path"]) as file:
                    size = file.size
                    if file.format in ("JPEG", "MPO"):  # PIL's verify reads nothing of a JPEG past its header
                        _check_whole_jpeg(file, record["path"])
                    else:
                        file.verify()  # nothing else may read the file first
                if size != (record["width"], record["height"]):
                    with Image.open(record["path"]) as file:  # its EXIF orientation may say why
                        self._check_size(record, image_id, size, file.getexif().get(EXIF_ORIENTATION))
            except (OSError, SyntaxError, Image.DecompressionBombError) as error:  # verify raises SyntaxError too
                raise ValueError(
                    f"{self.ann_file}: image id {image_id}: image {record['path']} cannot be read: {error}"
                ) from None

    def _load_image(self, record: dict[str, Any], image_id: Any) -> torch.Tensor:
        try:
            with Image.open(record["path"]) as file:
                self._check_size(record, image_id, file.size, file.getexif().get(EXIF_ORIENTATION))
                pixels = image_array(file, 3, f"{self.ann_file}: image id {image_id}: image {record['path']}")
        except (OSError, Image.DecompressionBombError) as error:
            raise ValueError(
                f"{self.ann_file}: image id {image_id}: image {record['path']} cannot be read: {error}"
            ) from None
        # numpy rather than torch ops: no thread-pool hand-off per image inside data-loader workers.
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def _decode(self, annotation: dict[str, Any], height: int, width: int) -> np.ndarray:
        try:
            return decode_segmentation(annotation["segmentation"], height, width)
        except ValueError as error:
            raise ValueError(f"{self.ann_file}: annotation id {annotation['id']}: {error}") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.image_ids[index]
        record = self._images[image_id]
        annotations = record["annotations"]
        image = self._load_image(record, image_id)
        target: dict[str, Any] = {
            "boxes": torch.tensor([a["box"] for a in annotations], dtype=torch.float32).reshape(-1, 4),
            "unclipped_boxes": torch.tensor([a["unclipped_box"] for a in annotations], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([a["label"] for a in annotations], dtype=torch.int64),
            "area": torch.tensor([a["area"] for a in annotations], dtype=torch.float32),
            "iscrowd": torch.tensor([a["iscrowd"] for a in annotations], dtype=torch.int64),
            "image_id": image_id,
        }
        if record["skipped"]:
            skipped = record["skipped"]
            target["skipped_boxes"] = torch.tensor([a["unclipped_box"] for a in skipped], dtype=torch.float32)
            target["skipped_labels"] = torch.tensor([a["label"] for a in skipped], dtype=torch.int64)
            target["skipped_area"] = torch.tensor([a["area"] for a in skipped], dtype=torch.float32)
            target["skipped_iscrowd"] = torch.tensor([a["iscrowd"] for a in skipped], dtype=torch.int64)
        if self.has_masks and self.load_masks:
            height, width = record["height"], record["width"]
            masks = [self._decode(a, height, width) for a in annotations]
            target["masks"] = torch.from_numpy(
                np.stack(masks) if masks else np.zeros((0, height, width), bool)
            )
        if self.image_size is not None:
            image, target = resize_sample(image, target, self.image_size)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return (
            f"CocoDetection(images_dir={str(self.images_dir)!r}, ann_file={str(self.ann_file)!r}, "
            f"images={len(self)}, classes={len(self.classes)})"
        )


def resize_sample(
    image: torch.Tensor, target: dict[str, Any], size: int
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Resize image float[3, H, W] to [3, size, size] (bilinear) and scale ``boxes`` and ``masks`` with it.

    What evaluation reads stays as the annotation file gives it, since pycocotools scores in the file's
    pixels (its small/medium/large split reads the file's areas): ``unclipped_boxes`` and ``area`` are
    kept, and ``original_size`` int64 Tensor[2] records the file's (height, width), by which
    detections are scaled back (:func:`visionzoo.train.detection.in_file_pixels`)."""
    height, width = image.shape[-2:]
    if (height, width) == (size, size):
        return image, target
    sx, sy = size / width, size / height
    image = resize_square(image, size)
    target = dict(target)
    target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    target["original_size"] = torch.tensor([height, width])
    if "masks" in target:
        # Nearest neighbour by pixel centre; plain indexing also handles images without objects.
        rows = ((torch.arange(size) + 0.5) / sy).long().clamp_(max=height - 1)
        cols = ((torch.arange(size) + 0.5) / sx).long().clamp_(max=width - 1)
        target["masks"] = target["masks"][:, rows][:, :, cols]
    return image, target


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Tensor[C, H, W] in [0, 1] → Tensor[C, size, size] in [0, 1], bilinear with antialiasing, the aspect not kept:
    how a data set read at an ``image_size`` resizes its files (``image`` itself when it has that size already)."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0].clamp_(0, 1)
