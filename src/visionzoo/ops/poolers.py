"""Multi-scale RoI Align for feature pyramids (FPN), as torchvision's Faster R-CNN uses it.

Each RoI is pooled from one pyramid level, chosen by the FPN paper's Eq. 1:
``k = floor(k0 + log2(sqrt(w h) / 224) + 1e-6)``, clamped to the levels present, with
``k0 = canonical_level`` (4) and 224 = ``canonical_scale``. A level's scale (1/stride) is inferred
from its feature size against the largest image size, rounded to a power of two.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .boxes import box_area
from .roi_align import _pair, boxes_to_rois, roi_align

__all__ = ["MultiScaleRoIAlign", "infer_scale", "fpn_levels"]


def infer_scale(feature_size: tuple[int, int] | torch.Size, image_size: tuple[int, int]) -> float:
    """The power of two nearest (in log2, ties to even) to feature height / image height.

    Args:
        feature_size: (h, w) of a feature map. image_size: (height, width) of the padded input images.

    Returns:
        float: 2**round(log2(h / height)), e.g. 0.25 for a stride-4 map (torchvision rounds in float32).
    """
    ratio = torch.tensor(float(feature_size[0]) / float(image_size[0]))
    return 2 ** float(ratio.log2().round())


def fpn_levels(
    boxes: list[Tensor], k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4, eps: float = 1e-6
) -> Tensor:
    """FPN level index (0 = level ``k_min``) of every box, FPN paper Eq. 1.

    Args:
        boxes: list of Tensor[L_i, 4] xyxy in image coordinates.
        k_min, k_max: the pyramid's first and last level (log2 of their strides).

    Returns:
        Long[sum L_i]: level - k_min, in [0, k_max - k_min] for every box of positive area; a box of
        zero area goes to level ``k_min``. A flipped box (x2 < x1 xor y2 < y1) has a negative area and
        a NaN size, whose integer level is whatever the NaN converts to: it matches no level, and
        ``MultiScaleRoIAlign`` leaves its output at 0 (as torchvision does).
    """
    sizes = torch.sqrt(torch.cat([box_area(b) for b in boxes]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_scale) + torch.tensor(eps, dtype=sizes.dtype))
    levels = torch.clamp(levels, min=k_min, max=k_max)
    return levels.to(torch.int64) - k_min


class MultiScaleRoIAlign(nn.Module):
    """RoI Align over a feature pyramid; torchvision.ops.MultiScaleRoIAlign's semantics and results.

    Args:
        featmap_names: names of the maps in the forward ``x`` dict to pool from (taken in ``x``'s
            order, finest first, as torchvision does).
        output_size: (PH, PW) or an int.
        sampling_ratio: RoI Align samples per bin and axis (<= 0: adaptive).
        canonical_scale, canonical_level: a 224 x 224 box maps to level 4 (FPN Eq. 1).

    Unlike torchvision, the scales are inferred at every call instead of being frozen at the first
    one; for the same inputs the results are the same.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | tuple[int, int] | list[int],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        if not featmap_names:
            raise ValueError("MultiScaleRoIAlign: featmap_names is empty")
        self.featmap_names = list(featmap_names)
        self.output_size = _pair(output_size, "MultiScaleRoIAlign output_size")
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}"
        )

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """Pool every box from its pyramid level.

        Args:
            x: feature maps Tensor[N, C, H_l, W_l] by name (the same C on every level).
            boxes: N' <= N lists of Tensor[L_i, 4] xyxy boxes, in the coordinates of the input images.
            image_shapes: (height, width) of each input image; the largest sets the scales.

        Returns:
            Tensor[sum L_i, C, PH, PW] in the dtype of the first map.
        """
        features = [v for k, v in x.items() if k in self.featmap_names]
        if not features:
            raise ValueError(
                f"MultiScaleRoIAlign: none of featmap_names {self.featmap_names} is in x (keys {list(x)})"
            )
        if not image_shapes:
            raise ValueError("MultiScaleRoIAlign: image_shapes is empty")
        image_size = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [infer_scale(f.shape[-2:], image_size) for f in features]
        rois = boxes_to_rois(boxes).to(features[0].device)
        if len(features) == 1:
            return roi_align(features[0], rois, self.output_size, scales[0], self.sampling_ratio)
        k_min = int(-math.log2(scales[0]))
        k_max = int(-math.log2(scales[-1]))
        levels = fpn_levels(boxes, k_min, k_max, self.canonical_scale, self.canonical_level)
        first = features[0]
        result = first.new_zeros((rois.shape[0], first.shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[idx], self.output_size, scale, self.sampling_ratio)
            result[idx] = pooled.to(result.dtype)
        return result
