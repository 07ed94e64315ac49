"""ShapeSlides: slide-level data for hierarchical models (HIPT), built from Shapes tiles.

A "slide" is a ``grid_size × grid_size`` mosaic of square Shapes scenes of ``tile_size`` pixels
(1024 × 1024 = 4 × 4 tiles of 256 by default), and its label is the shape class that is most
frequent among its tiles' labels (each tile's label is Shapes' classification label: the class of
its most visible object, the only object with the default one object per tile).

How a slide is drawn, from its own generator seeded by ``(seed, split, index)`` only:

1. each tile position gets a class, uniformly and independently; the draw is repeated until the
   most frequent class leads the runner-up by at least ``margin`` tiles, so no slide has a tie;
2. each position then takes a tile of its class from the split's *tile pool*: the first
   ``pool_size`` scenes of ``Shapes(split, image_size=tile_size, seed=seed)``, indexed by label once.

Train, val and test draw from different Shapes splits, so test slides are made of tiles never seen
in training. Slides share pool tiles, which lets a frozen tile encoder run once per pool tile
(:meth:`ShapeSlides.layout` gives the tile indices without drawing pixels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from visionzoo.data.shapes import (
    CLASSES,
    COLOR_NAMES,
    MAX_IMAGE_SIZE,
    SIZE_NAMES,
    SPLIT_SEEDS,
    Shapes,
    check_background,
    sample_index,
    size_indices,
)
from visionzoo.utils import require_integers

DEFAULT_LENGTHS = {"train": 400, "val": 100, "test": 200}
DEFAULT_POOL_SIZES = {"train": 600, "val": 150, "test": 300}
MAX_DRAWS = 10_000
# A fourth seed word keeps slide streams apart from the Shapes scenes' (seed, split, index) streams.
_SLIDE_STREAM = 1


@dataclass(frozen=True)
class SlideLayout:
    """Which tiles make slide ``index``.

    ``label``: the majority class; ``tile_labels``: int64[G, G] the class of each tile (row-major,
    row 0 at the top); ``tile_indices``: int64[G, G] indices into the split's tile pool;
    ``counts``: int64[K] tiles per class.
    """

    label: int
    tile_labels: np.ndarray
    tile_indices: np.ndarray
    counts: np.ndarray


def draw_tile_classes(
    rng: np.random.Generator, num_tiles: int, num_classes: int, margin: int = 1
) -> np.ndarray:
    """int64[num_tiles] classes drawn uniformly, redrawn until one class leads every other by ``margin``.

    Raises ValueError when no such draw turns up within ``MAX_DRAWS`` tries (an impossible or
    very unlikely margin).
    """
    for _ in range(MAX_DRAWS):
        classes = rng.integers(0, num_classes, size=num_tiles)
        counts = np.bincount(classes, minlength=num_classes)
        top_two = np.sort(counts)[-2:]
        if top_two[1] - top_two[0] >= margin:
            return classes.astype(np.int64)
    raise ValueError(
        f"no draw of {num_tiles} tiles over {num_classes} classes had a lead of margin={margin} "
        f"in {MAX_DRAWS} tries; use a smaller margin or more tiles"
    )


class ShapeSlides(Dataset):
    """Mosaics of Shapes tiles labelled by their most frequent shape (see the module docstring).

    ``ds[i]`` returns ``(image, target)``: ``image`` float32 Tensor[3, G·T, G·T] in [0, 1] (G =
    ``grid_size``, T = ``tile_size``); ``target``: ``label`` int in 0..K-1 (K = 6 shape classes),
    ``tile_labels`` and ``tile_indices`` int64 Tensor[G, G], ``counts`` int64 Tensor[K],
    ``image_id`` int.

    Args:
        split: "train", "val" or "test"; each has its own slide stream and its own tile pool.
        grid_size: tiles per side (4 makes 1024 × 1024 slides of 256-pixel tiles).
        tile_size: side of a tile in pixels (Shapes drawn at that size).
        length: number of slides (default 400 / 100 / 200).
        pool_size: scenes in the split's tile pool (default 600 / 150 / 300).
        seed: base seed of both the slides and the pool.
        min_objects, max_objects: objects per tile scene (one by default, so a tile shows its label).
        object_sizes, background: the tiles' object sizes and background, as :class:`Shapes` takes them
            (default: all sizes over a textured background; ``("large",)`` and ``"plain"`` make tiles a
            small ViT learns to read within minutes on a CPU).
        margin: the majority class's lead over the runner-up, in tiles (≥ 1: never a tie).
        transform: optional callable ``(image, target) -> (image, target)``.
    """

    def __init__(
        self,
        split: str = "train",
        grid_size: int = 4,
        tile_size: int = 256,
        length: int | None = None,
        pool_size: int | None = None,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 1,
        margin: int = 1,
        object_sizes: Sequence[str] | None = None,
        background: str = "textured",
        transform: Callable[[torch.Tensor, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]] | None = None,
    ):
        if split not in SPLIT_SEEDS:
            raise ValueError(f"unknown ShapeSlides split {split!r}; choose from {', '.join(SPLIT_SEEDS)}")
        require_integers("ShapeSlides", grid_size=grid_size, tile_size=tile_size, length=length, pool_size=pool_size,
                         margin=margin, seed=seed, min_objects=min_objects, max_objects=max_objects)
        # the tile pool is a Shapes data set, whose own errors would name its image_size, not tile_size
        if not 16 <= tile_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"ShapeSlides tile_size must be at least 16 and at most {MAX_IMAGE_SIZE} (Shapes' scene "
                             f"sizes), got {tile_size}")
        if not 0 <= seed < 2**32:
            raise ValueError(f"ShapeSlides seed must be in [0, 2**32), got {seed}")
        if not 1 <= min_objects <= max_objects <= len(COLOR_NAMES):
            raise ValueError(f"ShapeSlides needs 1 <= min_objects <= max_objects <= {len(COLOR_NAMES)}, "
                             f"got {min_objects}, {max_objects}")
        size_indices(object_sizes, "ShapeSlides")  # named here, not as the pool's Shapes
        check_background(background, "ShapeSlides")
        if grid_size < 1:
            raise ValueError(f"ShapeSlides grid_size must be >= 1, got {grid_size}")
        if not 1 <= margin <= grid_size * grid_size:
            raise ValueError(f"ShapeSlides margin must be in 1..{grid_size * grid_size} (tiles), got {margin}")
        if length is not None and length < 0:
            raise ValueError(f"ShapeSlides length must be >= 0, got {length}")
        pool_size = DEFAULT_POOL_SIZES[split] if pool_size is None else int(pool_size)
        if pool_size < 1:
            raise ValueError(f"ShapeSlides pool_size must be >= 1, got {pool_size}")
        self.split = split
        self.grid_size = int(grid_size)
        self.tile_size = int(tile_size)
        self.length = DEFAULT_LENGTHS[split] if length is None else int(length)
        self.seed = int(seed)
        self.margin = int(margin)
        self.transform = transform
        self.classes = list(CLASSES)
        self.pool = Shapes(
            split, image_size=tile_size, length=pool_size, seed=seed, min_objects=min_objects, max_objects=max_objects,
            object_sizes=object_sizes, background=background,
        )
        self._labels: np.ndarray | None = None
        self._by_class: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return self.length

    @property
    def pool_labels(self) -> np.ndarray:
        """int64[pool_size]: each pool tile's label (computed once, by drawing the pool)."""
        if self._labels is None:
            self._labels = np.array([self.tile_label(j) for j in range(len(self.pool))], dtype=np.int64)
        return self._labels

    def tile_label(self, pool_index: int) -> int:
        """Shapes' classification label of pool tile ``pool_index``."""
        scene = self.pool.scene(self._pool_index(pool_index))
        return int(scene.classes[int(np.argmax(scene.visible_area))])

    def _pool_by_class(self) -> list[np.ndarray]:
        if self._by_class is None:
            labels = self.pool_labels
            by_class = [np.flatnonzero(labels == k) for k in range(len(self.classes))]
            empty = [self.classes[k] for k, members in enumerate(by_class) if members.size == 0]
            if empty:
                raise ValueError(
                    f"the {self.split} tile pool of {len(self.pool)} scenes has no tile of class {', '.join(empty)}; "
                    "use a larger pool_size"
                )
            self._by_class = by_class
        return self._by_class

    def _index(self, index: int) -> int:
        return sample_index(index, self.length, "ShapeSlides")

    def _pool_index(self, pool_index: int) -> int:
        # the pool is a Shapes data set, whose own error would name Shapes, not the pool the user indexed
        return sample_index(pool_index, len(self.pool), "ShapeSlides pool")

    def rng(self, index: int) -> np.random.Generator:
        """The generator of slide ``index``, a function of (seed, split, index) only."""
        words = [self.seed, SPLIT_SEEDS[self.split], self._index(index), _SLIDE_STREAM]
        return np.random.Generator(np.random.PCG64(words))

    def layout(self, index: int) -> SlideLayout:
        """The label and tiles of slide ``index``, without drawing any pixels."""
        rng = self.rng(index)
        by_class = self._pool_by_class()
        classes = draw_tile_classes(rng, self.grid_size**2, len(self.classes), self.margin)
        picks = rng.random(classes.size)
        indices = np.array(
            [by_class[c][min(int(u * by_class[c].size), by_class[c].size - 1)] for c, u in zip(classes, picks)],
            dtype=np.int64,
        )
        counts = np.bincount(classes, minlength=len(self.classes)).astype(np.int64)
        grid = (self.grid_size, self.grid_size)
        return SlideLayout(int(np.argmax(counts)), classes.reshape(grid), indices.reshape(grid), counts)

    def tile(self, pool_index: int) -> torch.Tensor:
        """Pool tile ``pool_index``: float32 Tensor[3, T, T] in [0, 1]."""
        return torch.from_numpy(self.pool.scene(self._pool_index(pool_index)).image)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        index = self._index(index)
        layout = self.layout(index)
        size = self.tile_size
        image = torch.empty(3, self.grid_size * size, self.grid_size * size)
        for (row, col), pool_index in np.ndenumerate(layout.tile_indices):
            image[:, row * size : (row + 1) * size, col * size : (col + 1) * size] = self.tile(int(pool_index))
        target = {
            "label": layout.label,
            "tile_labels": torch.from_numpy(layout.tile_labels),
            "tile_indices": torch.from_numpy(layout.tile_indices),
            "counts": torch.from_numpy(layout.counts),
            "image_id": index,
        }
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return (
            f"ShapeSlides(split={self.split!r}, grid_size={self.grid_size}, tile_size={self.tile_size}, "
            f"length={self.length}, pool_size={len(self.pool)}, seed={self.seed}, margin={self.margin}"
            + ("" if self.pool.object_sizes == SIZE_NAMES else f", object_sizes={self.pool.object_sizes}")
            + ("" if self.pool.background == "textured" else f", background={self.pool.background!r}")
            + ")"
        )
