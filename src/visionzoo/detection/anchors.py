"""Anchor boxes for the RPN: a few sizes × aspect ratios at every position of every feature map."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


def box_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a detector's boxes and scores are computed in for maps of ``dtype``: float64 for a float64 model
    (torchvision's, whose boxes follow its maps), float32 for anything else (bf16/fp16 cannot hold pixel corners
    exactly)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], dtype: torch.dtype = torch.float32,
                 device: torch.device | None = None) -> Tensor:
    """The anchors of one feature-map cell, centred on 0: ``Tensor[len(ratios) · len(sizes), 4]`` xyxy.

    An aspect ratio r is height / width at constant area size²; corners are rounded to whole pixels
    (ratio-major order: all sizes of the first ratio first), as torchvision's AnchorGenerator does.
    """
    scales = torch.as_tensor(sizes, dtype=dtype, device=device)
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    widths = (w_ratios[:, None] * scales[None, :]).view(-1)
    heights = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-widths, -heights, widths, heights], dim=1) / 2).round()


def grid_anchors(cell: Tensor, grid_size: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """``cell`` anchors (Tensor[A, 4]) shifted to every cell of a ``grid_size`` (H, W) map whose cells are
    ``stride`` (sy, sx) pixels apart: ``Tensor[H · W · A, 4]``, position-major (all A of cell 0 first)."""
    height, width = grid_size
    shifts_x = torch.arange(0, width, dtype=torch.int32, device=cell.device) * stride[1]
    shifts_y = torch.arange(0, height, dtype=torch.int32, device=cell.device) * stride[0]
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)


class AnchorGenerator(nn.Module):
    """Anchors for a list of feature maps over a padded image batch.

    Args:
        sizes: per feature map, the anchor sizes (square root of the area, in input pixels); a flat
            tuple of numbers means one size per map, as in torchvision.
        aspect_ratios: per feature map, the height/width ratios; a flat tuple is shared by every map.

    ``forward(batch_shape, feature_maps)``: ``batch_shape`` (H, W) of the padded batch, or the batch itself (an
    ImageBatch, or torchvision's ImageList, as torchvision's generator is called); ``feature_maps``
    Tensor[B, C, H_l, W_l]; returns per image ``Tensor[sum_l H_l · W_l · A_l, 4]`` xyxy (the same for
    every image of the batch), float32 whatever the maps' dtype (bf16 cannot hold pixel corners exactly), float64
    for float64 maps (see :func:`box_dtype`).
A map's stride is the integer ratio of the batch size to its size.
    """

    def __init__(self, sizes: Sequence[Sequence[float]] | Sequence[float] = ((32,), (64,), (128,), (256,), (512,)),
                 aspect_ratios: Sequence[Sequence[float]] | Sequence[float] = ((0.5, 1.0, 2.0),) * 5):
        super().__init__()
        if len(sizes) and isinstance(sizes[0], numbers.Number):
            sizes = tuple((s,) for s in sizes)
        if len(aspect_ratios) and isinstance(aspect_ratios[0], numbers.Number):
            aspect_ratios = (aspect_ratios,) * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"AnchorGenerator: {len(sizes)} size tuples but {len(aspect_ratios)} aspect-ratio "
                             "tuples; give one of each per feature map")
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(a) for a in aspect_ratios)
        for what, name, values in (("anchor sizes", "anchor_sizes", self.sizes),
                                   ("aspect ratios", "aspect_ratios", self.aspect_ratios)):
            # else anchors of no area (size 0) that no box matches, or NaN box losses (ratio 0), without a word
            if not all(isinstance(v, numbers.Real) and v > 0 and math.isfinite(v) for level in values for v in level):
                raise ValueError(f"{what} ({name}) must be positive numbers, got {values!r:.80}")

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def forward(self, batch_shape: tuple[int, int] | Any, feature_maps: Sequence[Tensor]) -> list[Tensor]:
        if isinstance(getattr(batch_shape, "tensors", None), Tensor):
            batch_shape = tuple(batch_shape.tensors.shape[-2:])
        if len(feature_maps) != len(self.sizes):
            raise ValueError(f"AnchorGenerator has sizes for {len(self.sizes)} feature maps, got {len(feature_maps)}")
        device, dtype = feature_maps[0].device, box_dtype(feature_maps[0].dtype)
        per_level = []
        for feature, sizes, ratios in zip(feature_maps, self.sizes, self.aspect_ratios):
            grid = (feature.shape[-2], feature.shape[-1])
            stride = (batch_shape[0] // grid[0], batch_shape[1] // grid[1])
            per_level.append(grid_anchors(cell_anchors(sizes, ratios, dtype, device), grid, stride))
        anchors = torch.cat(per_level)
        return [anchors for _ in range(feature_maps[0].shape[0])]
