"""``create_dataset``: a built-in dataset by name, or a COCO-format folder or JSON file by path."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from visionzoo.data.coco import CocoDetection, read_json
from visionzoo.data.digits import Digits
from visionzoo.data.shapes import Shapes
from visionzoo.utils import closest

log = logging.getLogger(__name__)

DATASETS = ("shapes", "digits")


# Roboflow's COCO export: each split's folder holds its images and this file, the val split's folder named valid/
ROBOFLOW_FILE = "_annotations.coco.json"


def _split_folders(split: str) -> list[str]:
    return ["valid", split] if split == "val" else [split]


def _annotation_candidates(root: Path, split: str) -> list[Path]:
    """The files that may hold ``split``'s annotations in COCO folder ``root``, the first found read."""
    return [
        root / "annotations" / f"instances_{split}.json",
        root / "annotations" / f"instances_{split}2017.json",
        *(root / folder / ROBOFLOW_FILE for folder in _split_folders(split)),
    ]


def _annotation_file(root: Path, split: str) -> Path:
    candidates = _annotation_candidates(root, split)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no annotations for split {split!r} in {root}: looked for {', '.join(str(c) for c in candidates)}"
    )


def _warn_of_other_annotations(root: Path, split: str, ann_file: Path) -> None:
    """Warn when ``split`` has another annotation file than ``ann_file``, the one read (an old export beside a new
    one): which one is read would otherwise go unsaid."""
    others = [c for c in _annotation_candidates(root, split) if c != ann_file and c.is_file()]
    if others:
        log.warning("%s has %s annotations for split %r: reading %s, not %s", root, "two" if len(others) == 1
                    else len(others) + 1, split, ann_file, ", ".join(str(other) for other in others))


def _has_annotations(root: Path, split: str) -> bool:
    try:
        _annotation_file(root, split)
    except FileNotFoundError:
        return False
    return True


def _images_folder(root: Path, split: str, ann_file: Path) -> tuple[Path, Any]:
    """The images folder of ``split`` and ``ann_file``'s content, parsed to find it, which :class:`CocoDetection`
    then takes rather than parse the file again."""
    if ann_file.name == ROBOFLOW_FILE:
        content = read_json(ann_file)
        return _holding_first_image(content, [ann_file.parent, root]), content
    names = [split, f"{split}2017"]
    if ann_file.name.endswith("2017.json"):
        names.reverse()
    # images/val2017/ too, as Ultralytics downloads COCO
    candidates = [*(root / name for name in names), *(root / "images" / name for name in names), root / "images"]
    found = [candidate for candidate in candidates if candidate.is_dir()]
    if not found:
        raise FileNotFoundError(
            f"no images folder for split {split!r} in {root}: looked for {', '.join(str(c) for c in candidates)}"
        )
    # file names may hold the split folder (val/a.png, images/val/a.png: images/ or the root then holds them): the
    # first listed image decides; the other folders found come after, for a val/ that holds no images beside an
    # images/val/ that does
    content = read_json(ann_file)
    folders = [found[0], *([root / "images"] if found[0].parent == root / "images" else []), root]
    folders += [folder for folder in found[1:] if folder not in folders]
    chosen = _holding_first_image(content, folders)
    first = _first_file_name(content)
    also = [folder for folder in found if folder != chosen and first is not None and (folder / first).is_file()]
    if also:  # two copies (one resized since, say): which one is read would otherwise go unsaid
        log.warning("%s and %s hold the images of split %r (%s): reading %s", chosen,
                    " and ".join(str(folder) for folder in also), split, first, chosen)
    return chosen, content


def _first_file_name(data: Any) -> str | None:
    """The file_name of the first image the parsed annotation file ``data`` lists, or None."""
    images = data.get("images") if isinstance(data, dict) else None
    # a file that is not COCO's shape is CocoDetection's to report, naming what is wrong
    first = images[0].get("file_name") if isinstance(images, list) and images and isinstance(images[0], dict) else None
    return first if isinstance(first, str) and first else None


def _holding_first_image(data: Any, folders: list[Path]) -> Path:
    """The first of ``folders`` that holds the first image the parsed annotation file ``data`` lists, else
    ``folders[0]``."""
    first = _first_file_name(data)
    if first is not None:
        return next((folder for folder in folders if (folder / first).is_file()), folders[0])
    return folders[0]


def _images_beside(ann_file: Path) -> tuple[Path, Any]:
    """The JSON's own folder, or its images/ subfolder, whichever holds the first listed image; for a JSON in an
    annotations/ folder (CVAT's export: annotations/instances_default.json) also that folder's sibling
    images/{subset}/ (Datumaro's images/default/), {subset}/ (a COCO folder's own file: val2017/ beside
    annotations/instances_val2017.json) and images/, and the folder above it (file names that hold their folder,
    images/a.png, as a COCO folder's may). With the file's parsed content, for :class:`CocoDetection`."""
    folder = ann_file.parent
    folders = [folder, folder / "images"]
    if folder.name == "annotations":
        subset = ann_file.stem.rsplit("_", 1)[-1]
        folders += [folder.parent / "images" / subset, folder.parent / subset, folder.parent / "images",
                    folder.parent]
    content = read_json(ann_file)
    return _holding_first_image(content, folders), content


def builtin_name(data: str | Path | None) -> str | None:
    """The built-in data set that ``data`` names (case-insensitive), or None for a path (or None). A name wins
    over a folder of that name; "./shapes" names the folder."""
    text = str(data).lower() if data is not None else None
    return text if text in DATASETS else None


def same_images_note(data: str | Path, split: str, trained_on: str | Path | None = None) -> str | None:
    """The line that says figures on ``split`` of ``data`` are on the training images, where ``data`` is one COCO
    .json file, which serves every split (:func:`create_dataset`), and the run was trained on it (``trained_on``, the
    run's data; None: ``data`` is the run's); else None (the train split, built-in data, a COCO folder, another file
    than the run's)."""
    path = Path(data).expanduser()
    if split == "train" or builtin_name(str(data)) is not None or not path.is_file():
        return None
    if trained_on is not None:
        trained = Path(trained_on).expanduser()
        if not (trained.is_file() and path.samefile(trained)):
            return None
    return f"{data} serves every split: the {split} figures are on the training images"


def split_of_folder(ann_file: str | Path) -> tuple[Path, str, list[str]] | None:
    """Where ``ann_file`` is the file a COCO folder reads one split from (DIR/annotations/instances_train.json,
    Roboflow's DIR/train/_annotations.coco.json) and that folder has other splits: the folder, the split and the
    others; else None."""
    path = Path(ann_file).expanduser()
    root = path.parent.parent
    for split in SPLITS:
        candidate = next((c for c in _annotation_candidates(root, split) if c.is_file()), None)
        if candidate is not None and candidate.samefile(path):
            others = [other for other in SPLITS if other != split and _has_annotations(root, other)]
            return (root, split, others) if others else None
    return None


def create_dataset(
    name_or_path: str | Path, split: str = "train", image_size: int | None = None, **kwargs: Any
) -> Dataset:
    """Build a dataset from a name in ``DATASETS`` or a path in COCO format.

    - ``"shapes"`` / ``"digits"`` (case-insensitive): :class:`Shapes` / :class:`Digits` of ``split``; ``image_size``
      None keeps their default (128 / 8); ``kwargs`` go to the class.
    - a folder in COCO's layout: ``DIR/annotations/instances_{split}.json`` (or
      ``instances_{split}2017.json``) with images in ``DIR/{split}/``, ``DIR/{split}2017/``,
      ``DIR/images/{split}/``, ``DIR/images/{split}2017/`` or ``DIR/images/`` (or ``DIR/`` itself, for file names
      that hold the split folder): the first of them that holds the first listed image; or Roboflow's
      ``DIR/{split}/_annotations.coco.json`` (the val split's in ``DIR/valid/`` or ``DIR/val/``) with the images
      beside it.
    - a ``.json`` file: its images relative to its folder or to an ``images/`` folder beside it; for a file in an
      ``annotations/`` folder (CVAT's ``annotations/instances_default.json``, a COCO folder's own) also
      ``images/{subset}/``, ``{subset}/`` or ``images/`` beside that folder.

    Paths give :class:`CocoDetection` (``image_size`` resizes, ``kwargs`` go to it). An unknown
    name that is no existing path raises ValueError with the closest dataset names; a folder
    without the expected files raises FileNotFoundError naming what was looked for.
    """
    text = str(name_or_path)
    name = builtin_name(text)
    if name is not None:
        if name == "shapes":
            return Shapes(split, **({"image_size": image_size} if image_size is not None else {}), **kwargs)
        return Digits(split, **({"image_size": image_size} if image_size is not None else {}), **kwargs)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        ann_file = _annotation_file(path, split)
        _warn_of_other_annotations(path, split, ann_file)
        images_dir, content = _images_folder(path, split, ann_file)
        return CocoDetection(images_dir, ann_file, image_size=image_size, content=content, **kwargs)
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise ValueError(f"dataset file must be a COCO .json file, got {path}")
        images_dir, content = _images_beside(path)
        return CocoDetection(images_dir, path, image_size=image_size, content=content, **kwargs)
    looks_like_path = any(sep in text for sep in ("/", "\\")) or text.lower().endswith(".json")
    if looks_like_path:
        raise FileNotFoundError(f"dataset path not found: {path}")
    near = closest(text, DATASETS)
    hint = f"; closest: {', '.join(near)}" if near else ""
    raise ValueError(
        f"unknown dataset {text!r}{hint}; built-in: {', '.join(DATASETS)}, or give a COCO folder or .json file"
    )


# The splits of a data set, in the order a run's set-up opens them (the first present gives the classes).
SPLITS = ("train", "val", "test")


class Splits(dict):
    """A run's data splits by name. A split that ``data`` lacks (a COCO folder without its annotations) is absent:
    ``get`` gives None and indexing raises the FileNotFoundError that names the files looked for."""

    def __init__(self, splits: dict[str, Dataset], missing: dict[str, FileNotFoundError]):
        super().__init__(splits)
        self.missing = missing

    def __missing__(self, split: str) -> Dataset:
        if split in self.missing:
            raise self.missing[split]
        raise KeyError(split)

    def first(self) -> Dataset:
        """The first split present (train where there is one): it gives the classes and image size of a trained
        model's data, which are the same in every split (inference checks them against the checkpoint's)."""
        return next(iter(self.values()))


class MissingSplitError(FileNotFoundError):
    """A COCO folder lacks the annotations of the split asked for: ``missing`` (the error naming the files looked
    for), the splits it has, ``present``, and ``option``, the argument that picks a split (eval's --split, sample's
    --complete), which the message tells to give."""

    def __init__(self, missing: FileNotFoundError, present: list[str], option: str = "--split"):
        super().__init__(str(missing))
        self.present = present
        self.option = option

    def __str__(self) -> str:
        return f"{self.args[0]}; it has {' and '.join(self.present)}: give {self.option} {self.present[-1]}"


def images_only(data: str | Path) -> dict[str, Any]:
    """Keyword arguments for :func:`open_splits` / :func:`create_dataset` of a task that reads the images alone
    (masked patch prediction, tokenizers, priors): a COCO path's masks are not decoded and a box with no area inside
    its image is dropped rather than refused, since no box is read (and not warned of: nothing they read is lost);
    built-in data take none."""
    return {} if builtin_name(str(data)) is not None else {"load_masks": False, "skip_invalid": True,
                                                            "read_boxes": False}


def open_splits(data: str | Path, names: tuple[str, ...] | Splits = SPLITS, image_size: int | None = None,
                **kwargs: Any) -> Splits:
    """``create_dataset(data, split, image_size, **kwargs)`` for each split of ``names`` that ``data`` has: built-in
    data have all, one COCO .json file all as one data set (read once), a COCO folder those with annotations (so
    that a download of COCO's val split alone can be evaluated). None of ``names`` raises the first one's :class:`MissingSplitError` with the splits the folder
    has, or, for a folder without annotations for any split, a FileNotFoundError naming every split's files looked
    for. ``names`` may also be splits already built (what a checkpoint recorded of its data, for predict and sample),
    which are returned as they are."""
    if isinstance(names, Splits):
        return names
    if names and builtin_name(str(data)) is None and Path(data).expanduser().is_file():
        # one file serves every split: one data set, its file parsed and images checked once
        return Splits(dict.fromkeys(names, create_dataset(data, names[0], image_size=image_size, **kwargs)), {})
    splits, missing = {}, {}
    for split in names:
        try:
            splits[split] = create_dataset(data, split, image_size=image_size, **kwargs)
        except FileNotFoundError as error:
            if not Path(data).expanduser().is_dir():  # a missing dataset path, not a missing split
                raise
            missing[split] = error
    if not splits:
        root = Path(data).expanduser()
        present = [split for split in SPLITS if _has_annotations(root, split)]
        if present:
            # names is a subset only for one split asked for (eval's --split, sample's --complete), so the splits
            # the folder has say what to give
            raise MissingSplitError(missing[names[0]], present)
        # no COCO folder at all: one split's error alone hid that (and named a split eval --split test never asked for)
        each = "{" + ",".join(SPLITS) + "}"
        folders = "{" + ",".join(folder for split in SPLITS for folder in _split_folders(split)) + "}"
        raise FileNotFoundError(f"{data} has no COCO annotations for any split: looked for "
                                f"annotations/instances_{each}.json, annotations/instances_{each}2017.json and "
                                f"{folders}/{ROBOFLOW_FILE} (Roboflow's export){_what_to_give(root)}")
    return Splits(splits, missing)


def _what_to_give(folder: Path) -> str:
    """For a folder without a COCO folder's annotations that holds .json files itself (one split's folder of a
    Roboflow export, a file beside its images): '; it holds ...: give ...', else ''."""
    if (folder / ROBOFLOW_FILE).is_file():
        return (f"; it holds {ROBOFLOW_FILE}, Roboflow's {folder.name} split: give --data {folder.parent} (the export) "
                "or the file")
    files = sorted(path.name for path in folder.glob("*.json") if path.is_file())
    if not files:
        return ""
    if len(files) == 1:
        return f"; it holds {files[0]}: give --data {folder / files[0]}"
    return f"; it holds {', '.join(files[:3])}{', ...' if len(files) > 3 else ''}: give one of them as --data"


def require_one_image_size(splits: Mapping[str, Dataset]) -> None:
    """Raise ValueError naming two images of different sizes where the COCO splits of ``splits`` are read at their
    files' sizes (built without ``image_size``): a task that stacks its images into batches needs one size."""
    first = None
    for dataset in splits.values():
        if not isinstance(dataset, CocoDetection) or dataset.image_size is not None:
            continue
        for index in range(len(dataset)):
            size = dataset.stored_size(index)
            if first is None:
                first = dataset, index, size
            elif size != first[2]:
                other, at, (width, height) = first
                where = "" if other is dataset else f" of {other.ann_file}"
                raise ValueError(
                    f"{dataset.ann_file}: image id {dataset.image_ids[index]} is {size[0]}x{size[1]}, image id "
                    f"{other.image_ids[at]}{where} is {width}x{height}: images are batched at one size; give "
                    "--img-size to resize them all (square)"
                )


def collate_detection(
    batch: list[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Collate detection samples into (list of images Tensor[3, H, W], list of target dicts), sizes may differ."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets
