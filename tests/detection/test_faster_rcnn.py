"""Faster R-CNN against torchvision: keys, proposals, detections both ways, training losses; bad targets."""

import re

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn as torchvision_fasterrcnn
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.ops import MultiScaleRoIAlign as TorchvisionMultiScaleRoIAlign
from torchvision.ops import box_iou

from visionzoo.detection.faster_rcnn import fpn_backbone
from visionzoo.layers.norm import FrozenBatchNorm2d
from visionzoo.models import create_model


def random_image(height: int, width: int, seed: int) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


SMALL = dict(min_size=160, max_size=256, box_score_thresh=0.0)


@pytest.fixture(scope="module")
def torchvision_checkpoint(tmp_path_factory):
    """torchvision's fasterrcnn_resnet50_fpn, random weights with sharpened heads (spread scores), saved."""
    torch.manual_seed(0)
    reference = torchvision_fasterrcnn(weights=None, weights_backbone=None, **SMALL).eval()
    with torch.no_grad():
        reference.roi_heads.box_predictor.cls_score.weight.mul_(30)
        reference.rpn.head.cls_logits.weight.mul_(30)
    path = tmp_path_factory.mktemp("torchvision") / "fasterrcnn_resnet50_fpn.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


def _matched(found, wanted, iou_min=0.999, score_tol=1e-4):
    """Each detection of ``wanted`` is in ``found``: same label, IoU above iou_min, score within score_tol."""
    iou = box_iou(wanted["boxes"], found["boxes"])
    same = (wanted["labels"][:, None] == found["labels"][None, :]) & (iou > iou_min)
    close = (wanted["scores"][:, None] - found["scores"][None, :]).abs() <= score_tol
    return bool((same & close).any(dim=1).all())


def test_state_dict_keys_and_shapes_equal_torchvision(torchvision_checkpoint):
    reference, _ = torchvision_checkpoint
    ours = create_model("fasterrcnn_resnet50_fpn", **SMALL)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_torchvision_checkpoint_gives_torchvision_proposals_and_detections(torchvision_checkpoint):
    reference, path = torchvision_checkpoint
    ours = create_model("fasterrcnn_resnet50_fpn", checkpoint=path, **SMALL).eval()
    inputs = [random_image(200, 260, 1), random_image(240, 180, 2)]
    with torch.inference_mode():
        expected, got = reference(inputs), ours(inputs)
        batch, _ = ours.transform(inputs)
        reference_batch, _ = reference.transform(inputs)
        assert torch.equal(batch.tensors, reference_batch.tensors)
        features = ours.backbone(batch.tensors)
        proposals, _ = ours.rpn(batch, features)
        reference_proposals, _ = reference.rpn(reference_batch, reference.backbone(reference_batch.tensors))
    for mine, theirs in zip(proposals, reference_proposals):
        assert mine.shape == theirs.shape and mine.shape[0] > 200
        torch.testing.assert_close(mine, theirs, atol=1e-3, rtol=0)
    for mine, theirs in zip(got, expected):
        assert len(theirs["boxes"]) >= 100 and len(mine["boxes"]) == len(theirs["boxes"])
        assert theirs["labels"].unique().numel() >= 3  # several classes, so labels are compared
        assert _matched(mine, theirs) and _matched(theirs, mine)


def test_training_losses_equal_torchvision_with_the_same_seed(torchvision_checkpoint):
    reference, path = torchvision_checkpoint
    ours = create_model("fasterrcnn_resnet50_fpn", checkpoint=path, **SMALL)
    reference.train()
    ours.train()
    inputs = [random_image(200, 260, 3), random_image(240, 180, 4)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 90.0, 120.0], [100.0, 30.0, 180.0, 90.0]]),
                "labels": torch.tensor([3, 17])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # a negative image
    try:
        torch.manual_seed(5)
        expected = reference(inputs, [dict(t) for t in targets])
        torch.manual_seed(5)
        got = ours(inputs, [dict(t) for t in targets])
    finally:
        reference.eval()
    assert set(got) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} == set(expected)
    for key in got:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-4)
    sum(got.values()).backward()
    assert ours.backbone.body.conv1.weight.grad is not None and ours.rpn.head.cls_logits.weight.grad.abs().sum() > 0


def test_bad_targets_raise_one_clear_error_each():
    model = create_model("fasterrcnn_resnet18_fpn", num_classes=4, min_size=64, max_size=64).train()
    image = [torch.rand(3, 64, 64)]
    with pytest.raises(ValueError, match=r"image 0, box 1: degenerate box"):
        model(image, [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0], [5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([1, 2])}])
    with pytest.raises(ValueError, match=r"image 0, box 0: label 4 outside 1..3"):
        model(image, [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([4])}])
    with pytest.raises(ValueError, match="needs targets"):
        model(image)
    with pytest.raises(ValueError, match=r"image 0 must be Tensor\[3, H, W\]"):
        model.eval()([torch.rand(4, 64, 64)])


@pytest.mark.parametrize("name", ["fasterrcnn_convnext_tiny_fpn", "fasterrcnn_swin_tiny_fpn"])
def test_transformer_and_convnext_backbones_under_the_fpn_train_and_detect(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, min_size=96, max_size=128, rpn_pre_nms_top_n_test=50,
                         rpn_post_nms_top_n_test=20, box_score_thresh=0.0)
    assert model.backbone.fpn.inner_blocks[0][0].in_channels == 96  # stage-1 width of both tiny models
    images = [random_image(96, 128, 6), random_image(112, 96, 7)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    with torch.no_grad():
        detections = model.eval()(images)
    assert [d["boxes"].shape[1] for d in detections] == [4, 4] and len(detections[0]["boxes"]) > 0
    assert float(detections[1]["boxes"][:, 2].max()) <= 96.0 + 1e-4  # in the second input's own pixels


def test_non_finite_boxes_and_float_labels_in_targets_raise_instead_of_training_on_nan():
    # before: a NaN box gave NaN box losses and a label of 1.7 trained as class 1, without a word
    model = create_model("fasterrcnn_resnet18_fpn", num_classes=4, min_size=64, max_size=64).train()
    image = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    nan_box = torch.tensor([[1.0, 1.0, 9.0, 9.0], [2.0, float("nan"), 9.0, 9.0]])
    with pytest.raises(ValueError, match=r"image 0, box 1: non-finite box"):
        model(image, [{"boxes": nan_box, "labels": torch.tensor([1, 2])}])
    inf_box = torch.tensor([[1.0, 1.0, 9.0, float("inf")]])
    with pytest.raises(ValueError, match=r"image 0, box 0: non-finite box"):
        model(image, [{"boxes": inf_box, "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match=r"labels of image 0 must be integers \(int64\), got torch.float32"):
        model(image, [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([1.7])}])
    with pytest.raises(ValueError, match=r"target boxes of image 0 must be a Tensor, got list"):
        model(image, [{"boxes": [[1.0, 1.0, 9.0, 9.0]], "labels": torch.tensor([1])}])
    losses = model(image, [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([1], dtype=torch.int32)}])
    assert all(torch.isfinite(v) for v in losses.values())


def test_one_image_tensor_no_images_and_float64_images_in_eval_mode():
    # before: one Tensor[3, H, W] read as 3 images ("image 0 must be Tensor[3, H, W], got (64, 64)"),
    # [] gave "max() arg is an empty sequence" and float64 images a RuntimeError deep in a convolution
    torch.manual_seed(0)
    model = create_model("fasterrcnn_resnet18_fpn", num_classes=4, min_size=64, max_size=64).eval()
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"got one Tensor\[3, 64, 64\] \(wrap a single image in a list\)"):
            model(image)
        with pytest.raises(ValueError, match="got no images"):
            model([])
        single = model([image])[0]
        double = model([image.double()])[0]
    assert double["boxes"].dtype == torch.float32
    torch.testing.assert_close(double["scores"], single["scores"])
    torch.testing.assert_close(double["boxes"], single["boxes"])


def test_images_and_targets_of_the_wrong_kind_raise_one_clear_error_each():
    # before: AttributeError ("'numpy.ndarray' object has no attribute 'dim'"), ZeroDivisionError for an
    # image of height 0, "1 images but 2 targets" for one target dict, and "Boolean value of Tensor with
    # more than one value is ambiguous" for a (boxes, labels) tuple
    import numpy as np

    model = create_model("fasterrcnn_resnet18_fpn", num_classes=4, min_size=64, max_size=64).eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"image 0 must be a Tensor\[3, H, W\], got ndarray"):
            model([np.zeros((3, 64, 64), np.float32)])
        with pytest.raises(ValueError, match=r"image 1 must be a Tensor\[3, H, W\], got list"):
            model([torch.rand(3, 64, 64), [[0.5]]])
        with pytest.raises(ValueError, match=r"image 0 has no pixels: \(3, 0, 64\)"):
            model([torch.rand(3, 0, 64)])
    model.train()
    image = [torch.rand(3, 64, 64)]
    boxes, labels = torch.tensor([[1.0, 2.0, 30.0, 40.0]]), torch.tensor([1])
    with pytest.raises(ValueError, match=r"targets must be a list of dicts \(boxes, labels\), one per image, got dict"):
        model(image, {"boxes": boxes, "labels": labels})
    with pytest.raises(ValueError, match=r"target of image 0 must be a dict with 'boxes' and 'labels', got tuple"):
        model(image, [(boxes, labels)])


@pytest.mark.parametrize("name", ["convnext_tiny", "swin_tiny_patch4_window7_224"])
def test_trainable_layers_on_a_backbone_without_resnets_layers_is_refused_by_name(name):
    # it used to freeze every backbone parameter, since none starts with layer4 ... conv1
    with pytest.raises(ValueError, match=f"trainable_layers counts ResNet's layers; {name} has none"):
        fpn_backbone(name, trainable_layers=3)
    with pytest.raises(ValueError, match="trainable_layers counts ResNet's layers"):
        create_model("fasterrcnn_convnext_tiny_fpn", trainable_backbone_layers=5)


@pytest.mark.parametrize("value", [6, -1, 2.5, "3", True])
def test_trainable_backbone_layers_that_are_no_count_of_layers_are_refused_naming_it(value):
    # 6 and -1 were refused as "trainable_layers must be in 0..5", an argument the user had not given; 2.5 and "3"
    # (--model-arg trainable_backbone_layers=2.5) failed with a TypeError traceback; True trained one layer
    with pytest.raises(ValueError, match=re.escape(f"trainable_backbone_layers must be an integer in 0..5, got {value!r}")):
        create_model("fasterrcnn_shapes", trainable_backbone_layers=value)
    with pytest.raises(ValueError, match=re.escape(f"trainable_layers must be an integer in 0..5, got {value!r}")):
        fpn_backbone("resnet18", trainable_layers=value)


@pytest.mark.parametrize(("arg", "value"), [("frozen_batch_norm", "no"), ("extra_pool", "false"), ("extra_pool", 0)])
def test_a_switch_of_the_fpn_backbone_given_no_bool_is_refused_naming_it(arg, value):
    # --model-arg frozen_batch_norm=no gave the string "no", which counted as true: the batch norms were frozen
    # without a word, as check_argument_types refuses for the models' own switches
    with pytest.raises(ValueError, match=re.escape(f"{arg} must be a bool, got {value!r}")):
        create_model("fasterrcnn_shapes", **{arg: value})
    # fpn_backbone's own switches were not checked: fpn_backbone("resnet18", frozen_batch_norm="no") froze them
    with pytest.raises(ValueError, match=re.escape(f"{arg} must be a bool, got {value!r}")):
        fpn_backbone("resnet18", **{arg: value})


@pytest.mark.parametrize("value", ["abc", -1.0, float("nan")])
def test_a_batch_norm_epsilon_that_is_no_number_at_least_zero_is_refused_naming_it(value):
    # --model-arg batch_norm_eps=abc ended in a TypeError traceback from the batch norms' forward; -1 was refused by
    # torch in training only, naming no argument, and made the evaluated model's variances negative
    with pytest.raises(ValueError, match=re.escape(f"batch_norm_eps must be a number >= 0, got {value!r}")):
        create_model("fasterrcnn_shapes", batch_norm_eps=value)


def test_trainable_layers_on_resnet_freezes_the_others():
    body = fpn_backbone("resnet18", trainable_layers=2)
    frozen = {n.split(".")[0] for n, p in body.body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1", "layer2"}


@pytest.mark.parametrize(("kwargs", "maps"), [({"out_indices": (1, 2, 3)}, "4 feature maps (3 from out_indices and 'pool')"),
                                             ({"out_indices": (-1,), "extra_pool": False}, "1 feature maps (1 from out_indices)")])
def test_out_indices_that_do_not_match_the_anchor_levels_are_refused_when_building(kwargs, maps):
    # it built, then the first forward failed with "AnchorGenerator has sizes for 5 feature maps, got 4"
    with pytest.raises(ValueError, match=re.escape(f"the backbone gives {maps} but anchor_sizes has 5 levels")):
        create_model("fasterrcnn_convnext_tiny_fpn", **kwargs)


def test_out_indices_with_matching_anchor_sizes_detect_at_sizes_off_the_stride():
    torch.manual_seed(0)
    model = create_model("fasterrcnn_convnext_tiny_fpn", num_classes=3, out_indices=(1, 3), anchor_sizes=((32,), (64,), (128,)),
                         min_size=100, max_size=130, rpn_pre_nms_top_n_test=20, rpn_post_nms_top_n_test=10,
                         box_score_thresh=0.0).eval()
    with torch.no_grad():
        detections = model([random_image(101, 67, 1), random_image(77, 131, 2)])
    assert all(d["boxes"].shape[1] == 4 and len(d["boxes"]) > 0 for d in detections)


@pytest.mark.parametrize(("name", "modules"), [
    ("resnet18", ["layer1", "layer2", "layer3", "layer4"]),
    ("convnext_tiny", ["stages.0", "stages.1", "stages.2", "stages.3"]),
    ("vit_tiny_patch16_224", ["blocks.8", "blocks.9", "blocks.10", "blocks.11"]),
])
def test_the_default_maps_under_the_fpn_are_the_backbones_last_four(name, modules):
    # a ViT's default was blocks 0-3, its shallowest features, where the docstring promised its last four
    assert fpn_backbone(name).body.feature_info.module_name() == modules


def test_a_target_box_with_no_area_inside_its_image_is_refused_and_one_partly_outside_trains():
    # before: no anchor overlaps such a box, so "each box's best anchors are positive" matched every anchor
    # (IoU 0 being the best): all 16,125 anchors of a 200×260 image positive, torchvision's loss_rpn_box_reg
    # 41.1 instead of 0.004, without a word
    torch.manual_seed(0)
    model = create_model("fasterrcnn_resnet18_fpn", num_classes=4, min_size=64, max_size=96).train()
    image = [random_image(64, 80, 0)]
    for outside in ([200.0, 10.0, 250.0, 40.0], [10.0, -40.0, 30.0, 0.0], [80.0, 10.0, 90.0, 20.0]):
        boxes = torch.tensor([[5.0, 5.0, 40.0, 40.0], outside])
        with pytest.raises(ValueError, match=re.escape(f"image 0, box 1: box {outside} has no area inside the 80×64 image")):
            model(image, [{"boxes": boxes, "labels": torch.tensor([1, 2])}])
    partly = {"boxes": torch.tensor([[-10.0, 30.0, 20.0, 90.0]]), "labels": torch.tensor([3])}
    losses = model(image, [partly])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_rpn_box_reg"] < 1



def test_a_short_image_alone_is_pooled_at_the_maps_strides(torchvision_checkpoint):
    # before: the RoI pooler inferred each map's stride from the largest image (34 px high once resized) rather
    # than the padded batch (64 px), so P2 (16 rows) passed for stride 2 and every level for half its stride,
    # as in torchvision's first call (which then keeps those scales); its scales set by a taller image first,
    # torchvision gives the detections below
    _, path = torchvision_checkpoint
    ours = create_model("fasterrcnn_resnet50_fpn", checkpoint=path, **SMALL).eval()
    short = random_image(40, 300, 5)
    reference, fresh = (torchvision_fasterrcnn(weights=None, weights_backbone=None, **SMALL).eval() for _ in range(2))
    for model in (reference, fresh):
        model.load_state_dict(torch.load(path))
    with torch.inference_mode():
        reference([random_image(200, 260, 1)])  # its pooler's scales: 1/4 .. 1/32
        expected, got, misled = reference([short])[0], ours([short])[0], fresh([short])[0]
    assert fresh.roi_heads.box_roi_pool.scales == [0.5, 0.25, 0.125, 0.0625]
    assert len(got["boxes"]) == len(expected["boxes"]) >= 50
    assert _matched(got, expected) and _matched(expected, got) and not _matched(misled, expected)


@pytest.mark.parametrize(("name", "arg", "value"), [
    ("fasterrcnn_resnet18_fpn", "box_detections_per_img", -1), ("fasterrcnn_resnet18_fpn", "box_detections_per_img", 2.5),
    ("fasterrcnn_resnet18_fpn", "rpn_post_nms_top_n_test", -1), ("fasterrcnn_resnet18_fpn", "rpn_pre_nms_top_n_train", -5),
    ("rcnn_shapes", "box_detections_per_img", -1)])
def test_a_negative_or_fractional_count_of_boxes_to_keep_is_refused_naming_it(name, arg, value):
    # before: -1 sliced the detections (or the RPN's proposals) as [:-1], keeping all but the last without a word;
    # 2.5 failed at the first image with "slice indices must be integers", a negative pre-NMS count in topk
    # (a fraction is refused by the constructor's type check, a negative count by the detector's own)
    expected = f"{arg} must be an integer >= 0, got {value}" if value < 0 else f"{arg} must be an integer, got {value}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        create_model("fasterrcnn_shapes", **{arg: value})


@pytest.mark.parametrize(("name", "arg", "value", "message"), [
    ("fasterrcnn_shapes", "box_score_thresh", 50, "box_score_thresh must be in [0, 1], got 50"),
    ("fasterrcnn_shapes", "box_nms_thresh", float("nan"), "box_nms_thresh must be in [0, 1], got nan"),
    ("fasterrcnn_shapes", "rpn_nms_thresh", 1.5, "rpn_nms_thresh must be in [0, 1], got 1.5"),
    ("fasterrcnn_shapes", "rpn_fg_iou_thresh", 0.2, "rpn_bg_iou_thresh 0.3 is above rpn_fg_iou_thresh 0.2"),
    ("fastrcnn_shapes", "box_score_thresh", -0.1, "box_score_thresh must be in [0, 1], got -0.1"),
    ("rcnn_shapes", "box_nms_thresh", 30, "box_nms_thresh must be in [0, 1], got 30")])
def test_a_threshold_outside_zero_one_is_refused_naming_it(name, arg, value, message):
    # before: box_score_thresh=50 (a percentage) kept no detection and NaN no box, without a word; inverted RPN
    # IoU thresholds named the Matcher's arguments, not the detector's
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("fasterrcnn_shapes", **{arg: value})


@pytest.mark.parametrize(("name", "weights"), [("fasterrcnn_shapes", (0, 0, 0, 0)), ("fastrcnn_shapes", (10, 10, 0, 5)),
                                               ("rcnn_shapes", (float("nan"),) * 4), ("fasterrcnn_shapes", (1, float("inf"), 1, 1))])
def test_a_zero_or_non_finite_box_regression_weight_is_refused_when_building(name, weights):
    """bbox_reg_weights=(0, 0, 0, 0) built a detector whose decoding divided by zero: no detections, or boxes
    as wide as the image, without a word."""
    with pytest.raises(ValueError, match=r"^bbox_reg_weights: BoxCoder weights must be finite and non-zero"):
        create_model(name, bbox_reg_weights=weights)


@pytest.mark.parametrize("name", ["fasterrcnn_convnext_tiny_fpn", "fasterrcnn_swin_tiny_fpn"])
@pytest.mark.parametrize(("option", "value"), [("frozen_batch_norm", True), ("batch_norm_eps", 0.0)])
def test_batch_norm_options_on_a_backbone_without_batch_norms_are_refused_by_name(name, option, value):
    # ConvNeXt and Swin normalise with LayerNorms: the detector built with the option dropped, without a word
    backbone = "convnext_tiny" if "convnext" in name else "swin_tiny_patch4_window7_224"
    with pytest.raises(ValueError, match=f"{option} applies to batch norms; {backbone} has none"):
        create_model(name, **{option: value})
    frozen = create_model("fasterrcnn_resnet18_fpn", frozen_batch_norm=True, batch_norm_eps=0.0).backbone.body.bn1
    assert isinstance(frozen, FrozenBatchNorm2d) and frozen.eps == 0.0


@pytest.mark.parametrize("name", ["fasterrcnn_convnext_tiny_fpn", "fasterrcnn_swin_tiny_fpn"])
def test_out_indices_as_a_count_takes_the_backbones_last_maps(name):
    # the backbones take an int n for their last n maps (timm's rule), the detector failed on it with
    # "TypeError: 'int' object is not iterable" (also from --model-arg out_indices=3)
    model = create_model(name, out_indices=3, anchor_sizes=((32,), (64,), (128,), (256,)))
    assert model.backbone.body.out_indices == (1, 2, 3)
    assert [block[0].in_channels for block in model.backbone.fpn.inner_blocks] == [192, 384, 768]
    with pytest.raises(ValueError, match=re.escape("the backbone gives 3 feature maps (2 from out_indices and 'pool')")):
        create_model(name, out_indices=2)


def test_levels_with_different_anchor_counts_are_refused_when_building():
    # it built, then the first forward failed with "BoxCoder.decode: deltas must be Tensor[N, 4K] and anchors
    # Tensor[N, 4], got shapes (3072, 4) and (2688, 4)"
    with pytest.raises(ValueError, match=re.escape("give [6, 3, 3, 3, 3] anchors per location")):
        create_model("fasterrcnn_convnext_tiny_fpn", anchor_sizes=((32, 48), (64,), (128,), (256,), (512,)))
    with pytest.raises(ValueError, match=re.escape("give [3, 3, 3, 1] anchors per location")):
        create_model("fasterrcnn_shapes", aspect_ratios=((0.5, 1.0, 2.0),) * 3 + ((1.0,),), out_indices=(0, 1, 2, 3),
                     anchor_sizes=((16,), (32,), (64,), (128,)))
    model = create_model("fasterrcnn_shapes", anchor_sizes=((16, 24), (32, 48), (64, 96))).eval()
    with torch.no_grad():
        assert model([torch.rand(3, 128, 128)])[0]["boxes"].shape[1] == 4


def test_box_featmap_names_that_the_fpn_does_not_give_are_refused_when_building():
    # "5" was skipped by the pooler without a word: the RoI heads pooled from level "0" alone
    with pytest.raises(ValueError, match=re.escape("box_featmap_names ['0', '5']: the FPN has no level '5'; its levels "
                                                   "are ['0', '1', '2', '3', 'pool']")):
        create_model("fasterrcnn_convnext_tiny_fpn", box_featmap_names=["0", "5"])
    with pytest.raises(ValueError, match=re.escape("the FPN has no level 'pool'; its levels are ['0', '1', '2']")):
        create_model("fasterrcnn_shapes", box_featmap_names=["2", "pool"])
    model = create_model("fasterrcnn_shapes", box_featmap_names=["1", "2"])
    assert model.roi_heads.box_roi_pool.featmap_names == ["1", "2"]


# Swin-T's windows, patches and stages at a quarter of its width (the maps' arithmetic is the same, in a fraction of
# the time)
NARROW_SWIN = dict(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


@pytest.mark.parametrize(("name", "backbone", "args", "sizes"), [
    ("fasterrcnn_convnext_tiny_fpn", "convnext_tiny", {}, [(2, 64, 96), (1, 100, 77)]),
    # 224 × 222: the patch embedding pads the last column, as zero-padding the image does; no shifted block pads
    ("fasterrcnn_swin_tiny_fpn", "swin_tiny_patch4_window7_224", NARROW_SWIN, [(2, 224, 224), (1, 224, 222)]),
])
def test_a_timm_checkpoint_in_the_backbone_gives_timms_maps(tmp_path, name, backbone, args, sizes):
    import timm

    torch.manual_seed(0)
    reference = timm.create_model(backbone, features_only=True, **args).eval()
    with torch.no_grad():
        for key, param in reference.named_parameters():
            if key.endswith(("gamma", "relative_position_bias_table")):  # else layer scale 1e-6 hides ConvNeXt's blocks
                param.normal_(0, 0.5)
    torch.save(reference.state_dict(), tmp_path / "backbone.pth")
    body = create_model(name, backbone_args={"checkpoint": str(tmp_path / "backbone.pth"), **args}).backbone.body.eval()
    for batch, height, width in sizes:
        images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height))
        patch = 4 if "swin" in name else 1  # Swin pads an image that is no multiple of its patch, ConvNeXt floors
        padded = torch.nn.functional.pad(images, (0, -width % patch, 0, -height % patch))
        with torch.no_grad():
            theirs = [m if m.shape[1] == c else m.permute(0, 3, 1, 2)  # timm's Swin maps are NHWC
                      for m, c in zip(reference(padded), reference.feature_info.channels())]
            ours = body(images)
        with torch.enable_grad():  # the training path
            trained = body(images)
        assert [m.shape for m in ours] == [m.shape for m in theirs]
        for mine, grad_mine, their in zip(ours, trained, theirs):
            torch.testing.assert_close(mine, their, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(grad_mine.detach(), their, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("channels", [0, -3, 2.5])
def test_an_fpn_width_that_is_no_positive_integer_is_refused_when_built(channels):
    # 0 built (with PyTorch's zero-element warnings) and failed at the first image; -3 failed with "Trying to
    # create tensor with negative dimension -3"
    with pytest.raises(ValueError, match=re.escape(f"fpn_channels must be a positive integer, got {channels}")):
        create_model("fasterrcnn_shapes", fpn_channels=channels)


@pytest.mark.parametrize("arg", ["rpn_batch_size_per_image", "box_batch_size_per_image"])
def test_a_sample_size_per_image_under_one_is_refused_naming_the_stage(arg):
    # both were "BalancedSampler: batch_size_per_image 0 must be positive and positive_fraction 0.5 in [0, 1]",
    # naming neither the argument given nor whether the RPN's or the box head's was wrong
    with pytest.raises(ValueError, match=re.escape(f"{arg} must be an integer >= 1, got 0")):
        create_model("fasterrcnn_shapes", **{arg: 0})


@pytest.mark.parametrize("channels", [0, -2, 2.5])
def test_fpn_backbone_refuses_an_fpn_width_that_is_no_positive_integer_when_built(channels):
    # fpn_backbone("resnet18", out_channels=0) built, and the detector over it failed at its first image with
    # torch's "expected weight to be at least 1 at dimension 0", naming no argument
    with pytest.raises(ValueError, match=re.escape(f"out_channels must be a positive integer, got {channels}")):
        fpn_backbone("resnet18", out_channels=channels)


@pytest.mark.parametrize(("arg", "value"), [("representation_size", 0), ("box_roi_output_size", 0),
                                            ("box_roi_output_size", -2)])
def test_a_box_head_of_no_width_or_no_pooled_cells_is_refused_when_built(arg, value):
    # 0 built a box head giving no features: the detector trained and detected from the predictor's biases alone,
    # every box of an image scored alike, without a word (PyTorch's zero-element warning aside)
    with pytest.raises(ValueError, match=re.escape(f"{arg} must be an integer >= 1, got {value}")):
        create_model("fasterrcnn_shapes", **{arg: value})


@pytest.mark.parametrize(("backbone_args", "message"), [
    ({"out_indices": [1, 2]}, "backbone_args cannot set out_indices: give the detector's out_indices"),
    ({"features_only": False}, "backbone_args cannot set features_only"),
    ([1], "backbone_args must be a dict of the backbone's arguments, got [1]"),
])
def test_backbone_args_that_the_detector_sets_or_that_are_no_dict_are_refused(backbone_args, message):
    # a TypeError ("fpn_backbone() got multiple values for argument 'out_indices'", "argument after ** must be a
    # mapping"), which --model-arg backbone_args=... showed as a traceback
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("fasterrcnn_convnext_tiny_fpn", backbone_args=backbone_args)


def test_a_backbone_file_given_as_the_detectors_checkpoint_says_where_it_goes(tmp_path):
    # it listed "208 missing keys: backbone.body.stages.0...; 182 unexpected keys: head.fc.bias, ..."
    from visionzoo.checkpoint import CheckpointError

    torch.save(create_model("convnext_tiny").state_dict(), tmp_path / "convnext.pth")
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {tmp_path / 'convnext.pth'}: it holds no detector "
                                                        "weights") + r".*backbone_args=\{\"checkpoint\": PATH\}"):
        create_model("fasterrcnn_convnext_tiny_fpn", checkpoint=tmp_path / "convnext.pth")
    create_model("fasterrcnn_convnext_tiny_fpn", backbone_args={"checkpoint": str(tmp_path / "convnext.pth")})


def test_a_float64_detector_detects_and_trains_in_float64_like_torchvision():
    """A detector in float64 (model.double()) rounded its anchors, RPN outputs and box head outputs to float32:
    its detections came back float32, 2e-5 px off torchvision's float64 model, and its RPN labelled other anchors
    (IoU ties broken in float32), so the training losses were not torchvision's (loss_objectness 1.36 for 1.27)."""
    from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    size = dict(min_size=128, max_size=192)
    reference = TorchvisionFasterRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5),
                                      num_classes=5, **size)
    with torch.no_grad():
        reference.roi_heads.box_predictor.cls_score.weight.mul_(3)
        reference.rpn.head.cls_logits.weight.mul_(30)
    ours = create_model("fasterrcnn_resnet18_fpn", num_classes=5, frozen_batch_norm=True, **size)
    ours.load_state_dict(reference.state_dict())
    reference.double().eval()
    ours.double().eval()
    inputs = [random_image(120, 150, 6).double(), random_image(90, 200, 7).double()]
    with torch.no_grad():
        expected, got = reference(inputs), ours(inputs)
    for mine, theirs in zip(got, expected):
        assert mine["boxes"].dtype == mine["scores"].dtype == torch.float64 and len(theirs["boxes"]) == 100
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], atol=1e-9, rtol=0)
        torch.testing.assert_close(mine["scores"], theirs["scores"], atol=1e-12, rtol=0)
        assert torch.equal(mine["labels"], theirs["labels"])
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]], dtype=torch.float64), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4, dtype=torch.float64), "labels": torch.zeros(0, dtype=torch.int64)}]
    _assert_losses_as_torchvision(ours, reference, inputs, targets, atol=1e-7, rtol=0)


class _OneMapBackbone(torch.nn.Module):
    """A backbone returning one Tensor, as torchvision's FasterRCNN takes (its tutorial's mobilenet_v2 features)."""

    out_channels = 16

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, stride=16, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_a_backbone_returning_one_tensor_is_its_map_0_as_in_torchvision():
    """FasterRCNN over a backbone that returns a single Tensor (torchvision: "a single Tensor or an
    OrderedDict[Tensor]", its map "0") ended in torch's 'values expected sparse tensor layout but got Strided'."""
    from collections import OrderedDict

    from visionzoo.detection.faster_rcnn import FasterRCNN

    torch.manual_seed(0)
    args = dict(num_classes=3, min_size=96, max_size=128, anchor_sizes=((32, 64, 128),),
                aspect_ratios=((0.5, 1.0, 2.0),), box_featmap_names=["0"], box_score_thresh=0.0)
    model = FasterRCNN(_OneMapBackbone(), **args).eval()
    as_dict = FasterRCNN(_OneMapBackbone(), **args).eval()
    as_dict.load_state_dict(model.state_dict())
    body = as_dict.backbone.forward
    as_dict.backbone.forward = lambda x: OrderedDict([("0", body(x))])
    images = [random_image(100, 120, 8), random_image(64, 90, 9)]
    with torch.no_grad():
        got, expected = model(images), as_dict(images)
    for mine, theirs in zip(got, expected):
        assert len(mine["boxes"]) > 0
        assert torch.equal(mine["boxes"], theirs["boxes"]) and torch.equal(mine["scores"], theirs["scores"])
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])}] * 2
    losses = model.train()(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(value) for value in losses.values())


def test_a_torchvision_backbone_with_fpn_is_taken_and_detects_as_torchvision():
    """FasterRCNN(torchvision's resnet_fpn_backbone(...)) failed when built, with "'FeaturePyramidNetwork' object has
    no attribute 'extra_pool'": the anchor-level and level-name checks read attributes only our FPN has."""
    import copy

    from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from visionzoo.detection.faster_rcnn import FasterRCNN

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    args = dict(num_classes=3, min_size=96, max_size=128, box_score_thresh=0.0)
    reference = TorchvisionFasterRCNN(backbone, **args).eval()
    _assert_detects_as_torchvision(FasterRCNN(copy.deepcopy(backbone), **args).eval(), reference, seeds=(10, 11))


@pytest.mark.parametrize("name", ["fasterrcnn_shapes", "fastrcnn_shapes"])
def test_labels_are_checked_against_a_replaced_box_predictor(name):
    """torchvision's fine-tuning recipe replaces the box predictor (model.roi_heads.box_predictor =
    FastRCNNPredictor(in_features, num_classes)); training ours on the new classes was then refused with 'label 9
    outside 1..6', the classes of the predictor it was built with."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    torch.manual_seed(0)
    model = create_model(name).train()
    model.roi_heads.box_predictor = FastRCNNPredictor(model.roi_heads.box_predictor.cls_score.in_features, 11)
    images = [random_image(100, 120, 12)]
    extra = {"proposals": [torch.tensor([[0.0, 0.0, 40.0, 40.0], [8.0, 12.0, 52.0, 58.0]])]} if name.startswith("fastrcnn") else {}
    losses = model(images, [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([10])}], **extra)
    assert all(torch.isfinite(value) for value in losses.values())
    with pytest.raises(ValueError, match=r"label 11 outside 1..10"):
        model(images, [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([11])}], **extra)


@pytest.mark.parametrize("name", ["fasterrcnn_shapes", "fastrcnn_shapes", "rcnn_shapes"])
def test_num_classes_is_that_of_a_replaced_box_predictor(name):
    """After torchvision's recipe replaced the box predictor, ``model.num_classes`` still said the classes the
    model was built with (7 where the new predictor scores 11)."""
    from visionzoo.detection.roi_heads import FastRCNNPredictor

    torch.manual_seed(0)
    model = create_model(name)
    assert model.num_classes == 7
    model.roi_heads.box_predictor = FastRCNNPredictor(model.roi_heads.box_predictor.cls_score.in_features, 11)
    assert model.num_classes == 11


def test_torchvisions_component_keywords_build_the_detector_of_its_tutorial():
    """torchvision's FasterRCNN takes its parts as rpn_anchor_generator, rpn_head, box_roi_pool, box_head and
    box_predictor (its tutorial's one-map backbone with its own anchors and pooler); ours refused each with
    "FasterRCNN.__init__() got an unexpected keyword argument 'rpn_anchor_generator'"."""
    from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN

    from visionzoo.detection.anchors import AnchorGenerator
    from visionzoo.detection.faster_rcnn import FasterRCNN
    from visionzoo.detection.roi_heads import FastRCNNPredictor, TwoMLPHead
    from visionzoo.detection.rpn import RPNHead
    from visionzoo.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    sizes, ratios, size = ((32, 64, 128),), ((0.5, 1.0, 2.0),), dict(min_size=96, max_size=128, box_score_thresh=0.0)
    reference = TorchvisionFasterRCNN(_OneMapBackbone(), num_classes=3, **size,
                                      rpn_anchor_generator=TorchvisionAnchorGenerator(sizes, ratios),
                                      box_roi_pool=TorchvisionMultiScaleRoIAlign(["0"], 5, 2)).eval()
    ours = FasterRCNN(_OneMapBackbone(), num_classes=3, **size, rpn_anchor_generator=AnchorGenerator(sizes, ratios),
                      box_roi_pool=MultiScaleRoIAlign(["0"], 5, 2)).eval()
    images = _assert_detects_as_torchvision(ours, reference, seeds=(13, 14))
    # every part given: they are the ones used, and the classes are the predictor's
    parts = dict(rpn_anchor_generator=AnchorGenerator(sizes, ratios), rpn_head=RPNHead(16, 9),
                 box_roi_pool=MultiScaleRoIAlign(["0"], 4, 2), box_head=TwoMLPHead(16 * 4 * 4, 32),
                 box_predictor=FastRCNNPredictor(32, 5))
    model = FasterRCNN(_OneMapBackbone(), num_classes=None, **size, **parts)
    assert all(getattr(model.rpn if name.startswith("rpn") else model.roi_heads,
                       name.replace("rpn_", "")) is part
               for name, part in parts.items() if name != "rpn_anchor_generator")
    assert model.rpn.anchor_generator is parts["rpn_anchor_generator"] and model.num_classes == 5
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([4])}] * 2
    assert all(torch.isfinite(value) for value in model.train()(images, targets).values())
    with pytest.raises(ValueError, match=r"num_classes 3 but box_predictor scores 5 classes"):
        FasterRCNN(_OneMapBackbone(), num_classes=3, **size, **parts)
    with pytest.raises(ValueError, match=r"num_classes counts the background .* got None"):
        FasterRCNN(_OneMapBackbone(), num_classes=None, **size)


def test_torchvisions_own_anchor_generator_and_pooler_work_as_parts():
    """rpn_anchor_generator=torchvision's AnchorGenerator ended in "'tuple' object has no attribute 'tensors'": the
    RPN called it with the batch's (H, W), where torchvision's RPN passes the batch (ImageList) itself."""
    from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN

    from visionzoo.detection.faster_rcnn import FasterRCNN

    torch.manual_seed(0)
    models = [cls(_OneMapBackbone(), num_classes=3, min_size=96, max_size=128, box_score_thresh=0.0,
                  rpn_anchor_generator=TorchvisionAnchorGenerator(((32, 64, 128),), ((0.5, 1.0, 2.0),)),
                  box_roi_pool=TorchvisionMultiScaleRoIAlign(["0"], 5, 2)).eval()
              for cls in (TorchvisionFasterRCNN, FasterRCNN)]
    with torch.no_grad():
        models[0].rpn.head.cls_logits.weight.mul_(30)
    models[1].load_state_dict(models[0].state_dict())
    images = [random_image(100, 120, 15), random_image(64, 90, 16)]
    with torch.no_grad():
        expected, got = (model(images) for model in models)
    for mine, theirs in zip(got, expected):
        assert len(theirs["boxes"]) > 10 and mine["boxes"].shape == theirs["boxes"].shape
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], atol=1e-3, rtol=0)


def test_size_divisible_is_taken_as_torchvision_takes_it():
    """torchvision's FasterRCNN passes size_divisible to its transform; ours refused it ("unexpected keyword argument
    'size_divisible'"), and DetectionTransform(size_divisible=0) ended in a ZeroDivisionError at the first batch."""
    from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN

    from visionzoo.constants import IMAGENET_MEAN, IMAGENET_STD
    from visionzoo.detection.faster_rcnn import FasterRCNN
    from visionzoo.detection.transform import DetectionTransform

    torch.manual_seed(0)
    args = dict(num_classes=3, min_size=72, max_size=100, box_score_thresh=0.0, size_divisible=64)
    reference = TorchvisionFasterRCNN(_OneMapBackbone(), **args,
                                      rpn_anchor_generator=TorchvisionAnchorGenerator(((32, 64, 128),), ((0.5, 1.0, 2.0),)),
                                      box_roi_pool=TorchvisionMultiScaleRoIAlign(["0"], 5, 2)).eval()
    ours = FasterRCNN(_OneMapBackbone(), **args, anchor_sizes=((32, 64, 128),), aspect_ratios=((0.5, 1.0, 2.0),),
                      box_featmap_names=["0"], box_roi_output_size=5).eval()
    ours.load_state_dict(reference.state_dict())
    images = [random_image(100, 120, 17), random_image(64, 90, 18)]
    with torch.no_grad():
        batch, _ = ours.transform(images)
        reference_batch, _ = reference.transform(images)
        assert tuple(batch.tensors.shape[-2:]) == (128, 128) and torch.equal(batch.tensors, reference_batch.tensors)
        proposals, _ = ours.rpn(batch, {"0": ours.backbone(batch.tensors)})
        expected, _ = reference.rpn(reference_batch, {"0": reference.backbone(reference_batch.tensors)})
    # (the detections differ: padded by 64 from 72 to 128 rows, torchvision's pooler takes the images' 72 rows for the
    # size the map was computed from, so pools at a stride of 8 from the stride-16 map; ours infers it from the batch)
    for mine, theirs in zip(proposals, expected):
        assert len(theirs) > 10
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)
    for bad in (0, -32, 2.5):
        with pytest.raises(ValueError, match=f"size_divisible must be a positive integer, got {bad}"):
            DetectionTransform(72, 100, IMAGENET_MEAN, IMAGENET_STD, size_divisible=bad)


def test_a_box_predictor_without_cls_score_needs_no_num_classes():
    """With a box_predictor of its own kind (no cls_score to count its classes), FasterRCNN(..., num_classes=None,
    box_predictor=...) was refused with 'num_classes counts the background and must be at least 2, got None',
    where torchvision asks num_classes to be None with any box_predictor."""
    from visionzoo.detection.faster_rcnn import FasterRCNN

    class Predictor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scores, self.deltas = torch.nn.Linear(32, 4), torch.nn.Linear(32, 16)

        def forward(self, x):
            return self.scores(x), self.deltas(x)

    torch.manual_seed(0)
    model = FasterRCNN(_OneMapBackbone(), num_classes=None, min_size=96, max_size=128, anchor_sizes=((32, 64, 128),),
                       aspect_ratios=((0.5, 1.0, 2.0),), box_featmap_names=["0"], representation_size=32,
                       box_predictor=Predictor()).train()
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([3])}]
    assert all(torch.isfinite(value) for value in model([random_image(100, 120, 19)], targets).values())
    assert len(model.eval()([random_image(100, 120, 19)])[0]["boxes"]) > 0


def _assert_losses_as_torchvision(ours, reference, images, targets, atol, rtol):
    """Both detectors in training mode give the same losses (compared in float64) on ``images`` and ``targets`` (each
    a copy), their samplers drawn from the same seed."""
    reference.train()
    ours.train()
    torch.manual_seed(1)
    expected = reference(images, [dict(t) for t in targets])
    torch.manual_seed(1)
    got = ours(images, [dict(t) for t in targets])
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key].double(), expected[key].double(), atol=atol, rtol=rtol)


def _assert_detects_as_torchvision(ours, reference, seeds):
    """``reference`` (torchvision's detector, eval) with its scores spread (class and objectness weights ×3 and ×30)
    and its weights loaded into ``ours``: both give the same boxes and labels on two images of ``seeds``, which are
    returned."""
    with torch.no_grad():
        reference.roi_heads.box_predictor.cls_score.weight.mul_(3)
        reference.rpn.head.cls_logits.weight.mul_(30)
    ours.load_state_dict(reference.state_dict())
    images = [random_image(100, 120, seeds[0]), random_image(64, 90, seeds[1])]
    with torch.no_grad():
        got, expected = ours(images), reference(images)
    for mine, theirs in zip(got, expected):
        assert len(theirs["boxes"]) > 10 and mine["boxes"].shape == theirs["boxes"].shape
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], atol=1e-3, rtol=0)
        assert torch.equal(mine["labels"], theirs["labels"])
    return images


@pytest.mark.parametrize("layer", ["rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.box_predictor.cls_score",
                                   "roi_heads.box_predictor.bbox_pred"])
def test_outputs_of_the_rpn_or_the_box_head_that_overflow_are_refused_rather_than_dropped(layer):
    # before: finite weights whose outputs overflowed gave NaN or infinite objectness, deltas and scores, which the
    # thresholds, the clipping and NMS dropped or kept at random: the detector found nothing, or arbitrary boxes
    from visionzoo.train.task import NonFiniteOutputError

    torch.manual_seed(0)
    model = create_model("fasterrcnn_resnet18_fpn", num_classes=4, min_size=64, max_size=64).eval()
    image = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        model(image)
        model.get_submodule(layer).weight.fill_(1e38)  # finite, but sums past float32's range
        with pytest.raises(NonFiniteOutputError, match=r"not finite \(NaN or infinity\)"):
            model(image)


@pytest.mark.parametrize("output_stride, dilated", [(16, [False, False, True]), (8, [False, True, True])])
def test_a_dilated_backbone_detects_and_trains_as_torchvisions_over_the_same_dilated_resnet(output_stride, dilated):
    """backbone_args={"output_stride": 16} (or 8) gives the FPN levels of one stride (C4 and C5 both 1/16): the anchors'
    strides, the RoI pooler's scales and level map, the extra pool level and the RPN's per-level top-n then behave
    as torchvision's FasterRCNN over its resnet50(replace_stride_with_dilation=...), on the same weights."""
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
    from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBatchNorm2d

    from visionzoo.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    body = resnet50(replace_stride_with_dilation=dilated, norm_layer=TorchvisionFrozenBatchNorm2d)
    backbone = BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)}, [256, 512, 1024, 2048], 256,
                               extra_blocks=LastLevelMaxPool())
    size = dict(num_classes=5, min_size=128, max_size=160, box_score_thresh=0.0)
    # canonical level 6 (a 112 px box at level 5): on these small images the RoIs then reach the levels of one
    # stride, which torchvision's level map clamps to the first of them
    levels = dict(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2, canonical_level=6)
    reference = TorchvisionFasterRCNN(backbone, box_roi_pool=TorchvisionMultiScaleRoIAlign(**levels), **size).eval()
    ours = create_model("fasterrcnn_resnet50_fpn", frozen_batch_norm=True, backbone_args={"output_stride": output_stride},
                        box_roi_pool=MultiScaleRoIAlign(**levels), **size).eval()
    images = _assert_detects_as_torchvision(ours, reference, seeds=(15, 16))
    with torch.no_grad():
        maps = ours.backbone(ours.transform(images)[0].tensors)
    strides = [round(160 / m.shape[-1]) for m in maps.values()]
    assert strides == {16: [4, 8, 16, 16, 32], 8: [4, 8, 8, 8, 16]}[output_stride]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0], [5.0, 8.0, 110.0, 95.0]]), "labels": torch.tensor([1, 3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    _assert_losses_as_torchvision(ours, reference, images, targets, atol=1e-5, rtol=1e-4)
