"""The R-CNN box transform between boxes and regression targets, as torchvision's Faster R-CNN codes it.

An anchor (proposal) with centre (p_x, p_y) and size (p_w, p_h) and a box (b_x, b_y, b_w, b_h) are
related by the notes' formulas  b_x = p_x + p_w t_x,  b_y = p_y + p_h t_y,  b_w = p_w exp(t_w),
b_h = p_h exp(t_h). The regression targets are the t's scaled by ``weights`` (wx, wy, ww, wh):
deltas = (wx t_x, wy t_y, ww t_w, wh t_h), which brings them to roughly unit variance (Faster
R-CNN's box head uses (10, 10, 5, 5), its RPN (1, 1, 1, 1)). Decoding clamps t_w and t_h at
``bbox_xform_clip`` (log(1000 / 16) by default) so that exp() cannot blow up a box.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BoxCoder"]


def _check_tensors(method: str, **tensors: object) -> None:
    """Refuse a non-Tensor argument by name: torchvision's encode/decode take per-image lists of boxes (ours are
    its encode_single/decode_single), which otherwise failed on a list's missing ``dim``."""
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            shape = "Tensor[N, 4K]" if name == "deltas" else "Tensor[N, 4]"
            hint = " (torchvision's per-image list: pass torch.cat of it)" if isinstance(value, list | tuple) else ""
            raise ValueError(f"BoxCoder.{method}: {name} must be {shape}, got a {type(value).__name__}{hint}")


class BoxCoder:
    """Encode boxes as deltas relative to anchors and decode them back.

    Args:
        weights: (wx, wy, ww, wh) multiplying (t_x, t_y, t_w, t_h); finite and non-zero.
        bbox_xform_clip: upper clamp of t_w and t_h before exp() when decoding.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"BoxCoder weights must be 4 numbers (wx, wy, ww, wh), got {weights!r}")
        self.weights = tuple(float(w) for w in weights)
        if not all(math.isfinite(w) and w != 0 for w in self.weights):
            # decoding divides the deltas by them (torchvision does not check): every box would be inf/NaN
            raise ValueError(f"BoxCoder weights must be finite and non-zero (wx, wy, ww, wh), got {weights!r}")
        self.bbox_xform_clip = float(bbox_xform_clip)
        if math.isnan(self.bbox_xform_clip):  # a clamp to NaN makes every decoded box NaN
            raise ValueError(f"BoxCoder bbox_xform_clip must be a number or inf, got {bbox_xform_clip!r}")

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip})"

    def encode(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """Regression targets that move each anchor onto its box.

        Args:
            gt_boxes: Tensor[N, 4] xyxy, the boxes to reach (float).
            anchors: Tensor[N, 4] xyxy, the boxes they are expressed against, one per row of ``gt_boxes``.

        Returns:
            Tensor[N, 4] (dx, dy, dw, dh) in ``gt_boxes``' dtype. An anchor of zero width or height
            gives inf/NaN deltas (a division by zero), as in torchvision; flipped boxes (x2 < x1) give
            NaN dw/dh (log of a negative ratio).
        """
        _check_tensors("encode", gt_boxes=gt_boxes, anchors=anchors)
        if gt_boxes.shape != anchors.shape or gt_boxes.dim() != 2 or gt_boxes.shape[-1] != 4:
            raise ValueError(
                "BoxCoder.encode: gt_boxes and anchors must both be Tensor[N, 4], got shapes "
                f"{tuple(gt_boxes.shape)} and {tuple(anchors.shape)}"
            )
        wx, wy, ww, wh = torch.as_tensor(self.weights, dtype=gt_boxes.dtype, device=gt_boxes.device)
        ex_w = anchors[:, 2:3] - anchors[:, 0:1]
        ex_h = anchors[:, 3:4] - anchors[:, 1:2]
        ex_cx = anchors[:, 0:1] + 0.5 * ex_w
        ex_cy = anchors[:, 1:2] + 0.5 * ex_h
        gt_w = gt_boxes[:, 2:3] - gt_boxes[:, 0:1]
        gt_h = gt_boxes[:, 3:4] - gt_boxes[:, 1:2]
        gt_cx = gt_boxes[:, 0:1] + 0.5 * gt_w
        gt_cy = gt_boxes[:, 1:2] + 0.5 * gt_h
        dx = wx * (gt_cx - ex_cx) / ex_w
        dy = wy * (gt_cy - ex_cy) / ex_h
        dw = ww * torch.log(gt_w / ex_w)
        dh = wh * torch.log(gt_h / ex_h)
        return torch.cat((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes from deltas; several boxes per anchor (one per class) are allowed.

        Args:
            deltas: Tensor[N, 4 * K] (dx, dy, dw, dh) repeated for K boxes per anchor (K = 1: Tensor[N, 4]).
            anchors: Tensor[N, 4] xyxy, converted to ``deltas``' dtype.

        Returns:
            Tensor[N, 4 * K] xyxy boxes in ``deltas``' dtype (not clipped to any image).
        """
        _check_tensors("decode", deltas=deltas, anchors=anchors)
        if deltas.dim() != 2 or deltas.shape[1] % 4 or anchors.dim() != 2 or anchors.shape != (deltas.shape[0], 4):
            raise ValueError(
                "BoxCoder.decode: deltas must be Tensor[N, 4K] and anchors Tensor[N, 4], got shapes "
                f"{tuple(deltas.shape)} and {tuple(anchors.shape)}"
            )
        anchors = anchors.to(deltas.dtype)
        widths = anchors[:, 2] - anchors[:, 0]
        heights = anchors[:, 3] - anchors[:, 1]
        ctr_x = anchors[:, 0] + 0.5 * widths
        ctr_y = anchors[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = torch.tensor(0.5, dtype=deltas.dtype, device=deltas.device) * (torch.exp(dw) * widths[:, None])
        half_h = torch.tensor(0.5, dtype=deltas.dtype, device=deltas.device) * (torch.exp(dh) * heights[:, None])
        corners = (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h)
        return torch.stack(corners, dim=2).flatten(1)
