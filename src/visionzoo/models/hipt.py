"""HIPT (Chen et al. 2022, "Scaling Vision Transformers to Gigapixel Images via Hierarchical
Self-Supervised Learning"): a ViT over 256-pixel tiles, a second ViT over the grid of their [CLS]
tokens, in the official code's key layout (mahmoodlab/HIPT, ``HIPT_4K/``).

- :class:`ViT256` (``hipt_vit256_small``): DINO's ViT-S/16 (384 wide, 12 blocks of 6 heads, no
  head, LayerNorm eps 1e-6), 21,665,664 parameters. Its position table stays the 224-pixel one (197
  rows); other inputs (256 × 256 tiles: a 16 × 16 grid) get it interpolated at every forward by
  DINO's rule, :func:`interpolate_pos_encoding`, so the official weights give the official features.
- :class:`ViT4K` (``vit4k_xs``): the region encoder: input the ``Tensor[B, 384, gh, gw]`` grid of
  ViT-256 [CLS] tokens (16 × 16 for a 4096 × 4096 region); ``phi`` (Linear 384→192, GELU, dropout)
  embeds each token, then 6 blocks of 6 heads, 192 wide, and a 197-row table interpolated by the
  same rule; 2,781,504 parameters.
- :class:`HIPT4K` (``hipt_4k``): the hierarchy: an image ``Tensor[B, 3, H, W]`` is cut into 256-pixel
  tiles, ViT-256 encodes them ``tile_batch_size`` at a time (without gradients while it is frozen,
  as in the paper's second stage), their [CLS] tokens form the grid that ViT-4K encodes into one
  192-wide region embedding, and an optional linear head classifies it.

Official checkpoints (``vit256_small_dino.pth``, ``vit4k_xs_dino.pth``) are whole DINO training
states: ``{"teacher": ..., "student": ..., "optimizer": ..., "args": Namespace, ...}`` whose
``teacher`` holds the backbone under ``backbone.`` beside DINO's projection head (``head.mlp.*``,
``head.last_layer.*``). :func:`read_official_checkpoint` reads such a file safely and returns the
backbone's state dict; :func:`checkpoint_filter_fn` converts an already extracted teacher or student
dict (``create_model(name, checkpoint=PATH)``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.checkpoint import CheckpointError, load_torch_file, unwrap_state_dict
from visionzoo.layers import Block, run_blocks
from visionzoo.layers.block import LayerNorm
from visionzoo.layers.classifier import keeps_device_and_dtype
from visionzoo.layers.drop import check_dropout_rates, drop_path_rates
from visionzoo.models._registry import Pretrained, load_state_dict_strict, record_model_args, register_model
from visionzoo.models.vision_transformer import VisionTransformer
from visionzoo.utils import (
    check_argument_types,
    is_integer,
    is_traced,
    require_float_images,
    require_tensor,
    whole_number,
)

POS_GRID = 14  # both official tables are for a 224-pixel ViT-S/16: 14 × 14 grid rows plus the [CLS] row
REMAINDERS = ("pad", "crop")
HIPT_MEAN = HIPT_STD = (0.5, 0.5, 0.5)  # the official eval transform


def interpolate_pos_encoding(pos_embed: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """DINO's position-table interpolation (``interpolate_pos_encoding``), as HIPT runs it.

    Args:
        pos_embed: Tensor[1, 1 + s·s, D], the [CLS] row then an s × s grid in raster order.
        grid_size: the input's token grid (gh, gw).

    Returns Tensor[1, 1 + gh·gw, D]: the table itself when (gh, gw) = (s, s), otherwise the grid
    part resized by bicubic interpolation (``align_corners=False``, no antialiasing) with the scale
    factors ``((gh + 0.1) / s, (gw + 0.1) / s)``. DINO adds 0.1 so that the output size, the floor of
    ``s · factor``, cannot round below gh; because the factor (not the size) is passed, the sampling
    positions follow ``s / (g + 0.1)`` rather than ``s / g``, which is what makes this differ from a
    plain resize to (gh, gw) and why the official weights need exactly this rule.
    """
    gh, gw = int(grid_size[0]), int(grid_size[1])
    grid_rows = pos_embed.shape[1] - 1
    side = math.isqrt(grid_rows)
    if side * side != grid_rows:
        raise ValueError(f"pos_embed {tuple(pos_embed.shape)}: {grid_rows} grid rows are not a square grid")
    if (gh, gw) == (side, side):
        return pos_embed
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / side, (gw + 0.1) / side), mode="bicubic")
    if grid.shape[-2:] != (gh, gw):
        raise ValueError(f"interpolating a {side}×{side} table gave {tuple(grid.shape[-2:])}, not {(gh, gw)}")
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)], dim=1)


# torch.fx (torchvision's create_feature_extractor) records the interpolation as one call, run on the real grid,
# whose size its symbols cannot branch on
torch.fx.wrap("interpolate_pos_encoding")


def _dino_init(module: nn.Module) -> None:
    """DINO's initialisation: truncated normal (std 0.02) for the [CLS] token and the position table."""
    nn.init.trunc_normal_(module.pos_embed, std=0.02)
    nn.init.trunc_normal_(module.cls_token, std=0.02)


class ViT256(VisionTransformer):
    """ViT-256: DINO's ViT over tiles, ``Tensor[B, in_chans, H, W] -> Tensor[B, 384]`` ([CLS] after the
    final norm) or ``Tensor[B, num_classes]`` logits with a head.

    A :class:`VisionTransformer` with a fixed 224-pixel table (``img_size`` is not an argument) and
    DINO's interpolation for any other input whose sides are multiples of ``patch_size``.
    """

    def __init__(
        self,
        num_classes: int = 0,
        in_chans: int = 3,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        **kwargs: Any,
    ):
        if "img_size" in kwargs or "dynamic_img_size" in kwargs:
            raise ValueError("ViT256 keeps the official 224-pixel position table and interpolates it at forward; "
                             "img_size and dynamic_img_size are not arguments")
        super().__init__(
            img_size=POS_GRID * patch_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, dynamic_img_size=True, **kwargs,
        )

    def init_weights(self) -> None:
        super().init_weights()
        _dino_init(self)

    def pos_embed_at(self, grid_size: tuple[int, int]) -> Tensor:
        """The table for a ``grid_size`` grid by DINO's rule (:func:`interpolate_pos_encoding`)."""
        return interpolate_pos_encoding(self.pos_embed, grid_size)

    def set_input_size(self, img_size: Any = None, patch_size: Any = None) -> None:
        """Refused: the official weights need their 224-pixel table, which any input size already gets by
        DINO's rule at each forward; a resampled table would give other features."""
        raise ValueError("ViT256 keeps the official 224-pixel position table and interpolates it for any input "
                         "size at each forward: set_input_size would change its weights")


class ViT4K(nn.Module):
    """ViT-4K: ``Tensor[B, in_dim, gh, gw]`` grids of ViT-256 [CLS] tokens -> ``Tensor[B, 192]`` region
    embeddings ([CLS] after the final norm) or ``Tensor[B, num_classes]`` logits.

    The grid is read in raster order (row ``r``, column ``c`` is token ``r · gw + c``), each token
    embedded by ``phi`` (Linear ``in_dim → embed_dim``, GELU, dropout ``drop_rate``); then the
    [CLS] token, the position table (197 rows, interpolated by :func:`interpolate_pos_encoding` for
    any grid but 14 × 14), pre-norm blocks and the final norm. ``drop_rate`` also drops after the
    position table and inside the blocks (attention output and MLP), as the official code does.
    """

    @check_argument_types
    def __init__(
        self,
        num_classes: int = 0,
        in_dim: int = 384,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        check_dropout_rates(drop_rate=drop_rate)
        self.num_classes = num_classes
        self.in_dim = in_dim
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False
        self.phi = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.GELU(), nn.Dropout(drop_rate))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, POS_GRID * POS_GRID + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                  drop_path=rate)
            for rate in rates
        ])
        self.norm = LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """DINO's: truncated normal (std 0.02) for the tables and every Linear, zero biases."""
        _dino_init(self)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    @keeps_device_and_dtype
    def reset_classifier(self, num_classes: int) -> None:
        """A fresh ``num_classes``-way head (0: identity), recorded in ``model_args`` (see :func:`record_model_args`)."""
        num_classes = whole_number(num_classes, "num_classes", 0)
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        record_model_args(self, num_classes=num_classes)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (timm's switch; see
        :func:`~visionzoo.layers.run_blocks`)."""
        self.grad_checkpointing = enable

    def forward_features(self, x: Tensor) -> Tensor:
        """``Tensor[B, in_dim, gh, gw] -> Tensor[B, 1 + gh·gw, embed_dim]`` tokens after the final norm."""
        x = _checked_grid(x, self.in_dim)
        batch, _, gh, gw = x.shape
        tokens = self.phi(x.flatten(2).transpose(1, 2))
        pos_embed = interpolate_pos_encoding(self.pos_embed, (gh, gw))
        x = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1) + pos_embed
        return self.norm(run_blocks(self.blocks, self.pos_drop(x), self.grad_checkpointing))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens ``Tensor[B, T, embed_dim]`` -> the [CLS] ``Tensor[B, embed_dim]`` (``pre_logits``) or logits."""
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _checked_grid(x: Tensor, in_dim: int) -> Tensor:
    """``x``, or ``ValueError`` when it is no ``Tensor[B, in_dim, gh, gw]`` grid of at least one token."""
    require_tensor(x, f"grids Tensor[B, {in_dim}, gh, gw]")
    if x.ndim != 4 or x.shape[1] != in_dim:
        raise ValueError(
            f"ViT-4K takes grids Tensor[B, {in_dim}, gh, gw] of ViT-256 [CLS] tokens, got shape {tuple(x.shape)}"
        )
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"ViT-4K takes a grid of at least one token; grid {x.shape[2]}×{x.shape[3]} has no tokens")
    return x


# torch.fx records the check as one call, run on the real grid; the grid flows through it, so that pruning keeps it
torch.fx.wrap("_checked_grid")


def _checked_images(x: Tensor, in_chans: int) -> Tensor:
    """``x``, or ``ValueError`` when it is no floating-point ``Tensor[B, in_chans, H, W]`` or holds NaN or infinity."""
    require_tensor(x)
    if x.ndim != 4 or x.shape[1] != in_chans:
        # as the other models' errors do (require_image_batch), name the argument that takes such images
        hint = f"; build it with in_chans={x.shape[1]}" if x.ndim == 4 else ""
        raise ValueError(f"HIPT takes {in_chans}-channel images Tensor[B, {in_chans}, H, W], got shape "
                         f"{tuple(x.shape)}{hint}")
    # a uint8 region read from a slide failed in the first conv, naming neither
    require_float_images(x, "HIPT", f" normalised with mean = std = {HIPT_MEAN[0]}",
                         f"(x - {HIPT_MEAN[0]}) / {HIPT_STD[0]}")
    if not is_traced():  # a traced graph keeps no data-dependent branch; one NaN pixel made the whole embedding NaN
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            count, regions = int(bad.sum()), bad.flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"HIPT's images hold {count} NaN or infinite value{'s' if count > 1 else ''} "
                             f"(region{'s' if len(regions) > 1 else ''} {', '.join(map(str, regions))})")
    return x


def tile_view(
    x: Tensor, tile_size: int, remainder: str = "pad", pad_value: float = 0.0
) -> tuple[Tensor, tuple[int, int]]:
    """Cut images into square tiles: ``Tensor[B, C, H, W] -> (Tensor[B, gh, gw, C, T, T], (gh, gw))``.

    The tiles are a strided view of ``x`` (no copy) unless padding is needed. Sides that are not
    multiples of ``tile_size`` are, by ``remainder``:

    - "pad": padded at the right and bottom with ``pad_value`` (0: the mean colour of an image
      normalised with HIPT's mean and std), so no pixel is lost: gh = ceil(H / T);
    - "crop": centre-cropped to the largest multiple (the official ``prepare_img_tensor``, with
      torchvision's ``CenterCrop`` rounding of the offsets): gh = floor(H / T).
    """
    if remainder not in REMAINDERS:
        raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
    tile_size = whole_number(tile_size, "tile_size", 1)
    if x.ndim != 4:
        raise ValueError(f"expected images Tensor[B, C, H, W], got a tensor of shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height == 0 or width == 0:
        raise ValueError(f"image {height}×{width} has no pixels to cut into {tile_size}×{tile_size} tiles")
    if remainder == "pad":
        pad_h, pad_w = -height % tile_size, -width % tile_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=pad_value)
    else:
        crop_h, crop_w = height - height % tile_size, width - width % tile_size
        if crop_h == 0 or crop_w == 0:
            raise ValueError(f"image {height}×{width} is smaller than one {tile_size}×{tile_size} tile (remainder='crop')")
        top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
        x = x[..., top : top + crop_h, left : left + crop_w]
    tiles = x.unfold(2, tile_size, tile_size).unfold(3, tile_size, tile_size)  # [B, C, gh, gw, T, T]
    return tiles.permute(0, 2, 3, 1, 4, 5), (tiles.shape[2], tiles.shape[3])


# torch.fx records the check and the tiling (padding or cropping by the image's size) as one call each, run on the
# real images; the images flow through them, so that pruning keeps them
torch.fx.wrap("_checked_images")
torch.fx.wrap("tile_view")


class HIPT4K(nn.Module):
    """The hierarchy: float images ``Tensor[B, in_chans, H, W]`` (RGB in [0, 1] normalised with mean = std = 0.5, as
    the official eval transform does: values in [-1, 1]; ``pretrained_cfg`` carries them) ->
    ``Tensor[B, 192]`` region embeddings, or ``Tensor[B, num_classes]`` logits with a head.

    Submodules carry the official ``HIPT_4K`` names: ``model256`` (:class:`ViT256`) and ``model4k``
    (:class:`ViT4K`, whose ``head`` is this model's classifier).

    Args:
        num_classes: outputs of the head on the region embedding (0: none).
        tile_size: the side of the tiles ViT-256 encodes (256).
        tile_batch_size: tiles per ViT-256 forward; bounds the memory of the first stage, not the
            result (a 4096 × 4096 image is 256 tiles). Traced or compiled, all tiles go in one forward.
        remainder: "pad" or "crop", for sides that are not multiples of ``tile_size`` (see
            :func:`tile_view`); the official code crops.
        pad_value: the value of padded pixels.
        freeze_vit256: ViT-256 is a fixed feature extractor (the paper's second stage): no
            gradients, kept in eval mode, tiles encoded under ``torch.no_grad``.
        in_chans: image channels.
        drop_rate, attn_drop_rate, drop_path_rate: ViT-4K's regularisation.
    """

    @check_argument_types
    def __init__(
        self,
        num_classes: int = 0,
        tile_size: int = 256,
        tile_batch_size: int = 64,
        remainder: str = "pad",
        pad_value: float = 0.0,
        freeze_vit256: bool = True,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if remainder not in REMAINDERS:
            raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
        if tile_batch_size < 1:
            raise ValueError(f"tile_batch_size must be >= 1, got {tile_batch_size}")
        if not math.isfinite(pad_value):  # padded pixels reach every token through attention: the embedding went NaN
            raise ValueError(f"pad_value must be a finite number, got {pad_value}")
        self.tile_size = tile_size
        self.tile_batch_size = tile_batch_size
        self.remainder = remainder
        self.pad_value = pad_value
        self.freeze_vit256 = freeze_vit256
        self.model256 = ViT256(num_classes=0, in_chans=in_chans)
        patch = self.model256.patch_embed.patch_size[0]
        if tile_size < patch or tile_size % patch:
            raise ValueError(f"tile_size must be a positive multiple of ViT-256's {patch}-pixel patch, got {tile_size}")
        self.model4k = ViT4K(num_classes, in_dim=self.model256.num_features, drop_rate=drop_rate,
                             attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
        self.num_classes = num_classes
        self.num_features = self.model4k.num_features
        if freeze_vit256:
            self.model256.requires_grad_(False)
            self.model256.eval()

    def train(self, mode: bool = True) -> HIPT4K:
        super().train(mode)
        if self.freeze_vit256:
            self.model256.eval()
        return self

    def get_classifier(self) -> nn.Module:
        return self.model4k.head

    def reset_classifier(self, num_classes: int) -> None:
        num_classes = whole_number(num_classes, "num_classes", 0)
        self.num_classes = num_classes
        self.model4k.reset_classifier(num_classes)  # ViT-4K's reset keeps the device and dtype
        record_model_args(self, num_classes=num_classes)

    def no_weight_decay(self) -> set[str]:
        """Both ViTs' position tables and class tokens, by their names in this model (timm's optimizer factory
        reads the top-level set only)."""
        return {f"{name}.{key}" for name in ("model256", "model4k") for key in getattr(self, name).no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing of both ViTs' blocks (ViT-256's only matters when it is not frozen)."""
        self.model256.set_grad_checkpointing(enable)
        self.model4k.set_grad_checkpointing(enable)

    def encode_tiles(self, x: Tensor, tile_batch_size: int | None = None) -> Tensor:
        """First stage: images ``Tensor[B, C, H, W]`` -> grids ``Tensor[B, 384, gh, gw]`` of ViT-256
        [CLS] tokens (grid cell (r, c) is the tile at rows ``r·T ...``, columns ``c·T ...``).

        Tiles are gathered from a view of ``x`` and encoded ``tile_batch_size`` at a time (default:
        the model's), so one batch of tiles is copied at a time; the result does not depend on it. Each batch
        is copied to ViT-256's device: a slide in the CPU's memory is read by a model on a GPU a batch at a time,
        and the grid is on the model's device.
        With ``remainder="pad"`` and sides that are not multiples of ``T``, the view is of one padded
        copy of ``x`` (a 4000 × 4000 image: one 4096 × 4096 copy, 201 MB in float32).
        """
        x = _checked_images(x, self.model256.patch_embed.in_chans)
        step = self.tile_batch_size if tile_batch_size is None else tile_batch_size
        if not is_integer(step):  # 2.5 and "4" failed in range() and <, naming nothing; True ran one tile at a time
            raise ValueError(f"tile_batch_size must be an integer, got {step!r}")
        step = int(step)
        if step < 1:
            raise ValueError(f"tile_batch_size must be >= 1, got {step}")
        tiles, (gh, gw) = tile_view(x, self.tile_size, self.remainder, self.pad_value)
        batch, cells = x.shape[0], gh * gw
        device = next(self.model256.parameters()).device
        order = torch.arange(batch * cells, device=x.device)
        image, row, col = order // cells, order % cells // gw, order % gw
        grad = torch.is_grad_enabled() and not self.freeze_vit256
        with torch.set_grad_enabled(grad):
            if is_traced():  # a trace would keep the traced number of tile batches: all tiles in one
                features = [self.model256(tiles[image, row, col].to(device))]
            else:
                features = [self.model256(tiles[image[start:start + step], row[start:start + step],
                                                col[start:start + step]].to(device))
                            for start in range(0, batch * cells, step)]
        if not features:  # an empty batch: no tiles to encode
            return x.new_zeros(0, self.model256.num_features, gh, gw, device=device)
        grid = torch.cat(features).reshape(batch, gh, gw, -1)
        return grid.permute(0, 3, 1, 2)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``Tensor[B, C, H, W]`` -> ViT-4K tokens ``Tensor[B, 1 + gh·gw, 192]``."""
        return self.model4k.forward_features(self.encode_tiles(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """ViT-4K tokens -> region embeddings ``Tensor[B, 192]`` (``pre_logits``) or logits."""
        return self.model4k.forward_head(x, pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# --- official checkpoints -----------------------------------------------------------------------

_DINO_HEAD = ("head.mlp.", "head.last_layer.")
_CLASSIFIERS = ("head.", "model4k.head.")


def _backbone_state(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip ``module.``/``backbone.`` and drop DINO's projection head."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        if not key.startswith(_DINO_HEAD):
            out[key] = value
    return out


def _single_vit(state: Mapping[str, Tensor], model: HIPT4K) -> str | None:
    """Which of ``model``'s two ViTs a backbone state dict is (its keys and shapes are that ViT's, a classifier
    aside), or None."""
    shapes = {key: value.shape for key, value in state.items() if not key.startswith("head.")}
    for part, name in ((model.model256, "ViT-256, hipt_vit256_small"), (model.model4k, "ViT-4K, vit4k_xs")):
        if shapes == {key: value.shape for key, value in part.state_dict().items() if not key.startswith("head.")}:
            return name
    return None


def _refuse_the_other_vit(state: Mapping[str, Tensor], model: nn.Module) -> None:
    """CheckpointError when ``model`` is one of HIPT's ViTs and the backbone ``state`` the other's (told apart by the
    layer only each has: ViT-256's patch embedding, ViT-4K's ``phi``): key lists would not say so."""
    vits = {ViT256: ("ViT-256 (hipt_vit256_small)", "patch_embed.proj.weight", "a hipt_vit256_small or a hipt_4k's "
                     "model256"),
            ViT4K: ("ViT-4K (vit4k_xs)", "phi.0.weight", "a vit4k_xs or a hipt_4k's model4k")}
    for cls, other in ((ViT256, ViT4K), (ViT4K, ViT256)):
        if isinstance(model, cls) and vits[other][1] in state and vits[cls][1] not in state:
            raise CheckpointError(f"the checkpoint holds HIPT's {vits[other][0]}, not its {vits[cls][0].split()[0]}; "
                                  f"load it into {vits[other][2]}")


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """A DINO ``teacher``/``student`` dict of HIPT's (or a plain backbone dict) -> ours.

    Strips the ``module.`` (DistributedDataParallel) and ``backbone.`` (DINO's multi-crop wrapper)
    prefixes and drops DINO's projection head (``head.mlp.*``, ``head.last_layer.*``), which
    HIPT's features never use; the remaining names are already ours. HIPT's files have no
    classifier: a model built with one keeps its own (freshly initialised) head.
    """
    out = _backbone_state(state_dict)
    _refuse_the_other_vit(out, model)
    if isinstance(model, HIPT4K) and not any(key.startswith(("model256.", "model4k.")) for key in out):
        part = _single_vit(out, model)
        if part is not None:
            raise CheckpointError(
                f"the checkpoint holds one of HIPT's two ViTs ({part}), not a whole hipt_4k; load each official file "
                "into its part: load_official_checkpoint(model.model256, 'vit256_small_dino.pth') and "
                "load_official_checkpoint(model.model4k, 'vit4k_xs_dino.pth')")
    for key, value in model.state_dict().items():
        if key.startswith(_CLASSIFIERS) and key not in out:
            out[key] = value
    return out


def read_official_checkpoint(path: str | os.PathLike, checkpoint_key: str = "teacher") -> dict[str, Tensor]:
    """The backbone state dict in an official HIPT/DINO file (``vit256_small_dino.pth``, ``vit4k_xs_dino.pth``).

    Reads with :func:`~visionzoo.checkpoint.load_torch_file` (``torch.load(weights_only=True)``, allowing only
    ``argparse.Namespace`` and numpy scalars beyond tensors and containers: DINO saves its arguments), takes ``checkpoint_key``
    ("teacher", the weights HIPT uses, or "student") when the file holds a training state (else a state dict, plain
    or under ``model``/``state_dict`` as :func:`create_model` reads it), strips the
    ``module.``/``backbone.`` prefixes and drops DINO's projection head.

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` for one that is
    corrupt, needs other Python objects, or has no such key.
    """
    obj = load_torch_file(path)
    if isinstance(obj, Mapping) and ("teacher" in obj or "student" in obj):
        if checkpoint_key not in obj:
            other = "student" if checkpoint_key == "teacher" else "teacher"
            # create_model reads the teacher and takes no key: name the call that reads the other network
            hint = (f": load_official_checkpoint(model, {str(path)!r}, checkpoint_key={other!r}) loads the {other}"
                    if other in obj else "")
            raise CheckpointError(f"checkpoint {path} has no {checkpoint_key!r} entry; it has {sorted(obj)}{hint}")
        obj = obj[checkpoint_key]
        if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
            raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors under {checkpoint_key!r}")
    else:  # a plain or wrapped state dict ({"model": ...}), which create_model's reader takes too
        obj = unwrap_state_dict(obj, path)
    return _backbone_state(obj)


def load_official_checkpoint(model: nn.Module, path: str | os.PathLike, checkpoint_key: str = "teacher") -> None:
    """Load an official file into ``model`` (a :class:`ViT256`, a :class:`ViT4K`, or a :class:`HIPT4K`'s
    ``model256``/``model4k``), all of it or nothing; a head on ``model`` keeps its weights.

    Raises :class:`CheckpointError` naming missing, unexpected or mismatched keys.
    """
    state = read_official_checkpoint(path, checkpoint_key)
    try:
        state = checkpoint_filter_fn(state, model)
    except CheckpointError as error:  # the filter knows the weights, not the file they came from
        raise CheckpointError(f"checkpoint {path}: {error}") from None
    load_state_dict_strict(model, state, str(path))


# --- registered models --------------------------------------------------------------------------

def _cfg(input_size: int, **extra: Any) -> dict[str, Any]:
    return dict(
        checkpoint_filter=checkpoint_filter_fn, checkpoint_reader=read_official_checkpoint,
        input_size=(3, input_size, input_size), mean=HIPT_MEAN,
        std=HIPT_STD, num_classes=0, **extra,
    )


def _official(filename: str, sha256: str) -> Pretrained:
    """An official file of the HIPT repository (Git LFS; GitHub redirects its raw URL to the file), whose
    ``teacher`` the reader takes."""
    return Pretrained(url=f"https://github.com/mahmoodlab/HIPT/raw/master/HIPT_4K/Checkpoints/{filename}",
                      sha256=sha256)


# a linear probe on the mean token (global_pool="avg") takes the final norm as fc_norm, as a ViT's file does
@register_model(first_conv="patch_embed.proj", classifier="head", final_norms=("norm", "fc_norm"), **_cfg(256),
                pretrained=_official("vit256_small_dino.pth",
                                     "6960cd5a8657dc8bb214671aa0c6dbd3f5b698e84386884955836487ddc89e24"))
def hipt_vit256_small(**kwargs: Any) -> ViT256:
    """HIPT's ViT-256: DINO ViT-S/16 over 256 × 256 tiles, 21,665,664 parameters (no head).
    Official weights: ``vit256_small_dino.pth`` (``pretrained=True``, or see :func:`load_official_checkpoint`)."""
    return ViT256(**kwargs)


@register_model(classifier="head", **_cfg(4096),
                pretrained=_official("vit4k_xs_dino.pth",
                                     "2b0bd9e9a602a35f2bb3f76da39d2b53a91f23fc3f115dc59a63267d95ad2b7b"))
def vit4k_xs(**kwargs: Any) -> ViT4K:
    """HIPT's ViT-4K: 6 blocks of 6 heads, 192 wide, over a grid of 384-wide ViT-256 [CLS] tokens;
    2,781,504 parameters (no head). Official weights: ``vit4k_xs_dino.pth`` (``pretrained=True``)."""
    if "in_chans" in kwargs:  # the train command builds classifiers for its images' channels
        raise ValueError("vit4k_xs takes grids Tensor[B, 384, gh, gw] of ViT-256 [CLS] tokens, not images, so it has "
                         "no in_chans; hipt_4k takes images (ViT-256 over their tiles, then ViT-4K)")
    return ViT4K(**kwargs)


@register_model(first_conv="model256.patch_embed.proj", classifier="model4k.head", **_cfg(4096))
def hipt_4k(**kwargs: Any) -> HIPT4K:
    """HIPT-4K: ViT-256 over 256-pixel tiles (frozen by default), ViT-4K over their [CLS] grid;
    24,447,168 parameters without a head."""
    return HIPT4K(**kwargs)
