"""Write a detection dataset as PNG files plus COCO JSON, so that outside tools read the same data.

Layout (COCO's own): ``DIR/{split}/{index:06d}.png`` and ``DIR/annotations/instances_{split}.json``
with categories 1..K, boxes as ``[x, y, width, height]``, ``area`` = visible mask pixels,
``iscrowd`` 0, segmentation as compressed RLE (exact, unlike polygons), and each image entry
carrying its ``caption`` when the dataset has one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from visionzoo.checkpoint import atomic_write
from visionzoo.data.masks import mask_to_rle
from visionzoo.data.shapes import DEFAULT_LENGTHS, SPLIT_SEEDS, Shapes
from visionzoo.utils import require_folder_or_absent

# Shapes draws any number of scenes, so a split has no length to bound ``num``: an export writes at most this
# many images per split (COCO train2017's scale; at 128 px about 3 GB of PNGs and 7 minutes), not 10**9 files.
MAX_EXPORT_IMAGES = 100_000


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """uint8[H, W, 3] from a float Tensor[3, H, W] in [0, 1]: value * 255 rounded half to even."""
    pixels = np.clip(image.detach().cpu().numpy(), 0.0, 1.0) * 255  # numpy: no thread-pool start per image
    return np.rint(pixels).astype(np.uint8).transpose(1, 2, 0)


def _annotations(
    target: dict[str, Any], image_id: int, first_id: int, color_names: list[str] | None
) -> list[dict]:
    entries = []
    boxes = target["boxes"].tolist()
    labels = target["labels"].tolist()
    masks = target["masks"].numpy()
    for k, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels)):
        entry = {
            "id": first_id + k,
            "image_id": image_id,
            "category_id": int(label),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": int(masks[k].sum()),
            "iscrowd": 0,
            "segmentation": mask_to_rle(masks[k]),
        }
        if color_names is not None and "colors" in target:
            entry["color"] = color_names[int(target["colors"][k])]
        entries.append(entry)
    return entries


def image_name(index: int) -> str:
    """The file name of image ``index`` in an export: 000000.png, 000001.png, ... (6 digits: an export holds at most
    ``MAX_EXPORT_IMAGES``)."""
    return f"{index:06d}.png"


def image_index(name: str) -> int | None:
    """The index of the image that an export names ``name`` (:func:`image_name`), or None for another name: one of
    more digits than an export writes (a user's 20261205.png, named by its date) is no export's."""
    return int(name[:6]) if re.fullmatch(r"[0-9]{6}\.png", name) else None


def remove_earlier_images(images_dir: Path, count: int) -> None:
    """Delete the images of an earlier export from ``images_dir`` beyond the ``count`` this one writes, so that a
    smaller export does not leave the tail of a larger one beside its own (e.g. for tools that read the folder,
    not the JSON); every other file stays."""
    if not images_dir.is_dir():
        return
    for path in images_dir.iterdir():
        index = image_index(path.name)
        if index is not None and index >= count and path.is_file():
            path.unlink()


def folders_in_the_way(out_dir: Path, split: str, count: int) -> list[Path]:
    """The folders in ``out_dir`` at the paths of files that an export of ``count`` images of ``split`` writes."""
    found = [path for path in [out_dir / "annotations" / f"instances_{split}.json"] if path.is_dir()]
    if (out_dir / split).is_dir():
        found += sorted(path for path in (out_dir / split).iterdir()
                        if (index := image_index(path.name)) is not None and index < count and path.is_dir())
    return found


def write_coco_split(dataset: Any, out_dir: str | Path, split: str, progress: bool = True) -> Path:
    """Write every sample of ``dataset`` ((image, target) with boxes, labels, masks) as split ``split``.

    Returns the path of the JSON file; the PNGs go to ``out_dir/split/`` (those of an earlier export beyond
    ``len(dataset)`` are deleted). The JSON is written to a temporary file first and renamed, so a reader never
    sees half of it.
    """
    out_dir = Path(out_dir)
    images_dir = out_dir / split
    remove_earlier_images(images_dir, len(dataset))
    images_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations").mkdir(exist_ok=True)
    color_names = getattr(dataset, "color_names", None)
    images, annotations = [], []
    for index in tqdm(range(len(dataset)), desc=f"export {split}", unit="img", disable=not progress):
        image, target = dataset[index]
        file_name = image_name(index)
        Image.fromarray(to_uint8(image)).save(images_dir / file_name, compress_level=1)
        entry = {
            "id": int(target["image_id"]),
            "file_name": file_name,
            "height": image.shape[1],
            "width": image.shape[2],
        }
        if "caption" in target:
            entry["caption"] = target["caption"]
        images.append(entry)
        annotations += _annotations(target, entry["id"], len(annotations) + 1, color_names)
    categories = [
        {"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(dataset.classes)
    ]
    content = {
        "info": {"description": f"{dataset!r} exported by visionzoo", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    ann_file = out_dir / "annotations" / f"instances_{split}.json"
    # a temporary file of its own (two exports into one folder never write into the same one), then renamed
    atomic_write(ann_file, lambda tmp: Path(tmp).write_text(json.dumps(content), encoding="utf-8"))
    return ann_file


def export_shapes(
    out_dir: str | Path,
    splits: str | Iterable[str] = ("train", "val", "test"),
    num: int | None = None,
    image_size: int = 128,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Path]:
    """Export Shapes splits (``num`` images each, default the split's length) to ``out_dir`` in COCO layout.

    Refuses a ``num`` above ``MAX_EXPORT_IMAGES``, and a non-empty ``out_dir`` unless ``overwrite`` (files of
    the same names are then replaced, the numbered PNGs of an earlier export beyond ``num`` deleted, others left
    alone). Returns {split: JSON path}.
    """
    if num is not None and num < 1:  # the CLI's positive_int; an empty split is a JSON CocoDetection refuses
        raise ValueError(f"--num must be at least 1, got {num}")
    if num is not None and num > MAX_EXPORT_IMAGES:
        raise ValueError(f"--num {num} is above the {MAX_EXPORT_IMAGES} images per split an export writes "
                         "(Shapes draws any number; that many PNGs would fill the disk, not make a data set)")
    out_dir = Path(out_dir)
    splits = list(dict.fromkeys([splits] if isinstance(splits, str) else splits))  # "val", not "v", "a", "l"
    for split in splits:
        if split not in SPLIT_SEEDS:
            raise ValueError(f"unknown Shapes split {split!r}; choose from {', '.join(SPLIT_SEEDS)}")
    require_folder_or_absent(out_dir, "--out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {out_dir} is not empty; pass --overwrite to write into it")
    for folder in (out_dir / name for name in ("annotations", *splits)):  # else "[Errno 17] File exists" mid-export
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"{folder} is a file where the export writes its {folder.name} folder; move it or "
                                  "give another --out")
    for split in splits:  # else "[Errno 21] Is a directory" once the images are written
        in_the_way = folders_in_the_way(out_dir, split, DEFAULT_LENGTHS[split] if num is None else num)
        if in_the_way:
            raise IsADirectoryError(f"{in_the_way[0]} is a folder where the export writes a file; move it or give "
                                    "another --out")
    return {
        split: write_coco_split(
            Shapes(split, image_size=image_size, length=num, seed=seed), out_dir, split, progress
        )
        for split in splits
    }
