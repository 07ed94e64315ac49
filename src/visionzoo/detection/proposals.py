"""Region proposals: Selective Search (Uijlings, van de Sande, Gevers, Smeulders, IJCV 2013).

An image is over-segmented by Felzenszwalb and Huttenlocher's graph method (scikit-image's
``felzenszwalb``), then each strategy (a colour space, a segmentation threshold ``k`` and a set of
similarity measures) merges the most similar pair of neighbouring regions until one region is
left. Every region met on the way, the initial ones and each merge, gives a box. The boxes of all
strategies are ranked as in the paper (a region's position in its hierarchy, 1 for the whole
image, times a uniform random number; smaller first), and duplicates are dropped after ranking, so
a box that several strategies find keeps its best rank.

Region features follow the paper: a colour histogram (25 bins per channel), a texture histogram
(Gaussian derivatives with sigma 1 in 8 orientations, 10 bins per orientation and channel), both
L1-normalised over the whole descriptor; the size in pixels and the bounding box. Similarities
between neighbours (4-connected pixels with different labels) are histogram intersection for
colour and texture, ``1 - (size_i + size_j) / size_image`` for size and
``1 - (bbox_ij - size_i - size_j) / size_image`` for fill; a strategy sums the measures it uses.
Merged regions get size-weighted histogram averages, the union box and the union of neighbours;
the merge order comes from a heap whose entries are dropped lazily when one of their regions has
been merged (the similarities of regions still alive never change).

Segmentation scale. The paper's ``k`` (50 to 300, in 0..255 colour units) and its code's minimum
segment size (``k`` pixels) are for Pascal VOC images, about 500 pixels a side. The minimum size is
a pixel count, so it scales with the image area (``H * W / 500**2``). ``k`` enters the threshold
``k / |C|`` between a colour step and a region's pixel count; scaling it with the area as well
keeps the segmentation of a resized image alike in principle, but pixel noise does not shrink with
the image, and at 128 x 128 that leaves about 1,000 segments per segmentation (3x the time for
the same recall); keeping ``k`` leaves about 140. ``k`` scales with the image side
(``sqrt(H * W) / 500``), between the two: at 128 x 128 the fast mode's ``k`` of 50 and 100 become
12.8 and 25.6, the minimum sizes 3 and 7 pixels, and a segmentation has about 370 segments.
Measured on 100 Shapes val images (fast mode, MABO; recall at IoU 0.7 is 1.0 in all three):
0.9736 with ``k`` scaled by the area, 0.9747 by the side, 0.9720 unscaled.

scikit-image (and SciPy) are imported on the first call.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from visionzoo.utils import image_array, is_integer, is_real

# (colour spaces, k values at the reference size, similarity sets); C colour, T texture, S size, F fill.
MODES: dict[str, tuple[tuple[str, ...], tuple[float, ...], tuple[str, ...]]] = {
    "single": (("hsv",), (100.0,), ("CTSF",)),
    "fast": (("hsv", "lab"), (50.0, 100.0), ("CTSF", "TSF")),
    "quality": (("hsv", "lab", "rgi", "h", "i"), (50.0, 100.0, 150.0, 300.0), ("CTSF", "TSF", "FS", "C")),
}
# Part of the proposal cache's key: raise it with any change that alters the boxes of an image (cached ones
# would otherwise be served for the old algorithm). 2: 16-bit greyscale read divided by 65535.
SELECTIVE_SEARCH_VERSION = 2
REFERENCE_AREA = 500 * 500  # the image size the paper's k values are for
SIGMA = 0.8  # Felzenszwalb's pre-smoothing, as in the paper
COLOUR_BINS = 25
TEXTURE_BINS = 10
ORIENTATIONS = 8


def _as_rgb(image: Tensor | np.ndarray | Image.Image) -> np.ndarray:
    """float32[H, W, 3] in [0, 1] from a Tensor[3 or 1, H, W], a uint8 ndarray[H, W, 3] or a PIL image (16-bit
    greyscale divided by 65535)."""
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"image must be Tensor[3, H, W] or Tensor[1, H, W], got shape {tuple(image.shape)}")
        array = image.detach().cpu()
        array = array.float() / 255 if array.dtype == torch.uint8 else array.float()
        array = array.expand(3, -1, -1).permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image as an ndarray must be uint8[H, W, 3], got {image.dtype}{list(image.shape)}")
        array = image.astype(np.float32) / 255
    elif isinstance(image, Image.Image):
        array = image_array(image, 3)
    else:
        raise ValueError(f"image must be a Tensor, a uint8 ndarray or a PIL image, got {type(image).__name__}")
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise ValueError(f"image must be at least 2 x 2 pixels, got {array.shape[0]} x {array.shape[1]}")
    return np.clip(array, 0.0, 1.0)


def _colour_space(rgb: np.ndarray, name: str) -> np.ndarray:
    """float32[H, W, C] with every channel in [0, 1]: C = 3 for hsv, lab, rgi and 1 for h, i."""
    from skimage.color import rgb2hsv, rgb2lab

    if name in ("hsv", "h"):
        hsv = rgb2hsv(rgb)
        out = hsv if name == "hsv" else hsv[..., :1]
    elif name == "lab":
        lab = rgb2lab(rgb)
        out = np.stack([lab[..., 0] / 100, (lab[..., 1] + 128) / 255, (lab[..., 2] + 128) / 255], -1)
    elif name == "rgi":
        total = rgb.sum(-1, keepdims=True)
        chroma = np.divide(rgb[..., :2], total, out=np.full_like(rgb[..., :2], 1 / 3), where=total > 0)
        out = np.concatenate([chroma, total / 3], -1)
    else:  # "i", the intensity
        out = rgb.mean(-1, keepdims=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _bin_codes(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel histogram bin codes of a colour-space image float32[H, W, C].

    Returns the colour codes int64[H*W, C] (values in [0, 25 C)) and the texture codes
    int64[H*W, 8 C] (values in [0, 80 C)), each column offset into its own block of bins.
    The texture responses are Gaussian first derivatives (sigma 1) steered to 4 directions, split
    into positive and negative parts (8 orientations), scaled by each channel's largest response.
    """
    from scipy.ndimage import gaussian_filter

    h, w, c = image.shape
    colour = np.minimum((image * COLOUR_BINS).astype(np.int64), COLOUR_BINS - 1).reshape(h * w, c)
    colour += np.arange(c) * COLOUR_BINS
    gx = gaussian_filter(image, sigma=(1, 1, 0), order=(0, 1, 0), mode="nearest")
    gy = gaussian_filter(image, sigma=(1, 1, 0), order=(1, 0, 0), mode="nearest")
    angles = np.arange(ORIENTATIONS // 2) * (2 * np.pi / ORIENTATIONS)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    steered = gx[..., None] * cos + gy[..., None] * sin  # [H, W, C, 4]
    response = np.concatenate([np.maximum(steered, 0), np.maximum(-steered, 0)], -1)  # [H, W, C, 8]
    peak = response.max(axis=(0, 1, 3), keepdims=True)
    response /= np.maximum(peak, 1e-12)
    texture = np.minimum((response * TEXTURE_BINS).astype(np.int64), TEXTURE_BINS - 1)
    texture = texture.reshape(h * w, c * ORIENTATIONS)
    texture += np.arange(c * ORIENTATIONS) * TEXTURE_BINS
    return colour, texture


def _histograms(labels: np.ndarray, codes: np.ndarray, n: int, bins: int) -> np.ndarray:
    """float64[n, bins]: per-region histograms of ``codes`` int64[P, D], L1-normalised per region."""
    counts = np.bincount((labels[:, None] * bins + codes).ravel(), minlength=n * bins).reshape(n, bins)
    return counts / counts.sum(1, keepdims=True)


def _regions(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Consecutive labels, sizes, boxes and neighbour pairs of a segmentation ``labels`` int[H, W].

    Returns labels int64[H, W] renumbered 0..n-1, sizes int64[n], boxes int64[n, 4] (xyxy, x2/y2
    exclusive) and the pairs int64[E, 2] (i < j) of regions with 4-connected pixels in common.
    """
    from scipy.ndimage import find_objects

    present = np.bincount(labels.ravel()) > 0
    labels = (np.cumsum(present) - 1)[labels]
    n = int(present.sum())
    sizes = np.bincount(labels.ravel(), minlength=n)
    boxes = np.array([(x.start, y.start, x.stop, y.stop) for y, x in find_objects(labels + 1)], dtype=np.int64)
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    differ = a != b
    a, b = a[differ], b[differ]
    keys = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    return labels, sizes, boxes, np.stack(np.divmod(keys, n), 1)


def histogram_intersection(h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """sum_k min(h1[..., k], h2[..., k]): float[...] for histograms float[..., K] (1 for equal L1-normalised ones)."""
    return np.minimum(h1, h2).sum(-1)


def size_similarity(size_i: np.ndarray, size_j: np.ndarray, image_size: int) -> np.ndarray:
    """1 - (size_i + size_j) / image_size: high for small pairs, so small regions merge early."""
    return 1.0 - (size_i + size_j) / image_size


def fill_similarity(box_i: np.ndarray, box_j: np.ndarray, size_i: np.ndarray, size_j: np.ndarray,
                    image_size: int) -> np.ndarray:
    """1 - (area of the box around both - size_i - size_j) / image_size, for xyxy boxes [..., 4].

    High when the two regions fill the box around them: it favours merges without holes.
    """
    x1 = np.minimum(box_i[..., 0], box_j[..., 0])
    y1 = np.minimum(box_i[..., 1], box_j[..., 1])
    x2 = np.maximum(box_i[..., 2], box_j[..., 2])
    y2 = np.maximum(box_i[..., 3], box_j[..., 3])
    return 1.0 - ((x2 - x1) * (y2 - y1) - size_i - size_j) / image_size


def _group(colour: np.ndarray, texture: np.ndarray, sizes: np.ndarray, boxes: np.ndarray, pairs: np.ndarray,
           measures: str, image_size: int) -> np.ndarray:
    """Greedy hierarchical grouping of one strategy; returns the boxes int64[2n - 1, 4] in creation order.

    ``colour``: float[n, Dc], ``texture``: float[n, Dt] (L1-normalised), ``sizes``: int[n],
    ``boxes``: int[n, 4] xyxy, ``pairs``: int[E, 2] neighbouring regions; ``measures`` a subset of "CTSF".
    Regions n, n + 1, ... are the merges in order; the last one is the whole image.
    """
    n = len(sizes)
    total = 2 * n - 1
    use_size, use_fill = "S" in measures, "F" in measures
    # Colour and texture histograms each sum to 1, so one intersection over both blocks adds the two.
    blocks = [h for h, used in ((colour, "C" in measures), (texture, "T" in measures)) if used]
    feats = np.zeros((total, sum(b.shape[1] for b in blocks)))
    if blocks:
        feats[:n] = np.concatenate(blocks, 1)
    size = np.zeros(total)
    size[:n] = sizes
    box = np.zeros((total, 4))
    box[:n] = boxes

    def similarity(i: np.ndarray | int, j: np.ndarray) -> np.ndarray:
        sims = histogram_intersection(feats[i], feats[j])
        if use_size:
            sims += size_similarity(size[i], size[j], image_size)
        if use_fill:
            sims += fill_similarity(box[i], box[j], size[i], size[j], image_size)
        return sims

    first, second = pairs[:, 0], pairs[:, 1]
    heap = list(zip((-similarity(first, second)).tolist(), first.tolist(), second.tolist()))
    heapq.heapify(heap)
    neighbours: list[set[int]] = [set() for _ in range(total)]
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    alive = [True] * n + [False] * (n - 1)
    new = n
    while heap and new < total:
        _, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue  # a stale entry: a or b was merged after it was pushed
        size[new] = size[a] + size[b]
        np.add(size[a] * feats[a], size[b] * feats[b], out=feats[new])
        feats[new] /= size[new]
        np.minimum(box[a, :2], box[b, :2], out=box[new, :2])
        np.maximum(box[a, 2:], box[b, 2:], out=box[new, 2:])
        alive[a] = alive[b] = False
        alive[new] = True
        pair = {a, b}
        around = neighbours[a] | neighbours[b]
        around -= pair
        neighbours[new] = around
        others = np.fromiter(around, dtype=np.int64, count=len(around))
        for k, negative in zip(others.tolist(), (-similarity(new, others)).tolist()):
            neighbours[k] -= pair
            neighbours[k].add(new)
            heapq.heappush(heap, (negative, new, k))
        new += 1
    return box[:new].astype(np.int64)


def _strategy_boxes(rgb: np.ndarray, spaces: tuple[str, ...], ks: tuple[float, ...], sets: tuple[str, ...]
                    ) -> list[np.ndarray]:
    """The boxes int64[R, 4] of every (colour space, k, similarity set), each in creation order."""
    from skimage.segmentation import felzenszwalb

    h, w, _ = rgb.shape
    area_ratio = h * w / REFERENCE_AREA
    out = []
    for space in spaces:
        image = _colour_space(rgb, space)
        colour_codes, texture_codes = _bin_codes(image)
        channels = image.shape[2]
        for k in ks:
            labels = felzenszwalb(image, scale=k * area_ratio**0.5, sigma=SIGMA,
                                  min_size=max(1, round(k * area_ratio)), channel_axis=-1)
            labels, sizes, boxes, pairs = _regions(labels)
            flat = labels.ravel()
            colour = _histograms(flat, colour_codes, len(sizes), COLOUR_BINS * channels)
            texture = _histograms(flat, texture_codes, len(sizes), TEXTURE_BINS * ORIENTATIONS * channels)
            for measures in sets:
                out.append(_group(colour, texture, sizes, boxes, pairs, measures, h * w))
    return out


def _rank(per_strategy: list[np.ndarray], seed: int) -> np.ndarray:
    """All boxes int64[R, 4] of the strategies, best first and without duplicates.

    A box's key is its position in its hierarchy (1 for the last merge) times a uniform number in
    [0, 1); duplicates are removed after sorting, so the best-ranked copy is kept.
    """
    rng = np.random.default_rng(seed)
    keys = [np.arange(len(b), 0, -1) * rng.random(len(b)) for b in per_strategy]
    boxes = np.concatenate(per_strategy)
    boxes = boxes[np.argsort(np.concatenate(keys), kind="stable")]
    # One integer per box (coordinates are at most H, W), so a 1-d unique finds the duplicates.
    side = int(boxes.max()) + 1
    codes = ((boxes[:, 0] * side + boxes[:, 1]) * side + boxes[:, 2]) * side + boxes[:, 3]
    first = np.unique(codes, return_index=True)[1]
    return boxes[np.sort(first)]


def require_finite_proposals(boxes: Tensor, image: int) -> None:
    """ValueError naming ``image`` (its index) and the first entry of ``boxes`` Tensor[P, 4] that holds NaN or
    infinity: such a proposal would be clipped to NaN and dropped by the size filter, without a word."""
    finite = torch.isfinite(boxes)
    if not bool(finite.all()):
        entry = int(torch.where(~finite.all(dim=1))[0][0])
        raise ValueError(f"proposals of image {image}, entry {entry}: non-finite box {boxes[entry].tolist()}")


def check_selective_search_args(mode: str, max_proposals: int, min_size: float, seed: int) -> None:
    """Raise ValueError naming the argument of :func:`selective_search` that has a wrong type or value (the
    arguments arrive from the command line's JSON: a float count or a string would fail deep inside)."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r:.40}")
    if not is_integer(max_proposals) or max_proposals <= 0:
        raise ValueError(f"max_proposals must be a positive integer, got {max_proposals!r:.40}")
    if not is_real(min_size) or not min_size >= 0:  # NaN fails too
        raise ValueError(f"min_size must be a number >= 0, got {min_size!r:.40}")
    if not is_integer(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r:.40}")


def check_sliding_window_args(sizes: tuple[int, ...], aspect_ratios: tuple[float, ...], stride_fraction: float
                              ) -> None:
    """Raise ValueError naming the argument of :func:`sliding_windows` that has a wrong type or value."""
    for name, values in (("sizes", sizes), ("aspect_ratios", aspect_ratios)):
        if (not isinstance(values, tuple | list) or not values
                or not all(is_real(v) and 0 < v < math.inf for v in values)):
            raise ValueError(f"{name} must be a list of positive numbers, got {values!r:.60}")
    if not is_real(stride_fraction) or not 0 < stride_fraction <= 1:
        raise ValueError(f"stride_fraction must be in (0, 1], got {stride_fraction!r:.40}")


def selective_search(
    image: Tensor | np.ndarray | Image.Image,
    mode: str = "fast",
    max_proposals: int = 2000,
    min_size: int = 2,
    seed: int = 0,
) -> Tensor:
    """Selective Search box proposals for one image, best first.

    Args:
        image: float Tensor[3, H, W] in [0, 1] (Tensor[1, H, W] is taken as grey), a uint8
            ndarray[H, W, 3] (RGB) or a PIL image.
        mode: "single" (HSV, k = 100, colour + texture + size + fill; one hierarchy), "fast"
            (HSV and Lab, k in {50, 100}, C+T+S+F and T+S+F: 8 hierarchies) or "quality" (HSV,
            Lab, rgI, H and I, k in {50, 100, 150, 300}, also F+S and C: 80 hierarchies); ``k``
            scales with the image side, the minimum segment size with its area (see the module).
        max_proposals: keep at most this many boxes.
        min_size: drop boxes narrower or lower than this many pixels; the default 2 drops the
            one-pixel slivers that the segmentation leaves along sharp edges (0 or 1 keeps all).
        seed: seed of the random ranking; the same seed gives the same boxes.

    Returns:
        float32 Tensor[N, 4] xyxy boxes in pixels (x2, y2 exclusive: a region over columns 3..9
        has x1 = 3, x2 = 10), distinct, N <= max_proposals.
    """
    check_selective_search_args(mode, max_proposals, min_size, seed)
    rgb = _as_rgb(image)
    spaces, ks, sets = MODES[mode]
    boxes = _rank(_strategy_boxes(rgb, spaces, ks, sets), seed)
    wide = (boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size)
    return torch.from_numpy(boxes[wide][:max_proposals]).float()


def sliding_windows(height: int, width: int, sizes: tuple[int, ...] = (16, 24, 32, 48, 64),
                    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0), stride_fraction: float = 0.25) -> Tensor:
    """Every window of the naive detector: each size (the side of a square of the same area) at each
    aspect ratio (height / width), slid over the image in steps of ``stride_fraction`` of its side.

    Returns:
        float32 Tensor[N, 4] xyxy windows lying inside the ``height`` x ``width`` image.
    """
    check_sliding_window_args(sizes, aspect_ratios, stride_fraction)
    windows = []
    for size in sizes:
        stride = max(1, round(size * stride_fraction))
        for ratio in aspect_ratios:
            w, h = round(size / ratio ** 0.5), round(size * ratio ** 0.5)
            if w > width or h > height:
                continue
            xs = torch.arange(0, width - w + 1, stride, dtype=torch.float32)
            ys = torch.arange(0, height - h + 1, stride, dtype=torch.float32)
            y, x = torch.meshgrid(ys, xs, indexing="ij")
            windows.append(torch.stack((x, y, x + w, y + h), dim=-1).reshape(-1, 4))
    return torch.cat(windows) if windows else torch.zeros((0, 4))
