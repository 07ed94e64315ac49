"""Absolute position embeddings: a learnt table resampled to another grid size, and fixed 2-D sin-cos tables."""

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


def sincos_pos_embed_2d(grid_size: tuple[int, int], dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed 2-D sin-cos positions of a token grid: float32 Tensor[gh·gw, dim], raster order.

    The first half of the channels encodes the row, the second half the column, each as sines then
    cosines of the index at ``dim / 4`` frequencies ``10000^(-k / (dim/4))``. The values are those of
    timm's ``build_sincos2d_pos_embed`` (MAE's frequencies), whose channel order is sin row, sin column,
    cos row, cos column. ``dim`` must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid_size[0], dtype=torch.float64, device=device),
                                torch.arange(grid_size[1], dtype=torch.float64, device=device), indexing="ij")
    y, x = rows.reshape(-1, 1) * omega, cols.reshape(-1, 1) * omega
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1).float()
