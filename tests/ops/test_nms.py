"""nms / batched_nms against torchvision on the same random inputs; soft_nms against hand-worked examples."""

import importlib
import math

import pytest
import torch
from torchvision import ops as tv

from visionzoo.ops import batched_nms, nms, soft_nms

nms_module = importlib.import_module("visionzoo.ops.nms")  # the package attribute `nms` is the function


def uniform_boxes(n, gen, size=500.0):
    """torchvision's test style: corners in [0, size), sides in [0, size)."""
    b = torch.rand(n, 4, generator=gen) * size
    b[:, 2:] += b[:, :2]
    return b


def detection_boxes(n, gen):
    """Sizes log-uniform in [10, 300] around centres spread over a 1000x1000 image."""
    c = torch.rand(n, 2, generator=gen) * 1000
    wh = torch.exp(torch.empty(n, 2).uniform_(2.3, 5.7, generator=gen))
    return torch.cat([c - wh / 2, c + wh / 2], 1)


def clustered_boxes(n, gen):
    """Jittered copies of 12 objects: what a detector's raw output looks like."""
    centres = torch.rand(12, 2, generator=gen) * 800
    sizes = torch.rand(12, 2, generator=gen) * 150 + 30
    k = torch.randint(0, 12, (n,), generator=gen)
    c = centres[k] + torch.randn(n, 2, generator=gen) * 8
    wh = sizes[k] * (1 + 0.1 * torch.randn(n, 2, generator=gen))
    return torch.cat([c - wh / 2, c + wh / 2], 1)


GENERATORS = {"uniform": uniform_boxes, "detection": detection_boxes, "clustered": clustered_boxes}


@pytest.fixture(params=["windows", "dense"])
def path(request, monkeypatch):
    """Run each test both through the spatial search windows and through the all-pairs tiles."""
    monkeypatch.setattr(nms_module, "DENSE_PAIRS", 0 if request.param == "windows" else 1 << 40)
    monkeypatch.setattr(nms_module, "FIRST_BLOCK", 128)
    return request.param


@pytest.mark.parametrize("kind", sorted(GENERATORS))
@pytest.mark.parametrize("n", [1, 2, 40, 900, 2500])
def test_nms_keeps_torchvision_indices(kind, n, path):
    gen = torch.Generator().manual_seed(n)
    boxes = GENERATORS[kind](n, gen)
    scores = torch.rand(n, generator=gen)
    for thr in (0.0, 0.3, 0.5, 0.7, 0.95):
        assert torch.equal(nms(boxes, scores, thr), tv.nms(boxes, scores, thr)), (kind, n, thr)


@pytest.mark.parametrize("thr", [-0.1, 1.0, 1.5, math.inf])
def test_nms_threshold_extremes(thr, path):
    gen = torch.Generator().manual_seed(7)
    boxes = uniform_boxes(300, gen)
    boxes[:5] = boxes[5]  # identical boxes: IoU exactly 1
    scores = torch.rand(300, generator=gen)
    assert torch.equal(nms(boxes, scores, thr), tv.nms(boxes, scores, thr))
    idxs = torch.randint(0, 3, (300,), generator=gen)
    assert torch.equal(batched_nms(boxes, scores, idxs, thr), tv.batched_nms(boxes, scores, idxs, thr))


def test_nms_float64_and_integer_valued_coordinates(path):
    gen = torch.Generator().manual_seed(3)
    boxes = uniform_boxes(1500, gen, size=64.0).round()  # many exact ties in IoU values
    scores = torch.rand(1500, generator=gen, dtype=torch.float64)
    for thr in (0.25, 0.5, 0.6):
        assert torch.equal(nms(boxes.double(), scores, thr), tv.nms(boxes.double(), scores, thr))
        assert torch.equal(nms(boxes, scores.float(), thr), tv.nms(boxes, scores.float(), thr))


def test_nms_tied_scores_follow_index_order(path):
    gen = torch.Generator().manual_seed(11)
    boxes = clustered_boxes(1200, gen)
    scores = (torch.rand(1200, generator=gen) * 8).floor()  # 8 distinct values
    for thr in (0.3, 0.5):
        assert torch.equal(nms(boxes, scores, thr), tv.nms(boxes, scores, thr))


def test_iou_exactly_at_threshold_is_kept():
    # inter 1, union 2: IoU exactly 0.5, not > 0.5, so both boxes stay.
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1] == tv.nms(boxes, scores, 0.5).tolist()
    assert nms(boxes, scores, 0.4999).tolist() == [0] == tv.nms(boxes, scores, 0.4999).tolist()


@pytest.mark.parametrize("thr", [0.3, 0.7, 0.1, 0.5, 1 / 3])
def test_threshold_compares_like_a_double(thr):
    # torchvision compares the float32 IoU with the double threshold; float32(0.3) > 0.3 must count as above.
    t32 = torch.tensor(thr, dtype=torch.float32)
    below = nms_module._threshold_below(thr, torch.float32)
    for x in (torch.nextafter(t32, torch.tensor(0.0)), t32, torch.nextafter(t32, torch.tensor(1.0))):
        assert bool(x > below) == (float(x) > thr)


def test_degenerate_boxes_match_torchvision_and_are_always_kept(path):
    gen = torch.Generator().manual_seed(5)
    boxes = uniform_boxes(800, gen)
    flipped = torch.arange(0, 800, 7)
    boxes[flipped] = boxes[flipped][:, [2, 1, 0, 3]]  # x2 < x1
    boxes[3] = torch.tensor([10.0, 10.0, 10.0, 50.0])  # zero width
    scores = torch.rand(800, generator=gen)
    for thr in (0.0, 0.5):
        keep = nms(boxes, scores, thr)
        assert torch.equal(keep, tv.nms(boxes, scores, thr))
        assert set(flipped.tolist()) | {3} <= set(keep.tolist())


def test_empty_and_single_inputs():
    empty = nms(torch.empty(0, 4), torch.empty(0), 0.5)
    assert empty.dtype == torch.int64 and empty.numel() == 0
    assert batched_nms(torch.empty(0, 4), torch.empty(0), torch.empty(0, dtype=torch.long), 0.5).numel() == 0
    assert nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.3]), 0.5).tolist() == [0]


def test_bad_scores_and_boxes_raise():
    boxes = torch.tensor([[0.0, 0, 1, 1], [0, 0, 2, 2]])
    with pytest.raises(ValueError, match="NaN at index 1"):
        nms(boxes, torch.tensor([0.5, math.nan]), 0.5)
    with pytest.raises(ValueError, match="row 0"):
        nms(torch.tensor([[0.0, 0, math.inf, 1], [0, 0, 2, 2]]), torch.tensor([0.5, 0.4]), 0.5)
    with pytest.raises(ValueError, match="Tensor\\[N, 4\\]"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores must be Tensor\\[N\\]"):
        nms(boxes, torch.zeros(3), 0.5)


def test_infinite_scores_are_ordinary(path):
    gen = torch.Generator().manual_seed(2)
    boxes = clustered_boxes(400, gen)
    scores = torch.rand(400, generator=gen)
    scores[[3, 50]] = math.inf
    scores[[7, 8]] = -math.inf
    assert torch.equal(nms(boxes, scores, 0.5), tv.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_boxes_are_computed_in_float32(dtype):
    gen = torch.Generator().manual_seed(4)
    boxes = clustered_boxes(500, gen).to(dtype)
    scores = torch.rand(500, generator=gen)
    assert torch.equal(nms(boxes, scores, 0.5), tv.nms(boxes.float(), scores, 0.5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [300, 1500])  # 300: coordinate-offset path; 1500: per-category path
def test_batched_nms_half_precision_boxes_are_computed_in_float32(dtype, n):
    # The category shift must not round a category's coordinates more coarsely than category 0's.
    gen = torch.Generator().manual_seed(0)
    boxes = clustered_boxes(n, gen).to(dtype)
    scores = torch.rand(n, generator=gen)
    idxs = torch.randint(0, 5, (n,), generator=gen)
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), tv.batched_nms(boxes.float(), scores, idxs, 0.5))


@pytest.mark.parametrize("n", [200, 3000])  # 200: coordinate-offset path; 3000: per-category path
def test_batched_nms_keeps_torchvision_indices(n, path):
    gen = torch.Generator().manual_seed(n)
    boxes = detection_boxes(n, gen)
    scores = torch.rand(n, generator=gen)
    for classes in (80, 3):
        idxs = torch.randint(0, classes, (n,), generator=gen) * 7 - 20  # arbitrary, negative ids
        for thr in (0.3, 0.5, 0.8):
            assert torch.equal(batched_nms(boxes, scores, idxs, thr), tv.batched_nms(boxes, scores, idxs, thr))


def test_batched_nms_clustered_with_ties(path):
    gen = torch.Generator().manual_seed(9)
    boxes = clustered_boxes(2000, gen)
    scores = (torch.rand(2000, generator=gen) * 50).floor()
    idxs = torch.randint(0, 5, (2000,), generator=gen)
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), tv.batched_nms(boxes, scores, idxs, 0.5))


# soft_nms: four boxes, worked by hand with the paper's formulas.
#   A = [0,0,10,10] (s .9), B = [1,0,11,10] (s .8), C = [0,5,10,15] (s .7), D = [20,20,30,30] (s .6)
#   IoU(A,B) = 90/110 = 9/11, IoU(A,C) = 50/150 = 1/3, IoU(B,C) = 45/155 = 9/31, D overlaps nothing.
SOFT_BOXES = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 5, 10, 15], [20, 20, 30, 30]], dtype=torch.float64)
SOFT_SCORES = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)


def test_soft_nms_gaussian_hand_worked():
    # Step 1: keep A (.9). B: .8 exp(-(9/11)^2/.5); C: .7 exp(-(1/3)^2/.5) = .7 exp(-2/9); D unchanged.
    b1 = 0.8 * math.exp(-((9 / 11) ** 2) / 0.5)  # 0.2096...
    c1 = 0.7 * math.exp(-2 / 9)  # 0.5605...
    # Step 2: keep D (.6, highest now); nothing overlaps it. Step 3: keep C; B decays by exp(-(9/31)^2/.5).
    b2 = b1 * math.exp(-((9 / 31) ** 2) / 0.5)
    keep, new_scores = soft_nms(SOFT_BOXES, SOFT_SCORES, method="gaussian", sigma=0.5)
    assert keep.tolist() == [0, 3, 2, 1]
    torch.testing.assert_close(new_scores, torch.tensor([0.9, 0.6, c1, b2], dtype=torch.float64))


def test_soft_nms_linear_hand_worked():
    # Nt = 0.3. Step 1: keep A. B: IoU 9/11 >= .3 -> .8 (1 - 9/11) = .8 * 2/11; C: 1/3 >= .3 -> .7 * 2/3.
    # Step 2: keep D (.6). Step 3: keep C (.4667); B: IoU 9/31 = .2903 < .3 -> unchanged. Step 4: keep B.
    keep, new_scores = soft_nms(SOFT_BOXES, SOFT_SCORES, method="linear", iou_threshold=0.3)
    assert keep.tolist() == [0, 3, 2, 1]
    torch.testing.assert_close(new_scores, torch.tensor([0.9, 0.6, 0.7 * 2 / 3, 0.8 * 2 / 11], dtype=torch.float64))
    # With Nt = 0.35, C (IoU 1/3 with A) is not decayed and comes second.
    keep, new_scores = soft_nms(SOFT_BOXES, SOFT_SCORES, method="linear", iou_threshold=0.35)
    assert keep.tolist() == [0, 2, 3, 1]
    # B: decayed by A (9/11 >= .35) only; IoU(B, C) = 9/31 < .35.
    torch.testing.assert_close(new_scores, torch.tensor([0.9, 0.7, 0.6, 0.8 * 2 / 11], dtype=torch.float64))


def test_soft_nms_score_threshold_drops_decayed_boxes():
    # B decays to .8 * 2/11 = 0.1455 (linear), below 0.2: dropped; the rest as before.
    keep, new_scores = soft_nms(SOFT_BOXES, SOFT_SCORES, method="linear", iou_threshold=0.3, score_threshold=0.2)
    assert keep.tolist() == [0, 3, 2]
    assert float(new_scores.min()) >= 0.2


def test_soft_nms_bad_input():
    assert soft_nms(torch.empty(0, 4), torch.empty(0))[0].numel() == 0
    with pytest.raises(ValueError, match="method"):
        soft_nms(SOFT_BOXES, SOFT_SCORES, method="box")
    with pytest.raises(ValueError, match="NaN"):
        soft_nms(SOFT_BOXES, torch.tensor([0.1, math.nan, 0.2, 0.3], dtype=torch.float64))
    flipped = SOFT_BOXES.clone()
    flipped[1] = flipped[1, [2, 1, 0, 3]]  # x2 < x1: no overlap with anything, score untouched
    keep, new_scores = soft_nms(flipped, SOFT_SCORES)
    assert keep.tolist()[:2] == [0, 1] and float(new_scores[1]) == 0.8


@pytest.mark.parametrize("n", [40, 2500])
def test_boxes_and_scores_that_require_grad_are_taken(n, path):
    gen = torch.Generator().manual_seed(n)
    boxes = detection_boxes(n, gen)
    scores = torch.rand(n, generator=gen)
    idxs = torch.randint(0, 3, (n,), generator=gen)
    expected = tv.nms(boxes, scores, 0.5)
    assert torch.equal(nms(boxes.clone().requires_grad_(), scores.clone().requires_grad_(), 0.5), expected)
    assert torch.equal(batched_nms(boxes.clone().requires_grad_(), scores, idxs, 0.5),
                       tv.batched_nms(boxes, scores, idxs, 0.5))


def test_batched_nms_with_coordinates_the_shift_would_overflow_suppresses_per_category():
    # before: "nms: boxes contain NaN or inf in row 0: [inf, ...]" for finite boxes (the category shift
    # overflowed float32); torchvision's shifted boxes turn infinite and are all kept, even duplicates.
    boxes = torch.tensor([[2e38, 0, 2.5e38, 1], [2e38, 0, 2.5e38, 1], [0, 0, 10, 10], [1, 1, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    idxs = torch.tensor([1, 1, 0, 0])
    per_category = torch.cat([tv.nms(boxes[:2], scores[:2], 0.5), tv.nms(boxes[2:], scores[2:], 0.5) + 2])
    assert per_category.tolist() == [0, 2]
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == per_category.tolist()
    assert tv.batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 1, 2]  # the duplicate survives there



@pytest.fixture
def largest(monkeypatch):
    """The edge counts of every suppression graph nms solves (a list, 0 first)."""
    sizes = [0]
    greedy_on_edges = nms_module._greedy_on_edges

    def recording(members, first, second, *rounds):
        sizes.append(first.numel())
        return greedy_on_edges(members, first, second, *rounds)

    monkeypatch.setattr(nms_module, "_greedy_on_edges", recording)
    return sizes


@pytest.mark.parametrize("categories", [1, 2])
def test_overlapping_clusters_first_met_at_lower_scores_are_resolved_in_bounded_pieces(categories, path, monkeypatch,
                                                                                       largest):
    """Objects whose boxes all rank below the first object's (a weak detection beside a strong one) made every box of
    a score block an edge with every other: 20,000 such boxes took 37 s and 5.5 GB where torchvision takes 4 MB."""
    monkeypatch.setattr(nms_module, "TARGET_SURVIVORS", 1024)
    monkeypatch.setattr(nms_module, "CATEGORY_PAIRS", 0)
    monkeypatch.setattr(nms_module, "EDGE_LIMIT", 1 << 14, raising=False)
    gen = torch.Generator().manual_seed(categories)
    n = 2500
    objects = torch.arange(n) * 5 // n  # object k's boxes all score below object k - 1's
    centres = (torch.rand(5, 2, generator=gen) * 800 + 100)[objects] + torch.randn(n, 2, generator=gen) * 4
    sizes = 60 + torch.randn(n, 2, generator=gen) * 2
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    scores = 1 - objects * 0.2 - torch.rand(n, generator=gen) * 0.2
    idxs = torch.randint(0, categories, (n,), generator=gen)
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.7), tv.batched_nms(boxes, scores, idxs, 0.7))
    assert max(largest) <= 1 << 14


def test_a_long_suppression_chain_takes_a_bounded_number_of_vectorised_rounds(path, monkeypatch):
    """Boxes overlapping their neighbours along a row, with scores falling along it, took one vectorised round per
    kept box: 50,000 such boxes took 6 s where torchvision takes 0.7 s."""
    monkeypatch.setattr(nms_module, "MAX_ROUNDS", 8, raising=False)
    n = 2000
    x = torch.arange(n, dtype=torch.float32) * 0.5
    boxes = torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], 1)
    scores = torch.linspace(1, 0, n)
    expected = tv.nms(boxes, scores, 0.5)
    rounds = []  # the rounds end on a torch.equal of the old and new kept masks: count those
    equal = torch.equal
    with monkeypatch.context() as m:
        m.setattr(torch, "equal", lambda a, b: rounds.append(1) or equal(a, b))
        keep = nms(boxes, scores, 0.5)
    assert torch.equal(keep, expected) and keep.numel() == 286
    assert len(rounds) <= 4 * (8 + 1)


def test_batched_nms_on_categories_of_mutually_overlapping_boxes_holds_a_bounded_number_of_pairs(path, monkeypatch,
                                                                                                  largest):
    """batched_nms over 1,000 boxes in a few categories, each one cluster of overlapping boxes, held every
    overlapping pair of a category at once: 4,000 boxes in 2 categories took 220 MB and 0.56 s (torchvision 6 MB)."""
    monkeypatch.setattr(nms_module, "EDGE_LIMIT", 1 << 12)
    monkeypatch.setattr(nms_module, "CATEGORY_EDGE_LIMIT", 1 << 14, raising=False)
    gen = torch.Generator().manual_seed(0)
    n = 1400
    idxs = torch.arange(n) % 2
    centres = torch.tensor([[100.0, 100.0], [400.0, 300.0]])[idxs] + torch.randn(n, 2, generator=gen) * 3
    boxes = torch.cat([centres - 40, centres + 40], 1)
    scores = torch.rand(n, generator=gen)
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), tv.batched_nms(boxes, scores, idxs, 0.5))
    assert max(largest) <= 1 << 14


@pytest.mark.parametrize("n", [10, 2000])  # the shifted path and the per-category one
def test_batched_nms_refuses_fractional_categories_and_takes_whole_float_ones(n):
    """Float category ids 0.2 and 0.5 were read as integers on the per-category path and merged into category 0,
    so a box of one suppressed a box of the other (torchvision's shift keeps them apart)."""
    torch.manual_seed(0)
    xy = torch.rand(n, 2) * 100
    boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2) * 20], 1)
    scores = torch.rand(n)
    whole = torch.randint(0, 3, (n,))
    assert torch.equal(batched_nms(boxes, scores, whole.float(), 0.5), tv.batched_nms(boxes, scores, whole, 0.5))
    with pytest.raises(ValueError, match="idxs must hold integer categories"):
        batched_nms(boxes, scores, whole * 0.3 + 0.2, 0.5)
