"""Digits: the 1,797 real 8 x 8 handwritten digits that scikit-learn ships, with a fixed split.

The split is stratified by class and fixed (70 / 15 / 15 with ``random_state=0``); train, val and
test together hold every image exactly once. Images are scaled from 0..16 to [0, 1], optionally
resized (bilinear, ``align_corners=False``) and repeated to 3 channels, and kept as one tensor.

The images, labels and split are read from scikit-learn once and kept in the cache
(``$VISIONZOO_CACHE/digits``, one file per scikit-learn version, whose split it is): importing
scikit-learn takes about a second, which every command on Digits, and each process of a
``torchrun``, paid at its start.
"""

from __future__ import annotations

import functools
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from visionzoo.checkpoint import atomic_write
from visionzoo.utils import require_integers

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
SPLIT_SEED = 0
NUM_IMAGES = 1797


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images float32[1797, 8, 8] in [0, 1], labels int64[1797]) from scikit-learn's copy."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def digits_cache_path() -> Path:
    """The cached table's file: ``$VISIONZOO_CACHE/digits/digits-sklearn-VERSION.npz``."""
    from importlib.metadata import version

    from visionzoo.models._hub import cache_dir

    return cache_dir() / "digits" / f"digits-sklearn-{version('scikit-learn')}.npz"


def _read_table(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The table in ``path``; ValueError unless it holds the 1,797 images, their labels and a split of them."""
    with np.load(path, allow_pickle=False) as table:
        images, labels = table["images"], table["labels"]
        splits = {split: table[split] for split in SPLITS}
    indices = list(splits.values())
    if (images.shape != (NUM_IMAGES, 8, 8) or images.dtype != np.float32 or labels.shape != (NUM_IMAGES,)
            or labels.dtype != np.int64 or any(part.dtype != np.int64 or part.ndim != 1 for part in indices)
            or not all(np.all(part[1:] > part[:-1]) for part in indices)
            or not np.array_equal(np.sort(np.concatenate(indices)), np.arange(NUM_IMAGES))):
        raise ValueError(f"{path} is not a Digits table")
    return images, labels, splits


@functools.lru_cache(maxsize=1)
def digits_table() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(images float32[1797, 8, 8] in [0, 1], labels int64[1797], {split: sorted int64 indices}), read-only: from
    the cache when it holds them, else from scikit-learn (then cached; a cache that cannot be written is skipped)."""
    path = digits_cache_path()
    try:
        images, labels, splits = _read_table(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        if path.exists():
            log.info("reading the Digits table again from scikit-learn: %s", error)
        images, labels = load_digits_arrays()
        splits = {split: split_indices(labels, split) for split in SPLITS}
        try:
            def write(tmp: str) -> None:
                with open(tmp, "wb") as handle:  # a handle: np.savez would add .npz to the temporary name
                    np.savez(handle, images=images, labels=labels, **splits)

            atomic_write(path, write)
        except OSError as write_error:
            log.info("the Digits table is not cached (%s)", write_error)
    for array in (images, labels, *splits.values()):
        array.setflags(write=False)
    return images, labels, splits


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Sorted int64 indices of ``split`` into the digits, stratified by ``labels``; fixed for a given sklearn."""
    from sklearn.model_selection import train_test_split

    if split not in SPLITS:
        raise ValueError(f"unknown Digits split {split!r}; choose from {', '.join(SPLITS)}")
    every = np.arange(len(labels))
    rest_fraction = SPLIT_FRACTIONS[1] + SPLIT_FRACTIONS[2]
    train, rest = train_test_split(every, test_size=rest_fraction, stratify=labels, random_state=SPLIT_SEED)
    val, test = train_test_split(
        rest, test_size=SPLIT_FRACTIONS[2] / rest_fraction, stratify=labels[rest], random_state=SPLIT_SEED
    )
    return np.sort({"train": train, "val": val, "test": test}[split])


def prepare_images(images: np.ndarray, image_size: int, channels: int) -> torch.Tensor:
    """float32 Tensor[N, C, S, S] from float32[N, 8, 8]: bilinear resize to S (align_corners=False), C repeats."""
    tensor = torch.from_numpy(images)[:, None]
    if image_size != tensor.shape[-1]:
        tensor = F.interpolate(tensor, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return tensor.repeat(1, channels, 1, 1).contiguous()


class Digits(Dataset):
    """scikit-learn's handwritten digits as a classification dataset.

    ``ds[i]`` returns ``(image, label)``: ``image`` float32 Tensor[C, S, S] in [0, 1], ``label`` int
    in 0..9. Attributes: ``classes`` (["0", ..., "9"]), ``targets`` (list of int labels, read
    without touching images), ``indices`` (int64 positions in ``sklearn.datasets.load_digits()``),
    ``images`` (float32 Tensor[N, C, S, S], all samples, preloaded).

    Args:
        split: "train" (1,257 images), "val" (270) or "test" (270).
        image_size: side S; 8 is the original, 32 the size the backbone trainings use.
        channels: 1, or 3 to repeat the grey channel for RGB models.
        transform: optional callable applied to (a copy of) the image tensor.
    """

    def __init__(
        self,
        split: str = "train",
        image_size: int = 8,
        channels: int = 1,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown Digits split {split!r}; choose from {', '.join(SPLITS)}")
        require_integers("Digits", image_size=image_size, channels=channels)
        if image_size <= 0:
            raise ValueError(f"Digits image_size must be positive, got {image_size}")
        if channels not in (1, 3):
            raise ValueError(f"Digits channels must be 1 or 3, got {channels}")
        images, labels, splits = digits_table()
        self.split = split
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.transform = transform
        self.indices = splits[split].copy()
        self.images = prepare_images(images[self.indices], self.image_size, self.channels)
        self.targets = labels[self.indices].tolist()
        self.classes = [str(d) for d in range(10)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            # a copy: ``image`` is a view into the preloaded images, which an in-place transform would rewrite
            image = self.transform(image.clone())
        return image, self.targets[index]

    def __repr__(self) -> str:
        return f"Digits(split={self.split!r}, image_size={self.image_size}, channels={self.channels}, length={len(self)})"
