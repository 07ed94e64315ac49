"""Swin Transformer (Liu et al. 2021, "Hierarchical Vision Transformer using Shifted Windows"), timm's layout.

A ``patch_size`` patch embedding (strided conv and LayerNorm) makes a ``Tensor[B, H/p, W/p, C]`` map of
tokens (NHWC throughout, as timm 1.x). Stages follow (four in the paper); all but the first start with
a patch merging (2×2 neighbours concatenated, LayerNorm, linear 4C → 2C: half the size, twice the
width). Each stage alternates blocks of window attention (W-MSA: self-attention inside non-overlapping
``window_size`` windows, with a learned relative position bias) and shifted-window attention (SW-MSA:
the map is rolled by half a window first, and a mask of -100 keeps the regions that the roll brought
together apart). A final LayerNorm, global average pooling and a linear ``head.fc`` classify.

Module and parameter names are timm's (``patch_embed.{proj,norm}``, ``layers.N.downsample.{norm,
reduction}``, ``layers.N.blocks.M.{norm1, attn.qkv, attn.proj, attn.relative_position_bias_table,
norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head.fc``), so timm's state dicts load key for key. The model
has no buffers: timm's ``relative_position_index`` and ``attn_mask`` (absent from timm 1.x state dicts,
present in older and official files) are computed here from the map and window and dropped from
checkpoints by :func:`checkpoint_filter_fn`, which also converts the official Microsoft layout.

Any input size: an image that is no multiple of the patch is zero-padded (right, bottom), and so is
every map that is no multiple of its window, after the block's first LayerNorm, before the cyclic
shift (the original implementation's order). The attention of a padded map is thus exactly that of
the explicitly zero-padded map, and the shift mask is the one of the padded map, so no token attends
across the roll's wrap-around. timm 1.x rolls first and pads after, which puts the mask's region
borders off the wrap-around when a shifted block pads (tokens of opposite edges then see each other):
on such inputs the two differ; wherever no shifted block pads (the registered sizes at their own
input size among them), they are the same. Windows are fitted to the map as timm does at build time:
along a side where the map is no larger than the window, the window shrinks to the map and the
shift is 0; ``img_size`` sets these build-time windows (and so the relative-position tables' shapes),
and any other input size gets the same rule at run time with the built windows as the largest.
With ``dynamic_img_size=True`` (timm's option) the model does as timm's does instead: every block keeps the
window and shift of its map at ``img_size``, rolls before it pads, and makes the shift mask for the input's
maps, so that its logits are timm's at any input size; with ``always_partition=True`` (timm's too) the
windows are not fitted at all: full windows, and half-window shifts, on maps of any size, rolled before padding.

Speed (inference): the relative position bias, gathered from its table, plus the shift mask, is one
additive bias per (map, window, shift) given to ``scaled_dot_product_attention``; without autograd it
is cached per dtype and device (and recomputed when the table changes). Cyclic shift, padding and
window partition are one gather with a precomputed index, their inverse another. Without autograd (and
unless traced or compiled) a stage runs over sub-batches of about ``_CHUNK_BYTES`` of activations with in-place residual updates
(GELU in place, ``fc2`` accumulated into the tokens, the attention output added by ``index_add_``),
so that no large buffer is allocated per operation; the sums are the same, up to rounding order.
With autograd (training) the attention is written out as timm's is, since the fused kernels take no
gradient for the bias: logits and gradients are then timm's.

Sizes are data (``_SIZES``). Besides timm's names, small models for the built-in data sets are
registered: ``swin_tiny_patch2_window4_32`` (32×32 Digits) and ``swin_tiny_patch2_window4_64``
(64×64 Shapes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from visionzoo.constants import IMAGENET_MEAN, IMAGENET_STD
from visionzoo.layers import Attention, DropPath, FeatureInfo, Linear, Mlp, PatchEmbed, run_blocks
from visionzoo.layers.classifier import (
    ADAPTIVE_POOLS,
    check_global_pool,
    global_pool_2d,
    keeps_device_and_dtype,
    pooled_width,
)
from visionzoo.layers.drop import check_dropout_rates, drop_path_rates
from visionzoo.layers.features import feature_take_indices, taken_in_order
from visionzoo.layers.patch_embed import resample_patch_embed
from visionzoo.layers.pos_embed import resample_rel_pos_table
from visionzoo.models._registry import Pretrained, record_model_args, register_model
from visionzoo.utils import (
    autocast_enabled,
    check_argument_types,
    is_integer,
    is_traced,
    runs_in_cache_chunks,
    whole_number,
)

# timm's and the original code's value: finite, so that no row is ever all -inf
MASK_VALUE = -100.0
# Activation bytes (tokens × channels × element size) per sub-batch of a stage in inference (at least
# one image): the MLP's hidden activations (4×) then stay under glibc's largest mmap threshold (32 MiB),
# so their buffers are reused instead of page-faulted in at every operation.
_CHUNK_BYTES = 8 << 20
_BIAS_CACHE_SIZE = 8


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    """``value`` (an int, NumPy's too, or a pair) as a pair of Python ints."""
    return (int(value), int(value)) if is_integer(value) else (int(value[0]), int(value[1]))


def _int_or_pair(size: tuple[int, int]) -> int | tuple[int, int]:
    return size[0] if size[0] == size[1] else size


def _check_window(window_size: int | Sequence[int]) -> None:
    if min(_pair(window_size)) < 1:
        raise ValueError(f"window_size must be positive, got {window_size!r}")


def fit_window(
    map_size: tuple[int, int], window: tuple[int, int], shifted: bool
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The window and shift a block uses on a ``map_size`` map (timm's rule, per side): the window
    shrinks to the map where the map is no larger, and the shift (half the window, for the shifted
    blocks) is 0 along such a side."""
    fitted = (min(window[0], map_size[0]), min(window[1], map_size[1]))
    shift = tuple(w // 2 if shifted and m > w else 0 for w, m in zip(fitted, map_size))
    return fitted, shift


@dataclass(frozen=True)
class WindowPlan:
    """How a ``size`` = (H, W) map is cut into windows: zero-padded to ``grid`` (multiples of
    ``window``), rolled by ``-shift``, cut into ``num_windows`` windows of ``area`` tokens.

    ``gather``: ``Tensor[num_windows · area]`` long, the flat map index (``h · W + w``) of the token in
    each window slot (windows in raster order, tokens raster order inside; padding slots hold 0 and
    are listed in ``pad_slots``, or None). ``scatter``: ``Tensor[H · W]``, the slot of each map token.
    ``mask``: ``Tensor[num_windows, area, area]`` float, ``MASK_VALUE`` between tokens of different
    regions of the rolled map (None without shift).
    """

    size: tuple[int, int]
    window: tuple[int, int]
    shift: tuple[int, int]
    grid: tuple[int, int]
    gather: Tensor
    scatter: Tensor
    pad_slots: Tensor | None
    mask: Tensor | None

    @property
    def num_windows(self) -> int:
        return (self.grid[0] // self.window[0]) * (self.grid[1] // self.window[1])

    @property
    def area(self) -> int:
        return self.window[0] * self.window[1]


def _to_windows(t: Tensor, window: tuple[int, int]) -> Tensor:
    """``Tensor[Hp, Wp] -> Tensor[num_windows, wh · ww]`` (windows and their tokens in raster order)."""
    (hp, wp), (wh, ww) = t.shape, window
    return t.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)


@lru_cache(maxsize=64)
def window_plan(
    size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], device: torch.device,
    roll_first: bool = False,
) -> WindowPlan:
    """The :class:`WindowPlan` of a ``size`` map (cached: it depends on the sizes only). ``roll_first``: the map
    is rolled before it is padded (timm's order), not padded and then rolled."""
    # normal tensors even when first asked for under inference_mode: autograd saves the indices later
    with torch.inference_mode(False):
        return _make_window_plan(size, window, shift, device, roll_first)


def _source_index(index: Tensor, side: int, shift: int, roll_first: bool) -> Tensor:
    """The padded map's row (or column) that row ``index`` of the rolled, padded map shows (``>= side``: padding)."""
    if roll_first:
        return torch.where(index < side, (index + shift) % side, index)
    return (index + shift) % index.numel()


def _make_window_plan(
    size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], device: torch.device,
    roll_first: bool = False,
) -> WindowPlan:
    (height, width), (wh, ww), (sh, sw) = size, window, shift
    grid = (math.ceil(height / wh) * wh, math.ceil(width / ww) * ww)
    row_index, col_index = torch.arange(grid[0], device="cpu"), torch.arange(grid[1], device="cpu")
    src_rows = _to_windows(_source_index(row_index, height, sh, roll_first)[:, None].expand(grid), window).flatten()
    src_cols = _to_windows(_source_index(col_index, width, sw, roll_first)[None, :].expand(grid), window).flatten()
    real = (src_rows < height) & (src_cols < width)
    gather = torch.where(real, src_rows * width + src_cols, 0)
    # no boolean indexing (its size depends on the data: a graph break under torch.compile): padding slots write
    # into a spare last entry of ``scatter``, and stable sorting puts them first
    slots = torch.arange(gather.numel(), device="cpu")
    scatter = torch.empty(height * width + 1, dtype=torch.long, device="cpu")
    scatter[torch.where(real, gather, height * width)] = slots
    padding = grid[0] * grid[1] - height * width
    pad_slots = real.byte().argsort(stable=True)[:padding].to(device) if padding else None
    mask = None
    if sh or sw:
        # regions of the rolled (padded) map: the last ``shift`` rows/cols came from the top/left edge
        row_region = (row_index >= grid[0] - wh).long() + (row_index >= grid[0] - sh).long()
        col_region = (col_index >= grid[1] - ww).long() + (col_index >= grid[1] - sw).long()
        region = _to_windows(row_region[:, None] * 3 + col_region[None, :], window)
        mask = (region[:, :, None] != region[:, None, :]).float().mul_(MASK_VALUE).to(device)
    return WindowPlan(size, window, shift, grid, gather.to(device), scatter[:-1].to(device), pad_slots, mask)


@lru_cache(maxsize=64)
def relative_position_index(window: tuple[int, int], table_window: tuple[int, int], device: torch.device) -> Tensor:
    """``Tensor[N, N]`` long (``N = wh · ww``): the row of the relative position table of a
    ``table_window`` window for each (query, key) pair of a ``window`` window (at most as large)."""
    with torch.inference_mode(False):
        rows, cols = torch.arange(window[0], device="cpu"), torch.arange(window[1], device="cpu")
        coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij")).flatten(1)
        delta = coords[:, :, None] - coords[:, None, :]
        index = (delta[0] + table_window[0] - 1) * (2 * table_window[1] - 1) + delta[1] + table_window[1] - 1
        return index.to(device)


def _relative_position_bias(table: Tensor, table_window: tuple[int, int], window: tuple[int, int]) -> Tensor:
    """``Tensor[num_heads, N, N]`` from the relative position ``table`` of a ``table_window`` window, for a
    ``window`` window at most as large (``N = wh · ww``)."""
    index = relative_position_index(window, table_window, table.device)
    area = window[0] * window[1]
    return table[index.flatten()].view(area, area, -1).permute(2, 0, 1)


def _plan_bias(table: Tensor, table_window: tuple[int, int], plan: WindowPlan) -> Tensor:
    """The additive attention bias of ``plan``'s windows (see :meth:`SwinTransformerBlock.attn_bias`), made anew."""
    bias = _relative_position_bias(table, table_window, plan.window).unsqueeze(0)
    return bias if plan.mask is None else bias + plan.mask.unsqueeze(1)


def block_plan(
    size: tuple[int, int], window_size: tuple[int, int], shifted: bool, fixed_shift: tuple[int, int] | None,
    device: torch.device,
) -> WindowPlan:
    """The :class:`WindowPlan` of a block of ``window_size`` windows (``shifted`` or not) on a ``size`` map: the
    window and shift fitted to that map, padded before the roll; or with a ``fixed_shift`` (timm's dynamic mask
    and ``always_partition``) ``window_size`` and that shift, whatever the map, rolled before the padding."""
    if fixed_shift is None:
        window, shift = fit_window(size, window_size, shifted)
        return window_plan(size, window, shift, device)
    return window_plan(size, window_size, fixed_shift, device, roll_first=True)


def _map_plan(
    y: Tensor, window_size: tuple[int, int], shifted: bool, fixed_shift: tuple[int, int] | None
) -> WindowPlan:
    """:func:`block_plan` for the map ``y`` (``Tensor[B, H, W, C]``)."""
    return block_plan((y.shape[1], y.shape[2]), window_size, shifted, fixed_shift, y.device)


def _partition(y: Tensor, plan: WindowPlan) -> Tensor:
    """``Tensor[B, H, W, C] -> Tensor[B · num_windows, N, C]``: ``y`` padded, rolled and cut into ``plan``'s
    windows (one gather)."""
    batch, height, width, channels = y.shape
    windows = y.reshape(batch, height * width, channels).index_select(1, plan.gather)
    if plan.pad_slots is not None:
        windows.index_fill_(1, plan.pad_slots, 0)
    return windows.view(-1, plan.area, channels)


# torch.fx (torchvision's create_feature_extractor) records the windows of a map, their bias and the partition
# as one call each, run on the real map: they depend on its size, which torch.fx's symbols cannot branch on or
# hash; the attention in the windows is traced as it is
torch.fx.wrap("_plan_bias")
torch.fx.wrap("_map_plan")
torch.fx.wrap("_partition")


class WindowAttention(Attention):
    """Multi-head self-attention inside windows, with a learned relative position bias:
    ``Tensor[B, N, dim] -> Tensor[B, N, dim]`` for B windows of ``N`` tokens.

    The shared :class:`~visionzoo.layers.attention.Attention` (``qkv``, ``proj``) plus
    ``relative_position_bias_table``: ``Tensor[(2·wh - 1)·(2·ww - 1), num_heads]``, one row per
    relative offset in a ``window_size`` window (timm's layout). Windows up to that size are taken.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: tuple[int, int],
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
    ):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop, head_dim)
        self.window_size = _pair(window_size)
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self, window: tuple[int, int]) -> Tensor:
        """``Tensor[num_heads, N, N]``: the bias of each head for a ``window`` window (``N = wh · ww``)."""
        return _relative_position_bias(self.relative_position_bias_table, self.window_size, window)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """``x``: Tensor[B, N, dim], B windows of N tokens. ``attn_bias``: additive, ``Tensor[G, heads, N, N]``
        with G = 1 or a divisor of B: row g applies to windows g, g + G, g + 2G, ... (G windows per image).

        Without autograd, ``scaled_dot_product_attention`` (its fused kernels). With autograd (and under
        torch.fx, whose graph serves both) the attention is written out as timm does: the fused kernels take
        no gradient for the bias (the learned table), and SDPA's own fallback for it is slower on CPU.
        """
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if torch.is_grad_enabled() or is_fx_symbolic_tracing():
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if attn_bias is not None:
                groups = attn_bias.shape[0]
                attn = (attn.view(-1, groups, self.num_heads, tokens, tokens) + attn_bias).view(-1, self.num_heads,
                                                                                                tokens, tokens)
            attn = F.dropout(attn.softmax(dim=-1), self.attn_drop, self.training)
            # a float32 bias (the shift mask) promotes the logits of a model cast to bf16 as a whole;
            # the product is in v's dtype, as autocast casts it
            out = attn.to(v.dtype) @ v
        else:
            if attn_bias is not None:
                attn_bias = attn_bias.to(q.dtype)
                if 1 < attn_bias.shape[0] < batch:
                    attn_bias = attn_bias.repeat(batch // attn_bias.shape[0], 1, 1, 1)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_bias, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
            )
        out = out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(out))


def _residual(x: Tensor, branch: Tensor, inplace: bool) -> Tensor:
    """``x + branch``, into ``x`` when ``inplace`` and the sum keeps ``x``'s dtype."""
    if inplace and torch.promote_types(x.dtype, branch.dtype) == x.dtype:
        return x.add_(branch)
    return x + branch


def _compute_dtype(x: Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if autocast_enabled(device) else x.dtype


class SwinTransformerBlock(nn.Module):
    """``x + attn(norm1(x))`` over (shifted) windows, then ``x + mlp(norm2(x))``:
    ``Tensor[B, H, W, dim] -> Tensor[B, H, W, dim]`` for any H, W.

    Args:
        dim, num_heads, mlp_ratio, qkv_bias: the sizes.
        window_size: the largest window (the relative position table's); see :func:`fit_window`.
        shifted: an SW-MSA block (rolled by half the window where the map exceeds it).
        fixed_shift: None, the window and shift are fitted to each map (padded before the roll); a shift
            (timm's dynamic mask and ``always_partition``), ``window_size`` and that shift serve every map (rolled
            before the padding, as timm's): see :func:`block_plan`.
        proj_drop, attn_drop, drop_path: dropout after the projections, on the attention weights,
            and stochastic depth of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: tuple[int, int] = (7, 7),
        shifted: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        head_dim: int | None = None,
        fixed_shift: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.window_size = _pair(window_size)
        self.shifted = shifted
        self.fixed_shift = fixed_shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window_size, qkv_bias, attn_drop, proj_drop, head_dim)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self._bias_cache: dict[tuple, Tensor] = {}
        self._bias_version: tuple[int, int] | None = None

    def set_window_size(self, window_size: tuple[int, int]) -> None:
        """Another largest window (timm's method of its attention): the relative position table is
        resampled for it by BEiT's recipe (:func:`~visionzoo.layers.pos_embed.resample_rel_pos_table`)."""
        window_size = _pair(window_size)
        if window_size == self.window_size:
            return
        table = self.attn.relative_position_bias_table
        with torch.no_grad():
            resampled = resample_rel_pos_table(table, self.attn.window_size, window_size)
        self.attn.relative_position_bias_table = nn.Parameter(resampled, requires_grad=table.requires_grad)
        self.attn.window_size = self.window_size = window_size
        self._bias_cache.clear()

    def plan(self, height: int, width: int, device: torch.device) -> WindowPlan:
        """The windows of this block on a ``height × width`` map."""
        return block_plan((height, width), self.window_size, self.shifted, self.fixed_shift, device)

    def attn_bias(self, plan: WindowPlan, dtype: torch.dtype) -> Tensor:
        """The additive attention bias of ``plan``'s windows, relative position bias plus shift mask:
        ``Tensor[1, heads, N, N]`` without shift, ``Tensor[num_windows, heads, N, N]`` with.

        Without autograd (and not traced or compiled) it is made in ``dtype`` and cached (per map, window,
        shift, dtype and device) until the table changes (in place, as optimisers and ``load_state_dict`` do:
        its version counter; writes through ``.data`` are not seen), or is replaced; otherwise it is made
        anew, in the table's dtype.
        """
        table = self.attn.relative_position_bias_table
        if torch.is_grad_enabled() or is_traced():
            return _plan_bias(table, self.attn.window_size, plan)
        key = (plan.size, plan.window, plan.shift, dtype, table.device)
        version = (table._version, table.data_ptr())
        if version != self._bias_version:
            self._bias_cache.clear()
            self._bias_version = version
        if key in self._bias_cache:
            return self._bias_cache[key]
        bias = _plan_bias(table, self.attn.window_size, plan).to(dtype)
        if len(self._bias_cache) >= _BIAS_CACHE_SIZE:
            self._bias_cache.pop(next(iter(self._bias_cache)))
        self._bias_cache[key] = bias
        return bias

    def window_attention(self, y: Tensor) -> Tensor:
        """The attention branch on normalised tokens: ``Tensor[B, H, W, C] -> Tensor[B, H, W, C]``
        (pad, roll, partition; attention in each window; and back)."""
        batch, height, width, channels = y.shape
        out, plan = self._attend(y)
        return out.index_select(1, plan.scatter).view(batch, height, width, channels)

    def _attend(self, y: Tensor) -> tuple[Tensor, WindowPlan]:
        """Attention of ``y`` (Tensor[B, H, W, C]) in window-slot order: ``Tensor[B, num_windows · N, C]``
        (see :class:`WindowPlan`), and the plan."""
        batch, _, _, channels = y.shape
        plan = _map_plan(y, self.window_size, self.shifted, self.fixed_shift)
        out = self.attn(_partition(y, plan), self.attn_bias(plan, y.dtype if is_traced() else _compute_dtype(y)))
        return out.reshape(batch, plan.num_windows * plan.area, channels), plan

    def forward(self, x: Tensor, inplace: bool = False) -> Tensor:
        """``x``: Tensor[B, H, W, dim]. ``inplace``: update ``x`` itself, without autograd (inference on
        a tensor of ours: see :meth:`SwinTransformerStage.forward`)."""
        if inplace:
            return self._forward_inplace(x)
        x = x + self.drop_path1(self.window_attention(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def _forward_inplace(self, x: Tensor) -> Tensor:
        """:meth:`forward` writing into ``x`` (contiguous), with fewer temporaries: the attention output is
        added from window-slot order by ``index_add_``, GELU runs fused or in place (:meth:`Mlp.hidden`) and ``fc2`` accumulates into
        ``x`` (the same sums as :meth:`forward`, up to rounding order)."""
        batch, height, width, channels = x.shape
        out, plan = self._attend(self.norm1(x))
        out = self.drop_path1(out)
        if plan.pad_slots is None and out.dtype == x.dtype:
            x.view(batch, height * width, channels).index_add_(1, plan.gather, out)
        else:
            x = _residual(x, out.index_select(1, plan.scatter).view(batch, height, width, channels), True)
        mlp = self.mlp
        rows = x.view(-1, channels)
        hidden = mlp.drop1(mlp.hidden(self.norm2(rows)))
        fc2 = mlp.fc2
        if not self.training and rows.dtype == hidden.dtype == fc2.weight.dtype:
            torch.addmm(rows, hidden, fc2.weight.t(), out=rows)  # not addmm_: FLOP counters know addmm
            if fc2.bias is not None:
                rows.add_(fc2.bias)
            return x
        branch = self.drop_path2(mlp.drop2(fc2(hidden)).view(batch, height, width, channels))
        return _residual(x, branch, True)


class PatchMerging(nn.Module):
    """Concatenate each 2×2 neighbourhood, LayerNorm, linear ``4·dim -> out_dim`` (no bias):
    ``Tensor[B, H, W, dim] -> Tensor[B, ⌈H/2⌉, ⌈W/2⌉, out_dim]`` (odd sizes are zero-padded, as timm).

    The concatenation order is the original's (and timm's): (0, 0), (1, 0), (0, 1), (1, 1) as (row, col).
    """

    def __init__(self, dim: int, out_dim: int | None = None):
        super().__init__()
        self.out_dim = out_dim or 2 * dim
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = Linear(4 * dim, self.out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = _pad_to_even(x)
        batch, height, width, channels = x.shape
        x = x.reshape(batch, height // 2, 2, width // 2, 2, channels).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


def _pad_to_even(x: Tensor) -> Tensor:
    """``Tensor[B, H, W, C]`` zero-padded at the bottom and right to even sides (``x`` itself when they are)."""
    height, width = x.shape[1], x.shape[2]
    if height % 2 or width % 2:
        return F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
    return x


# torch.fx records the padding as one call, run on the real map (its symbols cannot branch on the size)
torch.fx.wrap("_pad_to_even")


class SwinTransformerStage(nn.Module):
    """An optional :class:`PatchMerging` (``downsample``), then ``depth`` blocks alternating W-MSA and
    SW-MSA: ``Tensor[B, H, W, dim] -> Tensor[B, H', W', out_dim]`` (``H' = ⌈H/2⌉`` with downsampling).

    ``window_size`` is the stage's window, fitted by :func:`fit_window` to its map at the build-time
    ``input_resolution``: that sets the blocks' relative position tables. ``dynamic_mask`` (timm's): the
    blocks keep that window and its shift on maps of any size. ``always_partition`` (timm's): the window is not
    fitted, and the shifted blocks shift by half of it, on any map (see :class:`SwinTransformerBlock`'s
    ``fixed_shift``).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        downsample: bool = True,
        num_heads: int = 4,
        window_size: tuple[int, int] = (7, 7),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] = (),
        head_dim: int | None = None,
        dynamic_mask: bool = False,
        always_partition: bool = False,
    ):
        super().__init__()
        if not downsample and dim != out_dim:
            raise ValueError(f"a stage without downsampling keeps its width, got dim={dim}, out_dim={out_dim}")
        self.input_resolution = input_resolution
        self.output_resolution = tuple((s + 1) // 2 for s in input_resolution) if downsample else input_resolution
        self.downsample: nn.Module = PatchMerging(dim, out_dim) if downsample else nn.Identity()
        self.grad_checkpointing = False  # timm's per-stage switch (SwinTransformer.set_grad_checkpointing)
        self.dynamic_mask, self.always_partition = dynamic_mask, always_partition
        window = self._block_window(_pair(window_size))
        rates = list(drop_path) or [0.0] * depth
        self.blocks = nn.Sequential(*[
            SwinTransformerBlock(out_dim, num_heads, window, index % 2 == 1, mlp_ratio, qkv_bias, proj_drop,
                                 attn_drop, rates[index], head_dim, self._fixed_shift(window, index % 2 == 1))
            for index in range(depth)
        ])

    def _block_window(self, window_size: tuple[int, int]) -> tuple[int, int]:
        """The blocks' window: ``window_size`` fitted to the stage's map (timm's rule), or as it is with
        ``always_partition``."""
        return window_size if self.always_partition else fit_window(self.output_resolution, window_size, False)[0]

    def _fixed_shift(self, window: tuple[int, int], shifted: bool) -> tuple[int, int] | None:
        """The shift a block keeps on every map, as timm's: half the window with ``always_partition``, that of the
        stage's map with ``dynamic_mask``; None otherwise (fitted to each map)."""
        if self.always_partition:
            return (window[0] // 2, window[1] // 2) if shifted else (0, 0)
        if self.dynamic_mask:
            return fit_window(self.output_resolution, window, shifted)[1]
        return None

    def set_input_size(
        self, input_resolution: tuple[int, int], window_size: tuple[int, int], always_partition: bool | None = None
    ) -> None:
        """Another build-time map size and window (timm's stage method): the blocks' windows are ``window_size``
        fitted to the new map (see :meth:`SwinTransformerBlock.set_window_size`); ``always_partition``, where
        given, replaces the stage's."""
        self.input_resolution = input_resolution
        if isinstance(self.downsample, PatchMerging):
            self.output_resolution = tuple((s + 1) // 2 for s in input_resolution)
        else:
            self.output_resolution = input_resolution
        if always_partition is not None:
            self.always_partition = always_partition
        window = self._block_window(_pair(window_size))
        for block in self.blocks:
            block.set_window_size(window)
            block.fixed_shift = self._fixed_shift(window, block.shifted)

    def forward(self, x: Tensor) -> Tensor:
        if not runs_in_cache_chunks(x):
            return run_blocks(self.blocks, self.downsample(x), self.grad_checkpointing)
        return self._forward_in_chunks(x)

    def _forward_in_chunks(self, x: Tensor) -> Tensor:
        """The stage without autograd: sub-batches of about ``_CHUNK_BYTES`` of activations (whole images),
        each downsampled (or copied) and then updated in place by the blocks."""
        batch, height, width, channels = x.shape
        if isinstance(self.downsample, PatchMerging):
            height, width, channels = (height + 1) // 2, (width + 1) // 2, self.downsample.out_dim
        step = max(1, _CHUNK_BYTES // (height * width * channels * _compute_dtype(x).itemsize))
        out = None
        for start in range(0, max(batch, 1), step):  # an empty batch runs once, into empty maps
            chunk = x[start:start + step]
            if isinstance(self.downsample, PatchMerging):
                chunk = self.downsample(chunk)
            else:
                chunk = chunk.clone(memory_format=torch.contiguous_format)
            for block in self.blocks:
                chunk = block(chunk, inplace=True)
            if out is None:
                if step >= batch:
                    return chunk
                out = chunk.new_empty((batch, *chunk.shape[1:]))
            out[start:start + step] = chunk
        return out


class SwinHead(nn.Module):
    """Global pooling, dropout, linear: ``Tensor[B, H, W, C] -> Tensor[B, num_classes]`` (timm's
    ``ClassifierHead`` on NHWC input; the key ``fc`` is the same).

    ``global_pool``: timm's names (:data:`~visionzoo.layers.classifier.ADAPTIVE_POOLS`): "avg", "max",
    "avgmax" (their mean) or "catavgmax" (both concatenated, ``Tensor[B, 2·C]``, so ``fc`` takes ``2·C``
    features), the same with a "fast" prefix ("fast": "avg"), pool the map; "" keeps it
    (``Tensor[B, H, W, num_classes]``). ``pre_logits``: the pooled features ``Tensor[B, num_features]``.
    """

    def __init__(self, in_features: int, num_classes: int, global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        self.in_features = in_features
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes, global_pool)

    @property
    def num_features(self) -> int:
        """The width of the pooled features (``fc``'s input)."""
        return pooled_width(self.global_pool, self.in_features)

    def reset(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh ``num_classes``-way ``fc`` (0: identity), optionally with another ``global_pool``."""
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool, ADAPTIVE_POOLS)
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop(global_pool_2d(x, self.global_pool, channels_last=True))
        return x if pre_logits else self.fc(x)


def _relative_position_tables(model: nn.Module) -> set[str]:
    """The names of ``model``'s relative position bias tables, which train without weight decay (timm's set)."""
    return {name for name, _ in model.named_parameters() if name.endswith("relative_position_bias_table")}


class SwinTransformer(nn.Module):
    """Swin classifier: ``forward(Tensor[B, in_chans, H, W] float) -> Tensor[B, num_classes]`` logits.

    Args:
        img_size: the input size the windows are fitted to (int or (H, W)); other sizes are taken too.
        patch_size: side of a patch (the stride of the patch embedding).
        in_chans: input channels.
        num_classes: classifier outputs; 0 makes ``head.fc`` an identity.
        global_pool: "avg" (timm's default), "max", "avgmax", "catavgmax", the same with a "fast" prefix
            (see :class:`SwinHead`) or "" (per-position logits ``Tensor[B, h, w, num_classes]``), as timm's.
        embed_dim: width of the first stage; stage i is ``embed_dim · 2**i`` wide.
        depths, num_heads: blocks and heads of each stage.
        head_dim: per-head width if not ``width // heads``.
        window_size: the attention window (int or (h, w)), fitted to each stage's map.
        mlp_ratio, qkv_bias: MLP width as a multiple of the tokens', biases on q, k, v.
        drop_rate: dropout before ``head.fc``; ``proj_drop_rate`` after the projections;
            ``attn_drop_rate`` on the attention weights; ``drop_path_rate``: stochastic depth rising
            linearly from 0 over all blocks (timm's default 0.1).
        dynamic_img_size: timm's option of the same name: every block keeps the window and shift fitted to
            its map at ``img_size``, whatever the input's size, and the shift masks are made for the input's
            maps (rolled, then padded to the windows, as timm), so that the logits are timm's at any size. Without
            it the windows are fitted to each input's maps (padded, then rolled: see the module docstring).
        strict_img_size: timm's option: True takes ``img_size`` images only (ValueError for others), False is
            ``dynamic_img_size=True`` (which overrides it, as in timm). None (our default, where timm's is True):
            any size, the windows fitted to each map.
        always_partition: timm's option: the windows are not fitted to the maps; every block cuts its map into
            ``window_size`` windows (padding a smaller map up to one) and the shifted ones roll by half a window,
            whatever the map's size (rolled, then padded, as timm's).

    Any image with pixels is taken (one smaller than a patch is padded to one); wrong channels or an empty image raise
    ValueError.
    """

    @check_argument_types
    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        head_dim: int | None = None,
        window_size: int | tuple[int, int] = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        dynamic_img_size: bool = False,
        strict_img_size: bool | None = None,
        always_partition: bool = False,
    ):
        super().__init__()
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"depths and num_heads need one entry per stage, got {depths} and {num_heads}")
        _check_window(window_size)
        check_dropout_rates(drop_rate=drop_rate, proj_drop_rate=proj_drop_rate)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.output_fmt = "NHWC"  # timm's attribute: the layout of forward_features' map
        # as timm's: strict_img_size=False is dynamic_img_size, which overrides strict_img_size=True
        dynamic_img_size = dynamic_img_size or strict_img_size is False
        self.dynamic_img_size = dynamic_img_size
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        dims = [embed_dim * 2 ** i for i in range(self.num_layers)]
        self.num_features = dims[-1]
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_layer=nn.LayerNorm,
                                      output_fmt="NHWC",
                                      strict_img_size=bool(strict_img_size) and not dynamic_img_size, dynamic_img_pad=True)
        patch = self.patch_embed.patch_size
        grid = self._patch_grid()
        # set_input_size scales this window with the patch grid, as timm's (its reference windows)
        self._reference_window, self._reference_grid = _pair(window_size), grid
        rates = drop_path_rates(drop_path_rate, list(depths))
        stages, infos, resolution = [], [], grid
        for index, depth in enumerate(depths):
            in_dim = dims[max(index - 1, 0)]
            stage = SwinTransformerStage(
                in_dim, dims[index], resolution, depth, downsample=index > 0, num_heads=num_heads[index],
                window_size=_pair(window_size), mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate, drop_path=rates[index], head_dim=head_dim, dynamic_mask=dynamic_img_size,
                always_partition=always_partition,
            )
            resolution = stage.output_resolution
            stages.append(stage)
            infos.append(dict(num_chs=dims[index], reduction=max(patch) * 2 ** index, module=f"layers.{index}"))
        self.layers = nn.Sequential(*stages)
        self.feature_info = FeatureInfo(infos)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = SwinHead(self.num_features, num_classes, global_pool, drop_rate)
        self.default_cfg: dict = {}
        self.apply(_init_weights)

    @property
    def global_pool(self) -> str:
        return self.head.global_pool

    # --- the timm interface -------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    @property
    def head_hidden_size(self) -> int:
        """The width of the pooled features ``head.fc`` takes (twice ``num_features`` for "catavgmax")."""
        return self.head.num_features

    @keeps_device_and_dtype
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh ``num_classes``-way ``head.fc`` (0: identity), optionally with another ``global_pool``; both
        are recorded in the arguments that rebuild the model (``model_args``, kept by our checkpoints)."""
        num_classes = whole_number(num_classes, "num_classes", 0)
        self.head.reset(num_classes, global_pool)
        self.num_classes = num_classes
        record_model_args(self, num_classes=num_classes, global_pool=self.head.global_pool)

    def no_weight_decay(self) -> set[str]:
        """The relative position tables (timm's set)."""
        return _relative_position_tables(self)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's optimizer factory (layer-wise learning-rate decay), as timm's: the
        patch embedding, then per stage its patch merging with the block before it and one group per
        block (``coarse``: one per stage), the final norm with the last block; the head last."""
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)" if coarse else [
                (r"^layers\.(\d+)\.downsample", (0,)),
                (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm\.", (99999,)),
            ],
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (timm's
        switch, set on every stage; see :func:`~visionzoo.layers.run_blocks`)."""
        _set_grad_checkpointing(self.layers, enable)

    def _patch_grid(self) -> tuple[int, int]:
        return tuple(math.ceil(s / p) for s, p in zip(self.patch_embed.img_size, self.patch_embed.patch_size))

    def set_input_size(
        self,
        img_size: int | tuple[int, int] | None = None,
        patch_size: int | tuple[int, int] | None = None,
        window_size: int | tuple[int, int] | None = None,
        window_ratio: int | None = None,
        always_partition: bool | None = None,
    ) -> None:
        """Fit the windows to ``img_size`` images and/or ``patch_size`` patches, as timm's method does.

        The window of every stage becomes ``window_size``, or the patch grid divided by ``window_ratio``,
        or (neither given) the build-time window scaled with the patch grid, so that each stage keeps its
        window-to-map ratio (at the current size nothing changes); each stage then fits it to its map, and
        a block whose window changes gets its relative position table resampled (BEiT's recipe, as timm).
        A new patch size resamples the patch kernel (FlexiViT's pseudo-inverse). ``always_partition``, where
        given, replaces the built one (see :class:`SwinTransformer`). ``feature_info`` and the arguments that
        rebuild the model (``model_args``: ``img_size``, ``window_size``, ``always_partition``) follow.

        One window for all stages: per-stage ``window_size``/``window_ratio`` sequences, which timm also
        takes, are refused with ``ValueError``, before anything changes.
        """
        if window_size is not None and not (is_integer(window_size) or (
                len(window_size) == 2 and all(is_integer(side) for side in window_size))):
            raise ValueError(f"window_size must be one window for all stages, an int or (h, w), got {window_size!r}")
        if window_size is not None:
            _check_window(window_size)
        if window_ratio is not None and not (is_integer(window_ratio) and window_ratio > 0):
            raise ValueError(f"window_ratio must be one positive int for all stages, got {window_ratio!r}")
        self.patch_embed.set_input_size(img_size, patch_size)
        grid = self._patch_grid()
        if window_size is not None:
            window = _pair(window_size)
        elif window_ratio is not None:
            window = tuple(max(1, side // int(window_ratio)) for side in grid)
        else:
            window = tuple(max(1, w * g // r) for w, g, r in zip(self._reference_window, grid, self._reference_grid))
        if window_size is not None or window_ratio is not None:
            self._reference_window, self._reference_grid = window, grid
        resolution = grid
        for stage in self.layers:
            stage.set_input_size(resolution, window, always_partition)
            resolution = stage.output_resolution
        stride = max(self.patch_embed.patch_size)
        self.feature_info = FeatureInfo((dict(info, reduction=stride * 2 ** index)
                                         for index, info in enumerate(self.feature_info)), self.feature_info.out_indices)
        changed = dict(img_size=_int_or_pair(self.patch_embed.img_size), window_size=_int_or_pair(window))
        if patch_size is not None:
            changed["patch_size"] = _int_or_pair(self.patch_embed.patch_size)
        if always_partition is not None:
            changed["always_partition"] = bool(always_partition)
        record_model_args(self, **changed)

    def forward_features(self, x: Tensor) -> Tensor:
        """``Tensor[B, in_chans, H, W] -> Tensor[B, h, w, num_features]`` after the final norm (NHWC, as
        timm), ``h = ⌈⌈H/p⌉/2^(stages-1)⌉`` (H/32 for the 224 models)."""
        return self.norm(self.layers(self.patch_embed(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``Tensor[B, h, w, num_features] -> Tensor[B, num_classes]`` logits, or with ``pre_logits`` the
        pooled ``Tensor[B, head_hidden_size]``."""
        return self.head(x, pre_logits=pre_logits)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The outputs of some stages beside the final features (timm's API of the same name).

        ``indices``: an int n for the last n stages, a sequence of stage indices (negative ones count
        from the end; any order, repeats allowed: each map comes once, in stage order, as timm's), None
        for all. ``norm``: the final norm on the last stage's map (it is
        sized for that stage only). ``stop_early``: run no stage after the last one asked for.
        Intermediates are ``Tensor[B, C_i, h_i, w_i]`` (NCHW, the only ``output_fmt``, contiguous).
        Returns the list, or ``(final features Tensor[B, h, w, C] (NHWC, normed when the last stage
        ran), list)``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        stages = len(self.layers)
        take = feature_take_indices(stages, stages if indices is None else indices, name="indices")
        last = max(take)
        x = self.patch_embed(x)
        intermediates = []
        index = 0
        for index, stage in enumerate(self.layers[:last + 1] if stop_early else self.layers):
            x = stage(x)
            if index in take:
                y = self.norm(x) if norm and index == stages - 1 else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous())
        if intermediates_only:
            return intermediates
        return (self.norm(x) if index == stages - 1 else x), intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last of ``indices``, as timm's: the final norm goes with
        ``prune_norm`` or when stages are dropped (it fits the last stage only), and the classifier
        (``global_pool`` "", ``head.fc`` an identity: ``forward`` gives the map) with ``prune_head`` or
        when stages are dropped. Returns the stage indices as given (negative ones resolved), as timm's."""
        take = feature_take_indices(len(self.layers), indices, name="indices")
        last = max(take)
        prune_end = last < len(self.layers) - 1
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        self.layers = self.layers[:last + 1]
        if prune_end:
            self.num_features = self.head.in_features = self.feature_info.channels(last)
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return list(take)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _set_grad_checkpointing(stages: nn.Sequential, enable: bool) -> None:
    for stage in stages:
        stage.grad_checkpointing = enable


def _init_weights(module: nn.Module) -> None:
    # timm's: truncated normal (std 0.02) for linears with zero biases; convs and norms keep PyTorch's
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class SwinTransformerFeatures(nn.Module):
    """A Swin trunk returning feature maps: ``forward(Tensor[B, in_chans, H, W]) -> list[Tensor]``.

    ``out_indices`` picks the outputs of ``layers.0..3`` (strides 4, 8, 16, 32 for 4×4 patches). Map
    ``i`` is ``Tensor[B, feature_info.channels()[i], h_i, w_i]`` with ``h_0 = ⌈H/p⌉`` halved (rounding up)
    at each later stage: NCHW in shape (timm's features are NHWC; ``output_fmt`` says which), channels-last
    in memory, without the final norm (as timm's). The stages after the last index, the norm and the head
    are left out.
    As in timm, an int n picks the last n stages, a negative index counts from the end, and indices in
    another order or repeated give each map once, in stage order (``out_indices`` and ``feature_info.out_indices``
    list those maps, ``feature_info`` every map of the model, as timm's; timm's ``feature_info.out_indices`` keeps the
    order given, which then does not match its maps).
    """

    features_only = True
    output_fmt = "NCHW"  # timm's feature extractors' attribute: the maps' layout

    def __init__(self, model: SwinTransformer, out_indices: int | Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        out_indices = taken_in_order(feature_take_indices(len(model.layers), out_indices))
        self.out_indices = out_indices
        self.patch_embed = model.patch_embed
        self.layers = nn.Sequential(*list(model.layers)[:max(out_indices) + 1])
        self.feature_info = FeatureInfo(model.feature_info, out_indices)
        self.default_cfg: dict = {}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """As :meth:`SwinTransformer.set_grad_checkpointing`."""
        _set_grad_checkpointing(self.layers, enable)

    def no_weight_decay(self) -> set[str]:
        """As :meth:`SwinTransformer.no_weight_decay`: the relative position tables (a detector's backbone trains
        them without weight decay, as the classifier does and as Swin's detection recipe does)."""
        return _relative_position_tables(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.patch_embed(x)
        maps = []
        for index, stage in enumerate(self.layers):
            x = stage(x)
            if index in self.out_indices:
                maps.append(x.permute(0, 3, 1, 2))
        return maps


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Convert a foreign Swin state dict (timm's, or the official Microsoft release's) to ours.

    - ``relative_position_index`` and ``attn_mask`` buffers are dropped (computed here);
    - the official layout (patch merging at the end of stages 0..2, ``head.weight``) is renamed to
      timm's (at the start of stages 1..3, ``head.fc.weight``);
    - timm's feature-extractor keys (``layers_1``) get their dot back;
    - a patch kernel made for another patch size is resampled to the model's (FlexiViT's pseudo-inverse), as
      timm's filter does (:func:`~visionzoo.layers.patch_embed.resample_patch_embed`);
    - a relative position table for another (square) window is resampled by BEiT's recipe, as timm's filter
      does (:func:`~visionzoo.layers.pos_embed.resample_rel_pos_table`); one for a non-square window is kept
      as it is, for the strict load to report (its window cannot be told from its size);
    - for a feature extractor, the weights of the stages it leaves out are dropped.
    """
    official = "layers.0.downsample.reduction.weight" in state_dict
    own = model.state_dict()
    kept_stages = len(model.layers)
    out = {}
    for key, value in state_dict.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            continue
        key = _dotted(key)
        if official:
            key = _official_key(key)
        stage = key.split(".")[1] if key.startswith("layers.") else None
        if getattr(model, "features_only", False) and stage is not None and int(stage) >= kept_stages:
            continue
        if key == "patch_embed.proj.weight" and value.ndim == 4:
            value = resample_patch_embed(value, model.patch_embed.patch_size)
        if key.endswith("relative_position_bias_table") and key in own and value.shape != own[key].shape:
            side = math.isqrt(value.shape[0])
            # the window of a table whose rows are no odd square is ambiguous (5·9 rows: 3×5 or 5×3): left for
            # the strict load to report
            if side * side == value.shape[0] and side % 2:
                window = model.get_submodule(key.rsplit(".", 1)[0]).window_size
                value = resample_rel_pos_table(value, ((side + 1) // 2, (side + 1) // 2), window)
        out[key] = value
    return out


def _dotted(key: str) -> str:
    if key.startswith("layers_"):
        return "layers." + key[len("layers_"):]
    return key


def _official_key(key: str) -> str:
    """An official (Microsoft) key in timm's layout."""
    if key.startswith("layers.") and ".downsample." in key:
        _, stage, rest = key.split(".", 2)
        return f"layers.{int(stage) + 1}.{rest}"
    if key in ("head.weight", "head.bias"):
        return "head.fc." + key.rsplit(".", 1)[1]
    return key


# --- registered sizes -------------------------------------------------------------------------

_SIZES: dict[str, dict[str, Any]] = {
    "swin_tiny_patch4_window7_224": dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2),
                                         num_heads=(3, 6, 12, 24)),
    "swin_small_patch4_window7_224": dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 18, 2),
                                          num_heads=(3, 6, 12, 24)),
    "swin_base_patch4_window7_224": dict(patch_size=4, window_size=7, embed_dim=128, depths=(2, 2, 18, 2),
                                         num_heads=(4, 8, 16, 32)),
    "swin_base_patch4_window12_384": dict(img_size=384, patch_size=4, window_size=12, embed_dim=128,
                                          depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    # Small inputs, for training from scratch on the built-in data: 2×2 patches, 4×4 windows, three
    # stages 48, 96, 192 wide (heads of 16 channels); stages 0 and 1 have shifted windows. At 32×32 the
    # last stage is one 4×4 window (global attention) and six blocks deep: on Digits (600 steps, the
    # benchmark's recipe) that reached 97.4-97.8 % test accuracy with seed 0 and 96.7 % with seed 1,
    # where depths (2, 2, 2) gave 96.3 % and 96.7 %.
    "swin_tiny_patch2_window4_32": dict(img_size=32, patch_size=2, window_size=4, embed_dim=48, depths=(2, 2, 6),
                                        num_heads=(3, 6, 12)),
    "swin_tiny_patch2_window4_64": dict(img_size=64, patch_size=2, window_size=4, embed_dim=48, depths=(2, 2, 2),
                                        num_heads=(3, 6, 12)),
}


def _create(
    name: str, *, features_only: bool = False, out_indices: int | Sequence[int] | None = None, **kwargs: Any
) -> SwinTransformer | SwinTransformerFeatures:
    """Build the size ``name``, with ``kwargs`` (any constructor argument) overriding its sizes;
    ``features_only``: its trunk returning the maps of ``out_indices`` (default: every stage)."""
    model = SwinTransformer(**{**_SIZES[name], **kwargs})
    if not features_only:
        return model
    return SwinTransformerFeatures(model, tuple(range(len(model.layers))) if out_indices is None else out_indices)


def _timm(tag: str) -> Pretrained:
    return Pretrained(hf_hub_id=f"timm/{tag}")


def _cfg(size: int = 224, crop_pct: float = 0.9, stride: int = 32) -> dict[str, Any]:
    return dict(
        checkpoint_filter=checkpoint_filter_fn, first_conv="patch_embed.proj", classifier="head.fc",
        input_size=(3, size, size), pool_size=(size // stride, size // stride), crop_pct=crop_pct,
        interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000,
        fixed_input_size=True,  # timm's: the window size and attention masks are built for input_size
    )


@register_model(pretrained=_timm("swin_tiny_patch4_window7_224.ms_in1k"), **_cfg())
def swin_tiny_patch4_window7_224(**kwargs) -> SwinTransformer | SwinTransformerFeatures:
    """Swin-T: 96 wide, depths (2, 2, 6, 2), 7×7 windows, 28.3 M parameters."""
    return _create("swin_tiny_patch4_window7_224", **kwargs)


@register_model(pretrained=_timm("swin_small_patch4_window7_224.ms_in22k_ft_in1k"), **_cfg())
def swin_small_patch4_window7_224(**kwargs) -> SwinTransformer | SwinTransformerFeatures:
    """Swin-S: 96 wide, depths (2, 2, 18, 2), 7×7 windows, 49.6 M parameters."""
    return _create("swin_small_patch4_window7_224", **kwargs)


@register_model(pretrained=_timm("swin_base_patch4_window7_224.ms_in22k_ft_in1k"), **_cfg())
def swin_base_patch4_window7_224(**kwargs) -> SwinTransformer | SwinTransformerFeatures:
    """Swin-B: 128 wide, depths (2, 2, 18, 2), 7×7 windows, 87.8 M parameters."""
    return _create("swin_base_patch4_window7_224", **kwargs)


@register_model(pretrained=_timm("swin_base_patch4_window12_384.ms_in22k_ft_in1k"), **_cfg(384, crop_pct=1.0))
def swin_base_patch4_window12_384(**kwargs) -> SwinTransformer | SwinTransformerFeatures:
    """Swin-B at 384×384: 128 wide, depths (2, 2, 18, 2), 12×12 windows, 87.9 M parameters."""
    return _create("swin_base_patch4_window12_384", **kwargs)


@register_model(**_cfg(32, crop_pct=1.0, stride=8))
def swin_tiny_patch2_window4_32(**kwargs) -> SwinTransformer | SwinTransformerFeatures:
    """Swin for 32×32 inputs (Digits): 2×2 patches (16×16 tokens), 4×4 windows, stages of 16, 8, 4 tokens
    a side (shifted windows in the first two), 48/96/192 wide, depths (2, 2, 6); 3,050,164 parameters
    with 10 classes (3,241,234 with the default 1000)."""
    return _create("swin_tiny_patch2_window4_32", **kwargs)


@register_model(**_cfg(64, crop_pct=1.0, stride=8))
def swin_tiny_patch2_window4_64(**kwargs) -> SwinTransformer | SwinTransformerFeatures:
    """Swin for 64×64 inputs (Shapes): 2×2 patches (32×32 tokens), 4×4 windows, stages of 32, 16, 8
    tokens a side (all with shifted windows), 48/96/192 wide, depths (2, 2, 2); 1,268,356 parameters with
    10 classes (1,459,426 with the default 1000)."""
    return _create("swin_tiny_patch2_window4_64", **kwargs)
