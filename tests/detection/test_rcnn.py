"""R-CNN, Fast R-CNN and the sliding window: warping, sampling, the torchvision API, bad input; proposal caching."""

import os
import re
import stat

import pytest
import torch
import torch.nn.functional as F
import torchvision

from visionzoo.data import Shapes
from visionzoo.detection import RCNN, FastRCNN, proposal_cache, selective_search, sliding_windows
from visionzoo.detection.proposal_cache import (
    WithProposals,
    cached_proposals,
    dataset_key,
    join_boxes,
    split_boxes,
)
from visionzoo.detection.rcnn import RegionWarp, RoIPooler, dilate_boxes
from visionzoo.models import create_model
from visionzoo.ops import box_iou


def shapes_batch(count: int = 2):
    data = Shapes("train", length=count)
    images = [data[i][0] for i in range(count)]
    targets = [{"boxes": data[i][1]["boxes"], "labels": data[i][1]["labels"]} for i in range(count)]
    return images, targets


def test_context_padding_leaves_p_pixels_of_context_at_the_warped_size():
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    grown = dilate_boxes(box, warp_size=64, padding=16)  # the box must span the middle 32 of 64 pixels
    assert grown.tolist() == [[0.0, 0.0, 40.0, 80.0]]
    assert torch.equal(dilate_boxes(box, 64, 0), box)


def test_the_warp_of_the_whole_image_at_its_own_size_is_the_image():
    image = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    warp = RegionWarp(warp_size=16, context_padding=0)
    out = warp({"image": image[..., :16]}, [torch.tensor([[0.0, 0.0, 16.0, 16.0]])], [(16, 24)])
    torch.testing.assert_close(out, image[..., :16], atol=1e-6, rtol=0)


def test_the_warp_enlarges_bilinearly_and_context_outside_the_image_is_the_mean():
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    warp = RegionWarp(warp_size=32, context_padding=0)
    out = warp({"image": image}, [torch.tensor([[0.0, 0.0, 16.0, 16.0]])], [(16, 16)])
    expected = F.interpolate(image, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    padded = RegionWarp(warp_size=32, context_padding=8)({"image": image}, [torch.tensor([[0.0, 0.0, 16.0, 16.0]])],
                                                         [(16, 16)])
    assert padded[..., :3, :].abs().max() == 0  # context beyond the border: 0 = the mean after normalising
    assert padded[..., 12:20, 12:20].abs().min() > 0


def test_roi_pooler_pools_from_the_map_at_its_inferred_stride():
    features = {"0": torch.rand(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))}
    box = [torch.tensor([[0.0, 0.0, 32.0, 32.0], [9.0, 3.0, 50.0, 61.0]])]  # in a 64 px image: stride 8
    pooled = RoIPooler("0", 2, "pool")(features, box, [(64, 64)])
    torch.testing.assert_close(pooled, torchvision.ops.roi_pool(features["0"], box, 2, 1 / 8))
    aligned = RoIPooler("0", 2, "align")(features, box, [(64, 64)])
    torch.testing.assert_close(aligned, torchvision.ops.roi_align(features["0"], box, 2, 1 / 8, 2, aligned=True))
    with pytest.raises(ValueError, match="roi_pool"):
        RoIPooler("0", 2, "max")


def test_sliding_windows_cover_every_size_ratio_and_stride_inside_the_image():
    windows = sliding_windows(40, 48, sizes=(16,), aspect_ratios=(1.0, 4.0), stride_fraction=0.5)
    square = windows[(windows[:, 2] - windows[:, 0]) == 16]
    tall = windows[(windows[:, 2] - windows[:, 0]) == 8]  # ratio 4 = height / width: 8 wide, 32 high
    assert len(square) == 4 * 5 and len(tall) == 2 * 6 and len(windows) == len(square) + len(tall)
    assert (windows[:, :2] >= 0).all() and (windows[:, 2] <= 48).all() and (windows[:, 3] <= 40).all()
    assert set(square[:, 0].tolist()) == {0.0, 8.0, 16.0, 24.0, 32.0}
    assert len(sliding_windows(128, 128)) == 4076
    with pytest.raises(ValueError, match="stride_fraction"):
        sliding_windows(32, 32, stride_fraction=0.0)


@pytest.mark.parametrize("name", ["rcnn_shapes", "fastrcnn_shapes", "sliding_window_shapes"])
def test_train_mode_gives_losses_and_gradients_eval_mode_gives_detections(name):
    torch.manual_seed(0)
    model = create_model(name)
    images, targets = shapes_batch()
    proposals = [sliding_windows(128, 128)[::7] for _ in images]
    losses = model.train()(images, targets, proposals=proposals)
    assert set(losses) == {"loss_classifier", "loss_box_reg"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    head = model.roi_heads.box_predictor.bbox_pred.weight
    assert head.grad is not None and head.grad.abs().sum() > 0
    with torch.no_grad():
        detections = model.eval()(images, proposals=proposals)
    assert len(detections) == 2
    for detection in detections:
        assert set(detection) == {"boxes", "labels", "scores"} and detection["boxes"].shape[1] == 4
        assert ((detection["labels"] >= 1) & (detection["labels"] <= 6)).all()
        assert (detection["boxes"] >= 0).all() and (detection["boxes"] <= 128).all()


def test_without_proposals_the_model_computes_its_own():
    model = create_model("rcnn_shapes", box_score_thresh=0.0).eval()
    image = shapes_batch(1)[0][0]
    own = model.propose(image)
    assert 50 < len(own) <= 2000
    with torch.no_grad():
        automatic = model([image])[0]
        given = model([image], proposals=[own])[0]
    assert torch.equal(automatic["boxes"], given["boxes"]) and torch.equal(automatic["scores"], given["scores"])


def test_images_of_other_sizes_move_their_proposals_with_the_resize():
    torch.manual_seed(0)
    model = create_model("fastrcnn_shapes", box_score_thresh=0.0).eval()
    image = torch.rand(3, 96, 160)
    box = torch.tensor([[40.0, 20.0, 80.0, 60.0]])
    with torch.no_grad():
        detections = model([image], proposals=[box])[0]
    # every detection is one regressed version of the single proposal, in the input's pixels
    assert len(detections["boxes"]) > 0 and box_iou(detections["boxes"], box).min() > 0.3


def test_background_is_the_band_below_the_positive_threshold_and_far_boxes_are_ignored():
    model = create_model("rcnn_shapes", batch_size_per_image=64)
    target = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "labels": torch.tensor([3])}
    proposals = torch.tensor([[12.0, 12.0, 50.0, 50.0],   # IoU 0.9: positive
                              [30.0, 30.0, 70.0, 70.0],   # IoU 0.14: background
                              [80.0, 80.0, 120.0, 120.0]])  # IoU 0: below 0.1, ignored
    sampled, labels, _ = model.roi_heads.select_training_samples([proposals], [target])
    kept = {tuple(box.tolist()): int(label) for box, label in zip(sampled[0], labels[0])}
    assert kept == {(12.0, 12.0, 50.0, 50.0): 3, (30.0, 30.0, 70.0, 70.0): 0, (10.0, 10.0, 50.0, 50.0): 3}
    with pytest.raises(ValueError, match="background_iou_low"):
        create_model("rcnn_shapes", background_iou_low=0.7)


def test_an_image_without_boxes_is_a_negative_and_bad_input_is_one_clear_error():
    model = create_model("fastrcnn_shapes").train()
    images, targets = shapes_batch()
    empty = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}, targets[1]]
    proposals = [torch.tensor([[0.0, 0.0, 30.0, 30.0], [5.0, 5.0, 60.0, 40.0]])] * 2
    losses = model(images, empty, proposals=proposals)
    assert torch.isfinite(sum(losses.values()))
    degenerate = [{"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([1])}, targets[1]]
    with pytest.raises(ValueError, match="image 0, box 0: degenerate"):
        model(images, degenerate, proposals=proposals)
    with pytest.raises(ValueError, match="2 images but 1 proposal sets"):
        model(images, targets, proposals=proposals[:1])
    with pytest.raises(ValueError, match="proposals of image 1 must be Tensor"):
        model(images, targets, proposals=[proposals[0], torch.zeros(5)])
    with pytest.raises(ValueError, match="needs targets"):
        model(images)
    with pytest.raises(ValueError, match="proposals must be one of"):
        create_model("rcnn_shapes", proposals="edge_boxes")
    with pytest.raises(ValueError, match="in_chans=3"):
        create_model("fastrcnn_shapes", in_chans=1)


@pytest.mark.parametrize("name", ["rcnn_shapes", "fastrcnn_shapes"])
def test_an_image_of_four_channels_is_refused_naming_it_before_its_proposals_are_computed(name):
    """An RGBA Tensor[4, H, W] among the images was refused by Selective Search with 'image must be Tensor[3, H, W] or
    Tensor[1, H, W], got shape (4, 32, 32)': no image named, and a grey Tensor[1, H, W] that it offered was then
    refused by the detector (after its proposals had been computed)."""
    model = create_model(name).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=re.escape("image 1 must be Tensor[3, H, W], got (4, 32, 32)")):
        model([torch.rand(3, 32, 32), torch.rand(4, 32, 32)])


@pytest.mark.parametrize(("name", "args", "message"), [
    ("rcnn_shapes", {"cnn_args": {"num_classes": 5}}, "cnn_args cannot set num_classes: the CNN gives features"),
    ("rcnn_shapes", {"cnn_args": "resnet18"}, "cnn_args must be a dict of the backbone's arguments, got 'resnet18'"),
    ("fastrcnn_shapes", {"backbone_args": {"out_indices": (2,)}}, "backbone_args cannot set out_indices: Fast R-CNN"),
    ("fastrcnn_shapes", {"backbone_args": [1]}, "backbone_args must be a dict of the backbone's arguments, got [1]"),
])
def test_nested_arguments_that_the_detector_sets_or_that_are_no_dict_are_refused(name, args, message):
    # a TypeError ("create_model() got multiple values for keyword argument 'num_classes'", "argument after ** must
    # be a mapping"), which --model-arg showed as a traceback
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model(name, **args)


@pytest.mark.parametrize("name", ["rcnn_shapes", "fastrcnn_shapes"])
def test_a_sample_size_per_image_under_one_is_refused_naming_it(name):
    # was "BalancedSampler: batch_size_per_image -4 must be positive and positive_fraction 0.25 in [0, 1]"
    with pytest.raises(ValueError, match="^" + re.escape("batch_size_per_image must be an integer >= 1, got -4")):
        create_model(name, batch_size_per_image=-4)


@pytest.mark.parametrize("name", ["rcnn_shapes", "fastrcnn_shapes"])
@pytest.mark.parametrize("value", [2, -0.5])
def test_a_positive_fraction_outside_zero_to_one_is_refused_naming_the_argument_given(name, value):
    # was "box_positive_fraction must be in [0, 1], got 2", an argument these detectors do not take
    with pytest.raises(ValueError, match="^" + re.escape(f"positive_fraction must be in [0, 1], got {value}")):
        create_model(name, positive_fraction=value)


@pytest.mark.parametrize(("arg", "value"), [("representation_size", 0), ("output_size", 0), ("output_size", -1)])
def test_a_box_head_of_no_width_or_no_pooled_cells_is_refused_when_built(arg, value):
    # 0 built a box head giving no features: Fast R-CNN trained and detected from the predictor's biases alone
    with pytest.raises(ValueError, match=re.escape(f"{arg} must be an integer >= 1, got {value}")):
        create_model("fastrcnn_shapes", **{arg: value})


@pytest.mark.parametrize(("proposals", "args", "message"), [
    ("selective_search", {"max_proposal": 100}, "selective_search takes no argument 'max_proposal'; it takes mode, "
                                                "max_proposals, min_size, seed"),
    ("sliding_window", {"size": (16,)}, "sliding_window takes no argument 'size'; it takes sizes, aspect_ratios, "
                                        "stride_fraction"),
    ("selective_search", [1, 2], "proposal_args must be a dict of selective_search's arguments, got [1, 2]"),
])
def test_proposal_arguments_that_the_method_does_not_take_are_refused_when_the_model_is_built(proposals, args,
                                                                                             message):
    """--model-arg proposal_args={"max_proposal": 100} built the model and ended, once the proposals were computed,
    in a TypeError traceback from a worker process; a list ended in a TypeError traceback from dict()."""
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("rcnn_shapes", proposals=proposals, proposal_args=args)


@pytest.mark.parametrize(("proposals", "args", "message"), [
    ("selective_search", {"max_proposals": 1.5}, "max_proposals must be a positive integer, got 1.5"),
    ("selective_search", {"max_proposals": "10"}, "max_proposals must be a positive integer, got '10'"),
    ("selective_search", {"min_size": "2"}, "min_size must be a number >= 0, got '2'"),
    ("selective_search", {"seed": -1}, "seed must be an integer >= 0, got -1"),
    ("selective_search", {"seed": 1.5}, "seed must be an integer >= 0, got 1.5"),
    ("selective_search", {"mode": ["fast"]}, "mode must be one of single, fast, quality, got ['fast']"),
    ("sliding_window", {"sizes": 16}, "sizes must be a list of positive numbers, got 16"),
    ("sliding_window", {"sizes": ["16"]}, "sizes must be a list of positive numbers, got ['16']"),
    ("sliding_window", {"aspect_ratios": 1.0}, "aspect_ratios must be a list of positive numbers, got 1.0"),
    ("sliding_window", {"sizes": [float("nan")]}, "sizes must be a list of positive numbers, got [nan]"),
    ("sliding_window", {"stride_fraction": "0.25"}, "stride_fraction must be in (0, 1], got '0.25'"),
])
def test_proposal_arguments_of_the_wrong_type_are_refused_naming_them(proposals, args, message):
    """--model-arg proposal_args={"max_proposals": 1.5} (or {"sizes": 16} for the windows) ended in a TypeError
    traceback from inside Selective Search or the window grid ('slice indices must be integers'), and seed=-1 in
    NumPy's 'expected non-negative integer', naming no argument."""
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("rcnn_shapes", proposals=proposals, proposal_args=args)
    image = torch.rand(3, 16, 16)
    with pytest.raises(ValueError, match=re.escape(message)):
        if proposals == "selective_search":
            selective_search(image, **args)
        else:
            sliding_windows(16, 16, **args)


@pytest.mark.parametrize("name", ["rcnn_shapes", "fastrcnn_shapes"])
def test_a_shapes_detector_given_one_proposal_argument_keeps_its_other_ones(name):
    """--model-arg proposal_args={"max_proposals": 100} on rcnn_shapes replaced its whole Selective Search setting:
    the model silently went from its single strategy to the "fast" mode's 8 (6x the time, other boxes)."""
    settings = create_model(name, proposal_args={"max_proposals": 100}).proposal_settings
    assert settings["mode"] == "single" and settings["max_proposals"] == 100
    assert create_model(name, proposal_args={"mode": "fast"}).proposal_settings["max_proposals"] == 2000
    windows = create_model(name, proposals="sliding_window", proposal_args={"sizes": (16,)}).proposal_settings
    assert windows["sizes"] == (16,) and "mode" not in windows


def test_rcnn_and_fast_rcnn_are_built_from_any_registered_network():
    rcnn = RCNN(create_model("resnet18", num_classes=0), num_classes=3, warp_size=32, proposals="sliding_window",
                proposal_args={"sizes": (16,)})
    assert rcnn.roi_heads.box_roi_pool.context_padding == round(16 * 32 / 227)
    fast = FastRCNN(create_model("convnext_atto_32", features_only=True, out_indices=(2,)), num_classes=3,
                    min_size=64, max_size=64, roi_pool="align")
    images, targets = shapes_batch()
    targets = [{"boxes": t["boxes"] / 2, "labels": t["labels"].clamp(max=2)} for t in targets]
    small = [F.interpolate(image[None], size=(64, 64))[0] for image in images]
    for model in (rcnn, fast):
        assert torch.isfinite(sum(model.train()(small, targets).values()))


def test_cached_proposals_are_computed_once_then_read(tmp_path):
    data = Shapes("val", length=3)
    calls = []

    def propose(image):
        calls.append(1)
        return torch.tensor([[0.0, 0.0, 8.0, 8.0]]) * (len(calls))

    first = cached_proposals(data, propose, {"method": "test"}, tmp_path, workers=1, progress=False)
    again = cached_proposals(data, propose, {"method": "test"}, tmp_path, workers=1, progress=False)
    assert len(calls) == 3 and [p.tolist() for p in first] == [p.tolist() for p in again]
    other = cached_proposals(data, propose, {"method": "other"}, tmp_path, workers=1, progress=False)
    assert len(calls) == 6 and other[0].tolist() != first[0].tolist()  # other settings, another file
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


@pytest.mark.parametrize("tensors, reason", [
    ({"boxes": torch.zeros(3, 3), "counts": torch.ones(3, dtype=torch.int64)}, r"not float \[P, 4\]"),
    ({"boxes": torch.zeros(3, 4), "counts": torch.tensor([1, 2])}, r"not int64 \[3\]"),
    ({"boxes": torch.zeros(3, 4), "counts": torch.tensor([2, 2, -1])}, "sum to 3 for 3 boxes"),
    ({"boxes": torch.full((3, 4), float("nan")), "counts": torch.ones(3, dtype=torch.int64)}, "NaN"),
    ({"proposals": torch.zeros(3, 4)}, "expected tensors 'boxes' and 'counts'"),
])
def test_a_damaged_cache_file_is_recomputed_saying_why(tmp_path, caplog, tensors, reason):
    """A cache file that loaded but held boxes [P, 3] or another image count was served: the model failed later
    with "proposals of image 0 must be Tensor[P, 4]" or "2 proposal sets for a data set of 3 images"."""
    from safetensors.torch import save_file

    data = Shapes("val", length=3, image_size=32)
    first = cached_proposals(data, sliding_window_boxes, {"m": 1}, tmp_path, workers=1, progress=False)
    (path,) = tmp_path.iterdir()
    save_file(tensors, path)
    with caplog.at_level("WARNING", logger="visionzoo.detection.proposal_cache"):
        again = cached_proposals(data, sliding_window_boxes, {"m": 1}, tmp_path, workers=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(again) == 3
    (message,) = [r.getMessage() for r in caplog.records]
    assert "ignoring unreadable proposal cache" in message and str(path) in message
    assert re.search(reason, message), message
    assert all(torch.equal(a, b) for a, b in zip(first, cached_proposals(data, None, {"m": 1}, tmp_path)))  # rewritten


def test_a_cache_folder_that_cannot_be_written_keeps_the_computed_proposals(tmp_path, caplog):
    """A read-only, full or misplaced cache failed the run after every proposal had been computed (minutes of
    Selective Search), with "[Errno 20] Not a directory" or "[Errno 13] Permission denied"."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    data = Shapes("val", length=2, image_size=32)
    with caplog.at_level("WARNING", logger="visionzoo.detection.proposal_cache"):
        proposals = cached_proposals(data, sliding_window_boxes, {"m": 1}, blocker / "cache", workers=1, progress=False)
    assert [p.tolist() for p in proposals] == [sliding_window_boxes(data[i][0]).tolist() for i in range(2)]
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"could not write the proposal cache {blocker / 'cache'}") and "without being cached" in message


def test_the_proposal_cache_gets_the_mode_open_gives_under_the_umask(tmp_path):
    """It was written 0o600 (safetensors' mode): a cache, not a secret, unreadable to the group whatever the umask."""
    previous = os.umask(0o022)
    try:
        cached_proposals(Shapes("val", length=2), sliding_window_boxes, {"m": 1}, tmp_path, workers=1, progress=False)
    finally:
        os.umask(previous)
    (path,) = tmp_path.iterdir()
    assert path.suffix == ".safetensors" and stat.S_IMODE(path.stat().st_mode) == 0o644


def test_proposals_run_in_worker_processes_in_the_data_set_order(tmp_path):
    data = Shapes("val", length=6)
    serial = cached_proposals(data, sliding_window_boxes, {"m": 1}, tmp_path / "a", workers=1, progress=False)
    parallel = cached_proposals(data, sliding_window_boxes, {"m": 1}, tmp_path / "b", workers=2, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))


def pid_boxes(image):
    """One box holding the id of the process that proposed it."""
    return torch.full((1, 4), float(os.getpid()), dtype=torch.float64)


@pytest.mark.parametrize("workers", [0, 3])
def test_proposals_run_in_as_many_processes_as_workers_says(monkeypatch, workers):
    """compute_proposals ran one process per CPU for workers=0, where the data loader's 0 means the main process."""
    pools = []

    class Recorded(proposal_cache.ProcessPoolExecutor):
        def __init__(self, max_workers, **kwargs):
            pools.append(max_workers)
            super().__init__(max_workers, **kwargs)

    monkeypatch.setattr(proposal_cache, "ProcessPoolExecutor", Recorded)
    pids = {int(p[0, 0]) for p in proposal_cache.compute_proposals(Shapes("val", length=4), pid_boxes, workers,
                                                                   progress=False, chunk=1)}
    if workers == 0:
        assert pools == [] and pids == {os.getpid()}
    else:
        assert pools == [workers] and os.getpid() not in pids


def sliding_window_boxes(image):
    return sliding_windows(image.shape[-2], image.shape[-1], sizes=(int(image.mean() * 100) + 8,))


def test_data_set_keys_name_split_size_and_content():
    keys = {Shapes("val", length=3).cache_key, Shapes("test", length=3).cache_key,
            Shapes("val", length=3, image_size=64).cache_key, Shapes("val", length=4).cache_key}
    assert len(keys) == 4
    assert Shapes("val", length=3).cache_key == Shapes("val", length=3).cache_key
    subset = torch.utils.data.Subset(Shapes("val", length=3), [0, 1])
    assert dataset_key(subset) != dataset_key(torch.utils.data.Subset(Shapes("val", length=3), [1, 0]))
    boxes = [torch.rand(2, 4), torch.zeros((0, 4)), torch.rand(5, 4)]
    assert [b.tolist() for b in split_boxes(join_boxes(boxes))] == [b.tolist() for b in boxes]


def test_proposal_settings_name_every_argument_so_a_changed_default_is_another_cache_file(monkeypatch):
    """The settings named only the arguments given (mode, max_proposals): after an upgrade that changed
    selective_search's min_size default or its algorithm, the cache served the old boxes."""
    from visionzoo.detection import proposals
    from visionzoo.detection.rcnn import ProposalDetector

    settings = ProposalDetector(3, "selective_search", {"mode": "fast", "max_proposals": 2000}).proposal_settings
    assert settings == {"method": "selective_search", "mode": "fast", "max_proposals": 2000, "min_size": 2, "seed": 0,
                        "version": proposals.SELECTIVE_SEARCH_VERSION}
    explicit = ProposalDetector(3, "selective_search", {"mode": "fast", "max_proposals": 2000, "min_size": 2})
    assert explicit.proposal_settings == settings  # the same boxes, the same file
    monkeypatch.setattr(proposals.selective_search, "__defaults__", ("fast", 2000, 0, 0))
    assert ProposalDetector(3, "selective_search", {"mode": "fast"}).proposal_settings["min_size"] == 0
    windows = ProposalDetector(3, "sliding_window", {"sizes": (16,)}).proposal_settings
    assert windows["sizes"] == (16,) and windows["stride_fraction"] == 0.25 and "version" not in windows


def test_an_image_replaced_in_a_coco_folder_gets_new_proposals_not_the_cached_ones(tmp_path):
    """The key of a COCO folder named its annotation file alone: an image file replaced under the same name
    was served the old image's proposals."""
    from PIL import Image

    from visionzoo.data import create_dataset
    from visionzoo.data.export import export_shapes

    export_shapes(tmp_path / "coco", splits=["val"], num=2, image_size=32, progress=False)

    def propose(image):
        return torch.tensor([[0.0, 0.0, 1.0, 1.0]]) * image.mean()

    def proposals():
        return cached_proposals(create_dataset(tmp_path / "coco", "val"), propose, {"m": 1}, tmp_path / "cache",
                                workers=1, progress=False)

    before = proposals()
    assert create_dataset(tmp_path / "coco", "val").cache_key == create_dataset(tmp_path / "coco", "val").cache_key
    picture = tmp_path / "coco" / "val" / "000000.png"
    old = picture.stat()
    Image.new("RGB", (32, 32), (255, 255, 255)).save(picture)
    os.utime(picture, ns=(old.st_atime_ns, old.st_mtime_ns + 10**9))
    after = proposals()
    assert after[0].tolist() == [[0.0, 0.0, 1.0, 1.0]] and before[0].tolist() != after[0].tolist()
    assert torch.equal(after[1], before[1]) and len(list((tmp_path / "cache").iterdir())) == 2


def test_an_image_selective_search_cannot_take_is_named_by_its_file(tmp_path):
    """A 1 x 1 image in a COCO folder's val split ended training, while its proposals were computed, in 'image must
    be at least 2 x 2 pixels, got 1 x 1', naming none of the split's files."""
    import functools
    import json

    from PIL import Image

    from visionzoo.data import create_dataset
    from visionzoo.data.export import export_shapes

    export_shapes(tmp_path / "coco", splits=["val"], num=3, image_size=32, progress=False)
    annotations = tmp_path / "coco" / "annotations" / "instances_val.json"
    data = json.loads(annotations.read_text())
    record = data["images"][1]
    record["width"] = record["height"] = 1
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != record["id"]]
    annotations.write_text(json.dumps(data))
    Image.new("RGB", (1, 1)).save(tmp_path / "coco" / "val" / record["file_name"])
    propose = functools.partial(selective_search, mode="single")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'coco' / 'val' / record['file_name']}: image must be "
                                                   "at least 2 x 2 pixels, got 1 x 1")):
        cached_proposals(create_dataset(tmp_path / "coco", "val"), propose, {"m": 1}, tmp_path / "cache", workers=1,
                         progress=False)


def test_with_proposals_computes_at_first_use_for_the_images_used(tmp_path):
    data = Shapes("val", length=3)
    calls = []

    def propose(image):
        calls.append(1)
        return torch.zeros((1, 4)) + image.mean()

    wrapped = WithProposals(data, propose=propose, settings={"m": "mean"}, cache_dir=tmp_path)
    assert not calls and len(wrapped) == 3 and wrapped.classes == data.classes
    part = wrapped.subset([2, 0])
    assert part.classes == data.classes and len(part) == 2
    torch.testing.assert_close(part[0][1]["proposals"], torch.zeros((1, 4)) + data[2][0].mean())
    assert len(calls) == 2  # the subset's images alone
    assert torch.equal(wrapped[2][1]["proposals"], part[0][1]["proposals"]) and len(calls) == 5
    given = WithProposals(data, [torch.zeros((1, 4)), torch.ones((1, 4)), torch.ones((2, 4))])
    assert given.subset([1])[0][1]["proposals"].tolist() == [[1.0, 1.0, 1.0, 1.0]]
    with pytest.raises(ValueError, match="1 proposal sets for a data set of 3"):
        WithProposals(data, [torch.zeros((1, 4))])
    with pytest.raises(ValueError, match="either the proposals or a propose function"):
        WithProposals(data)


def test_proposals_of_the_wrong_kind_are_named_and_a_batch_with_nothing_to_sample_trains_on_zero():
    # before: NumPy or list proposals gave "'numpy.ndarray' object has no attribute 'dim'", one Tensor[P, 4]
    # for one image was read as P proposal sets ("proposals of image 0 must be Tensor[P, 4], got (4,)"), and
    # a batch without proposals or ground truth failed in the loss ("cannot reshape tensor of 0 elements")
    import numpy as np

    model = create_model("fastrcnn_shapes").eval()
    image = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    box = [[1.0, 2.0, 30.0, 40.0]]
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"proposals of image 0 must be a Tensor\[P, 4\], got ndarray"):
            model(image, proposals=[np.array(box)])
        with pytest.raises(ValueError, match=r"proposals of image 0 must be a Tensor\[P, 4\], got list"):
            model(image, proposals=[box])
        with pytest.raises(ValueError, match=r"proposals must be a list of Tensor\[P_i, 4\], one per image, "
                                             r"got one Tensor\[1, 4\]"):
            model(image, proposals=torch.tensor(box))
        assert len(model(image, proposals=[torch.zeros(0, 4)])[0]["boxes"]) == 0
    negative = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model.train()(image, negative, proposals=[torch.zeros(0, 4)])
    assert {k: v.item() for k, v in losses.items()} == {"loss_classifier": 0.0, "loss_box_reg": 0.0}
    sum(losses.values()).backward()


def test_at_inference_r_cnn_warps_no_more_than_chunk_regions_at_a_time():
    # before: every region of the batch was warped at once and only the CNN ran chunk by chunk, so
    # sliding_window_shapes held 4,076 warps of 3×64×64 per image (~450 MB an image: visionzoo eval's batch
    # of 128 needed ~58 GB) and rcnn_resnet50 1.2 GB an image, whatever chunk said
    torch.manual_seed(0)
    model = create_model("rcnn_shapes", box_score_thresh=0.0, chunk=7).eval()
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(1)), shapes_batch(1)[0][0]]
    proposals = [sliding_windows(64, 80)[:10], sliding_windows(128, 128)[::40]]
    warped = []
    hook = model.roi_heads.box_roi_pool.register_forward_hook(lambda module, args, out: warped.append(len(out)))
    with torch.no_grad():
        chunked = model(images, proposals=proposals)
        hook.remove()
        model.roi_heads.chunk = 10**6
        whole = model(images, proposals=proposals)
    assert sum(warped) == sum(len(p) for p in proposals) > 7 and max(warped) == 7
    for mine, reference in zip(chunked, whole):
        assert len(mine["boxes"]) == len(reference["boxes"]) > 0
        torch.testing.assert_close(mine["boxes"], reference["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(mine["scores"], reference["scores"], atol=1e-5, rtol=0)
        assert torch.equal(mine["labels"], reference["labels"])
    with torch.no_grad():
        assert len(model([images[0]], proposals=[torch.zeros(0, 4)])[0]["boxes"]) == 0
    # before: torch's "split_size can only be 0 if dimension size is 0" at the first image
    for chunk, message in ((0, "chunk .* must be a positive integer, got 0"), (2.5, "chunk must be an integer, got 2.5")):
        with pytest.raises(ValueError, match=message):
            create_model("rcnn_shapes", chunk=chunk)


def test_fast_rcnn_pools_a_short_image_at_its_maps_stride():
    # before: a 40×256 image, padded to 64 rows, had its stride-16 map (4 rows) pooled at 1/8
    torch.manual_seed(0)
    model = create_model("fastrcnn_shapes").eval()
    seen = {}
    model.roi_heads.box_roi_pool.register_forward_hook(lambda module, args, out: seen.update(args=args, out=out))
    with torch.no_grad():
        model([torch.rand(3, 40, 256, generator=torch.Generator().manual_seed(1))], proposals=[torch.tensor([[10.0, 5.0, 60.0, 35.0], [100.0, 0.0, 200.0, 40.0]])])
    features, boxes, _ = seen["args"]
    expected = torchvision.ops.roi_pool(features["0"], boxes, 7, 1 / 16)
    torch.testing.assert_close(seen["out"], expected)


@pytest.mark.parametrize("name", ["rcnn_shapes", "fastrcnn_shapes", "sliding_window_shapes"])
@pytest.mark.parametrize("layer", ["cls_score", "bbox_pred"])
def test_box_head_outputs_that_overflow_are_refused_rather_than_dropped(name, layer):
    # before: finite weights whose class logits overflowed gave NaN scores, which the score threshold dropped (a
    # detector "finding nothing"), and overflowing box deltas gave NaN or clipped boxes that were dropped alike
    from visionzoo.train.task import NonFiniteOutputError

    torch.manual_seed(0)
    model = create_model(name).eval()
    image = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    proposals = [torch.tensor([[2.0, 3.0, 40.0, 50.0], [10.0, 10.0, 60.0, 30.0]])]
    with torch.no_grad():
        assert len(model(image, proposals=proposals)[0]["scores"]) > 0
        getattr(model.roi_heads.box_predictor, layer).weight.fill_(1e38)  # finite, but sums past float32's range
        with pytest.raises(NonFiniteOutputError, match=r"not finite \(NaN or infinity\)"):
            model(image, proposals=proposals)


@pytest.mark.parametrize("name", ["rcnn_shapes", "fastrcnn_shapes"])
def test_non_finite_proposals_are_refused_and_ones_without_area_are_left_out_saying_so(name, caplog):
    # before: a NaN or infinite proposal, and one with x2 <= x1 or y2 <= y1, were dropped without a word, so a
    # corrupt proposal file gave fewer detections than asked for and nothing said why
    model = create_model(name).eval()
    image = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    good = torch.tensor([[2.0, 3.0, 40.0, 50.0], [10.0, 10.0, 60.0, 30.0]])
    with torch.no_grad():
        for bad in (float("nan"), float("inf")):
            proposals = [good, torch.cat((good, torch.tensor([[1.0, bad, 9.0, 9.0]])))]
            with pytest.raises(ValueError, match=rf"proposals of image 1, entry 2: non-finite box \[1.0, {bad}, 9.0, "
                                                 r"9.0\]"):
                model(image * 2, proposals=proposals)
        caplog.clear()
        with caplog.at_level("WARNING", logger="visionzoo"):
            expected = model(image, proposals=[good])
            assert not caplog.records
            degenerate = torch.tensor([[30.0, 5.0, 20.0, 9.0], [5.0, 9.0, 20.0, 9.0], [70.0, 70.0, 90.0, 90.0]])
            got = model(image, proposals=[torch.cat((good[:1], degenerate, good[1:]))])
        assert [record.getMessage() for record in caplog.records] == [
            "3 of the 5 proposals have less than 1 px of width or height inside their image (x2 <= x1, y2 <= y1 or "
            "outside it) and are left out, as torchvision's remove_small_boxes leaves them: first image 0, entry 1 "
            "[30.0, 5.0, 20.0, 9.0] (said once for this model; later ones are logged at debug level)"]
        assert torch.equal(got[0]["boxes"], expected[0]["boxes"]) and torch.equal(got[0]["scores"], expected[0]["scores"])


def test_an_image_smaller_than_every_sliding_window_is_named_rather_than_found_empty(caplog):
    # before: an 8×8 image (or a 3 px strip) held no window of 16 px or more, so the detector classified nothing
    # and returned no detection, without a word: predict said "nothing found", as of an image it had looked at
    model = create_model("sliding_window_shapes").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad(), caplog.at_level("WARNING", logger="visionzoo"):
        model([torch.rand(3, 40, 40, generator=generator)])
        assert not caplog.records
        found = model([torch.rand(3, 40, 40, generator=generator), torch.rand(3, 8, 8, generator=generator)])
    assert len(found[1]["boxes"]) == 0
    assert [record.getMessage() for record in caplog.records] == [
        "image 1 of 8×8 px holds no sliding window (sizes (16, 24, 32, 48, 64) at aspect ratios (0.5, 1.0, 2.0)): "
        "nothing is detected in it (said once for this model; later ones are logged at debug level)"]


def test_proposals_given_to_a_data_set_with_nan_are_refused_naming_the_data_sets_image():
    # before: accepted, then refused by the model naming the image by its place in a batch ("image 1"), not in the
    # data set, at the first batch that held it (or, before the model refused them, dropped without a word)
    data = Shapes("val", length=3)
    good = torch.tensor([[1.0, 2.0, 30.0, 40.0]])
    with pytest.raises(ValueError, match=r"proposals of image 2, entry 1: non-finite box \[1.0, 2.0, inf, 40.0\]"):
        WithProposals(data, [good, good, torch.tensor([[1.0, 2.0, 30.0, 40.0], [1.0, 2.0, float("inf"), 40.0]])])


@pytest.mark.parametrize("name", ["rcnn_shapes", "fastrcnn_shapes"])
def test_proposals_left_out_are_warned_of_once_per_model_not_at_every_call(name, caplog):
    # before: every call whose proposals held one without area warned again, so a training run on such proposals
    # logged the same line at every step
    model = create_model(name).eval()
    image = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    proposals = [torch.tensor([[2.0, 3.0, 40.0, 50.0], [30.0, 5.0, 20.0, 9.0], [10.0, 10.0, 60.0, 30.0]])]
    with torch.no_grad(), caplog.at_level("DEBUG", logger="visionzoo"):
        for _ in range(4):
            model(image, proposals=proposals)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [
        "1 of the 3 proposals have less than 1 px of width or height inside their image (x2 <= x1, y2 <= y1 or "
        "outside it) and are left out, as torchvision's remove_small_boxes leaves them: first image 0, entry 1 "
        "[30.0, 5.0, 20.0, 9.0] (said once for this model; later ones are logged at debug level)"]
    assert sum("left out" in record.getMessage() for record in caplog.records if record.levelname == "DEBUG") == 3
    caplog.clear()
    with torch.no_grad(), caplog.at_level("WARNING", logger="visionzoo"):
        create_model(name).eval()(image, proposals=proposals)  # another model says it again
    assert len(caplog.records) == 1


def test_images_without_sliding_windows_are_warned_of_once_per_model_with_their_count(caplog):
    # before: one warning line per small image, so predict over a folder of small images gave a line an image
    model = create_model("sliding_window_shapes").eval()
    generator = torch.Generator().manual_seed(0)
    small = [torch.rand(3, 8, 8, generator=generator) for _ in range(3)]
    with torch.no_grad(), caplog.at_level("WARNING", logger="visionzoo"):
        model([torch.rand(3, 40, 40, generator=generator), *small])
        for image in small:
            model([image])
    assert [record.getMessage() for record in caplog.records] == [
        "image 1 of 8×8 px and 2 more of the 4 images hold no sliding window (sizes (16, 24, 32, 48, 64) at aspect "
        "ratios (0.5, 1.0, 2.0)): nothing is detected in them (said once for this model; later ones are logged at "
        "debug level)"]


def test_fast_rcnn_over_a_dilated_backbone_pools_its_map_at_the_output_stride():
    # backbone_args={"output_stride": 8} dilates C4 (the pooled map) to stride 8: 32×32 on a 256 px input
    torch.manual_seed(0)
    model = create_model("fastrcnn_shapes", backbone_args={"output_stride": 8}).eval()
    seen = {}
    model.roi_heads.box_roi_pool.register_forward_hook(lambda module, args, out: seen.update(args=args, out=out))
    with torch.no_grad():
        model([torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(2))],
              proposals=[torch.tensor([[10.0, 5.0, 60.0, 35.0], [40.0, 30.0, 120.0, 110.0]])])
    features, boxes, _ = seen["args"]
    assert features["0"].shape[-2:] == (32, 32)
    torch.testing.assert_close(seen["out"], torchvision.ops.roi_pool(features["0"], boxes, 7, 1 / 8))


def test_proposals_stopped_part_way_clear_their_progress_bar(capsys):
    """Ctrl-C while R-CNN's proposals were computed left their bar open: train's "interrupted before the first
    checkpoint" line was written after the bar's text, on its line."""
    calls = []

    def stopping(image):
        calls.append(image)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return torch.zeros(1, 4)

    try:
        proposal_cache.compute_proposals(Shapes("val", length=4), stopping, workers=0, progress=True, chunk=1)
    except KeyboardInterrupt:  # where train prints its line: the traceback still holds the bar
        err = capsys.readouterr().err
    else:
        pytest.fail("not interrupted")
    assert "proposals" in err and err.endswith("\r"), repr(err[-200:])
