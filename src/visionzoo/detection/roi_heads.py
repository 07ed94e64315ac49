"""The second R-CNN stage: pool each proposal, classify it into K+1 classes, regress one box per class.

Shared by Fast R-CNN (Selective Search proposals) and Faster R-CNN (RPN proposals). torchvision's
semantics and module names (``box_head.fc6``/``fc7``, ``box_predictor.cls_score``/``bbox_pred``): in
training the ground-truth boxes join the proposals, proposals with IoU ≥ 0.5 to a box are positives
labelled with its class, below 0.5 background (Fast R-CNN and R-CNN: only down to ``background_iou_low``
= 0.1, below that ignored), 512 per image drawn with at most 25% positives; the loss
is cross-entropy plus smooth L1 (β = 1/9) on the true class's deltas. At inference each proposal gives
one box per foreground class, scored by the softmax; low scores and tiny boxes go, NMS runs per class,
and the ``detections_per_img`` best stay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.detection.anchors import box_dtype
from visionzoo.detection.sampling import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, Matcher
from visionzoo.layers.linear import Linear
from visionzoo.ops import BoxCoder, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from visionzoo.utils import check_finite_outputs, is_integer, require_unit_interval, whole_number


class TwoMLPHead(nn.Module):
    """``Tensor[R, C, PH, PW]`` pooled features → ``Tensor[R, representation_size]`` (fc6, fc7, ReLU each)."""

    def __init__(self, in_channels: int, representation_size: int):
        super().__init__()
        self.fc6 = Linear(in_channels, representation_size)
        self.fc7 = Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(start_dim=1)))))


class FastRCNNPredictor(nn.Module):
    """``Tensor[R, D]`` → class logits ``Tensor[R, K+1]`` and per-class deltas ``Tensor[R, 4(K+1)]``."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class PredictorClasses:
    """A detector's ``num_classes`` (background included): the classes its ``roi_heads.box_predictor`` scores, read
    from the predictor, so that it holds after torchvision's fine-tuning recipe replaces the predictor; for a
    predictor without a ``cls_score`` Linear, the number the detector was built with (None: labels unchecked)."""

    _num_classes: int | None = None

    @property
    def num_classes(self) -> int | None:
        predictor = getattr(getattr(self, "roi_heads", None), "box_predictor", None)
        scores = getattr(predictor, "cls_score", None)
        return scores.out_features if isinstance(scores, nn.Linear) else self._num_classes


def fast_rcnn_loss(class_logits: Tensor, box_deltas: Tensor, labels: Tensor, regression: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """Multi-task loss over R sampled proposals: cross-entropy of ``class_logits`` Tensor[R, K+1] with
    ``labels`` Tensor[R], plus smooth L1 (β = 1/9, summed, divided by R) between the true class's deltas
    (``box_deltas`` Tensor[R, 4(K+1)]) and ``regression`` Tensor[R, 4] on the positives; 0 for both when R is 0."""
    dtype = box_dtype(class_logits.dtype)
    class_logits, box_deltas = class_logits.to(dtype), box_deltas.to(dtype)
    if labels.numel() == 0:  # no proposal and no ground truth in the batch: nothing to learn from (not NaN)
        zero = class_logits.sum() + box_deltas.sum()
        return zero, zero
    classification = F.cross_entropy(class_logits, labels)
    positive = torch.where(labels > 0)[0]
    per_class = box_deltas.reshape(box_deltas.shape[0], -1, 4)
    box_loss = F.smooth_l1_loss(per_class[positive, labels[positive]], regression[positive], beta=1 / 9,
                                reduction="sum")
    return classification, box_loss / max(1, labels.numel())


class RoIHeads(nn.Module):
    """``forward(features, proposals, image_sizes, targets=None, batch_size=None) -> (detections, losses)``.

    ``features``: ordered dict of Tensor[B, C, H_l, W_l] computed from a padded batch of ``batch_size`` (H, W)
    (default: the largest of ``image_sizes``); ``proposals``: per image Tensor[P_i, 4] xyxy;
    ``detections``: per image ``{"boxes": Tensor[D, 4], "labels": int64 Tensor[D], "scores": Tensor[D]}``
    (empty lists in training); ``losses``: ``{"loss_classifier", "loss_box_reg"}`` in training.
    """

    def __init__(self, box_roi_pool: nn.Module, box_head: nn.Module, box_predictor: nn.Module,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5, batch_size_per_image: int = 512,
                 positive_fraction: float = 0.25, bbox_reg_weights: tuple[float, ...] | None = None,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 background_iou_low: float = 0.0):
        super().__init__()
        if not is_integer(detections_per_img) or detections_per_img < 0:  # -1 kept all but the last, silently
            raise ValueError(f"box_detections_per_img must be an integer >= 0, got {detections_per_img!r}")
        # else the sampler's error, naming neither the argument nor the stage (the RPN samples too)
        whole_number(batch_size_per_image, "box_batch_size_per_image", 1)
        require_unit_interval(box_score_thresh=score_thresh, box_nms_thresh=nms_thresh, fg_iou_thresh=fg_iou_thresh,
                              bg_iou_thresh=bg_iou_thresh, box_positive_fraction=positive_fraction)
        if bg_iou_thresh > fg_iou_thresh:
            raise ValueError(f"the box head's background IoU threshold {bg_iou_thresh} is above its foreground one "
                             f"{fg_iou_thresh}")
        if not 0.0 <= background_iou_low <= bg_iou_thresh:
            raise ValueError(f"background_iou_low must be in [0, bg_iou_thresh={bg_iou_thresh}], got {background_iou_low}")
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        try:
            self.box_coder = BoxCoder(bbox_reg_weights or (10.0, 10.0, 5.0, 5.0))
        except ValueError as e:
            raise ValueError(f"bbox_reg_weights: {e}") from None
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False,
                               ignore_below=background_iou_low)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None, batch_size: tuple[int, int] | None = None
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training")
            proposals, labels, regression = self.select_training_samples(proposals, targets)
        # the pooler infers each map's stride from the padded batch the maps were computed from: from the largest
        # image alone (torchvision's rule), a batch padded from 40 to 64 rows made every stride look half its size
        pool_sizes = image_sizes if batch_size is None else [batch_size]
        class_logits, box_deltas = self.box_predictor(self.box_features(features, proposals, pool_sizes))
        if self.training:
            loss_classifier, loss_box_reg = fast_rcnn_loss(class_logits, box_deltas, torch.cat(labels),
                                                           torch.cat(regression))
            return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        # NaN scores fail the score threshold and NaN boxes the size filter: a detector whose outputs overflowed (bf16's
        # range) would report finding nothing; in training the loss is non-finite and the engine stops
        check_finite_outputs(class_logits, box_deltas)
        dtype = box_dtype(class_logits.dtype)
        return self.postprocess(class_logits.to(dtype), box_deltas.to(dtype), proposals, image_sizes), {}

    def box_features(self, features: dict[str, Tensor], proposals: list[Tensor], pool_sizes: list[tuple[int, int]]
                     ) -> Tensor:
        """The box head over every proposal's pooled features: Tensor[R, D], R = all proposals, image by image;
        ``pool_sizes`` set the pooler's scales (the largest is taken as the size the maps were computed from)."""
        return self.box_head(self.box_roi_pool(features, proposals, pool_sizes))

    def select_training_samples(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
                                ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per image: the sampled proposals Tensor[S, 4], their labels int64 Tensor[S] (0 background) and
        regression targets Tensor[S, 4]. The ground-truth boxes are added to the proposals first."""
        sampled_proposals, labels, matched_boxes = [], [], []
        for image_proposals, target in zip(proposals, targets):
            gt_boxes = target["boxes"].to(image_proposals.dtype)
            gt_labels = target["labels"]
            candidates = torch.cat((image_proposals, gt_boxes))
            if gt_boxes.numel() == 0:
                matches = torch.zeros(candidates.shape[0], dtype=torch.int64, device=candidates.device)
                image_labels = torch.zeros_like(matches)
                gt_boxes = candidates.new_zeros((1, 4))
            else:
                raw = self.matcher(box_iou(gt_boxes, candidates))
                matches = raw.clamp(min=0)
                image_labels = gt_labels[matches].to(torch.int64)
                image_labels[raw == BELOW_LOW_THRESHOLD] = 0
                image_labels[raw == BETWEEN_THRESHOLDS] = -1
            positive, negative = self.sampler([image_labels])
            keep = torch.where(positive[0] | negative[0])[0]
            sampled_proposals.append(candidates[keep])
            labels.append(image_labels[keep])
            matched_boxes.append(gt_boxes[matches[keep]])
        regression = self.box_coder.encode(torch.cat(matched_boxes), torch.cat(sampled_proposals))
        return sampled_proposals, labels, list(regression.split([len(p) for p in sampled_proposals]))

    def postprocess(self, class_logits: Tensor, box_deltas: Tensor, proposals: list[Tensor],
                    image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        num_classes = class_logits.shape[-1]
        boxes_per_image = [p.shape[0] for p in proposals]
        boxes = self.box_coder.decode(box_deltas, torch.cat(proposals)).split(boxes_per_image)
        scores = F.softmax(class_logits, -1).split(boxes_per_image)
        detections = []
        for image_boxes, image_scores, size in zip(boxes, scores, image_sizes):
            image_boxes = clip_boxes_to_image(image_boxes.reshape(-1, num_classes, 4), size)
            labels = torch.arange(num_classes, device=class_logits.device).view(1, -1).expand_as(image_scores)
            image_boxes = image_boxes[:, 1:].reshape(-1, 4)
            image_scores = image_scores[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            keep = torch.where(image_scores > self.score_thresh)[0]
            image_boxes, image_scores, labels = image_boxes[keep], image_scores[keep], labels[keep]
            keep = remove_small_boxes(image_boxes, min_size=1e-2)
            image_boxes, image_scores, labels = image_boxes[keep], image_scores[keep], labels[keep]
            keep = batched_nms(image_boxes, image_scores, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": image_boxes[keep], "labels": labels[keep], "scores": image_scores[keep]})
        return detections
