"""Position embeddings: a learnt absolute table or a relative position bias table resampled to another grid or
window size, and fixed 2-D sin-cos tables."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)


def resample_abs_pos_embed(
    pos_embed: Tensor,
    new_size: tuple[int, int],
    old_size: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
    verbose: bool = False,
    align_corners: bool | None = None,
) -> Tensor:
    """Resample a learned position table to another token grid, keeping the prefix tokens' rows.

    Args:
        pos_embed: Tensor[1, num_prefix_tokens + h·w, D], the grid rows in raster order.
        new_size: the target grid (H, W).
        old_size: the table's grid (h, w); square if None.
        num_prefix_tokens: leading rows (class/distillation tokens) copied unchanged.
        interpolation, antialias, align_corners: as ``F.interpolate`` (bicubic with antialias, as timm
            and the ViT paper's fine-tuning at higher resolution).
        verbose: log the resize (INFO), as timm's.

    Returns Tensor[1, num_prefix_tokens + H·W, D] in the input's dtype (interpolated in float32).
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must be a Tensor[1, num_prefix_tokens + h·w, D], got shape {tuple(pos_embed.shape)}")
    if not 0 <= num_prefix_tokens <= pos_embed.shape[1]:
        raise ValueError(f"num_prefix_tokens={num_prefix_tokens} must be in 0..{pos_embed.shape[1]}, the rows of the "
                         "position table")
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
    grid = F.interpolate(grid, size=tuple(new_size), mode=interpolation, antialias=antialias,
                         align_corners=align_corners)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    if verbose:
        log.info("Resized position embedding: %s to %s.", tuple(old_size), tuple(new_size))
    return torch.cat([prefix, grid], dim=1)


def _geometric_offsets(source: int, target: int) -> list[float]:
    """Positions for the ``source`` rows of a relative-offset axis (offsets -s..s, ``source = 2s + 1``) that
    span the target axis (offsets -t..t): 0 at the centre and gaps growing geometrically, 1, q, q², ...,
    with the ratio q in [1.01, 1.5] found by bisection so that the s gaps sum to about t (BEiT's recipe)."""
    half, reach = source // 2, target // 2
    low, high = 1.01, 1.5
    while high - low > 1e-6:
        ratio = (low + high) / 2
        if (1.0 - ratio ** half) / (1.0 - ratio) > reach:
            high = ratio
        else:
            low = ratio
    steps, position = [], 1.0
    for i in range(half):
        steps.append(position)
        position += ratio ** (i + 1)
    return [-step for step in reversed(steps)] + [0.0] + steps


def _linear_weights(points: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For each target: the indices of the points left and right of it and the right one's weight, for
    linear interpolation on unevenly spaced increasing ``points``, constant beyond the ends."""
    right = torch.bucketize(targets, points).clamp(max=len(points) - 1)
    left = (right - 1).clamp(min=0)
    span = points[right] - points[left]
    weight = torch.where(span > 0, (targets - points[left]) / span.clamp(min=1e-12), torch.ones_like(span))
    return left, right, weight.clamp(0, 1)


def resample_rel_pos_table(table: Tensor, old_window: tuple[int, int], new_window: tuple[int, int]) -> Tensor:
    """A Swin-style relative position bias table for another window, by BEiT's recipe (timm's
    ``resize_rel_pos_bias_table``, used by its Swin ``set_input_size`` and checkpoint filter).

    Args:
        table: Tensor[(2·oh - 1)·(2·ow - 1), heads], one row per relative offset (dy, dx) of an
            ``old_window`` = (oh, ow) window, dy major.
        new_window: (nh, nw).

    Returns Tensor[(2·nh - 1)·(2·nw - 1), heads] in the table's dtype: along each axis the old offsets are
    placed at geometrically spread positions covering the new range (:func:`_geometric_offsets`; offset 0
    stays at 0), and each new integer offset takes the bilinear interpolation of the old values there
    (constant beyond the outermost ones), computed in float32.
    """
    old_size = (2 * old_window[0] - 1, 2 * old_window[1] - 1)
    new_size = (2 * new_window[0] - 1, 2 * new_window[1] - 1)
    if old_size == new_size:
        return table
    heads = table.shape[1]
    grid = table.float().t().reshape(heads, *old_size)
    (top, bottom, down), (left, right, across) = (
        _linear_weights(torch.tensor(_geometric_offsets(old, new), device=table.device),
                        torch.arange(-(new // 2), new // 2 + 1, dtype=torch.float32, device=table.device))
        for old, new in zip(old_size, new_size)
    )
    rows = grid[:, top] * (1 - down)[:, None] + grid[:, bottom] * down[:, None]
    resampled = rows[:, :, left] * (1 - across) + rows[:, :, right] * across
    return resampled.reshape(heads, -1).t().contiguous().to(table.dtype)


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
