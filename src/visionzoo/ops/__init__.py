"""visionzoo.ops: detection operators as pure tensor functions, with torchvision.ops' semantics.

Boxes are ``(x1, y1, x2, y2)`` unless a format is named. See each module for the details:
``boxes`` (conversion, areas, IoU family, clipping, masks' boxes), ``box_losses`` (GIoU, DIoU and CIoU losses of
paired boxes), ``box_coder`` (R-CNN box transform),
``nms`` (greedy, per category, soft), ``roi_align`` (RoI Align and RoI Pool, functions and modules), ``poolers``
(multi-scale RoI Align for FPN).
"""

from .box_coder import BoxCoder
from .box_losses import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss
from .boxes import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
    masks_to_boxes,
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
    "complete_box_iou_loss",
    "distance_box_iou",
    "distance_box_iou_loss",
    "generalized_box_iou",
    "generalized_box_iou_loss",
    "masks_to_boxes",
    "nms",
    "remove_small_boxes",
    "roi_align",
    "roi_pool",
    "soft_nms",
]
