"""The COCO mask codec (RLE both ways, polygons, area, boxes) against pycocotools' mask API."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from visionzoo.data.masks import (
    Rle,
    counts_to_string,
    mask_to_counts,
    mask_to_rle,
    polygon_to_mask,
    rle_area,
    rle_boxes,
    rle_from_counts,
    rle_from_mask,
    rle_from_polygons,
    rle_to_mask,
    string_to_counts,
    to_rle,
    to_rles,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]


def _random_masks(rng: np.random.Generator):
    for t in range(150):
        height, width = (int(v) for v in rng.integers(1, 60, size=2))
        if t % 3 == 0:
            mask = rng.random((height, width)) < rng.random()
        else:  # blobs: long runs, large counts
            mask = np.zeros((height, width), bool)
            y, x = rng.integers(0, height), rng.integers(0, width)
            mask[y : y + rng.integers(1, 40), x : x + rng.integers(1, 40)] = True
        yield mask
    yield np.zeros((40, 50), bool)
    yield np.ones((40, 50), bool)
    yield np.ones((300, 300), bool)  # runs too long for one 5-bit group


def _reference_rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def test_rle_encoding_area_and_boxes_match_pycocotools():
    rng = np.random.default_rng(0)
    for mask in _random_masks(rng):
        reference = _reference_rle(mask)
        ours = mask_to_rle(mask)
        assert ours["size"] == list(reference["size"])
        assert ours["counts"] == reference["counts"].decode("ascii")
        assert np.array_equal(rle_to_mask(ours), mask)
        assert np.array_equal(mask_utils.decode({"size": ours["size"], "counts": ours["counts"]}), mask)
        counts = string_to_counts(reference["counts"])  # bytes, as pycocotools returns them
        assert counts_to_string(counts) == ours["counts"] and counts == mask_to_counts(mask)
        runs = to_rle(reference, None, None)
        assert np.array_equal(rle_to_mask(runs), mask)
        assert rle_area([runs])[0] == mask_utils.area(reference)
        assert np.array_equal(rle_boxes([runs])[0], mask_utils.toBbox(reference))


def test_boxes_and_areas_of_many_masks_of_several_sizes_at_once_match_pycocotools():
    masks = list(_random_masks(np.random.default_rng(5)))
    masks[7:7] = [np.zeros((3, 4), bool), np.ones((1, 9), bool), np.ones((8, 1), bool), np.zeros((1, 1), bool)]
    reference = [_reference_rle(m) for m in masks]
    runs = [to_rle(r, None, None) for r in reference]
    np.testing.assert_array_equal(rle_boxes(runs), mask_utils.toBbox(reference))
    np.testing.assert_array_equal(rle_area(runs), mask_utils.area(reference))
    assert rle_boxes([]).shape == (0, 4) and rle_boxes(runs[-3:-2]).tolist() == [[0.0, 0.0, 0.0, 0.0]]

def test_binary_masks_of_any_dtype_encode_alike():
    mask = np.random.default_rng(4).random((9, 7)) < 0.4
    expected = rle_from_mask(mask)
    for other in (mask.astype(np.uint8) * 3, torch.from_numpy(mask), mask.astype(np.float32)):
        runs = rle_from_mask(other)
        assert np.array_equal(runs.starts, expected.starts) and np.array_equal(runs.ends, expected.ends)
    with pytest.raises(ValueError, match=r"\[H, W\], got shape \(2, 9, 7\)"):
        rle_from_mask(np.stack([mask, mask]))


def test_uncompressed_rle_decodes_like_pycocotools():
    rng = np.random.default_rng(1)
    for mask in list(_random_masks(rng))[:40]:
        uncompressed = {"size": list(mask.shape), "counts": mask_to_counts(mask)}
        assert np.array_equal(rle_to_mask(uncompressed), mask)
        compressed = mask_utils.frPyObjects(uncompressed, *mask.shape)
        assert np.array_equal(mask_utils.decode(compressed).astype(bool), mask)
    # empty runs in the middle (not pycocotools' own output, but valid) are read too
    m = np.zeros((4, 5), bool)
    m[1:3, 2:4] = True
    assert np.array_equal(rle_to_mask(rle_from_counts([9, 1, 0, 1, 2, 2, 5], 4, 5)), m)


def test_malformed_rle_raises():
    with pytest.raises(ValueError, match=r"segmentation: RLE counts sum to 5, expected 4x4 = 16"):
        rle_to_mask({"size": [4, 4], "counts": [3, 2]})
    with pytest.raises(ValueError, match="crowd 3: RLE counts must not be negative"):
        to_rle({"size": [2, 2], "counts": [5, -1]}, None, None, "crowd 3")
    with pytest.raises(ValueError, match="needs 'size' and 'counts'"):
        to_rle({"counts": "0"}, None, None)
    with pytest.raises(ValueError, match="ends inside a run"):
        string_to_counts("0P")  # 'P' sets the continuation bit and nothing follows
    with pytest.raises(ValueError, match="segmentation: compressed RLE string has an invalid character ' '"):
        to_rle({"size": [2, 2], "counts": "1 "}, None, None)
    with pytest.raises(ValueError, match="polygons need the image's 'height' and 'width'"):
        to_rle([[0, 0, 1, 0, 1, 1]], None, 4)
    with pytest.raises(ValueError, match="unsupported segmentation of type int"):
        to_rle(3, 4, 4)


def _random_polygon(rng: np.random.Generator, height: int, width: int) -> list[float]:
    """Polygons that exercise pycocotools' rule: self-intersecting, partly or wholly outside, on the
    half-pixel and 1/10-pixel grids (rounding ties on the 5x grid), repeated vertices, degenerate."""
    n = int(rng.integers(3, 12))
    kind = int(rng.integers(0, 6))
    size = max(height, width)
    if kind == 0:  # star-shaped around a centre that may lie outside the image
        centre = rng.uniform(-5, size + 5, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(0.3, size / 2, n)
        xy = centre + radius[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
    elif kind == 1:  # self-intersecting
        xy = rng.uniform(-10, size + 10, (n, 2))
    elif kind == 2:
        xy = np.round(rng.uniform(-3, size + 3, (n, 2)) * 10) / 10
    elif kind == 3:
        xy = np.round(rng.uniform(-3, size + 3, (n, 2)) * 2) / 2
    elif kind == 4:  # integer vertices, some repeated
        xy = rng.integers(-3, size + 3, (n, 2)).astype(float)
        xy[rng.integers(0, n)] = xy[rng.integers(0, n)]
        xy = np.repeat(xy, 2, axis=0)
    else:  # all on one vertical or horizontal line
        xy = np.stack([np.full(n, rng.uniform(0, size)), rng.uniform(-2, size + 2, n)], 1)
        xy = xy[:, ::-1] if rng.random() < 0.5 else xy
    return xy.ravel().tolist()


@pytest.mark.parametrize("seed", range(3))
def test_polygons_rasterise_exactly_like_pycocotools(seed):
    rng = np.random.default_rng(seed)
    for _ in range(150):
        height, width = (int(v) for v in rng.integers(1, 50, size=2))
        polygons = [_random_polygon(rng, height, width) for _ in range(int(rng.integers(1, 4)))]
        reference = mask_utils.merge(mask_utils.frPyObjects([list(p) for p in polygons], height, width))
        expected = mask_utils.decode(reference).astype(bool)
        assert np.array_equal(polygon_to_mask(polygons, height, width), expected), (height, width, polygons)
        runs = rle_from_polygons(polygons, height, width)
        assert mask_to_rle(rle_to_mask(runs))["counts"] == reference["counts"].decode()
        assert rle_area([runs])[0] == mask_utils.area(reference)
        assert np.array_equal(rle_boxes([runs])[0], mask_utils.toBbox(reference))


def test_polygon_known_values_and_errors():
    square = polygon_to_mask([[0, 0, 10, 0, 10, 10, 0, 10]], 12, 12)
    assert square.sum() == 100 and square[:10, :10].all()
    # pycocotools tests pixel x at coordinate x, not at its centre x + 0.5: this square covers
    # pixels 2..6 (a pixel-centre rule would give 1..5)
    square = polygon_to_mask([[1.5, 1.5, 6.5, 1.5, 6.5, 6.5, 1.5, 6.5]], 12, 12)
    assert square.sum() == 25 and square[2:7, 2:7].all()
    # touching and overlapping polygons: their union, as one set of runs
    runs = rle_from_polygons([[0, 0, 3, 0, 3, 3, 0, 3], [3, 0, 5, 0, 5, 3, 3, 3], [1, 0, 4, 0, 4, 2]], 5, 6)
    assert isinstance(runs, Rle) and np.all(runs.starts[1:] > runs.ends[:-1])
    assert np.array_equal(rle_to_mask(runs), polygon_to_mask([[0, 0, 5, 0, 5, 3, 0, 3]], 5, 6))
    assert not polygon_to_mask([], 3, 3).any()
    with pytest.raises(ValueError, match=r"annotation 4: a polygon needs at least 3 finite \(x, y\) points"):
        rle_from_polygons([[0, 0, 1, 1]], 5, 5, "annotation 4")
    with pytest.raises(ValueError, match="finite"):
        polygon_to_mask([[0, 0, 1, float("nan"), 2, 2]], 5, 5)


@pytest.mark.parametrize("segmentation, height, width, message", [
    ({"size": [4, [4]], "counts": [16]}, None, None, r"result 2: RLE size must be \[height, width\]"),
    ({"size": [float("inf"), 4], "counts": [16]}, None, None, r"result 2: RLE size must be \[height, width\]"),
    ({"size": [4, 4, 1], "counts": [16]}, None, None, r"result 2: RLE size must be \[height, width\]"),
    ({"size": "4x4", "counts": [16]}, None, None, r"result 2: RLE size must be \[height, width\]"),
    ([[0, 0, 3, 0, {"x": 3}, 3]], 4, 4, r"result 2: a polygon needs at least 3 finite \(x, y\) points"),
    ([5], 4, 4, r"result 2: a polygon needs at least 3 finite \(x, y\) points, got 5"),
    ([[0, 0, 3, 0, 3, 3]], [4], 4, r"result 2: the image's height and width must be positive integers, got \[4\], 4"),
])
def test_malformed_segmentations_are_value_errors_naming_the_entry(segmentation, height, width, message):
    """coco-eval --iou-type segm ended in a traceback (TypeError "int() argument must be ... not 'list'",
    OverflowError "cannot convert float infinity to integer", "'int' object is not iterable" while building the
    message) for an RLE size, a polygon or an image height that were not numbers."""
    with pytest.raises(ValueError, match=message):
        to_rle(segmentation, height, width, "result 2")


@pytest.mark.parametrize("far", [1e30, 1e9])
def test_a_polygon_too_far_outside_its_image_to_rasterise_is_refused(far):
    """A polygon vertex at 1e30 (a corrupt file) crashed coco-eval --iou-type segm with a segmentation fault (its edge
    of 5e30 fine steps overflowed int64), and one at 1e9 asked for tens of GB; pycocotools runs out of memory."""
    with pytest.raises(ValueError, match=r"annotation 4: a polygon reaching 1e\+\d+ is too large to rasterise"):
        rle_from_polygons([[far, 10, 40, 10, 40, 40, 10, 40]], 60, 80, "annotation 4")
    with pytest.raises(ValueError, match=r"annotation 4: an image of 1e\+30x80 pixels is too large"):  # OverflowError
        to_rle([[0, 0, 3, 0, 3, 3]], 10**30, 80, "annotation 4")
    # far outside, still rasterised as pycocotools does (nothing of it in the image)
    assert not polygon_to_mask([[-5000, -5000, -4000, -5000, -4000, -4000]], 60, 80).any()


@pytest.mark.parametrize("seed", range(2))
def test_polygons_of_fewer_than_3_points_beside_a_real_one_outline_nothing_as_in_pycocotools(seed):
    """An annotation whose polygons include a two-point "polygon" or one with an odd coordinate left over (labelling
    tools write them; detectron2 filters them out) was refused ("a polygon needs at least 3 finite (x, y) points"),
    failing coco-eval --iou-type segm on the whole file, where pycocotools rasterises them to nothing and reads an odd
    list's whole (x, y) pairs."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        height, width = (int(v) for v in rng.integers(1, 30, size=2))
        polygons = [_random_polygon(rng, height, width)]
        for _ in range(int(rng.integers(1, 4))):
            n = int(rng.integers(1, 10))  # 1 to 9 coordinates: fewer than 3 points, or an odd count
            polygons.append(np.round(rng.uniform(-3, max(height, width) + 3, n), 1).tolist())
        reference = mask_utils.merge(mask_utils.frPyObjects([list(p) for p in polygons], height, width))
        expected = mask_utils.decode(reference).astype(bool)
        assert np.array_equal(polygon_to_mask(polygons, height, width), expected), (height, width, polygons)
    # an odd coordinate left over in the only polygon: its whole pairs are the polygon
    assert np.array_equal(polygon_to_mask([[0, 0, 4, 0, 4, 4, 2]], 5, 5), polygon_to_mask([[0, 0, 4, 0, 4, 4]], 5, 5))
    # nothing but short polygons outlines nothing at all: still refused (pycocotools fails on it too)
    with pytest.raises(ValueError, match=r"annotation 4: a polygon needs at least 3 finite \(x, y\) points"):
        rle_from_polygons([[0, 0, 1, 1], [2, 2]], 5, 5, "annotation 4")
    with pytest.raises(ValueError, match="annotation 4: a polygon needs at least 3 finite"):
        rle_from_polygons([[0, 0, 4, 0, 4, 4], [1, float("nan")]], 5, 5, "annotation 4")


def test_an_rle_whose_size_is_a_numpy_array_is_read_as_pycocotools_reads_it():
    """An RLE built in Python with ``"size": np.array(mask.shape)`` was refused ("RLE size must be [height, width],
    two whole numbers, got array([ 9, 11])") where pycocotools' decode, area and iou read it."""
    mask = np.random.default_rng(6).random((9, 11)) < 0.4
    reference = _reference_rle(mask)
    for size in (np.array(mask.shape), np.array(mask.shape, dtype=np.uint32)):
        rle = {"size": size, "counts": reference["counts"]}
        assert np.array_equal(rle_to_mask(rle), mask) and np.array_equal(mask_utils.decode(rle).astype(bool), mask)
        assert rle_area([to_rle(rle, None, None)])[0] == mask_utils.area(rle)
    with pytest.raises(ValueError, match=r"RLE size must be \[height, width\]"):
        to_rle({"size": np.array([[9, 11]]), "counts": reference["counts"]}, None, None)


def test_a_list_of_rles_is_their_union_as_pycocotools_reads_it():
    """A segmentation given as a list of RLE dicts (one per part) was refused as a polygon ("a polygon needs at least 3
    finite (x, y) points, got {'size': ...}"), where pycocotools' annToRLE merges them into their union."""
    rng = np.random.default_rng(8)
    for _ in range(20):
        height, width = (int(v) for v in rng.integers(1, 30, size=2))
        parts = [rng.random((height, width)) < rng.uniform(0, 0.3) for _ in range(int(rng.integers(1, 4)))]
        uncompressed = [{"size": [height, width], "counts": mask_to_counts(p)} for p in parts]
        expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(uncompressed, height, width)))
        assert np.array_equal(rle_to_mask(to_rle(uncompressed, height, width)), expected.astype(bool))
        compressed = [mask_to_rle(p) for p in parts]  # pycocotools fails on these in a list: read alike
        assert np.array_equal(rle_to_mask(to_rle(compressed, None, None)), expected.astype(bool))
    with pytest.raises(ValueError, match=r"result 1: the RLEs of one segmentation differ in size: 4x5 and 5x4"):
        to_rle([mask_to_rle(np.ones((4, 5))), mask_to_rle(np.ones((5, 4)))], None, None, "result 1")


def test_counts_written_as_the_text_of_bytes_are_named_with_the_fix():
    """pycocotools' encode gives counts as bytes, which json.dump refuses; str(counts) writes "b'...'" into the results
    file, and coco-eval said only "compressed RLE string has an invalid character \\"'\\"" (pycocotools reads a
    nonsense area, 4294966887, from it)."""
    mask = np.zeros((20, 30), bool)
    mask[2:10, 3:12] = True
    counts = _reference_rle(mask)["counts"]
    for text in (str(counts), f"b\"{counts.decode()}\""):
        with pytest.raises(ValueError, match=r"^result 0: RLE counts .* are the text of bytes .*counts\.decode\(\)"):
            to_rle({"size": [20, 30], "counts": text}, None, None, "result 0")
    with pytest.raises(ValueError, match=r"^result 0: compressed RLE string has an invalid character ' '$"):
        to_rle({"size": [20, 30], "counts": "12 4"}, None, None, "result 0")


# Written by the character-at-a-time codec this package had before the vectorised one: runs past 2^31 and 2^62,
# differences to the run two places before both ways, and (second pair) runs past int64, read as Python ints.
GOLDEN_COUNTS = [
    ([0, 2**31 + 5, 3, 2**40, 1, 7, 2**33, 0, 12, 2**62, 5], "0UPPPPP23kooooomo0NWPPPPPPPOoooooo7I\\PPPPPHPPPPPPPPPPPP4I"),
    ([2**70, 1, 2**80, 3], "PPPPPPPPPPPPPP11PPPPPPPPPPPPPPPP12"),
    ([1, -16, 0, -16, 0, -16, 0, -16, 0, -16, 0, -16, 0, -16, 0, -16, 0, -16], "1@0000000000000000"),
    ([], ""),
    ([7], "7"),
]


@pytest.mark.parametrize(("counts", "text"), GOLDEN_COUNTS)
def test_compressed_counts_equal_the_character_at_a_time_codec(counts, text):
    assert string_to_counts(text) == counts and string_to_counts(text.encode()) == counts
    assert all(type(c) is int for c in string_to_counts(text))
    assert counts_to_string(counts) == text


def test_long_random_counts_round_trip():
    """Tens of thousands of runs: small ones (one character), long ones past 2^31 (many), zeros, and differences to
    the run two places before of both signs; each list also read back from its string in one piece."""
    rng = np.random.default_rng(11)
    for n in (1, 2, 3, 4, 5, 20_000, 20_001):
        kind = rng.integers(0, 4, n)
        counts = np.where(kind == 0, 0, np.where(kind == 1, rng.integers(1, 40, n), rng.integers(1, 2**45, n)))
        counts[rng.random(n) < 0.01] = 2**31 + rng.integers(0, 3)
        counts = counts.tolist()
        assert string_to_counts(counts_to_string(counts)) == counts


def test_long_compressed_string_of_pycocotools_decodes_to_its_runs():
    mask = np.random.default_rng(12).random((400, 500)) < 0.5  # about 100,000 runs
    reference = _reference_rle(mask)["counts"]
    assert string_to_counts(reference) == mask_to_counts(mask)
    assert counts_to_string(mask_to_counts(mask)) == reference.decode()


@pytest.mark.parametrize(("text", "message"), [
    ("0P ", "invalid character ' '"),  # an invalid character wins over a run left open
    ("1 0P", "invalid character ' '"),
    ("00p", "invalid character 'p'"),  # 'p' is 48 + 64; 'o', the last valid one, continues a run
    ("00o", "ends inside a run"),
    ("aé1", "invalid character 'é'"),
    ("00/", "invalid character '/'"),
    (b"ab\xff", "invalid character '\ufffd'"),
    ("P", "ends inside a run"),
    ("11PPPP", "ends inside a run"),
])
def test_malformed_compressed_strings_raise_the_first_error(text, message):
    with pytest.raises(ValueError, match=f"^compressed RLE string (has an )?{message}$"):
        string_to_counts(text)


@pytest.mark.parametrize("decode_batch", [512, 4])
def test_to_rles_decodes_a_batch_as_one_at_a_time(monkeypatch, decode_batch):
    """The compressed strings of a list are decoded together (in batches of DECODE_BATCH); every form among them
    gives to_rle's mask."""
    import visionzoo.data.masks

    monkeypatch.setattr(visionzoo.data.masks, "DECODE_BATCH", decode_batch)
    rng = np.random.default_rng(13)
    segmentations, sizes = [], []
    for t in range(60):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        mask = rng.random((h, w)) < rng.random()
        form = t % 6
        if form == 0:
            seg = mask_to_rle(mask)
        elif form == 1:
            seg = _reference_rle(mask)  # bytes counts
        elif form == 2:
            seg = {"size": [h, w], "counts": mask_to_counts(mask)}
        elif form == 3:
            seg = [[1.0, 1.0, w - 1.5, 2.0, 3.0, h - 1.0]]
        elif form == 4:
            seg = mask
        else:
            seg = [mask_to_rle(mask), mask_to_rle(np.roll(mask, 1, axis=0))]
        segmentations.append(seg)
        sizes.append((h, w))
    segmentations += [{"size": [0, 5], "counts": ""}, {"size": [3, 2], "counts": "6"}]  # no runs; one run
    sizes += [(None, None)] * 2
    batch = to_rles(segmentations, sizes, "ann")
    single = [to_rle(s, h, w, f"ann {i}") for i, (s, (h, w)) in enumerate(zip(segmentations, sizes))]
    assert len(batch) == len(single) == 62
    for ours, expected in zip(batch, single):
        assert (ours.height, ours.width) == (expected.height, expected.width)
        assert ours.starts.dtype == ours.ends.dtype == np.int64
        assert np.array_equal(ours.starts, expected.starts) and np.array_equal(ours.ends, expected.ends)


@pytest.mark.parametrize(("segmentations", "message"), [
    ([{"size": [1, 2], "counts": "02"}, {"size": [1, 2], "counts": "0P"}, {"size": [1, 2], "counts": "0 "}],
     r"^ann 1: compressed RLE string ends inside a run$"),
    ([{"size": [1, 2], "counts": "03"}, {"size": [1, 2], "counts": "0 "}], r"^ann 0: RLE counts sum to 3, expected 1x2 = 2$"),
    ([{"size": [1, 2], "counts": "02"}, {"size": [1, 2], "counts": "1@"}], r"^ann 1: RLE counts must not be negative$"),
    ([{"size": [1, 2], "counts": "02"}, {"size": [1], "counts": "02"}, {"size": [1, 2], "counts": "0 "}],
     r"^ann 1: RLE size must be \[height, width\]"),
    ([{"size": [1, 2], "counts": "02"}, [[0, 0]], {"size": [1, 2], "counts": "0P"}],
     r"^ann 1: a polygon needs at least 3 finite \(x, y\) points"),
])
def test_to_rles_raises_the_first_entrys_error(segmentations, message):
    with pytest.raises(ValueError, match=message):
        to_rles(segmentations, [(1, 2)] * len(segmentations), "ann")
