"""Absolute position embeddings at another grid size."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def resample_abs_pos_embed(
    pos_embed: Tensor,
    new_size: tuple[int, int],
    old_size: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """Resample a learned position table to another token grid, keeping the prefix tokens' rows.

    Args:
        pos_embed: Tensor[1, num_prefix_tokens + h·w, D], the grid rows in raster order.
        new_size: the target grid (H, W).
        old_size: the table's grid (h, w); square if None.
        num_prefix_tokens: leading rows (class/distillation tokens) copied unchanged.
        interpolation, antialias: as ``F.interpolate`` (bicubic with antialias, as timm and the
            ViT paper's fine-tuning at higher resolution).

    Returns Tensor[1, num_prefix_tokens + H·W, D] in the input's dtype (interpolated in float32).
    """
    grid_tokens = pos_embed.shape[1] - num_prefix_tokens
    if old_size is None:
        side = math.isqrt(grid_tokens)
        if side * side != grid_tokens:
            raise ValueError(f"a position table of {grid_tokens} grid tokens is not square; give old_size")
        old_size = (side, side)
    if old_size[0] * old_size[1] != grid_tokens:
        raise ValueError(f"a position table of {grid_tokens} grid tokens does not fit the grid {tuple(old_size)}")
    if tuple(new_size) == tuple(old_size):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.float().reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_size), mode=interpolation, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
