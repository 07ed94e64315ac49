"""Box geometry: format conversion, areas, the IoU family, clipping, size filtering and masks' boxes.

Semantics and results are torchvision.ops': boxes are ``(x1, y1, x2, y2)`` unless a format is named;
every function takes any number of leading batch dimensions. Half-precision and small integer
boxes are widened to float32 / int32 before products (as torchvision does), so areas do not overflow.

The IoU family compares two sets, Tensor[..., N, 4] and Tensor[..., M, 4], into Tensor[..., N, M]; a
single box Tensor[4] counts as a set of one (torchvision takes one as ``boxes1``, giving [1, M]).

Boxes with ``x2 < x1`` or ``y2 < y1`` are not rejected: they get a negative width or height, hence
a negative (or, with both flipped, positive) area, and an intersection of 0 with everything
(overlaps are clamped at 0). Their IoU is then ``0 / union``: 0, -0, or NaN when the union is 0
too, exactly as torchvision computes it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_convert",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "distance_box_iou",
    "complete_box_iou",
    "clip_boxes_to_image",
    "remove_small_boxes",
    "masks_to_boxes",
]

FORMATS = ("xyxy", "xywh", "cxcywh")


def _check_format(fmt: str, name: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"{name} must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _check_boxes(boxes: Tensor, name: str) -> None:
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must be Tensor[..., 4], got shape {tuple(boxes.shape)}")


def _box_set(boxes: Tensor, name: str) -> Tensor:
    """``boxes`` Tensor[..., N, 4] checked, a single box Tensor[4] as Tensor[1, 4] (torchvision's IoU
    functions take one for ``boxes1`` and return Tensor[1, M])."""
    _check_boxes(boxes, name)
    return boxes[None] if boxes.dim() == 1 else boxes


def _widen(t: Tensor) -> Tensor:
    """float16/bfloat16 -> float32 and int8/int16/uint8 -> int32 before products, like torchvision."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    if fmt == "xywh":
        x, y, w, h = boxes.unbind(-1)
        return torch.stack([x, y, x + w, y + h], -1)
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def _from_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack([x1, y1, x2 - x1, y2 - y1], -1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes between ``"xyxy"`` (corners), ``"xywh"`` (top-left corner, size) and ``"cxcywh"`` (centre, size).

    Args:
        boxes: Tensor[..., 4] in ``in_fmt``, any dtype.

    Returns:
        Tensor[..., 4] in ``out_fmt`` (a copy when the formats are equal). Converting between
        xywh and cxcywh goes through xyxy, as torchvision does, so the float results are its own.
        An integer ``cxcywh`` result is computed with true division, as torchvision's.
    """
    _check_format(in_fmt, "in_fmt")
    _check_format(out_fmt, "out_fmt")
    _check_boxes(boxes, "boxes")
    if in_fmt == out_fmt:
        return boxes.clone()
    if in_fmt != "xyxy":
        boxes = _to_xyxy(boxes, in_fmt)
    return boxes if out_fmt == "xyxy" else _from_xyxy(boxes, out_fmt)


def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    """Areas of boxes.

    Args:
        boxes: Tensor[..., 4] in ``fmt``.

    Returns:
        Tensor[...]: width * height, float32/float64 for float boxes (half precision widened), int32/int64
        for integer boxes. Negative for a box with exactly one of x2 < x1, y2 < y1.
    """
    _check_format(fmt, "fmt")
    _check_boxes(boxes, "boxes")
    boxes = _widen(boxes)
    if fmt == "xyxy":
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return boxes[..., 2] * boxes[..., 3]


def _corners(boxes1: Tensor, boxes2: Tensor, fmt: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-left and bottom-right corners of both sets, [..., N, 1, 2] and [..., 1, M, 2], the way
    torchvision's intersection forms them for each format."""
    if fmt == "xyxy":
        lt1, rb1, lt2, rb2 = boxes1[..., :2], boxes1[..., 2:], boxes2[..., :2], boxes2[..., 2:]
    elif fmt == "xywh":
        lt1, lt2 = boxes1[..., :2], boxes2[..., :2]
        rb1, rb2 = lt1 + boxes1[..., 2:], lt2 + boxes2[..., 2:]
    else:
        lt1, rb1 = boxes1[..., :2] - boxes1[..., 2:] / 2, boxes1[..., :2] + boxes1[..., 2:] / 2
        lt2, rb2 = boxes2[..., :2] - boxes2[..., 2:] / 2, boxes2[..., :2] + boxes2[..., 2:] / 2
    return lt1[..., :, None, :], rb1[..., :, None, :], lt2[..., None, :, :], rb2[..., None, :, :]


def _inter_union(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> tuple[Tensor, Tensor]:
    area1, area2 = box_area(boxes1, fmt), box_area(boxes2, fmt)
    lt1, rb1, lt2, rb2 = _corners(boxes1, boxes2, fmt)
    wh = _widen(torch.min(rb1, rb2) - torch.max(lt1, lt2)).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, area1[..., :, None] + area2[..., None, :] - inter


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Pairwise intersection over union.

    Args:
        boxes1: Tensor[..., N, 4], boxes2: Tensor[..., M, 4], both in ``fmt``.

    Returns:
        Tensor[..., N, M] float: IoU of every pair; NaN for two boxes of zero area (0 / 0).
    """
    _check_format(fmt, "fmt")
    boxes1, boxes2 = _box_set(boxes1, "boxes1"), _box_set(boxes2, "boxes2")
    inter, union = _inter_union(boxes1, boxes2, fmt)
    return inter / union


def _enclosing_wh(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Tensor[..., N, M, 2]: width and height of the smallest box enclosing each pair (xyxy)."""
    lt = torch.min(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.max(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    return _widen(rb - lt).clamp(min=0)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU: IoU - (enclosing area - union) / enclosing area, in [-1, 1].

    Args:
        boxes1: Tensor[..., N, 4] xyxy, boxes2: Tensor[..., M, 4] xyxy.

    Returns:
        Tensor[..., N, M] float.
    """
    boxes1, boxes2 = _box_set(boxes1, "boxes1"), _box_set(boxes2, "boxes2")
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / union
    wh = _enclosing_wh(boxes1, boxes2)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


def _diou_and_iou(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / union
    wh = _enclosing_wh(boxes1, boxes2)
    diagonal_sq = wh[..., 0] ** 2 + wh[..., 1] ** 2 + eps
    cx1, cy1 = (boxes1[..., 0] + boxes1[..., 2]) / 2, (boxes1[..., 1] + boxes1[..., 3]) / 2
    cx2, cy2 = (boxes2[..., 0] + boxes2[..., 2]) / 2, (boxes2[..., 1] + boxes2[..., 3]) / 2
    centre_sq = _widen(cx1[..., :, None] - cx2[..., None, :]) ** 2 + _widen(cy1[..., :, None] - cy2[..., None, :]) ** 2
    return iou - centre_sq / diagonal_sq, iou


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise distance IoU: IoU - (centre distance)^2 / (enclosing diagonal^2 + eps).

    Args:
        boxes1: Tensor[..., N, 4] xyxy, boxes2: Tensor[..., M, 4] xyxy; eps guards an empty enclosing box.

    Returns:
        Tensor[..., N, M] float.
    """
    boxes1, boxes2 = _box_set(boxes1, "boxes1"), _box_set(boxes2, "boxes2")
    return _diou_and_iou(_widen(boxes1), _widen(boxes2), eps)[0]


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise complete IoU: DIoU - alpha * v, v = (4 / pi^2) (atan(w1/h1) - atan(w2/h2))^2 the aspect
    term and alpha = v / (1 - IoU + v + eps), held constant for gradients as in the CIoU paper.

    Args:
        boxes1: Tensor[..., N, 4] xyxy, boxes2: Tensor[..., M, 4] xyxy.

    Returns:
        Tensor[..., N, M] float.
    """
    boxes1, boxes2 = _widen(_box_set(boxes1, "boxes1")), _widen(_box_set(boxes2, "boxes2"))
    diou, iou = _diou_and_iou(boxes1, boxes2, eps)
    w1 = boxes1[..., :, None, 2] - boxes1[..., :, None, 0]
    h1 = boxes1[..., :, None, 3] - boxes1[..., :, None, 1]
    w2 = boxes2[..., None, :, 2] - boxes2[..., None, :, 0]
    h2 = boxes2[..., None, :, 3] - boxes2[..., None, :, 1]
    v = (4 / torch.pi**2) * torch.pow(torch.atan(w1 / h1) - torch.atan(w2 / h2), 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp x to [0, width] and y to [0, height].

    Args:
        boxes: Tensor[..., 4] xyxy. size: (height, width) of the image.

    Returns:
        Tensor[..., 4] xyxy, same dtype. A flipped box (x2 < x1) stays flipped.
    """
    _check_boxes(boxes, "boxes")
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both >= ``min_size``.

    Args:
        boxes: Tensor[N, 4] xyxy. (Tensor[B, N, 4] is taken as torchvision takes it: each kept box then
        gives its index along the first dimension, b, so the indices repeat; they are not indices into
        the flattened boxes.)

    Returns:
        Tensor[K] int64. Flipped boxes have a negative side and are removed for any ``min_size > 0``.
    """
    _check_boxes(boxes, "boxes")
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]


def masks_to_boxes(masks: Tensor) -> Tensor:
    """The box around each mask's nonzero pixels: Tensor[N, H, W] → float32 Tensor[N, 4] xyxy of pixel indices
    (``x2``/``y2`` the last column/row with a pixel, so a one-pixel mask gives ``x1 == x2``), as torchvision's; an
    empty mask gives ``[0, 0, 0, 0]``, also when H or W is 0 (where torchvision returns no boxes at all)."""
    if not isinstance(masks, Tensor) or masks.dim() != 3:
        got = f"shape {tuple(masks.shape)}" if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"masks_to_boxes takes masks Tensor[N, H, W], got {got}")
    if not masks.numel():
        return masks.new_zeros((masks.shape[0], 4), dtype=torch.float32)
    occupied = masks != 0
    rows, cols = occupied.any(2), occupied.any(1)  # [N, H], [N, W]: where each mask has a pixel

    def first_and_last(lines: Tensor) -> tuple[Tensor, Tensor]:
        index = torch.arange(lines.shape[1], device=lines.device).expand_as(lines)
        return torch.where(lines, index, lines.shape[1]).amin(1), torch.where(lines, index, -1).amax(1)

    (y1, y2), (x1, x2) = first_and_last(rows), first_and_last(cols)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where(rows.any(1)[:, None], boxes, torch.zeros_like(boxes))
