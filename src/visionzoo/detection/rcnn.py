"""R-CNN (Girshick et al. 2014), Fast R-CNN (Girshick 2015) and the sliding-window baseline: detectors over
region proposals that come from outside the network.

All three share Faster R-CNN's second stage (:class:`~visionzoo.detection.roi_heads.RoIHeads`: label and
sample proposals, K+1-way classification, class-specific regression of the notes' (t_x, t_y, t_w, t_h),
per-class NMS) and torchvision's API: ``model(images, targets, proposals=None)`` returns the loss dict in
train mode and one ``{"boxes", "labels", "scores"}`` per image in eval mode. ``proposals`` (one
Tensor[P_i, 4] xyxy per image, in the input image's pixels) are usually cached per data set split
(:mod:`visionzoo.detection.proposal_cache`); without them the model computes its own for each image
(Selective Search, or every sliding window), which is part of its inference cost. A proposal with NaN or infinity
is refused, naming its image and entry; those with less than 1 px of width or height inside their image are left
out, as torchvision's ``remove_small_boxes`` leaves them, with one warning giving their count.

- **R-CNN** warps every proposal, grown by ``context_padding`` pixels of context at the warped size
  (the paper's p = 16 at 227), to ``warp_size`` × ``warp_size`` and runs a whole classification CNN
  on each: one CNN pass per region. The warp is RoI Align over the normalised image with adaptive
  sampling (bilinear when enlarging, area-averaging when shrinking); context outside the image is the
  mean colour, as in the paper. Training follows the paper's fine-tuning: IoU ≥ 0.5 positive, a
  quarter of each batch positive (its 32:96), with Fast R-CNN's background band [0.1, 0.5). The
  softmax of the fine-tuned network scores the classes (the paper's appendix: a little below its
  SVMs, without the second training stage), and its box regression reads the same pooled features.
- **Fast R-CNN** runs the backbone once per image and pools each proposal from its last map with RoI
  pooling (``roi_pool="align"``: RoI Align), then a shared two-layer head; 64 RoIs per image, a quarter
  positive, background [0.1, 0.5), cross-entropy + smooth L1.
- **Sliding window** is R-CNN over every window of several sizes, aspect ratios and strides instead
  of Selective Search's few hundred regions: the naive detector, kept to measure why it is not used.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from visionzoo.constants import IMAGENET_MEAN, IMAGENET_STD
from visionzoo.detection.proposals import (
    SELECTIVE_SEARCH_VERSION,
    check_selective_search_args,
    check_sliding_window_args,
    require_finite_proposals,
    selective_search,
    sliding_windows,
)
from visionzoo.detection.roi_heads import FastRCNNPredictor, PredictorClasses, RoIHeads, TwoMLPHead
from visionzoo.detection.transform import DetectionTransform, detector_inputs, resize_boxes
from visionzoo.models._registry import register_model
from visionzoo.ops import boxes_to_rois, clip_boxes_to_image, remove_small_boxes, roi_align, roi_pool
from visionzoo.ops.poolers import infer_scale
from visionzoo.utils import (
    autocast_enabled,
    check_argument_types,
    is_integer,
    require_nested_args,
    require_unit_interval,
    whole_number,
)

log = logging.getLogger(__name__)

PROPOSAL_METHODS = ("selective_search", "sliding_window")
_PROPOSAL_FUNCTIONS = {"selective_search": selective_search, "sliding_window": sliding_windows}
_PROPOSAL_CHECKS = {"selective_search": check_selective_search_args, "sliding_window": check_sliding_window_args}


def dilate_boxes(boxes: Tensor, warp_size: int, padding: int) -> Tensor:
    """``boxes`` Tensor[R, 4] grown about their centres so that, warped to ``warp_size``, the original box
    spans ``warp_size - 2 * padding`` pixels: ``padding`` pixels of context on every side (R-CNN's p)."""
    scale = warp_size / (warp_size - 2 * padding)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    return torch.cat((centre - half, centre + half), dim=1)


class RegionWarp(nn.Module):
    """R-CNN's "pooler": ``forward({"image": Tensor[B, 3, H, W]}, proposals, image_sizes)`` → the regions,
    context-padded and warped, Tensor[R, 3, warp_size, warp_size] (R = all proposals, image by image).
    ``proposals``: per image Tensor[P_i, 4] xyxy, or all of them as Tensor[R, 5] (image index, x1, y1, x2, y2)."""

    def __init__(self, warp_size: int, context_padding: int):
        super().__init__()
        if not 0 <= 2 * context_padding < warp_size:
            raise ValueError(f"context_padding must be in [0, warp_size / 2), got {context_padding} for {warp_size}")
        self.warp_size = warp_size
        self.context_padding = context_padding

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor] | Tensor,
                image_sizes: list[tuple[int, int]]) -> Tensor:
        rois = boxes_to_rois(proposals) if isinstance(proposals, list) else proposals
        rois = torch.cat((rois[:, :1], dilate_boxes(rois[:, 1:], self.warp_size, self.context_padding)), dim=1)
        return roi_align(features["image"], rois, self.warp_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


class RegionCNN(nn.Module):
    """R-CNN's "box head": a classification CNN (built with ``num_classes=0``) over warped regions
    Tensor[R, 3, S, S] → its pooled features Tensor[R, cnn.num_features]."""

    def __init__(self, cnn: nn.Module):
        super().__init__()
        self.cnn = cnn

    def forward(self, regions: Tensor) -> Tensor:
        if autocast_enabled(regions.device.type):
            regions = regions.contiguous(memory_format=torch.channels_last)
        return self.cnn(regions)


class RegionHeads(RoIHeads):
    """R-CNN's RoI heads: at inference the regions are warped and run through the CNN ``chunk`` at a time, so that
    ``chunk`` warped regions are held rather than all of them (2,000 an image at 224 px are 1.2 GB)."""

    def __init__(self, *args: Any, chunk: int = 256, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not is_integer(chunk) or chunk < 1:
            raise ValueError(f"chunk (regions per CNN pass at inference) must be a positive integer, got {chunk!r}")
        self.chunk = chunk

    def box_features(self, features: dict[str, Tensor], proposals: list[Tensor], pool_sizes: list[tuple[int, int]]
                     ) -> Tensor:
        if self.training:
            return super().box_features(features, proposals, pool_sizes)
        rois = boxes_to_rois(proposals)
        return torch.cat([self.box_head(self.box_roi_pool(features, part, pool_sizes)) for part in rois.split(self.chunk)])


class RoIPooler(nn.Module):
    """Fast R-CNN's single-level pooling: ``forward(features, proposals, image_sizes)`` → Tensor[R, C, P, P]
    from the map ``featmap_name``, by RoI max pooling (``kind="pool"``) or RoI Align (``kind="align"``)."""

    def __init__(self, featmap_name: str, output_size: int, kind: str = "pool", sampling_ratio: int = 2):
        super().__init__()
        if kind not in ("pool", "align"):
            raise ValueError(f"roi_pool must be 'pool' or 'align', got {kind!r}")
        self.featmap_name = featmap_name
        self.output_size = output_size
        self.kind = kind
        self.sampling_ratio = sampling_ratio

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
                ) -> Tensor:
        feature = features[self.featmap_name]
        image_size = (max(s[0] for s in image_sizes), max(s[1] for s in image_sizes))
        scale = infer_scale(feature.shape[-2:], image_size)
        if self.kind == "pool":
            return roi_pool(feature, proposals, self.output_size, scale)
        return roi_align(feature, proposals, self.output_size, scale, self.sampling_ratio, aligned=True)


def _keyword_defaults(function: Any) -> dict[str, Any]:
    """The arguments of ``function`` that have a default, with it (a proposal method's settings)."""
    return {name: parameter.default for name, parameter in inspect.signature(function).parameters.items()
            if parameter.default is not inspect.Parameter.empty}


def _windows_of(image: Tensor, **window_args: Any) -> Tensor:
    return sliding_windows(int(image.shape[-2]), int(image.shape[-1]), **window_args)


class ProposalDetector(PredictorClasses, nn.Module):
    """A detector whose regions come from outside the network (R-CNN, Fast R-CNN, sliding window).

    Subclasses build ``transform``, ``roi_heads`` and :meth:`features`. ``proposals`` names the method
    used when none are given ("selective_search" with ``proposal_args`` for
    :func:`~visionzoo.detection.selective_search`, or "sliding_window" with those of
    :func:`~visionzoo.detection.proposals.sliding_windows`).
    """

    uses_external_proposals = True

    def __init__(self, num_classes: int, proposals: str, proposal_args: dict[str, Any] | None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be at least 2, got {num_classes}")
        if proposals not in PROPOSAL_METHODS:
            raise ValueError(f"proposals must be one of {', '.join(PROPOSAL_METHODS)}, got {proposals!r}")
        function = _PROPOSAL_FUNCTIONS[proposals]
        if proposal_args is not None and not isinstance(proposal_args, Mapping):
            raise ValueError(f"proposal_args must be a dict of {function.__name__}'s arguments, got {proposal_args!r:.60}")
        # else a TypeError from inside the proposal function (a worker process) once the model is trained or run
        defaults = _keyword_defaults(function)
        for name in proposal_args or {}:
            if name not in defaults:
                raise ValueError(f"{proposals} takes no argument {name!r}; it takes {', '.join(defaults)}")
        _PROPOSAL_CHECKS[proposals](**{**defaults, **(proposal_args or {})})
        self._num_classes = num_classes
        self.proposal_method = proposals
        self.proposal_args = dict(proposal_args or {})
        self._warned: set[str] = set()  # the warnings this model gave: each once, later ones at debug level

    @property
    def cache_proposals(self) -> bool:
        """Whether the proposals are worth caching per data set (Selective Search: yes; windows: no)."""
        return self.proposal_method == "selective_search"

    @property
    def proposal_settings(self) -> dict[str, Any]:
        """What decides the proposals (a key of the proposal cache): the method, every argument of its
        function, defaults included (a default changed by an upgrade gives another key), and for Selective
        Search the version of its algorithm."""
        defaults = _keyword_defaults(_PROPOSAL_FUNCTIONS[self.proposal_method])
        settings = {"method": self.proposal_method, **defaults, **self.proposal_args}
        if self.proposal_method == "selective_search":
            settings["version"] = SELECTIVE_SEARCH_VERSION
        return settings

    @property
    def propose(self):
        """``image Tensor[3, H, W] in [0, 1] -> Tensor[P, 4]`` xyxy proposals (picklable, for worker processes)."""
        if self.proposal_method == "selective_search":
            return functools.partial(selective_search, **self.proposal_args)
        return functools.partial(_windows_of, **self.proposal_args)

    def features(self, images: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def _warn_once(self, kind: str, message: str, *args: Any) -> None:
        """Log ``message % args`` as a warning the first time this model meets ``kind``, later at debug level: a
        training run or a predict over many files calls the model once a batch or an image, and would repeat it."""
        if kind in self._warned:
            log.debug(message, *args)
            return
        self._warned.add(kind)
        log.warning(message + " (said once for this model; later ones are logged at debug level)", *args)

    def _note_images_without_windows(self, images: Sequence[Tensor], proposals: Sequence[Tensor],
                                     image_names: Sequence[str] | None) -> None:
        """Warn of images smaller than every sliding window (else they got no detection, as if looked at): the first
        of them (by its name in ``image_names``, else "image INDEX") and how many, once for this model."""
        if self.proposal_method != "sliding_window":
            return
        empty = [index for index, boxes in enumerate(proposals) if not len(boxes)]
        if not empty:
            return
        settings = self.proposal_settings
        image = images[empty[0]]
        name = f"image {empty[0]}" if image_names is None else image_names[empty[0]]
        what = f"{name} of {image.shape[-2]}×{image.shape[-1]} px" + (
            f" and {len(empty) - 1} more of the {len(images)} images hold" if len(empty) > 1 else " holds")
        self._warn_once("images without windows", "%s no sliding window (sizes %s at aspect ratios %s): nothing is "
                        "detected in %s", what, tuple(settings["sizes"]), tuple(settings["aspect_ratios"]),
                        "them" if len(empty) > 1 else "it")

    def forward(self, images: Sequence[Tensor] | Tensor, targets: Sequence[dict[str, Tensor]] | None = None,
                proposals: Sequence[Tensor] | None = None, image_names: Sequence[str] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """``image_names``: what a warning calls each image (its file, say; default "image INDEX")."""
        images, original_sizes = detector_inputs(self, images, targets)
        if isinstance(proposals, Tensor):  # else its rows would be read as one proposal set per image
            raise ValueError(f"proposals must be a list of Tensor[P_i, 4], one per image, got one Tensor"
                             f"{list(proposals.shape)}")
        # the transform first: it names an image of the wrong shape before any proposal is computed for it
        batch, targets = self.transform(images, targets)
        if proposals is None:
            proposals = [self.propose(image.detach().float().cpu()) for image in images]
            self._note_images_without_windows(images, proposals, image_names)
        elif len(proposals) != len(images):
            raise ValueError(f"{len(images)} images but {len(proposals)} proposal sets")
        device = batch.tensors.device
        regions = []
        total, dropped, first = 0, 0, None
        for index, (boxes, original, size) in enumerate(zip(proposals, original_sizes, batch.image_sizes)):
            if not isinstance(boxes, Tensor):
                raise ValueError(f"proposals of image {index} must be a Tensor[P, 4], got {type(boxes).__name__}")
            if boxes.dim() != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"proposals of image {index} must be Tensor[P, 4], got {tuple(boxes.shape)}")
            require_finite_proposals(boxes, index)
            clipped = clip_boxes_to_image(boxes.to(device=device, dtype=torch.float32), original)
            keep = remove_small_boxes(clipped, min_size=1.0)
            total += len(clipped)
            if len(keep) < len(clipped):
                dropped += len(clipped) - len(keep)
                if first is None:
                    left_out = torch.ones(len(clipped), dtype=torch.bool, device=keep.device)
                    left_out[keep] = False
                    entry = int(left_out.nonzero()[0])
                    first = f"image {index}, entry {entry} {boxes[entry].tolist()}"
            regions.append(resize_boxes(clipped[keep], original, size))
        if dropped:  # Selective Search's and the sliding windows' boxes all have area: these came from the caller
            self._warn_once("proposals without area",
                            "%d of the %d proposals have less than 1 px of width or height inside their image (x2 <= "
                            "x1, y2 <= y1 or outside it) and are left out, as torchvision's remove_small_boxes leaves "
                            "them: first %s", dropped, total, first)
        detections, losses = self.roi_heads(self.features(batch.tensors), regions, batch.image_sizes, targets,
                                            tuple(batch.tensors.shape[-2:]))
        if self.training:
            return losses
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


class RCNN(ProposalDetector):
    """R-CNN over a classification CNN.

    Args:
        cnn: a classifier built with ``num_classes=0`` (pooled features, ``num_features`` wide).
        num_classes: including the background.
        warp_size: side of the warped regions (the paper: 227; 224 for ImageNet CNNs).
        context_padding: pixels of context at the warped size (default: the paper's 16 of 227, scaled).
        proposals, proposal_args: see :class:`ProposalDetector` (default: Selective Search "fast").
        batch_size_per_image, positive_fraction, fg_iou_thresh, background_iou_low: the sampling of
            training regions (IoU ≥ fg positive, [background_iou_low, fg) background).
        box_score_thresh, box_nms_thresh, box_detections_per_img: the detection filter (the paper's NMS
            threshold is 0.3).
        chunk: regions warped and run through the CNN at a time at inference (bounds its memory).
    """

    @check_argument_types
    def __init__(self, cnn: nn.Module, num_classes: int, warp_size: int = 224, context_padding: int | None = None,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
                 proposals: str = "selective_search", proposal_args: dict[str, Any] | None = None,
                 batch_size_per_image: int = 32, positive_fraction: float = 0.25, fg_iou_thresh: float = 0.5,
                 background_iou_low: float = 0.1, box_score_thresh: float = 0.05, box_nms_thresh: float = 0.3,
                 box_detections_per_img: int = 100, bbox_reg_weights: tuple[float, ...] | None = None,
                 chunk: int = 256):
        # else the box head's checks, naming its box_batch_size_per_image and box_positive_fraction, which this class
        # calls otherwise
        whole_number(batch_size_per_image, "batch_size_per_image", 1)
        require_unit_interval(positive_fraction=positive_fraction)
        if proposals == "selective_search" and proposal_args is None:
            proposal_args = {"mode": "fast", "max_proposals": 2000}
        super().__init__(num_classes, proposals, proposal_args)
        if context_padding is None:
            context_padding = round(16 * warp_size / 227)
        self.transform = DetectionTransform(None, 1333, image_mean, image_std)
        self.roi_heads = RegionHeads(
            RegionWarp(warp_size, context_padding), RegionCNN(cnn), FastRCNNPredictor(cnn.num_features, num_classes),
            fg_iou_thresh, fg_iou_thresh, batch_size_per_image, positive_fraction, bbox_reg_weights, box_score_thresh,
            box_nms_thresh, box_detections_per_img, background_iou_low, chunk=chunk,
        )

    def features(self, images: Tensor) -> dict[str, Tensor]:
        return {"image": images}


class FastRCNN(ProposalDetector):
    """Fast R-CNN over one feature map of a ``features_only`` backbone.

    Args:
        backbone: returns a list of maps (the last is pooled), with ``feature_info``.
        num_classes: including the background.
        min_size, max_size: the input transform (the paper: 600 / 1000; a tuple: scale jitter).
        roi_pool: "pool" (the paper's RoI max pooling) or "align" (RoI Align).
        output_size: pooled grid side; representation_size: width of the two fully connected layers.
        proposals, proposal_args, batch_size_per_image, positive_fraction, fg_iou_thresh,
        background_iou_low, box_*: as :class:`RCNN` (64 regions per image by default, the paper's).
    """

    @check_argument_types
    def __init__(self, backbone: nn.Module, num_classes: int, min_size: int | Sequence[int] = 600,
                 max_size: int = 1000, image_mean: Sequence[float] = IMAGENET_MEAN,
                 image_std: Sequence[float] = IMAGENET_STD, roi_pool: str = "pool", output_size: int = 7,
                 representation_size: int = 1024, proposals: str = "selective_search",
                 proposal_args: dict[str, Any] | None = None, batch_size_per_image: int = 64,
                 positive_fraction: float = 0.25, fg_iou_thresh: float = 0.5, background_iou_low: float = 0.1,
                 box_score_thresh: float = 0.05, box_nms_thresh: float = 0.3, box_detections_per_img: int = 100,
                 bbox_reg_weights: tuple[float, ...] | None = None):
        # 0 built a box head of no features: the detector trained and detected on the predictor's biases alone
        whole_number(representation_size, "representation_size", 1)
        whole_number(output_size, "output_size", 1)
        # else the box head's checks, naming its box_batch_size_per_image and box_positive_fraction, which this class
        # calls otherwise
        whole_number(batch_size_per_image, "batch_size_per_image", 1)
        require_unit_interval(positive_fraction=positive_fraction)
        if proposals == "selective_search" and proposal_args is None:
            proposal_args = {"mode": "fast", "max_proposals": 2000}
        super().__init__(num_classes, proposals, proposal_args)
        self.transform = DetectionTransform(min_size, max_size, image_mean, image_std)
        self.backbone = backbone
        channels = backbone.feature_info.channels()[-1]
        self.roi_heads = RoIHeads(
            RoIPooler("0", output_size, roi_pool), TwoMLPHead(channels * output_size ** 2, representation_size),
            FastRCNNPredictor(representation_size, num_classes), fg_iou_thresh, fg_iou_thresh, batch_size_per_image,
            positive_fraction, bbox_reg_weights, box_score_thresh, box_nms_thresh, box_detections_per_img,
            background_iou_low,
        )

    def features(self, images: Tensor) -> dict[str, Tensor]:
        if autocast_enabled(images.device.type):
            images = images.contiguous(memory_format=torch.channels_last)
        return {"0": self.backbone(images)[-1]}


def _check_rgb(in_chans: int) -> None:
    if in_chans != 3:
        raise ValueError(f"the detectors take RGB images (in_chans=3), got in_chans={in_chans}")


def _rcnn(cnn_name: str, *, num_classes: int = 91, in_chans: int = 3, cnn_args: dict[str, Any] | None = None,
          **kwargs: Any) -> RCNN:
    from visionzoo.models import create_model

    _check_rgb(in_chans)
    require_nested_args("cnn_args", cnn_args, {"num_classes": "the CNN gives features (num_classes=0); give the "
                                                              "detector's num_classes"})
    return RCNN(create_model(cnn_name, num_classes=0, **(cnn_args or {})), num_classes, **kwargs)


def _fast_rcnn(backbone_name: str, out_index: int, *, num_classes: int = 91, in_chans: int = 3,
               backbone_args: dict[str, Any] | None = None, **kwargs: Any) -> FastRCNN:
    from visionzoo.models import create_model

    _check_rgb(in_chans)
    require_nested_args("backbone_args", backbone_args, {
        "out_indices": f"Fast R-CNN pools the backbone's one feature map {out_index}",
        "features_only": "the detector builds its backbone features_only"})
    backbone = create_model(backbone_name, features_only=True, out_indices=(out_index,), **(backbone_args or {}))
    return FastRCNN(backbone, num_classes, **kwargs)


_CFG = dict(task="detection", classifier=("roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"),
            mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=91)
_SHAPES_CFG = {**_CFG, "num_classes": 7, "input_size": (3, 128, 128)}
# Shapes (128×128, objects 12–50 px): Selective Search's single strategy already finds 99.5% of the
# objects at IoU 0.5 with ~300 boxes per image (measured on val), a sixth of the "fast" mode's time.
_SHAPES_PROPOSALS = {"mode": "single", "max_proposals": 2000}


def _shapes_proposals(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with Shapes' Selective Search setting under the ``proposal_args`` given: one argument given
    (``{"max_proposals": 100}``) changes that one, not the strategy."""
    given = kwargs.get("proposal_args")
    if kwargs.get("proposals", "selective_search") != "selective_search" or not isinstance(given, Mapping | None):
        return kwargs  # another method's arguments, or no dict (which the detector refuses, naming it)
    return {**kwargs, "proposal_args": {**_SHAPES_PROPOSALS, **(given or {})}}


@register_model(**_CFG)
def rcnn_resnet50(**kwargs) -> RCNN:
    """R-CNN as in the paper (224 px warp, 16 px context at 227, Selective Search "fast", 2,000 boxes) over ResNet-50."""
    return _rcnn("resnet50", **kwargs)


@register_model(**_SHAPES_CFG)
def rcnn_shapes(**kwargs) -> RCNN:
    """R-CNN for the built-in Shapes: ResNet-18 over 64 px warps, Selective Search's single strategy."""
    return _rcnn("resnet18", **{"num_classes": 7, "warp_size": 64, **_shapes_proposals(kwargs)})


@register_model(**_SHAPES_CFG)
def sliding_window_shapes(**kwargs) -> RCNN:
    """The naive detector on Shapes: R-CNN's ResNet-18 over every window of 16–64 px, 3 aspect ratios, a
    quarter-side stride (4,076 windows per 128 px image) instead of Selective Search's ~300 regions."""
    return _rcnn("resnet18", **{"num_classes": 7, "warp_size": 64, "proposals": "sliding_window", **kwargs})


@register_model(**_CFG)
def fastrcnn_resnet50(**kwargs) -> FastRCNN:
    """Fast R-CNN over ResNet-50's C4 (stride 16), 600/1000 inputs, RoI pooling 7×7, Selective Search "fast"."""
    return _fast_rcnn("resnet50", 3, **kwargs)


@register_model(**_SHAPES_CFG)
def fastrcnn_shapes(**kwargs) -> FastRCNN:
    """Fast R-CNN for the built-in Shapes: ResNet-18 C4 over the image enlarged to 256 px (16×16 map),
    RoI pooling 7×7, a 256-wide head, Selective Search's single strategy."""
    return _fast_rcnn("resnet18", 3, **{"num_classes": 7, "min_size": 256, "max_size": 256,
                                        "representation_size": 256, **_shapes_proposals(kwargs)})
