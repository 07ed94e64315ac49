"""Faster R-CNN (Ren et al. 2015): a backbone (with FPN), a Region Proposal Network and RoI heads.

torchvision's API and layout: ``model(images, targets)`` returns a loss dict in train mode and, in
eval mode, one ``{"boxes": Tensor[D, 4] xyxy, "labels": int64 Tensor[D], "scores": Tensor[D]}`` per
image, in the input image's pixels. Images are a list of Tensor[3, H_i, W_i] in [0, 1] (sizes may
differ) or one Tensor[B, 3, H, W]; targets one ``{"boxes": Tensor[N, 4], "labels": int64 Tensor[N]}``
per image (N = 0 is a valid negative image). Labels are 1..num_classes-1; 0 is the background.

Module names are torchvision's (``transform``, ``backbone.body``, ``backbone.fpn``, ``rpn.head``,
``roi_heads.box_head``, ``roi_heads.box_predictor``), so torchvision's fasterrcnn_resnet50_fpn state
dicts load key for key (:func:`checkpoint_filter` takes care of old RPN-head keys and batch-norm
counters). Constructor keywords carry torchvision's names (``min_size``, ``max_size``,
``rpn_pre_nms_top_n_test``, ``box_score_thresh``, ``box_nms_thresh``, ``box_detections_per_img``, ...).

Registered: ``fasterrcnn_resnet50_fpn`` (torchvision's), ``fasterrcnn_resnet18_fpn``,
``fasterrcnn_convnext_tiny_fpn`` and ``fasterrcnn_swin_tiny_fpn`` (any ``features_only`` backbone of
the registry works through :func:`fpn_backbone`), and ``fasterrcnn_shapes``, a small CPU model for
the built-in 128×128 Shapes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from visionzoo.checkpoint import CheckpointError
from visionzoo.constants import IMAGENET_MEAN, IMAGENET_STD
from visionzoo.detection.anchors import AnchorGenerator
from visionzoo.detection.fpn import BackboneWithFPN, FeaturePyramidNetwork
from visionzoo.detection.roi_heads import FastRCNNPredictor, PredictorClasses, RoIHeads, TwoMLPHead
from visionzoo.detection.rpn import RegionProposalNetwork, RPNHead
from visionzoo.detection.transform import DetectionTransform, detector_inputs
from visionzoo.layers.norm import FrozenBatchNorm2d
from visionzoo.models._registry import Pretrained, register_model
from visionzoo.ops import MultiScaleRoIAlign
from visionzoo.utils import (
    autocast_enabled,
    check_argument_types,
    is_integer,
    is_real,
    require_bools,
    require_nested_args,
    whole_number,
)


class FasterRCNN(PredictorClasses, nn.Module):
    """Faster R-CNN over ``backbone`` (image → ordered dict of maps with ``out_channels`` channels).

    Args (torchvision's names and defaults):
        backbone: a module with ``out_channels``, returning an ordered dict of Tensor[B, C, H_l, W_l], or one
            such Tensor (taken as map ``"0"``, as torchvision takes it).
        num_classes: including the background.
        min_size, max_size, image_mean, image_std, size_divisible: the input transform (``min_size`` a tuple:
            scale jitter in training; the padded batch's sides are multiples of ``size_divisible``).
        rpn_*: anchors' matching, sampling and the proposal filter of the RPN.
        box_*: RoI heads' matching and sampling, and the detection filter.
        anchor_sizes, aspect_ratios: per feature level (default: one size per FPN level 32..512).
        box_featmap_names: the maps the RoI heads pool from (default: every FPN level but "pool").
        representation_size: width of the two fully connected layers of the box head.
        rpn_anchor_generator, rpn_head, box_roi_pool, box_head, box_predictor: torchvision's parts, given built
            (None: built from the arguments above); with a box_predictor, num_classes is its number (leave None).
    """

    @check_argument_types
    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = 91,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        size_divisible: int = 32,
        anchor_sizes: Sequence[Sequence[float]] = ((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios: Sequence[Sequence[float]] | None = None,
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_score_thresh: float = 0.0,
        box_featmap_names: Sequence[str] | None = None,
        box_roi_output_size: int = 7,
        box_sampling_ratio: int = 2,
        representation_size: int = 1024,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        bbox_reg_weights: tuple[float, float, float, float] | None = None,
        rpn_anchor_generator: nn.Module | None = None,
        rpn_head: nn.Module | None = None,
        box_roi_pool: nn.Module | None = None,
        box_head: nn.Module | None = None,
        box_predictor: nn.Module | None = None,
    ):
        super().__init__()
        if box_predictor is not None:
            # its classes, where it says (cls_score); another kind of predictor leaves the labels unchecked (None)
            predicted = getattr(getattr(box_predictor, "cls_score", None), "out_features", num_classes)
            if num_classes is not None and predicted != num_classes:  # torchvision: num_classes must then be None
                raise ValueError(f"num_classes {num_classes} but box_predictor scores {predicted} classes; "
                                 "leave num_classes None with a box_predictor")
            num_classes = predicted
        if (num_classes is None and box_predictor is None) or (num_classes is not None and num_classes < 2):
            raise ValueError(f"num_classes counts the background and must be at least 2, got {num_classes}")
        self._num_classes = num_classes
        # 0 built a box head of no features: the detector trained and detected on the predictor's biases alone
        whole_number(representation_size, "representation_size", 1)
        whole_number(box_roi_output_size, "box_roi_output_size", 1)
        self.transform = DetectionTransform(min_size, max_size, image_mean, image_std, size_divisible)
        self.backbone = backbone
        channels = backbone.out_channels
        if rpn_anchor_generator is None:
            _check_anchor_levels(backbone, anchor_sizes)
            aspect_ratios = aspect_ratios or ((0.5, 1.0, 2.0),) * len(anchor_sizes)
            anchor_generator = AnchorGenerator(anchor_sizes, aspect_ratios)
        else:
            anchor_generator = rpn_anchor_generator
            anchor_sizes = getattr(anchor_generator, "sizes", anchor_sizes)
        if rpn_head is None:
            counts = anchor_generator.num_anchors_per_location()
            if len(set(counts)) > 1:
                # else the first forward fails in BoxCoder.decode, naming neither option
                raise ValueError(f"anchor_sizes × aspect_ratios give {counts} anchors per location on the feature "
                                 "levels, but the RPN head, shared by all levels, predicts one number: give every "
                                 "level as many")
            rpn_head = RPNHead(channels, counts[0])
        self.rpn = RegionProposalNetwork(
            anchor_generator, rpn_head, rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image,
            rpn_positive_fraction, {"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            {"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test}, rpn_nms_thresh,
            rpn_score_thresh,
        )
        if box_roi_pool is None:
            if box_featmap_names is None:
                pooled_levels = len(anchor_sizes) - int(getattr(getattr(backbone, "fpn", None), "extra_pool", False))
                box_featmap_names = [str(i) for i in range(max(1, pooled_levels))]
            _check_featmap_names(backbone, box_featmap_names)
            box_roi_pool = MultiScaleRoIAlign(list(box_featmap_names), box_roi_output_size, box_sampling_ratio)
        if box_head is None:
            pooled = getattr(box_roi_pool, "output_size", box_roi_output_size)
            pooled = (pooled, pooled) if isinstance(pooled, int) else tuple(pooled)
            box_head = TwoMLPHead(channels * pooled[0] * pooled[-1], representation_size)
        if box_predictor is None:
            box_predictor = FastRCNNPredictor(representation_size, num_classes)
        self.roi_heads = RoIHeads(
            box_roi_pool, box_head, box_predictor, box_fg_iou_thresh,
            box_bg_iou_thresh, box_batch_size_per_image, box_positive_fraction, bbox_reg_weights,
            box_score_thresh, box_nms_thresh, box_detections_per_img,
        )

    def forward(self, images: Sequence[Tensor] | Tensor, targets: Sequence[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        images, original_sizes = detector_inputs(self, images, targets)
        batch, targets = self.transform(images, targets)
        images = batch.tensors
        if autocast_enabled(images.device.type):
            # channels-last convolutions run ~20% faster on CPU; fp32 keeps torchvision's layout, and so its
            # exact numbers (a different summation order would reorder near-tied boxes in NMS)
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.backbone(images)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        proposals, rpn_losses = self.rpn(batch, features, targets)
        detections, head_losses = self.roi_heads(features, proposals, batch.image_sizes, targets,
                                                 tuple(images.shape[-2:]))
        if self.training:
            return {**head_losses, **rpn_losses}
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


def _check_anchor_levels(backbone: nn.Module, anchor_sizes: Sequence[Sequence[float]]) -> None:
    """Refuse, when building, an FPN whose number of maps differs from the anchor levels: the RPN would only
    fail at the first forward, naming neither ``out_indices`` nor ``anchor_sizes``."""
    fpn = getattr(backbone, "fpn", None)
    if not isinstance(fpn, FeaturePyramidNetwork):  # another's FPN (torchvision's) is the user's to match
        return
    maps = len(fpn.inner_blocks)
    levels = maps + int(fpn.extra_pool)
    if levels != len(anchor_sizes):
        pool = " and 'pool'" if fpn.extra_pool else ""
        raise ValueError(f"the backbone gives {levels} feature maps ({maps} from out_indices{pool}) but anchor_sizes "
                         f"has {len(anchor_sizes)} levels; give anchor_sizes with one entry per map")


def _check_featmap_names(backbone: nn.Module, names: Sequence[str]) -> None:
    """Refuse RoI-head level names that the FPN does not give: the pooler skips them, so a misspelt level was
    left out without a word (or, all misspelt, the first forward failed)."""
    fpn = getattr(backbone, "fpn", None)
    if not isinstance(fpn, FeaturePyramidNetwork):  # another's FPN (torchvision's) is the user's to match
        return
    levels = [str(i) for i in range(len(fpn.inner_blocks))] + (["pool"] if fpn.extra_pool else [])
    unknown = [name for name in names if name not in levels]
    if unknown:
        raise ValueError(f"box_featmap_names {list(names)}: the FPN has no level {', '.join(map(repr, unknown))}; "
                         f"its levels are {levels}")


def fpn_backbone(name: str, out_indices: int | Sequence[int] | None = None, out_channels: int = 256,
                 trainable_layers: int | None = None, frozen_batch_norm: bool = False, extra_pool: bool = True,
                 batch_norm_eps: float | None = None, **backbone_args: Any) -> BackboneWithFPN:
    """A registered model built ``features_only`` (ResNet, ConvNeXt, Swin, ...) under an FPN.

    Args:
        name: registry name of the backbone.
        out_indices: its maps to use (default: its last four); an int n, its last n (as the backbones take it).
        trainable_layers: ResNet only (other backbones refuse it): how many of ``layer4, layer3, layer2, layer1, conv1`` train (the
            others are frozen, as torchvision does when starting from classification weights).
        frozen_batch_norm: replace the backbone's batch norms by :class:`FrozenBatchNorm2d`.
        batch_norm_eps: the backbone's batch-norm epsilon (None: the backbone's own; torchvision's COCO
            weights of fasterrcnn_resnet50_fpn run with 0, as they were trained).
            Both refuse (ValueError) a backbone without batch norms.
        backbone_args: passed to the backbone's builder.
    """
    from visionzoo.models import create_model

    require_bools(frozen_batch_norm=frozen_batch_norm, extra_pool=extra_pool)
    if not is_integer(out_channels) or out_channels < 1:  # else torch's error at the detector's first image
        raise ValueError(f"out_channels must be a positive integer, got {out_channels!r:.40}")
    if batch_norm_eps is not None and not (is_real(batch_norm_eps) and batch_norm_eps >= 0):
        # else a TypeError from the first forward (a string), or variances made negative (-1), NaN
        raise ValueError(f"batch_norm_eps must be a number >= 0, got {batch_norm_eps!r:.40}")
    if out_indices is None:
        out_indices = (-4, -3, -2, -1)  # counted from the end: (0, 1, 2, 3) were a ViT's first four blocks
    if not isinstance(out_indices, int):
        out_indices = tuple(out_indices)
    body = create_model(name, features_only=True, out_indices=out_indices, **backbone_args)
    if (frozen_batch_norm or batch_norm_eps is not None) and not any(
            isinstance(module, nn.BatchNorm2d) for module in body.modules()):
        # nothing to convert or set: the option would be dropped without a word (ConvNeXt's and Swin's are LayerNorms)
        option = "frozen_batch_norm" if frozen_batch_norm else "batch_norm_eps"
        raise ValueError(f"{option} applies to batch norms; {name} has none (leave {option} at its default)")
    if frozen_batch_norm:
        body = FrozenBatchNorm2d.convert(body)
    if batch_norm_eps is not None:
        for module in body.modules():
            if isinstance(module, nn.BatchNorm2d | FrozenBatchNorm2d):
                module.eps = batch_norm_eps
    if trainable_layers is not None:
        _require_layer_count(trainable_layers, "trainable_layers")
        if not all(hasattr(body, layer) for layer in ("conv1", "layer1")):
            # the layer names are ResNet's: on any other backbone no parameter matches, which froze all of it
            raise ValueError(f"trainable_layers counts ResNet's layers; {name} has none (leave it None to train "
                             "the whole backbone)")
        trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        if trainable_layers == 5:
            trainable.append("bn1")
        for param_name, param in body.named_parameters():
            if all(not param_name.startswith(layer) for layer in trainable):
                param.requires_grad_(False)
    return BackboneWithFPN(body, body.feature_info.channels(), out_channels, extra_pool)


def _require_layer_count(value: Any, name: str) -> None:
    """Refuse a count of trainable ResNet layers that is no integer in 0..5 (2.5 failed slicing the layer names,
    a bool counted as 0 or 1), naming ``name``."""
    if not is_integer(value) or not 0 <= value <= 5:
        raise ValueError(f"{name} must be an integer in 0..5, got {value!r:.40}")


def checkpoint_filter(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """torchvision's Faster R-CNN state dicts to ours: the pre-0.13 RPN head keys (``rpn.head.conv.weight``)
    move to ``rpn.head.conv.0.0.*``; batch-norm counters missing from frozen-BN files are filled in. A file of a
    backbone alone (no ``backbone.``, ``rpn.`` or ``roi_heads.`` key) is refused, saying where it goes instead."""
    if not any(key.startswith(("backbone.", "rpn.", "roi_heads.")) for key in state_dict):
        # else a strict load listing some 200 missing and unexpected keys
        raise CheckpointError("it holds no detector weights (no backbone., rpn. or roi_heads. key): a backbone's "
                              "weights (timm's, torchvision's) go in as backbone_args={\"checkpoint\": PATH} "
                              "(visionzoo train: --model-arg 'backbone_args={\"checkpoint\": \"PATH\"}')")
    out = {}
    for key, value in state_dict.items():
        for suffix in ("weight", "bias"):
            if key == f"rpn.head.conv.{suffix}":
                key = f"rpn.head.conv.0.0.{suffix}"
        out[key] = value
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = value
    return out


def _create(backbone: str, *, num_classes: int = 91, in_chans: int = 3, out_indices: int | Sequence[int] | None = None,
            fpn_channels: int = 256, extra_pool: bool = True, trainable_backbone_layers: int | None = None,
            frozen_batch_norm: bool = False, batch_norm_eps: float | None = None,
            backbone_args: dict[str, Any] | None = None, **kwargs: Any) -> FasterRCNN:
    if in_chans != 3:
        raise ValueError(f"the detectors take RGB images (in_chans=3), got in_chans={in_chans}")
    if trainable_backbone_layers is not None:  # else refused by fpn_backbone's name for it
        _require_layer_count(trainable_backbone_layers, "trainable_backbone_layers")
    if not is_integer(fpn_channels) or fpn_channels < 1:  # 0 built a detector that failed at its first image
        raise ValueError(f"fpn_channels must be a positive integer, got {fpn_channels!r:.40}")
    require_nested_args("backbone_args", backbone_args, {
        "out_indices": "give the detector's out_indices",
        "features_only": "the detector builds its backbone features_only"})
    body = fpn_backbone(backbone, out_indices, fpn_channels, trainable_backbone_layers, frozen_batch_norm, extra_pool,
                        batch_norm_eps, **(backbone_args or {}))
    return FasterRCNN(body, num_classes=num_classes, **kwargs)


_CFG = dict(task="detection", checkpoint_filter=checkpoint_filter,
            classifier=("roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"),
            mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=91)


# torchvision builds the model its COCO weights go into with frozen batch norms (epsilon 0, as they were trained)
# and conv1/layer1 frozen; a file of them loaded with checkpoint= needs these arguments given
COCO_WEIGHTS_ARGS = {"frozen_batch_norm": True, "batch_norm_eps": 0.0, "trainable_backbone_layers": 3}


@register_model(pretrained=Pretrained(url="https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
                                      sha256="258fb6c6", model_args=COCO_WEIGHTS_ARGS), **_CFG)
def fasterrcnn_resnet50_fpn(**kwargs) -> FasterRCNN:
    """torchvision's fasterrcnn_resnet50_fpn (v1): ResNet-50, FPN P2–P6, 800/1333 inputs, 91 COCO classes.

    Built as torchvision builds it without weights (batch norms that train, every layer trainable); with
    ``pretrained=True`` as torchvision builds it for its COCO weights (:data:`COCO_WEIGHTS_ARGS`: frozen batch
    norms of epsilon 0, conv1 and layer1 frozen), so detections and fine-tuning losses are torchvision's.
    """
    return _create("resnet50", **kwargs)


@register_model(**_CFG)
def fasterrcnn_resnet18_fpn(**kwargs) -> FasterRCNN:
    return _create("resnet18", **kwargs)


@register_model(**_CFG)
def fasterrcnn_convnext_tiny_fpn(**kwargs) -> FasterRCNN:
    return _create("convnext_tiny", **kwargs)


@register_model(**_CFG)
def fasterrcnn_swin_tiny_fpn(**kwargs) -> FasterRCNN:
    return _create("swin_tiny_patch4_window7_224", **kwargs)


# Shapes at 128×128: objects 12–50 px, so anchors 16/32/64 on strides 4/8/16, a narrow FPN and box
# head, and fewer proposals than COCO needs.
_SHAPES = dict(out_indices=(1, 2, 3), fpn_channels=64, extra_pool=False, min_size=128, max_size=128,
               anchor_sizes=((16,), (32,), (64,)), representation_size=256, rpn_pre_nms_top_n_train=600,
               rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
               box_batch_size_per_image=128, num_classes=7)


@register_model(**{**_CFG, "num_classes": 7, "input_size": (3, 128, 128)})
def fasterrcnn_shapes(**kwargs) -> FasterRCNN:
    """A small Faster R-CNN for the built-in Shapes (128×128, 6 classes + background): ResNet-18 C2–C4,
    a 64-channel FPN without the extra level, a 256-wide box head."""
    return _create("resnet18", **{**_SHAPES, **kwargs})
