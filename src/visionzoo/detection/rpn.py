"""Region Proposal Network (Ren et al. 2015): objectness and box deltas for every anchor, top proposals out.

torchvision's semantics and module names (``rpn.head.conv.0.0``, ``rpn.head.cls_logits``,
``rpn.head.bbox_pred``): per feature level the ``pre_nms_top_n`` best-scoring anchors are decoded,
clipped, small and low-scoring boxes dropped, NMS applied per level, and the ``post_nms_top_n`` best
kept. In training, anchors are matched to the ground truth (IoU ≥ 0.7 positive with the best anchor of
each box always positive, < 0.3 negative), 256 per image sampled half positive, and the loss is binary
cross-entropy plus smooth L1 (β = 1/9) over the sampled anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.detection.anchors import AnchorGenerator, box_dtype
from visionzoo.detection.sampling import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, Matcher
from visionzoo.ops import BoxCoder, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes
from visionzoo.utils import check_finite_outputs, is_integer, require_unit_interval, whole_number


class RPNHead(nn.Module):
    """A 3×3 conv + ReLU shared over levels, then 1×1 convs for A objectness logits and 4A deltas.

    ``forward(maps)``: list of Tensor[B, C, H_l, W_l] → (list of Tensor[B, A, H_l, W_l], list of
    Tensor[B, 4A, H_l, W_l]).
    """

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True)))
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)

    def forward(self, maps: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature in maps:
            hidden = self.conv(feature)
            logits.append(self.cls_logits(hidden))
            deltas.append(self.bbox_pred(hidden))
        return logits, deltas


def flatten_predictions(logits: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-level head outputs to anchor order (level, y, x, anchor): Tensor[B·sum HWA, 1] logits and
    Tensor[B·sum HWA, 4] deltas, float32 (float64 for a float64 head: :func:`box_dtype`)."""
    flat_logits, flat_deltas = [], []
    for level_logits, level_deltas in zip(logits, deltas):
        batch, num_anchors, height, width = level_logits.shape
        flat_logits.append(level_logits.view(batch, num_anchors, 1, height, width).permute(0, 3, 4, 1, 2)
                           .reshape(batch, -1, 1))
        flat_deltas.append(level_deltas.view(batch, num_anchors, 4, height, width).permute(0, 3, 4, 1, 2)
                           .reshape(batch, -1, 4))
    dtype = box_dtype(logits[0].dtype)
    return (torch.cat(flat_logits, 1).flatten(0, -2).to(dtype),
            torch.cat(flat_deltas, 1).reshape(-1, 4).to(dtype))


class RegionProposalNetwork(nn.Module):
    """Proposals for a batch: ``forward(batch, features, targets=None) -> (boxes, losses)``.

    ``batch``: an ImageBatch; ``features``: ordered dict of Tensor[B, C, H_l, W_l]; ``boxes``: per image
    Tensor[P_i, 4] xyxy float32 (float64 maps: float64) in the resized image; ``losses``: ``{"loss_objectness",
    "loss_rpn_box_reg"}`` in training, else empty.

    Args:
        pre_nms_top_n, post_nms_top_n: ``{"training": n, "testing": n}`` per level / per image.
    """

    def __init__(self, anchor_generator: AnchorGenerator, head: RPNHead, fg_iou_thresh: float = 0.7,
                 bg_iou_thresh: float = 0.3, batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 pre_nms_top_n: dict[str, int] | None = None, post_nms_top_n: dict[str, int] | None = None,
                 nms_thresh: float = 0.7, score_thresh: float = 0.0):
        super().__init__()
        for kind, counts in (("pre", pre_nms_top_n), ("post", post_nms_top_n)):
            for mode, count in (counts or {}).items():
                # a negative count sliced the proposals as [:-1] (one less) or failed in topk, naming no argument
                if not is_integer(count) or count < 0:
                    name = f"rpn_{kind}_nms_top_n_{'train' if mode == 'training' else 'test'}"
                    raise ValueError(f"{name} must be an integer >= 0, got {count!r}")
        # else the sampler's error, naming neither the argument nor the stage (the box head samples too)
        whole_number(batch_size_per_image, "rpn_batch_size_per_image", 1)
        require_unit_interval(rpn_fg_iou_thresh=fg_iou_thresh, rpn_bg_iou_thresh=bg_iou_thresh,
                              rpn_nms_thresh=nms_thresh, rpn_score_thresh=score_thresh,
                              rpn_positive_fraction=positive_fraction)
        if bg_iou_thresh > fg_iou_thresh:
            raise ValueError(f"rpn_bg_iou_thresh {bg_iou_thresh} is above rpn_fg_iou_thresh {fg_iou_thresh}")
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self._pre_nms_top_n = pre_nms_top_n or {"training": 2000, "testing": 1000}
        self._post_nms_top_n = post_nms_top_n or {"training": 2000, "testing": 1000}
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = 1e-3

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    def forward(self, batch, features: dict[str, Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[list[Tensor], dict[str, Tensor]]:
        maps = list(features.values())
        logits, deltas = self.head(maps)
        anchors = self.anchor_generator(batch, maps)  # the batch, as torchvision passes it to its generators
        num_images = len(anchors)
        anchors_per_level = [int(level[0].numel()) for level in logits]
        objectness, deltas = flatten_predictions(logits, deltas)
        if not self.training:  # NaN scores fail the score threshold: the detector would find nothing, without a word
            check_finite_outputs(objectness, deltas)  # (training stops on its non-finite loss instead)
        proposals = self.box_coder.decode(deltas.detach(), torch.cat(anchors)).view(num_images, -1, 4)
        boxes = self.filter_proposals(proposals, objectness.detach(), batch.image_sizes, anchors_per_level)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs targets in training")
            labels, matched = self.assign_targets(anchors, targets)
            regression = self.box_coder.encode(torch.cat(matched), torch.cat(anchors))
            losses = dict(zip(("loss_objectness", "loss_rpn_box_reg"),
                              self.loss(objectness, deltas, labels, regression)))
        return boxes, losses

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_sizes: list[tuple[int, int]],
                         anchors_per_level: list[int]) -> list[Tensor]:
        """``proposals`` Tensor[B, N, 4], ``objectness`` logits Tensor[B·N, 1] → per image Tensor[P_i, 4]."""
        num_images = proposals.shape[0]
        objectness = objectness.reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), level, dtype=torch.int64, device=proposals.device)
                            for level, n in enumerate(anchors_per_level)])
        top = []
        offset = 0
        for level_scores in objectness.split(anchors_per_level, 1):
            count = min(self.pre_nms_top_n(), level_scores.shape[1])
            top.append(level_scores.topk(count, dim=1).indices + offset)
            offset += level_scores.shape[1]
        top_idx = torch.cat(top, 1)
        rows = torch.arange(num_images, device=proposals.device)[:, None]
        scores = torch.sigmoid(objectness[rows, top_idx])
        levels = levels[top_idx]
        proposals = proposals[rows, top_idx]
        kept = []
        for boxes, image_scores, image_levels, size in zip(proposals, scores, levels, image_sizes):
            boxes = clip_boxes_to_image(boxes, size)
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, image_scores, image_levels = boxes[keep], image_scores[keep], image_levels[keep]
            keep = torch.where(image_scores >= self.score_thresh)[0]
            boxes, image_scores, image_levels = boxes[keep], image_scores[keep], image_levels[keep]
            keep = batched_nms(boxes, image_scores, image_levels, self.nms_thresh)[: self.post_nms_top_n()]
            kept.append(boxes[keep])
        return kept

    def assign_targets(self, anchors: list[Tensor], targets: list[dict[str, Tensor]]
                       ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: anchor labels Tensor[N] (1 object, 0 background, -1 ignored) and the matched box Tensor[N, 4]."""
        labels, matched = [], []
        for image_anchors, target in zip(anchors, targets):
            gt_boxes = target["boxes"].to(image_anchors.dtype)
            if gt_boxes.numel() == 0:
                matched.append(torch.zeros_like(image_anchors))
                labels.append(torch.zeros(image_anchors.shape[0], dtype=torch.float32, device=image_anchors.device))
                continue
            matches = self.matcher(box_iou(gt_boxes, image_anchors))
            matched.append(gt_boxes[matches.clamp(min=0)])
            image_labels = (matches >= 0).to(torch.float32)
            image_labels[matches == BELOW_LOW_THRESHOLD] = 0.0
            image_labels[matches == BETWEEN_THRESHOLDS] = -1.0
            labels.append(image_labels)
        return labels, matched

    def loss(self, objectness: Tensor, deltas: Tensor, labels: list[Tensor], regression: Tensor
             ) -> tuple[Tensor, Tensor]:
        positive, negative = self.sampler(labels)
        positive = torch.where(torch.cat(positive))[0]
        negative = torch.where(torch.cat(negative))[0]
        sampled = torch.cat([positive, negative])
        box_loss = F.smooth_l1_loss(deltas[positive], regression[positive], beta=1 / 9, reduction="sum")
        box_loss = box_loss / max(1, sampled.numel())
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], torch.cat(labels)[sampled].to(objectness.dtype))
        return objectness_loss, box_loss
