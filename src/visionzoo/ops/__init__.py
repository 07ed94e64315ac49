"""visionzoo.ops: detection operators as pure tensor functions, with torchvision.ops' semantics.

Boxes are ``(x1, y1, x2, y2)`` unless a format is named. See each module for the details:
``boxes`` (conversion, areas, IoU family, clipping), ``box_coder`` (R-CNN box transform),
``nms`` (greedy, per category, soft), ``roi_align`` (RoI Align and RoI Pool, functions and modules), ``poolers``
(multi-scale RoI Align for FPN).
"""

from .box_coder import BoxCoder
from .boxes import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
    remove_small_boxes,
)
from .nms import batched_nms, nms, soft_nms
from .poolers import MultiScaleRoIAlign
from .roi_align import RoIAlign, RoIPool, boxes_to_rois, roi_align, roi_pool

__all__ = [
    "BoxCoder",
    "MultiScaleRoIAlign",
    "RoIAlign",
    "RoIPool",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "boxes_to_rois",
    "clip_boxes_to_image",
    "complete_box_iou",
    "distance_box_iou",
    "generalized_box_iou",
    "nms",
    "remove_small_boxes",
    "roi_align",
    "roi_pool",
    "soft_nms",
]
