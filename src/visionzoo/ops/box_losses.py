"""Box regression losses over paired boxes: generalized, distance and complete IoU losses.

Semantics and results are torchvision.ops' ``generalized_box_iou_loss``, ``distance_box_iou_loss`` and
``complete_box_iou_loss``: ``boxes1[i]`` is compared with ``boxes2[i]`` (not every pair, as the IoU family of
:mod:`visionzoo.ops.boxes` does), boxes are ``(x1, y1, x2, y2)``, shapes ``[..., 4]`` that broadcast, and
anything other than float32/float64 is computed in float32. ``eps`` keeps the divisions finite for empty boxes.

GIoU (Rezatofighi et al. 2019): ``1 - IoU + (enclosing area - union) / enclosing area``. DIoU (Zheng et al.
2020): ``1 - IoU + centre distance² / enclosing diagonal²``. CIoU adds ``alpha · v`` to DIoU, ``v`` the
squared difference of the aspect ratios' arctangents (scaled by 4/π²) and ``alpha = v / (1 - IoU + v)``, held
constant for the gradient as in the paper.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"]

REDUCTIONS = ("none", "mean", "sum")


def _paired_boxes(boxes1: Tensor, boxes2: Tensor, reduction: str, who: str) -> tuple[Tensor, Tensor]:
    """Both sets checked (Tensor[..., 4] each, shapes that broadcast) and in float32 unless float64."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{who}: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not isinstance(boxes, Tensor) or boxes.dim() < 1 or boxes.shape[-1] != 4:
            got = f"shape {tuple(boxes.shape)}" if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"{who}: {name} must be Tensor[..., 4] (x1, y1, x2, y2), got {got}")
    try:
        torch.broadcast_shapes(boxes1.shape, boxes2.shape)
    except RuntimeError:
        raise ValueError(f"{who} compares boxes1[i] with boxes2[i]: their shapes {tuple(boxes1.shape)} and "
                         f"{tuple(boxes2.shape)} do not pair up") from None
    return tuple(b if b.dtype in (torch.float32, torch.float64) else b.float() for b in (boxes1, boxes2))


def _iou_and_enclosing(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per pair: IoU (``intersection / (union + eps)``), union, and the smallest enclosing box's width and
    height."""
    x1, y1, x2, y2 = boxes1.unbind(-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(-1)
    overlap_w = torch.minimum(x2, x2g) - torch.maximum(x1, x1g)
    overlap_h = torch.minimum(y2, y2g) - torch.maximum(y1, y1g)
    # boxes that only touch (or miss) intersect in 0, with no gradient through the overlap
    inter = torch.where((overlap_w > 0) & (overlap_h > 0), overlap_w * overlap_h, torch.zeros_like(overlap_w))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    enclosing_w = torch.maximum(x2, x2g) - torch.minimum(x1, x1g)
    enclosing_h = torch.maximum(y2, y2g) - torch.minimum(y1, y1g)
    return inter / (union + eps), union, enclosing_w, enclosing_h


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean() if loss.numel() else 0.0 * loss.sum()  # no pairs: 0, still part of the graph
    return loss.sum() if reduction == "sum" else loss


def generalized_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """GIoU loss of each pair: Tensor[..., 4] × Tensor[..., 4] → Tensor[...] (``reduction="none"``) or a scalar
    (``"mean"``, ``"sum"``). Symmetric in its arguments."""
    boxes1, boxes2 = _paired_boxes(boxes1, boxes2, reduction, "generalized_box_iou_loss")
    iou, union, enclosing_w, enclosing_h = _iou_and_enclosing(boxes1, boxes2, eps)
    enclosing = enclosing_w * enclosing_h
    return _reduce(1 - (iou - (enclosing - union) / (enclosing + eps)), reduction)


def _distance_loss_and_iou(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    iou, _, enclosing_w, enclosing_h = _iou_and_enclosing(boxes1, boxes2, eps)
    diagonal_sq = enclosing_w ** 2 + enclosing_h ** 2 + eps
    centre1, centre2 = (boxes1[..., :2] + boxes1[..., 2:]) / 2, (boxes2[..., :2] + boxes2[..., 2:]) / 2
    centre_sq = (centre1[..., 0] - centre2[..., 0]) ** 2 + (centre1[..., 1] - centre2[..., 1]) ** 2
    return 1 - iou + centre_sq / diagonal_sq, iou


def distance_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """DIoU loss of each pair: Tensor[..., 4] × Tensor[..., 4] → Tensor[...] or a scalar (see
    :func:`generalized_box_iou_loss`)."""
    boxes1, boxes2 = _paired_boxes(boxes1, boxes2, reduction, "distance_box_iou_loss")
    return _reduce(_distance_loss_and_iou(boxes1, boxes2, eps)[0], reduction)


def complete_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """CIoU loss of each pair, ``boxes1`` the predictions and ``boxes2`` the targets (the aspect-ratio term
    compares them): Tensor[..., 4] × Tensor[..., 4] → Tensor[...] or a scalar."""
    boxes1, boxes2 = _paired_boxes(boxes1, boxes2, reduction, "complete_box_iou_loss")
    distance_loss, iou = _distance_loss_and_iou(boxes1, boxes2, eps)
    width1, height1 = boxes1[..., 2] - boxes1[..., 0], boxes1[..., 3] - boxes1[..., 1]
    width2, height2 = boxes2[..., 2] - boxes2[..., 0], boxes2[..., 3] - boxes2[..., 1]
    v = (4 / math.pi ** 2) * (torch.atan(width2 / height2) - torch.atan(width1 / height1)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return _reduce(distance_loss + alpha * v, reduction)
