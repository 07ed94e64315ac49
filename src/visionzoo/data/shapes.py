"""Shapes: deterministic, procedurally drawn scenes for classification, detection, segmentation and captions.

A scene holds 1 to 6 objects (six shape classes, seven colours, three sizes) over a textured
background; later objects are drawn over earlier ones. Every placement is checked so that each
object keeps at least half of its pixels visible and a visible box of at least 12 px a side (at
128 x 128, scaled with ``image_size``); a placement that breaks this is redrawn, which keeps boxes
learnable to high IoU.

Each sample is drawn by its own random generator, seeded from ``(seed, split, index)``, so a sample
depends on nothing but those three numbers: not on the order of access, the worker or the process.
Rendering is plain numpy on a pixel grid (half-plane tests for polygons, a distance test for
circles), evaluated only inside each object's box.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from visionzoo.utils import require_integers

CLASSES = ("circle", "square", "triangle", "star", "hexagon", "diamond")
COLOR_NAMES = ("red", "green", "blue", "yellow", "purple", "orange", "cyan")
PALETTE = np.array(
    [
        (0.90, 0.12, 0.12),
        (0.12, 0.72, 0.20),
        (0.15, 0.30, 0.95),
        (0.96, 0.90, 0.12),
        (0.62, 0.20, 0.82),
        (1.00, 0.55, 0.05),
        (0.10, 0.86, 0.90),
    ],
    dtype=np.float32,
)
SIZE_NAMES = ("small", "medium", "large")
# A size is an area: the side, in pixels at the reference size, of the square of equal area. Sizing
# by area (not by extent) keeps the classification label, the class of the most visible object,
# balanced across shapes: a star spans more than a square of the same area.
SIZE_RANGES = ((15.0, 21.0), (21.0, 29.0), (29.0, 38.0))
BACKGROUNDS = ("textured", "plain")
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
DEFAULT_LENGTHS = {"train": 4000, "val": 500, "test": 500}
REFERENCE_SIZE = 128
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 4096
MIN_VISIBLE_SIDE = 12.0
MIN_VISIBLE_FRACTION = 0.5
MAX_TRIES = 30
COLOR_JITTER = 0.06
NOISE_AMPLITUDE = 0.05
_COARSE_CELLS = 6


@dataclass
class _Object:
    cls: int
    size: int
    color: int
    full_area: int
    visible_area: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the visible pixels, x1/y1 exclusive


@dataclass
class Scene:
    """One rendered sample as numpy arrays.

    ``image``: float32[3, H, W] in [0, 1]; ``instance_map``: int8[H, W], the index of the object
    seen at each pixel or -1 for background. Per object (in drawing order): ``classes``, ``sizes``,
    ``colors`` int64[N] (0-based), ``boxes`` float32[N, 4] xyxy around the visible pixels,
    ``visible_area`` and ``full_area`` int64[N] (pixels seen / pixels of the unoccluded shape).
    """

    image: np.ndarray
    instance_map: np.ndarray
    classes: np.ndarray
    sizes: np.ndarray
    colors: np.ndarray
    boxes: np.ndarray
    visible_area: np.ndarray
    full_area: np.ndarray


STAR_INNER_RATIO = math.cos(2 * math.pi / 5) / math.cos(math.pi / 5)  # a pentagram's inner/outer radius


def _vertex_bounds(radius: float, count: int, angle: float) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a regular polygon's vertices around (0, 0)."""
    xs = [radius * math.cos(angle + i * 2 * math.pi / count) for i in range(count)]
    ys = [radius * math.sin(angle + i * 2 * math.pi / count) for i in range(count)]
    return min(xs), min(ys), max(xs), max(ys)


def shape_bounds(cls: int, extent: float, angle: float) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of shape ``cls`` centred at (0, 0); see :func:`shape_mask`."""
    name = CLASSES[cls]
    if name in ("circle", "square"):
        return -extent / 2, -extent / 2, extent / 2, extent / 2
    if name == "diamond":
        return -0.33 * extent, -extent / 2, 0.33 * extent, extent / 2
    if name == "triangle":
        return _vertex_bounds(extent / math.sqrt(3), 3, angle)
    if name == "hexagon":
        return _vertex_bounds(extent / 2, 6, angle)
    if name == "star":
        return _vertex_bounds(extent / 2, 5, angle)
    raise ValueError(f"unknown shape class {cls}")


def _inside_count(px: np.ndarray, py: np.ndarray, normals: np.ndarray, limit: float) -> np.ndarray:
    """int[h, w]: for each pixel, how many of the half-planes ``<(x, y), n> <= limit`` hold (n at ``normals`` angles)."""
    across = np.multiply.outer(np.cos(normals), px)  # [m, w]
    down = np.multiply.outer(np.sin(normals), py)  # [m, h]
    return ((down[:, :, None] + across[:, None, :]) <= limit).sum(axis=0)


def shape_mask(cls: int, extent: float, angle: float, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """bool[h, w]: the pixels of shape ``cls`` whose centres (px: [w], py: [h], relative to the shape's centre) are inside.

    ``extent`` is the nominal size in pixels (a circle's or square's side, a triangle's side, a
    hexagon's or star's outer diameter, a diamond's height), ``angle`` a rotation in radians, used
    by the shapes whose rotation does not change their identity (squares and diamonds stay upright,
    so they never look like each other). Convex shapes are intersections of half-planes; the star
    (a pentagram) is the set of points inside at least four of its five lines' half-planes.
    """
    name = CLASSES[cls]
    if name == "circle":
        r = extent / 2
        return np.add.outer(py * py, px * px) <= r * r
    if name == "square":
        h = extent / 2
        return np.logical_and.outer(np.abs(py) <= h, np.abs(px) <= h)
    if name == "diamond":
        a, b = 0.33 * extent, extent / 2
        return np.add.outer(np.abs(py) * a, np.abs(px) * b) <= a * b
    if name in ("triangle", "hexagon"):
        count = 3 if name == "triangle" else 6
        radius = extent / math.sqrt(3) if count == 3 else extent / 2
        normals = angle + (np.arange(count) + 0.5) * (2 * math.pi / count)
        return _inside_count(px, py, normals, radius * math.cos(math.pi / count)) == count
    if name == "star":
        normals = angle + np.arange(5) * (2 * math.pi / 5)
        return _inside_count(px, py, normals, extent / 2 * math.cos(2 * math.pi / 5)) >= 4
    raise ValueError(f"unknown shape class {cls}")


def shape_area(cls: int, extent: float) -> float:
    """The exact area in pixels of shape ``cls`` (for tests of the rasteriser)."""
    name = CLASSES[cls]
    if name == "circle":
        return math.pi * extent * extent / 4
    if name == "square":
        return extent * extent
    if name == "diamond":
        return 2 * 0.33 * extent * extent / 2
    if name == "triangle":
        return math.sqrt(3) / 4 * extent * extent
    if name == "hexagon":
        return 3 * math.sqrt(3) / 2 * (extent / 2) ** 2
    if name == "star":
        outer = extent / 2
        return 5 * outer * outer * STAR_INNER_RATIO * math.sin(math.pi / 5)
    raise ValueError(f"unknown shape class {cls}")


# sqrt(area of the shape with extent 1): dividing an equal-area square's side by it gives the extent.
_UNIT_AREA_SIDE = [math.sqrt(shape_area(cls, 1.0)) for cls in range(len(CLASSES))]


def _tight(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the set pixels of ``mask`` (x1, y1 exclusive), None when empty."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _propose(rng: np.random.Generator, size: int, scale: float, sizes: tuple[int, ...]):
    """Draw one shape of a size in ``sizes`` (indices into SIZE_NAMES) at a random place fully inside the
    image: (cls, size index, mask, x0, y0) or None."""
    u = rng.random(6).tolist()  # one call: numpy's per-call cost dominates at these sizes
    cls = min(int(u[0] * len(CLASSES)), len(CLASSES) - 1)
    size_index = sizes[min(int(u[1] * len(sizes)), len(sizes) - 1)]
    low, high = SIZE_RANGES[size_index]
    extent = (low + (high - low) * u[2]) * scale / _UNIT_AREA_SIDE[cls]
    angle = 2 * math.pi * u[3]
    xmin, ymin, xmax, ymax = shape_bounds(cls, extent, angle)
    cx = -xmin + (size - xmax + xmin) * u[4]
    cy = -ymin + (size - ymax + ymin) * u[5]
    x0, y0 = max(math.floor(cx + xmin), 0), max(math.floor(cy + ymin), 0)
    x1, y1 = min(math.ceil(cx + xmax), size), min(math.ceil(cy + ymax), size)
    px = np.arange(x1 - x0) + (x0 + 0.5 - cx)
    py = np.arange(y1 - y0) + (y0 + 0.5 - cy)
    mask = shape_mask(cls, extent, angle, px, py)
    box = _tight(mask)
    if box is None:
        return None
    bx0, by0, bx1, by1 = box
    return cls, size_index, mask[by0:by1, bx0:bx1], x0 + bx0, y0 + by0


def _box_after_cover(
    instance_map: np.ndarray, index: int, box: tuple[int, int, int, int], mask: np.ndarray, x0: int, y0: int
) -> tuple[int, int, int, int] | None:
    """The visible box of object ``index`` once ``mask`` (placed at x0, y0) is drawn over it."""
    bx0, by0, bx1, by1 = box
    seen = instance_map[by0:by1, bx0:bx1] == index
    x1, y1 = x0 + mask.shape[1], y0 + mask.shape[0]
    ix0, iy0, ix1, iy1 = max(bx0, x0), max(by0, y0), min(bx1, x1), min(by1, y1)
    if ix0 < ix1 and iy0 < iy1:
        seen[iy0 - by0 : iy1 - by0, ix0 - bx0 : ix1 - bx0] &= ~mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
    tight = _tight(seen)
    if tight is None:
        return None
    return tight[0] + bx0, tight[1] + by0, tight[2] + bx0, tight[3] + by0


def _cover_updates(
    instance_map: np.ndarray, objects: list[_Object], mask: np.ndarray, x0: int, y0: int, min_side: float
) -> dict[int, tuple[int, tuple[int, int, int, int]]] | None:
    """New (visible area, box) of every object the candidate covers; None if one would break the rules."""
    if not objects:
        return {}
    covered = instance_map[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]][mask]
    counts = np.bincount(covered.astype(np.intp) + 1, minlength=len(objects) + 1)[1:]
    updates = {}
    for i in np.flatnonzero(counts):
        obj = objects[i]
        area = obj.visible_area - int(counts[i])
        if area < MIN_VISIBLE_FRACTION * obj.full_area:
            return None
        box = _box_after_cover(instance_map, int(i), obj.box, mask, x0, y0)
        if box is None or box[2] - box[0] < min_side or box[3] - box[1] < min_side:
            return None
        updates[int(i)] = (area, box)
    return updates


def _place_objects(rng: np.random.Generator, size: int, min_objects: int, max_objects: int, sizes: tuple[int, ...]):
    """Place up to a random number of objects of sizes ``sizes``; returns (instance map int8[H, W], objects)."""
    scale = size / REFERENCE_SIZE
    min_side = MIN_VISIBLE_SIDE * scale
    count = int(rng.integers(min_objects, max_objects + 1))
    colors = rng.permutation(len(COLOR_NAMES))[:count]
    instance_map = np.full((size, size), -1, dtype=np.int8)
    objects: list[_Object] = []
    for j in range(count):
        for _ in range(MAX_TRIES):
            proposal = _propose(rng, size, scale, sizes)
            if proposal is None:
                continue
            cls, size_index, mask, x0, y0 = proposal
            h, w = mask.shape
            if w < min_side or h < min_side:
                continue
            updates = _cover_updates(instance_map, objects, mask, x0, y0, min_side)
            if updates is None:
                continue
            for i, (area, box) in updates.items():
                objects[i].visible_area, objects[i].box = area, box
            instance_map[y0 : y0 + h, x0 : x0 + w][mask] = j
            area = int(mask.sum())
            objects.append(_Object(cls, size_index, int(colors[j]), area, area, (x0, y0, x0 + w, y0 + h)))
            break
        else:
            break  # the scene is full: no room left for another object under the rules
    return instance_map, objects


class _Grid:
    """Pixel-centre coordinates in [0, 1] and the clouds' upsampling matrix, shared by the samples of one size."""

    def __init__(self, size: int):
        self.t = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.index = np.arange(size)
        # Bilinear interpolation from a coarse (C+1)-point lattice onto the pixel centres.
        pos = self.t * _COARSE_CELLS
        left = np.minimum(pos.astype(np.int64), _COARSE_CELLS - 1)
        frac = pos - left
        up = np.zeros((size, _COARSE_CELLS + 1), dtype=np.float32)
        up[self.index, left] = 1 - frac
        up[self.index, left + 1] = frac
        self.upsample = up


def _texture(rng: np.random.Generator, grid: _Grid, size: int) -> np.ndarray:
    """float32[H, W] in about [-0.2, 0.2]: a gradient plus one of stripes, checks or clouds."""
    u = rng.random(6).tolist()
    theta = 2 * math.pi * u[0]
    gradient = (0.05 + 0.07 * u[1]) * (grid.t - 0.5)
    texture = np.add.outer(gradient * math.sin(theta), gradient * math.cos(theta))
    amplitude = 0.03 + 0.04 * u[2]
    kind = min(int(3 * u[3]), 2)
    if kind == 0:
        phi = math.pi * u[4]
        frequency = 2 * math.pi / (0.05 + 0.15 * u[5])
        stripes = np.add.outer(grid.t * (frequency * math.sin(phi)), grid.t * (frequency * math.cos(phi)))
        texture += amplitude * np.sin(stripes, out=stripes)
    elif kind == 1:
        cell = max(2, round((4 + 12 * u[4]) * size / REFERENCE_SIZE))
        sign = np.where((grid.index // cell) % 2 == 0, amplitude, -amplitude).astype(np.float32)
        texture += np.multiply.outer(sign, np.sign(sign))
    else:
        coarse = rng.uniform(-1.5 * amplitude, 1.5 * amplitude, size=(_COARSE_CELLS + 1,) * 2).astype(
            np.float32
        )
        texture += grid.upsample @ coarse @ grid.upsample.T
    return texture


def render_scene(
    rng: np.random.Generator,
    size: int = REFERENCE_SIZE,
    min_objects: int = 1,
    max_objects: int = 6,
    grid: _Grid | None = None,
    sizes: tuple[int, ...] = (0, 1, 2),
    background: str = "textured",
) -> Scene:
    """Draw one scene with ``rng``: the objects' placement (sizes drawn from ``sizes``, indices into
    SIZE_NAMES), then background (``"textured"`` or ``"plain"``), colours and pixel noise."""
    grid = grid or _Grid(size)
    instance_map, objects = _place_objects(rng, size, min_objects, max_objects, sizes)
    base = rng.uniform(0.3, 0.6) + rng.uniform(-0.05, 0.05, size=3).astype(np.float32)
    noise = rng.random((size, size), dtype=np.float32)
    noise *= 2 * NOISE_AMPLITUDE
    noise -= NOISE_AMPLITUDE
    # a plain scene still draws its texture, so it is the textured scene of its seed with the texture left out
    texture = _texture(rng, grid, size)
    image = base[:, None, None] + ((texture if background == "textured" else 0.0) + noise)[None]
    colors = np.array([o.color for o in objects], dtype=np.int64)
    rgb = PALETTE[colors] + rng.uniform(-COLOR_JITTER, COLOR_JITTER, size=(len(objects), 3)).astype(
        np.float32
    )
    for j, obj in enumerate(objects):
        x0, y0, x1, y1 = obj.box
        seen = instance_map[y0:y1, x0:x1] == j
        np.copyto(image[:, y0:y1, x0:x1], rgb[j][:, None, None] + noise[None, y0:y1, x0:x1], where=seen[None])
    np.clip(image, 0.0, 1.0, out=image)
    return Scene(
        image=image,
        instance_map=instance_map,
        classes=np.array([o.cls for o in objects], dtype=np.int64),
        sizes=np.array([o.size for o in objects], dtype=np.int64),
        colors=colors,
        boxes=np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4),
        visible_area=np.array([o.visible_area for o in objects], dtype=np.int64),
        full_area=np.array([o.full_area for o in objects], dtype=np.int64),
    )


def relation(box_a: np.ndarray, box_b: np.ndarray) -> str:
    """Where box A (xyxy) lies relative to box B: 'left of', 'right of', 'above' or 'below' (by centres)."""
    dx = (box_a[0] + box_a[2] - box_b[0] - box_b[2]) / 2
    dy = (box_a[1] + box_a[3] - box_b[1] - box_b[3]) / 2
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def caption(scene: Scene) -> str:
    """A caption from the (up to) three most visible objects, e.g.

    "a small red circle left of a large blue square and a medium green star below the red circle".
    Colours are unique within a scene, so "the red circle" names one object.
    """
    order = np.argsort(-scene.visible_area, kind="stable")[:3]

    def phrase(i: int) -> str:
        return f"a {SIZE_NAMES[scene.sizes[i]]} {COLOR_NAMES[scene.colors[i]]} {CLASSES[scene.classes[i]]}"

    if len(order) == 0:
        return "an empty scene"
    a = int(order[0])
    text = phrase(a)
    if len(order) > 1:
        b = int(order[1])
        text += f" {relation(scene.boxes[a], scene.boxes[b])} {phrase(b)}"
    if len(order) > 2:
        c = int(order[2])
        text += (
            f" and {phrase(c)} {relation(scene.boxes[c], scene.boxes[a])}"
            f" the {COLOR_NAMES[scene.colors[a]]} {CLASSES[scene.classes[a]]}"
        )
    return text


def to_classification(image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """A Shapes ``transform`` for classification: ``(image, target) -> (image, target["label"])``.

    A module-level function, so data-loader workers can pickle it (a lambda cannot be).
    """
    return image, target["label"]


def size_indices(object_sizes: Sequence[str] | None, owner: str) -> tuple[int, ...]:
    """The sorted indices into SIZE_NAMES of ``object_sizes`` (None: all); ValueError naming ``owner`` for an
    unknown, repeated or missing name, or for a bare string (whose letters would read as names)."""
    if object_sizes is None:
        return tuple(range(len(SIZE_NAMES)))
    if isinstance(object_sizes, str) or not isinstance(object_sizes, Sequence):
        raise ValueError(f"{owner} object_sizes must be a sequence of size names from {SIZE_NAMES}, "
                         f"e.g. ('large',), got {object_sizes!r:.40}")
    unknown = [name for name in object_sizes if name not in SIZE_NAMES]
    if unknown:
        raise ValueError(f"{owner} object_sizes has unknown size {unknown[0]!r:.40}; choose from {', '.join(SIZE_NAMES)}")
    if not object_sizes or len(set(object_sizes)) != len(object_sizes):
        raise ValueError(f"{owner} object_sizes must name one to three different sizes, got {tuple(object_sizes)}")
    return tuple(sorted(SIZE_NAMES.index(name) for name in object_sizes))


def check_background(background: Any, owner: str) -> None:
    """ValueError naming ``owner`` unless ``background`` is one of BACKGROUNDS."""
    if not isinstance(background, str) or background not in BACKGROUNDS:
        raise ValueError(f"{owner} background must be one of {', '.join(BACKGROUNDS)}, got {background!r:.40}")


def sample_index(index: Any, length: int, what: str) -> int:
    """``index`` (an integer, negative from the end) as a position in 0..length-1; TypeError for a
    non-integer (a float would silently round down to another sample), IndexError naming the index given."""
    try:
        given = operator.index(index)
    except TypeError:
        raise TypeError(f"{what} indices must be integers, got {type(index).__name__} {index!r:.40}") from None
    position = given + length if given < 0 else given
    if not 0 <= position < length:
        raise IndexError(f"{what} index {given} out of range for length {length}")
    return position


class Shapes(Dataset):
    """Procedural scenes of coloured shapes: one source for classification, detection, segmentation, captions.

    ``ds[i]`` returns ``(image, target)``: ``image`` float32 Tensor[3, H, W] in [0, 1]; ``target``:

    - ``boxes``: float32 Tensor[N, 4] xyxy in pixels, tight around the visible pixels (x2 = last
      visible column + 1, the COCO / torchvision convention);
    - ``labels``: int64 Tensor[N], shape class in 1..K (0 is reserved for background), so
      ``classes[labels - 1]`` names them; ``colors``, ``sizes``: int64 Tensor[N] indices into
      ``color_names`` / ``size_names``;
    - ``masks``: bool Tensor[N, H, W] visible-instance masks (disjoint);
    - ``area``: float32 Tensor[N] visible pixels; ``full_area``: int64 Tensor[N] pixels of the
      unoccluded shape; ``iscrowd``: int64 Tensor[N] zeros;
    - ``caption``: str; ``label``: int in 0..K-1, the class of the object with the largest visible
      area (the classification target); ``image_id``: int, the index.

    Args:
        split: "train", "val" or "test"; each has its own seed stream.
        image_size: side of the square image; sizes and the 12 px rule scale with ``image_size / 128``.
        length: number of samples (default 4000 / 500 / 500 for train / val / test).
        transform: optional callable ``(image, target) -> (image, target)``.
        seed: base seed; another seed gives another dataset.
        min_objects, max_objects: how many objects a scene asks for (a full scene may hold fewer).
        object_sizes: the size names objects are drawn from (default all of ``size_names``; e.g.
            ``("large",)`` for large objects only).
        background: ``"textured"`` (default) or ``"plain"``: the same scenes without the background
            texture (the flat base colour and the pixel noise stay).

    The defaults draw the same scenes as before these two options existed, bit for bit.
    """

    def __init__(
        self,
        split: str = "train",
        image_size: int = REFERENCE_SIZE,
        length: int | None = None,
        transform: Callable[[torch.Tensor, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]
        | None = None,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 6,
        object_sizes: Sequence[str] | None = None,
        background: str = "textured",
    ):
        if split not in SPLIT_SEEDS:
            raise ValueError(f"unknown Shapes split {split!r}; choose from {', '.join(SPLIT_SEEDS)}")
        sizes = size_indices(object_sizes, "Shapes")
        check_background(background, "Shapes")
        require_integers("Shapes", image_size=image_size, length=length, seed=seed, min_objects=min_objects,
                         max_objects=max_objects)
        if image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"Shapes image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
        if image_size > MAX_IMAGE_SIZE:  # memory grows with its square: 100,000 px is killed by the kernel, unnamed
            raise ValueError(f"Shapes image_size must be at most {MAX_IMAGE_SIZE} (a scene of that side takes "
                             f"about 1 GB to draw), got {image_size}")
        if length is not None and length < 0:
            raise ValueError(f"Shapes length must be >= 0, got {length}")
        if not 1 <= min_objects <= max_objects <= len(COLOR_NAMES):
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {len(COLOR_NAMES)}, got {min_objects}, {max_objects}"
            )
        if not 0 <= seed < 2**32:  # a larger seed is two of the generator's seed words: 2**32 is the val split's 0
            raise ValueError(f"Shapes seed must be in [0, 2**32), got {seed}")
        self.split = split
        self.image_size = int(image_size)
        self.length = DEFAULT_LENGTHS[split] if length is None else int(length)
        self.transform = transform
        self.seed = int(seed)
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)
        self.object_sizes = tuple(SIZE_NAMES[i] for i in sizes)
        self.background = background
        self._sizes = sizes
        self.classes = list(CLASSES)
        self.color_names = list(COLOR_NAMES)
        self.size_names = list(SIZE_NAMES)
        self._grid = _Grid(self.image_size)

    def __len__(self) -> int:
        return self.length

    def _index(self, index: int) -> int:
        return sample_index(index, self.length, "Shapes")

    def rng(self, index: int) -> np.random.Generator:
        """The generator of sample ``index``, a function of (seed, split, index) only."""
        return np.random.Generator(np.random.PCG64([self.seed, SPLIT_SEEDS[self.split], self._index(index)]))

    def scene(self, index: int) -> Scene:
        """Sample ``index`` as numpy arrays (see :class:`Scene`)."""
        return render_scene(self.rng(index), self.image_size, self.min_objects, self.max_objects, self._grid,
                            self._sizes, self.background)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        index = self._index(index)
        scene = self.scene(index)
        n = len(scene.classes)
        masks = scene.instance_map[None] == np.arange(n, dtype=np.int8)[:, None, None]
        target = {
            "boxes": torch.from_numpy(scene.boxes),
            "labels": torch.from_numpy(scene.classes + 1),
            "colors": torch.from_numpy(scene.colors),
            "sizes": torch.from_numpy(scene.sizes),
            "masks": torch.from_numpy(masks),
            "area": torch.from_numpy(scene.visible_area.astype(np.float32)),
            "full_area": torch.from_numpy(scene.full_area),
            "iscrowd": torch.zeros(n, dtype=torch.int64),
            "caption": caption(scene),
            "label": int(scene.classes[int(np.argmax(scene.visible_area))]),
            "image_id": index,
        }
        image = torch.from_numpy(scene.image)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def with_length(self, length: int) -> Shapes:
        """The same data set drawn to ``length`` samples: its first ``min(length, len(self))`` are this one's
        (each sample depends only on seed, split and index), the rest new scenes of the same stream."""
        return Shapes(self.split, self.image_size, length, self.transform, self.seed, self.min_objects,
                      self.max_objects, self.object_sizes, self.background)

    @property
    def cache_key(self) -> str | None:
        """A name for this data set's images (for caches of derived data, e.g. region proposals): its
        settings and a hash of its first image, which changes if the renderer does. None with a transform."""
        if self.transform is not None:
            return None
        first = hashlib.sha1(self.scene(0).image.tobytes()).hexdigest()[:8] if self.length else "empty"
        return (f"shapes-{self.split}-{self.image_size}px-{self.length}-seed{self.seed}-"
                f"{self.min_objects}to{self.max_objects}{self._options_key()}-{first}")

    def _options_key(self) -> str:
        """'' with the default sizes and background (so older cache names still match), else '-large-plain' etc."""
        sizes = "" if self.object_sizes == SIZE_NAMES else "-" + "+".join(self.object_sizes)
        return sizes + ("" if self.background == "textured" else f"-{self.background}")

    def __repr__(self) -> str:
        options = "" if self.object_sizes == SIZE_NAMES else f", object_sizes={self.object_sizes}"
        options += "" if self.background == "textured" else f", background={self.background!r}"
        return (f"Shapes(split={self.split!r}, image_size={self.image_size}, length={self.length}, "
                f"seed={self.seed}{options})")
