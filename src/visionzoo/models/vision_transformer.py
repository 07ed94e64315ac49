"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words") in timm's layout.

An image is cut into ``patch_size`` patches by a strided conv (``patch_embed.proj``); a learned class
token is prepended; a learned 1-D position table (``pos_embed``, one row per token *including* the
class token) is added; pre-norm transformer blocks follow, then a final LayerNorm (``norm``) and a
linear ``head`` on the class token (or on the mean of the patch tokens, ``global_pool="avg"``, which
moves the final norm after the pooling into ``fc_norm`` as timm does).

Module and parameter names are timm's (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.N.{norm1, attn.qkv, attn.proj, ls1, norm2, mlp.fc1, mlp.fc2, ls2}``, ``norm``, ``fc_norm``,
``head``), so timm's state dicts load key for key; :func:`checkpoint_filter_fn` resamples their
position table when the model is built for another input size.

Other input sizes: build with ``img_size=`` (a loaded table is resampled once, bicubic, class row
kept) or with ``dynamic_img_size=True`` (the table is resampled at each forward to the input's grid).

Masked patch prediction and other token-level objectives use :meth:`VisionTransformer.embed_patches`
and :meth:`VisionTransformer.forward_tokens`: ``forward_features(x)`` is exactly
``forward_tokens(embed_patches(x), grid)``.

DeiT (Touvron et al. 2021, "Training data-efficient image transformers & distillation through
attention"): the ``deit_*`` names are this ViT with DeiT's ImageNet normalisation; the
``deit_*_distilled_*`` ones are :class:`VisionTransformerDistilled`, which adds a distillation token
and a second head (``dist_token``, ``head_dist``). The engine trains that head on a teacher's
predictions (``visionzoo train --teacher``); at inference the two heads' logits are averaged.

Speed on CPU: without autograd (inference, unless traced or compiled), each block's MLP residual runs over chunks
of tokens in place, so the 4× wider hidden activations stay in cache, and the shared ``Linear`` keeps its autocast
weight copy between calls; the arithmetic is the plain path's, row for row. The copy follows weight edits
made under ``torch.no_grad()`` but not in-place edits through ``.data``: after those, call
``visionzoo.layers.drop_cast_caches(model)``.

The sizes are data (``_SIZES``); each registered builder only names one of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from visionzoo.constants import IMAGENET_MEAN, IMAGENET_STD
from visionzoo.layers import (
    Block,
    FeatureInfo,
    PatchEmbed,
    feature_take_indices,
    resample_abs_pos_embed,
    taken_in_order,
)
from visionzoo.layers.attention_pool import AttentionPoolLatent, AttentionPoolPrr
from visionzoo.layers.block import LayerNorm
from visionzoo.layers.classifier import keeps_device_and_dtype
from visionzoo.layers.drop import check_dropout_rates, drop_path_rates
from visionzoo.layers.grad_checkpoint import run_blocks
from visionzoo.layers.patch_embed import positive_pair, resample_patch_embed
from visionzoo.models._registry import Pretrained, record_model_args, register_model
from visionzoo.utils import check_argument_types, whole_number

GLOBAL_POOLS = ("token", "avg", "max", "avgmax", "map", "prr", "")
PATCH_POOLS = ("avg", "max", "avgmax")  # reductions over the patch tokens, followed by fc_norm by default
ATTENTION_POOLS = ("map", "prr")  # pooled by the module attn_pool


class VisionTransformer(nn.Module):
    """ViT classifier: ``forward(Tensor[B, in_chans, H, W] float) -> Tensor[B, num_classes]`` logits.

    Args:
        img_size: the input size the position table is built for (int or (H, W)).
        patch_size: the side of a patch (the stride of the patch-embedding conv).
        in_chans: input channels.
        num_classes: classifier outputs; 0 makes ``head`` an identity.
        global_pool: "token" (the class token), "avg", "max" or "avgmax" (mean, maximum, or the mean of
            the two, over the patch tokens, as timm's), "map" (a learned query attends over the patch
            tokens: :class:`~visionzoo.layers.attention_pool.AttentionPoolLatent`, ``attn_pool``), "prr"
            (parameter-free self-attention over all tokens, then the class token or the mean:
            :class:`~visionzoo.layers.attention_pool.AttentionPoolPrr`) or "" (no pooling: the head
            applies to every token, ``Tensor[B, T, num_classes]``).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the transformer's sizes.
        class_token: prepend a learned class token (needed by ``global_pool="token"``).
        init_values: LayerScale's initial value on both residual branches (None: no LayerScale).
        drop_rate: dropout before ``head``; ``pos_drop_rate``: after adding the position table;
            ``proj_drop_rate``: in each block after the attention's output projection and after the
            MLP's activation and output (timm's); ``attn_drop_rate``: on the attention weights;
            ``drop_path_rate``: stochastic depth, rising linearly to this rate over the blocks.
        dynamic_img_size: accept any input whose sides are multiples of the patch size, resampling
            the position table at each forward (timm's option of the same name).
        dynamic_img_pad: zero-pad the right and bottom of an input that is no multiple of the patch
            size up to the next multiple (a grid of ``⌈H/p⌉ × ⌈W/p⌉`` tokens) instead of refusing it, as
            timm's option of the same name (with ``dynamic_img_size``, any input, one smaller than a patch too;
            without it, an ``img_size`` that is no multiple of the patch is refused: its padded grid would not
            be the position table's).
        fc_norm: put the final LayerNorm after the pooling (``fc_norm``) instead of before it
            (``norm``); None: only for ``global_pool`` "avg", "max" or "avgmax" (timm's default).
        features_only: return feature maps instead of logits: ``forward`` gives a list of
            ``Tensor[B, embed_dim, H/p, W/p]`` (the outputs of the blocks ``out_indices``, prefix tokens
            removed, no final norm; timm's ``features_only``), ``feature_info`` describes every block's and
            names those in its ``out_indices``, as timm's, and
            the model has no ``norm``/``fc_norm``/``head`` nor the blocks after the last of ``out_indices``
            (their checkpoint weights are dropped).
        out_indices: the blocks whose outputs ``features_only`` returns: an int n for the last n
            blocks, or a sequence of block indices (any order, repeats allowed: each map comes once,
            in block order, as timm's; ``out_indices`` and ``feature_info.out_indices`` then list those maps).

    Token layout: ``num_prefix_tokens`` prefix tokens (the class token) then the ``gh·gw`` patch
    tokens in raster order, where ``(gh, gw) = (H / p, W / p)`` is the input's grid.
    """

    @check_argument_types
    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        init_values: float | None = None,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dynamic_img_size: bool = False,
        dynamic_img_pad: bool = False,
        fc_norm: bool | None = None,
        features_only: bool = False,
        out_indices: int | Sequence[int] = 3,
    ):
        super().__init__()
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs the class token (class_token=True)")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        check_dropout_rates(drop_rate=drop_rate, pos_drop_rate=pos_drop_rate, proj_drop_rate=proj_drop_rate)
        use_fc_norm = global_pool in PATCH_POOLS if fc_norm is None else fc_norm
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        # timm's descriptive attributes (its tools read them): no register tokens, the table covers the class token
        self.has_class_token, self.num_reg_tokens, self.reg_token, self.no_embed_class = class_token, 0, None, False
        self.in_chans = in_chans
        self.dynamic_img_size = dynamic_img_size
        self.features_only = features_only
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=not dynamic_img_size,
                                      dynamic_img_pad=dynamic_img_pad)
        _check_padded_grid(self.patch_embed.img_size, self.patch_embed.patch_size, dynamic_img_pad, dynamic_img_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        rates = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                  init_values=init_values, drop_path=rate)
            for rate in rates
        ])
        reduction = max(self.patch_embed.patch_size)  # timm's feat_ratio: the larger side of a non-square patch
        if features_only:
            self.output_fmt = "NCHW"  # the layout of the maps, as timm's feature extractors name it
            self.out_indices = taken_in_order(feature_take_indices(depth, out_indices, "block"))
            # as timm's: the blocks after the last map would get no gradient (DDP refuses unused parameters)
            self.blocks = self.blocks[:max(self.out_indices) + 1]
            self.feature_info = FeatureInfo(
                (dict(num_chs=embed_dim, reduction=reduction, module=f"blocks.{i}") for i in range(depth)),
                self.out_indices,
            )
            self.attn_pool = None
        else:
            self.feature_info = FeatureInfo(
                dict(num_chs=embed_dim, reduction=reduction, module=f"blocks.{i}") for i in range(depth)
            )
            self.norm = nn.Identity() if use_fc_norm else LayerNorm(embed_dim)
            self.attn_pool = self._attention_pool(global_pool, num_heads, mlp_ratio)
            self.fc_norm = LayerNorm(embed_dim) if use_fc_norm else nn.Identity()
            self.head_drop = nn.Dropout(drop_rate)
            self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.default_cfg: dict = {}
        self.init_weights()

    def _attention_pool(self, global_pool: str, num_heads: int, mlp_ratio: float) -> nn.Module | None:
        if global_pool == "map":
            return AttentionPoolLatent(self.embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, norm_layer=LayerNorm)
        if global_pool == "prr":
            return AttentionPoolPrr(self.embed_dim, num_heads, "token" if self.cls_token is not None else "avg")
        return None

    def init_weights(self) -> None:
        """timm's initialisation: truncated normal (std 0.02) for the position table and every
        Linear (zero biases), normal with std 1e-6 for the class token, the attention pool's latent
        by its own rule; convs and norms keep PyTorch's defaults."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, AttentionPoolLatent):
                module.init_weights()

    # --- the timm interface -------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    @keeps_device_and_dtype
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh ``num_classes``-way head (0: identity), optionally with another ``global_pool``
        (the final norm's place is kept as built). As timm's, attention pooling ("map", "prr") is kept
        only by a model built with it: another pool drops its ``attn_pool``. As timm's, the arguments that
        rebuild the model (``model_args``, kept by our checkpoints) follow: ``num_classes``, and with a
        ``global_pool`` that pool and the norm's place (``fc_norm``)."""
        num_classes = whole_number(num_classes, "num_classes", 0)
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
            if global_pool == "token" and self.cls_token is None:
                raise ValueError("global_pool='token' needs the class token")
            if global_pool in ATTENTION_POOLS and global_pool != self.global_pool:
                raise ValueError(f"reset_classifier cannot add attention pooling (global_pool={global_pool!r}) to a "
                                 f"model pooled by {self.global_pool!r}, nor can timm's: build the model with it")
            if global_pool not in ATTENTION_POOLS:
                self.attn_pool = None
            self.global_pool = global_pool
            record_model_args(self, global_pool=global_pool, fc_norm=not isinstance(self.fc_norm, nn.Identity))
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        record_model_args(self, num_classes=num_classes)

    def no_weight_decay(self) -> set[str]:
        """The parameters timm's optimizer factory keeps out of weight decay (timm's set)."""
        return {"pos_embed", "cls_token", "reg_token", "dist_token"}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's optimizer factory (layer-wise learning-rate decay,
        ``timm.optim.create_optimizer_v2(model, layer_decay=...)``), as timm's: the embeddings first, then
        one group per block with the final norm in the last one; the head is left to the last group.
        ``coarse`` changes nothing for a ViT (as timm's)."""
        return dict(
            stem=r"^(?:cls_token|dist_token|pos_embed|patch_embed)",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm\.", (99999,))],
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (timm's
        switch; see :func:`~visionzoo.layers.run_blocks`): less memory in training, same outputs and
        gradients."""
        self.grad_checkpointing = enable

    def set_input_size(self, img_size: int | tuple[int, int] | None = None,
                       patch_size: int | tuple[int, int] | None = None) -> None:
        """Take ``img_size`` images and/or ``patch_size`` patches from now on, as timm's method: the position
        table is resampled from the old token grid to the new one (bicubic, antialiased, prefix rows kept:
        :func:`~visionzoo.layers.resample_abs_pos_embed`), and another patch size resamples the patch kernel
        (:func:`~visionzoo.layers.patch_embed.resample_patch_embed`). Without ``dynamic_img_size`` other
        input sizes are then refused. ``feature_info`` and the arguments that rebuild the model
        (``model_args``, kept by our checkpoints) follow."""
        _check_padded_grid(
            self.patch_embed.img_size if img_size is None else positive_pair(img_size, "img_size"),
            self.patch_embed.patch_size if patch_size is None else positive_pair(patch_size, "patch_size"),
            self.patch_embed.dynamic_img_pad, self.dynamic_img_size,
        )
        old_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size, patch_size)
        grid = self.patch_embed.grid_size
        if grid != old_grid:
            with torch.no_grad():
                table = resample_abs_pos_embed(self.pos_embed, grid, old_grid, num_prefix_tokens=self.num_prefix_tokens)
            self.pos_embed = nn.Parameter(table, requires_grad=self.pos_embed.requires_grad)
        reduction = max(self.patch_embed.patch_size)
        self.feature_info = FeatureInfo((dict(info, reduction=reduction) for info in self.feature_info),
                                        self.feature_info.out_indices)
        changed = dict(img_size=_int_or_pair(self.patch_embed.img_size))
        if patch_size is not None:
            changed["patch_size"] = _int_or_pair(self.patch_embed.patch_size)
        record_model_args(self, **changed)

    # --- tokens -------------------------------------------------------------------------------
    def embed_patches(self, x: Tensor) -> Tensor:
        """Patch embedding only: ``Tensor[B, in_chans, H, W] -> Tensor[B, (H/p)·(W/p), embed_dim]``
        (raster order; no class token, no position table). Wrong channels, an image smaller than a
        patch or (without ``dynamic_img_size``) another size than the model's raise ValueError."""
        return self.patch_embed(x)

    def grid_size(self, x: Tensor) -> tuple[int, int]:
        """The token grid ``(H/p, W/p)`` of images ``Tensor[B, C, H, W]`` (rounded up with ``dynamic_img_pad``)."""
        return self.patch_embed.dynamic_feat_size(x.shape[-2:])

    def prefix_tokens(self) -> list[Tensor]:
        """The learned tokens put before the patch tokens, each Tensor[1, 1, embed_dim]."""
        return [] if self.cls_token is None else [self.cls_token]

    def pos_embed_at(self, grid_size: tuple[int, int]) -> Tensor:
        """The position table for a ``grid_size`` token grid: Tensor[1, num_prefix_tokens + gh·gw, D].

        The model's own table at its own grid; resampled (bicubic, prefix rows kept) for another
        grid when ``dynamic_img_size`` allows it, otherwise ValueError.
        """
        return _pos_embed_at(self.pos_embed, grid_size, self.patch_embed.grid_size, self.dynamic_img_size,
                             self.num_prefix_tokens)

    def add_pos_embed(self, tokens: Tensor, grid_size: tuple[int, int]) -> Tensor:
        """Prefix tokens and the position table: ``Tensor[B, gh·gw, D] -> Tensor[B, P + gh·gw, D]``."""
        pos_embed = self.pos_embed_at(grid_size)
        prefix = self.prefix_tokens()
        if not prefix:
            return self.pos_drop(tokens + pos_embed)
        batch = tokens.shape[0]
        count = len(prefix)
        # Add the table to the prefix rows once, not once per image: the same sums as timm's cat-then-add. Each token
        # is expanded on its own: a slice of their pair's expanded gradient would be strided unlike the token, which
        # DistributedDataParallel warns of on every rank.
        head = [(token + pos_embed[:, index:index + 1]).expand(batch, -1, -1) for index, token in enumerate(prefix)]
        return self.pos_drop(torch.cat([*head, tokens + pos_embed[:, count:]], dim=1))

    def forward_tokens(self, tokens: Tensor, grid_size: tuple[int, int], attn_mask: Tensor | None = None,
                       is_causal: bool = False) -> Tensor:
        """The transformer on patch tokens: ``Tensor[B, gh·gw, D] -> Tensor[B, num_prefix_tokens + gh·gw, D]``.

        Adds the prefix tokens and the position table of ``grid_size`` (resampled for another grid
        than the model's when ``dynamic_img_size``), runs the blocks and the final norm. ``tokens``
        may be :meth:`embed_patches`' output with some rows replaced (masked patch prediction).
        ``attn_mask`` and ``is_causal`` go to every block's attention, as timm's: a boolean mask (True:
        attend) or an additive float bias broadcasting to ``Tensor[B, num_heads, T, T]`` over all ``T``
        tokens, prefix tokens first; ``is_causal``: each token attends to itself and those before it
        (not with ``attn_mask``: ``scaled_dot_product_attention`` takes one or the other).
        """
        tokens = _checked_tokens(tokens, grid_size, self.embed_dim)
        x = run_blocks(self.blocks, self.add_pos_embed(tokens, grid_size), self.grad_checkpointing,
                       attn_bias=attn_mask, is_causal=is_causal)
        return x if self.features_only else self.norm(x)

    # --- forward ------------------------------------------------------------------------------
    def forward_features(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """``Tensor[B, in_chans, H, W] -> Tensor[B, num_prefix_tokens + (H/p)·(W/p), embed_dim]`` tokens;
        ``attn_mask``, ``is_causal``: as :meth:`forward_tokens`."""
        return self.forward_tokens(self.embed_patches(x), self.grid_size(x), attn_mask, is_causal)

    def pool(self, x: Tensor, pool_type: str | None = None) -> Tensor:
        """``Tensor[B, T, D] -> Tensor[B, D]`` by ``global_pool`` (``""``: unchanged), or by ``pool_type``
        ("token", "avg", "max", "avgmax" or "") where given; a model with attention pooling always pools
        with its ``attn_pool``, as timm's."""
        if self.attn_pool is not None:
            return self.attn_pool(x if self.global_pool == "prr" else x[:, self.num_prefix_tokens:])
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type not in set(GLOBAL_POOLS) - set(ATTENTION_POOLS):
            raise ValueError(f"pool_type must be one of 'token', 'avg', 'max', 'avgmax' or '', got {pool_type!r}")
        if pool_type == "token":
            return x[:, 0]
        patches = x[:, self.num_prefix_tokens:]
        if pool_type == "avg":
            return patches.mean(dim=1)
        if pool_type == "max":
            return patches.amax(dim=1)
        if pool_type == "avgmax":
            return 0.5 * (patches.amax(dim=1) + patches.mean(dim=1))
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens ``Tensor[B, T, D] -> Tensor[B, num_classes]`` logits, or with ``pre_logits`` the pooled
        (and ``fc_norm``-ed) ``Tensor[B, D]``."""
        x = self.head_drop(self.fc_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward_maps(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> list[Tensor]:
        """Feature maps of the blocks ``out_indices`` (``features_only``): images ``Tensor[B, C, H, W]``
        -> list of ``Tensor[B, embed_dim, H/p, W/p]``."""
        return self.forward_intermediates(x, self.out_indices, stop_early=True, intermediates_only=True,
                                          attn_mask=attn_mask, is_causal=is_causal)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> list[Tensor] | list[tuple[Tensor, Tensor]] | tuple[Tensor, list] | dict[str, Any]:
        """The outputs of some blocks beside the final tokens (timm's API of the same name).

        Args:
            x: images ``Tensor[B, in_chans, H, W]``.
            indices: the blocks: an int n for the last n, a sequence of block indices (negative
                ones count from the end; any order, repeats allowed: each block's output comes once,
                in block order, as timm's), None for all.
            return_prefix_tokens: pair each intermediate with its prefix tokens
                ``Tensor[B, num_prefix_tokens, D]``.
            norm: pass the intermediates through the final ``norm`` (an identity when the model
                normalises after pooling, ``fc_norm``).
            stop_early: run no block after the last one asked for (the final tokens are then that
                block's output).
            output_fmt: "NCHW" (``Tensor[B, D, H/p, W/p]`` maps of the patch tokens) or "NLC"
                (``Tensor[B, (H/p)·(W/p), D]``).
            intermediates_only: return only the intermediates.
            output_dict: return ``{"image_intermediates": [...], "image_features": tokens}`` (with
                ``"image_intermediates_prefix"`` when ``return_prefix_tokens``).
            attn_mask, is_causal: for every block's attention, as :meth:`forward_tokens`.

        Returns the list of intermediates, or ``(final tokens Tensor[B, T, D] after norm, list)``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take = feature_take_indices(len(self.blocks), len(self.blocks) if indices is None else indices, "block",
                                    "indices")
        last = max(take)
        tokens = self.embed_patches(x)  # before reading the grid off x: it checks that x is images
        grid = self.grid_size(x)
        x = self.add_pos_embed(tokens, grid)
        intermediates = []
        for index, block in enumerate(self.blocks[:last + 1] if stop_early else self.blocks):
            x = run_blocks([block], x, self.grad_checkpointing, attn_bias=attn_mask, is_causal=is_causal)
            if index in take:
                intermediates.append(self._final_norm(x) if norm else x)
        prefix = [y[:, :self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == "NCHW":
            intermediates = [y.reshape(y.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
                             for y in intermediates]
        if output_dict:
            result: dict[str, Any] = {"image_intermediates": intermediates}
            if return_prefix_tokens and self.num_prefix_tokens:
                result["image_intermediates_prefix"] = prefix
            if not intermediates_only:
                result["image_features"] = self._final_norm(x)
            return result
        if return_prefix_tokens and self.num_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self._final_norm(x), intermediates

    def _final_norm(self, x: Tensor) -> Tensor:
        return x if self.features_only else self.norm(x)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (as :meth:`forward_intermediates` takes them),
        with ``prune_norm`` the final norm and with ``prune_head`` the classifier (``fc_norm`` and
        ``head`` become identities and ``global_pool`` "", so ``forward`` gives the tokens), as timm's.
        Returns the block indices as given (negative ones resolved), as timm's."""
        take = feature_take_indices(len(self.blocks), indices, "block", "indices")
        last = max(take)
        self.blocks = self.blocks[:last + 1]
        if prune_norm and not self.features_only:
            self.norm = nn.Identity()
        if prune_head and not self.features_only:
            self._remove_head()
        return list(take)

    def _remove_head(self) -> None:
        self.fc_norm = nn.Identity()
        self.reset_classifier(0, "")

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        attn_mask: Tensor | None = None,
    ) -> list[Tensor] | list[tuple[Tensor, Tensor]]:
        """DINO's interface (timm keeps it): the outputs of the blocks ``n`` (an int: the last n), patch
        tokens ``Tensor[B, (H/p)·(W/p), D]`` or, with ``reshape``, maps ``Tensor[B, D, H/p, W/p]``; the
        other arguments as :meth:`forward_intermediates`, of which this is the ``intermediates_only`` call."""
        return self.forward_intermediates(x, n, return_prefix_tokens=return_prefix_tokens, norm=norm,
                                          output_fmt="NCHW" if reshape else "NLC", intermediates_only=True,
                                          attn_mask=attn_mask)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor | list[Tensor]:
        """Images ``Tensor[B, in_chans, H, W]`` -> logits (see the class); ``attn_mask``, ``is_causal``: as
        :meth:`forward_tokens`."""
        if self.features_only:
            return self.forward_maps(x, attn_mask, is_causal)
        return self.forward_head(self.forward_features(x, attn_mask, is_causal))


class VisionTransformerDistilled(VisionTransformer):
    """DeiT's distilled ViT: ``forward(Tensor[B, in_chans, H, W]) -> Tensor[B, num_classes]``.

    A learned distillation token follows the class token (``num_prefix_tokens`` = 2, and the position
    table has a row for each). The class token feeds ``head``, the distillation token ``head_dist``.
    In eval mode, or in training without :meth:`set_distilled_training`, the output is the mean of
    the two heads' logits; while distilled training is on and the model is in training mode,
    ``forward``/``forward_head`` return the pair ``(class_logits, distill_logits)``, each
    ``Tensor[B, num_classes]``, for the loss of :func:`visionzoo.train.distillation.distillation_loss`.

    Takes :class:`VisionTransformer`'s arguments; ``global_pool`` must be "token" (the heads read
    the two prefix tokens).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.global_pool != "token":
            raise ValueError(f"the distilled ViT reads its class and distillation tokens: global_pool must be "
                             f"'token', got {self.global_pool!r}")
        self.num_prefix_tokens = 2
        self.dist_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, self.embed_dim)
        )
        if not self.features_only:
            self.head_dist = nn.Linear(self.embed_dim, self.num_classes) if self.num_classes > 0 else nn.Identity()
        self.distilled_training = False
        self.init_weights()

    def init_weights(self) -> None:
        """:meth:`VisionTransformer.init_weights`, and the distillation token truncated normal (std 0.02)."""
        super().init_weights()
        if hasattr(self, "dist_token"):
            nn.init.trunc_normal_(self.dist_token, std=0.02)

    def set_distilled_training(self, enable: bool = True) -> None:
        """Return both heads' logits in training mode (the distillation objective needs them apart)."""
        self.distilled_training = enable

    def get_classifier(self) -> tuple[nn.Module, nn.Module]:
        return self.head, self.head_dist

    @keeps_device_and_dtype
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Fresh heads (0: identities); ``global_pool`` may be "token" or "" (accepted as timm's, which keeps
        reading the two tokens: its ``prune_intermediate_layers`` passes it)."""
        if global_pool not in (None, "", "token"):
            raise ValueError(f"the distilled ViT pools its prefix tokens: global_pool must be 'token', got {global_pool!r}")
        num_classes = whole_number(num_classes, "num_classes", 0)
        super().reset_classifier(num_classes)
        self.head_dist = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def prefix_tokens(self) -> list[Tensor]:
        return [self.cls_token, self.dist_token]

    def _remove_head(self) -> None:
        # as timm's: both heads become identities, the two tokens are still averaged
        self.reset_classifier(0)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Tokens ``Tensor[B, T, D]`` -> the mean of the two heads' logits ``Tensor[B, num_classes]``
        (``pre_logits``: the mean of the two tokens, ``Tensor[B, D]``), or the pair of logits while
        distilled training is on in training mode."""
        cls, dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
        if pre_logits:
            return (cls + dist) / 2
        cls, dist = self.head(cls), self.head_dist(dist)
        if self.distilled_training and self.training:
            return cls, dist
        return (cls + dist) / 2


def _check_padded_grid(img_size: tuple[int, int], patch_size: tuple[int, int], dynamic_img_pad: bool,
                       dynamic_img_size: bool) -> None:
    """``ValueError`` naming the arguments when ``img_size`` images, padded to whole patches (``dynamic_img_pad``), make
    a larger token grid than the position table's (whole patches only) and the table is not resampled per input (no
    ``dynamic_img_size``): such a model, timm's too, can take none of its images."""
    if not dynamic_img_pad or dynamic_img_size:
        return
    padded = tuple(-(-side // patch) for side, patch in zip(img_size, patch_size))
    table = tuple(side // patch for side, patch in zip(img_size, patch_size))
    if padded != table:
        raise ValueError(
            f"img_size {img_size[0]}×{img_size[1]} is no multiple of the {patch_size[0]}×{patch_size[1]} patch: with "
            f"dynamic_img_pad=True its images pad to a {padded[0]}×{padded[1]} token grid, but the position table is "
            f"for {table[0]}×{table[1]} (timm's model fails on them); give an img_size that is a multiple of the "
            "patch, or dynamic_img_size=True"
        )


def _pos_embed_at(pos_embed: Tensor, grid_size: tuple[int, int], own: tuple[int, int], dynamic: bool,
                  num_prefix_tokens: int) -> Tensor:
    """:meth:`VisionTransformer.pos_embed_at` of a model whose table ``pos_embed`` is for the grid ``own``."""
    grid_size = (int(grid_size[0]), int(grid_size[1]))
    if grid_size == own:
        return pos_embed
    if not dynamic:
        raise ValueError(
            f"the model's position table is for a {own[0]}×{own[1]} token grid, got {grid_size[0]}×{grid_size[1]}; "
            "build it with img_size=... or dynamic_img_size=True"
        )
    return resample_abs_pos_embed(pos_embed, grid_size, own, num_prefix_tokens=num_prefix_tokens)


def _checked_tokens(tokens: Tensor, grid_size: tuple[int, int], embed_dim: int) -> Tensor:
    """``tokens``, or ``ValueError`` when they are no ``Tensor[B, gh·gw, embed_dim]`` for the grid ``grid_size``."""
    grid_size = (int(grid_size[0]), int(grid_size[1]))
    if tokens.ndim != 3 or tokens.shape[1] != grid_size[0] * grid_size[1] or tokens.shape[2] != embed_dim:
        raise ValueError(
            f"expected tokens Tensor[B, {grid_size[0]}·{grid_size[1]}, {embed_dim}] for grid {grid_size}, "
            f"got shape {tuple(tokens.shape)}"
        )
    return tokens


# torch.fx (torchvision's create_feature_extractor) records the grid's table and the tokens' check as one call
# each, run on the real sizes, which its symbols cannot branch on; the tokens flow through the check, so that
# pruning the graph keeps it
torch.fx.wrap("_pos_embed_at")
torch.fx.wrap("_checked_tokens")


def _int_or_pair(size: tuple[int, int]) -> int | tuple[int, int]:
    return size[0] if size[0] == size[1] else size


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: VisionTransformer) -> dict[str, Tensor]:
    """timm's (and the original DeiT release's) ViT state dict -> ours.

    The key names are the same; what changes: a position table made for another grid is resampled
    (bicubic, antialiased, prefix rows kept) to the model's ``patch_embed.grid_size`` and a patch kernel made for
    another patch size to the model's (:func:`~visionzoo.layers.patch_embed.resample_patch_embed`), as timm's own
    filter does; the ``pre_logits`` layer of old timm checkpoints (unused by their heads) is
    dropped; DeiT III's ``gamma_1``/``gamma_2`` become ``ls1.gamma``/``ls2.gamma``. A table whose rows
    after the model's prefix rows are no square grid (a file of a model with other prefix tokens: a
    ViT's into a distilled DeiT, or back) is kept as it is, for the strict load to report with the
    keys that differ. (The ``model.`` prefix of timm's feature extractor, ``features_only``, which wraps the ViT as
    ``model``, is taken off before, by :func:`~visionzoo.models._registry.without_wrapper_prefix`.)
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("pre_logits."):
            continue
        if key == "pos_embed" and value.shape != model.pos_embed.shape:
            grid_tokens = value.shape[1] - model.num_prefix_tokens
            side = math.isqrt(max(grid_tokens, 0))
            if grid_tokens > 0 and side * side == grid_tokens:
                value = resample_abs_pos_embed(
                    value, model.patch_embed.grid_size, (side, side), num_prefix_tokens=model.num_prefix_tokens
                )
        elif key == "patch_embed.proj.weight" and value.ndim == 4:
            value = resample_patch_embed(value, model.patch_embed.patch_size)
        elif ".gamma_" in key:
            block, _, index = key.rpartition(".gamma_")
            key = f"{block}.ls{index}.gamma"
        out[key] = value
    return out


# --- registered sizes -------------------------------------------------------------------------

_SIZES: dict[str, dict[str, Any]] = {
    "vit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "vit_small_patch32_224": dict(patch_size=32, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch32_224": dict(patch_size=32, embed_dim=768, depth=12, num_heads=12),
    "vit_base_patch16_384": dict(img_size=384, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    # Small inputs, for training from scratch on the built-in data: timm's tiny/small widths and
    # heads, half its depth (6 blocks), an 8×8 grid of 64 patch tokens (patch 4 at 32 px, 8 at 64 px)
    # or a 4×4 grid of 16 (patch 8 at 32 px: on Digits, whose 8×8 originals are upsampled to 32 px, a
    # token then sees 2×2 original pixels; it trains to ~98% in a few CPU minutes where patch 4 does not).
    "vit_tiny_patch4_32": dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3),
    "vit_tiny_patch8_32": dict(img_size=32, patch_size=8, embed_dim=192, depth=6, num_heads=3),
    "vit_small_patch4_32": dict(img_size=32, patch_size=4, embed_dim=384, depth=6, num_heads=6),
    "vit_tiny_patch8_64": dict(img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3),
    "vit_small_patch8_64": dict(img_size=64, patch_size=8, embed_dim=384, depth=6, num_heads=6),
    "deit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "deit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "deit_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "deit_tiny_distilled_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, distilled=True),
    "deit_small_distilled_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, distilled=True),
    "deit_base_distilled_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, distilled=True),
    # DeiT-Ti for 32×32 inputs, the size of vit_tiny_patch8_32 (with and without the distillation token).
    "deit_tiny_patch8_32": dict(img_size=32, patch_size=8, embed_dim=192, depth=6, num_heads=3),
    "deit_tiny_distilled_patch8_32": dict(img_size=32, patch_size=8, embed_dim=192, depth=6, num_heads=3,
                                          distilled=True),
}


def _create(name: str, **kwargs: Any) -> VisionTransformer:
    """Build the size ``name``, with ``kwargs`` (any constructor argument) overriding its sizes."""
    args = {**_SIZES[name], **kwargs}
    model_class = VisionTransformerDistilled if args.pop("distilled", False) else VisionTransformer
    return model_class(**args)


AUGREG_MEAN = AUGREG_STD = (0.5, 0.5, 0.5)


def _cfg(img_size: int = 224, crop_pct: float = 0.9, mean: tuple[float, ...] = AUGREG_MEAN,
         std: tuple[float, ...] = AUGREG_STD, classifier: str | tuple[str, ...] = "head", **extra: Any) -> dict[str, Any]:
    return dict(
        checkpoint_filter=checkpoint_filter_fn, first_conv="patch_embed.proj", classifier=classifier,
        final_norms=("norm", "fc_norm"), input_size=(3, img_size, img_size), mean=mean, std=std, crop_pct=crop_pct,
        interpolation="bicubic", num_classes=1000, fixed_input_size=True, **extra,  # timm's: a position table per patch
    )


def _deit_cfg(img_size: int = 224, crop_pct: float = 0.9, distilled: bool = False) -> dict[str, Any]:
    return _cfg(img_size, crop_pct, IMAGENET_MEAN, IMAGENET_STD, ("head", "head_dist") if distilled else "head")


def _timm(tag: str) -> Pretrained:
    return Pretrained(hf_hub_id=f"timm/{tag}")


@register_model(pretrained=_timm("vit_tiny_patch16_224.augreg_in21k_ft_in1k"), **_cfg())
def vit_tiny_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-Ti/16: 192 wide, 12 blocks of 3 heads, 5.7 M parameters."""
    return _create("vit_tiny_patch16_224", **kwargs)


@register_model(pretrained=_timm("vit_small_patch16_224.augreg_in21k_ft_in1k"), **_cfg())
def vit_small_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-S/16: 384 wide, 12 blocks of 6 heads, 22.1 M parameters."""
    return _create("vit_small_patch16_224", **kwargs)


@register_model(pretrained=_timm("vit_base_patch16_224.augreg2_in21k_ft_in1k"), **_cfg())
def vit_base_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-B/16: 768 wide, 12 blocks of 12 heads, 86.6 M parameters."""
    return _create("vit_base_patch16_224", **kwargs)


@register_model(pretrained=_timm("vit_large_patch16_224.augreg_in21k_ft_in1k"), **_cfg())
def vit_large_patch16_224(**kwargs) -> VisionTransformer:
    """ViT-L/16: 1024 wide, 24 blocks of 16 heads, 304.3 M parameters."""
    return _create("vit_large_patch16_224", **kwargs)


@register_model(pretrained=_timm("vit_small_patch32_224.augreg_in21k_ft_in1k"), **_cfg())
def vit_small_patch32_224(**kwargs) -> VisionTransformer:
    """ViT-S/32: 384 wide, 12 blocks of 6 heads, 22.9 M parameters."""
    return _create("vit_small_patch32_224", **kwargs)


@register_model(pretrained=_timm("vit_base_patch32_224.augreg_in21k_ft_in1k"), **_cfg())
def vit_base_patch32_224(**kwargs) -> VisionTransformer:
    """ViT-B/32: 768 wide, 12 blocks of 12 heads, 88.2 M parameters."""
    return _create("vit_base_patch32_224", **kwargs)


@register_model(pretrained=_timm("vit_base_patch16_384.augreg_in21k_ft_in1k"), **_cfg(384, crop_pct=1.0))
def vit_base_patch16_384(**kwargs) -> VisionTransformer:
    """ViT-B/16 at 384×384 (a 24×24 grid), 86.9 M parameters."""
    return _create("vit_base_patch16_384", **kwargs)


@register_model(**_cfg(32, crop_pct=1.0))
def vit_tiny_patch4_32(**kwargs) -> VisionTransformer:
    """ViT-Ti with 4×4 patches for 32×32 images: 192 wide, 6 blocks of 3 heads, 2.9 M parameters."""
    return _create("vit_tiny_patch4_32", **kwargs)


@register_model(**_cfg(32, crop_pct=1.0))
def vit_tiny_patch8_32(**kwargs) -> VisionTransformer:
    """ViT-Ti with 8×8 patches for 32×32 images (a 4×4 grid): 192 wide, 6 blocks of 3 heads, 2.7 M parameters."""
    return _create("vit_tiny_patch8_32", **kwargs)


@register_model(**_cfg(32, crop_pct=1.0))
def vit_small_patch4_32(**kwargs) -> VisionTransformer:
    """ViT-S with 4×4 patches for 32×32 images: 384 wide, 6 blocks of 6 heads, 11.1 M parameters."""
    return _create("vit_small_patch4_32", **kwargs)


@register_model(**_cfg(64, crop_pct=1.0))
def vit_tiny_patch8_64(**kwargs) -> VisionTransformer:
    """ViT-Ti with 8×8 patches for 64×64 images: 192 wide, 6 blocks of 3 heads, 2.9 M parameters."""
    return _create("vit_tiny_patch8_64", **kwargs)


@register_model(**_cfg(64, crop_pct=1.0))
def vit_small_patch8_64(**kwargs) -> VisionTransformer:
    """ViT-S with 8×8 patches for 64×64 images: 384 wide, 6 blocks of 6 heads, 11.1 M parameters."""
    return _create("vit_small_patch8_64", **kwargs)


@register_model(pretrained=_timm("deit_tiny_patch16_224.fb_in1k"), **_deit_cfg())
def deit_tiny_patch16_224(**kwargs) -> VisionTransformer:
    """DeiT-Ti: ViT-Ti/16 with DeiT's recipe and normalisation, 5.7 M parameters."""
    return _create("deit_tiny_patch16_224", **kwargs)


@register_model(pretrained=_timm("deit_small_patch16_224.fb_in1k"), **_deit_cfg())
def deit_small_patch16_224(**kwargs) -> VisionTransformer:
    """DeiT-S: ViT-S/16 with DeiT's recipe and normalisation, 22.1 M parameters."""
    return _create("deit_small_patch16_224", **kwargs)


@register_model(pretrained=_timm("deit_base_patch16_224.fb_in1k"), **_deit_cfg())
def deit_base_patch16_224(**kwargs) -> VisionTransformer:
    """DeiT-B: ViT-B/16 with DeiT's recipe and normalisation, 86.6 M parameters."""
    return _create("deit_base_patch16_224", **kwargs)


@register_model(pretrained=_timm("deit_tiny_distilled_patch16_224.fb_in1k"), **_deit_cfg(distilled=True))
def deit_tiny_distilled_patch16_224(**kwargs) -> VisionTransformerDistilled:
    """DeiT-Ti⚗: a distillation token and head beside the class token and head, 5.9 M parameters."""
    return _create("deit_tiny_distilled_patch16_224", **kwargs)


@register_model(pretrained=_timm("deit_small_distilled_patch16_224.fb_in1k"), **_deit_cfg(distilled=True))
def deit_small_distilled_patch16_224(**kwargs) -> VisionTransformerDistilled:
    """DeiT-S⚗: a distillation token and head beside the class token and head, 22.4 M parameters."""
    return _create("deit_small_distilled_patch16_224", **kwargs)


@register_model(pretrained=_timm("deit_base_distilled_patch16_224.fb_in1k"), **_deit_cfg(distilled=True))
def deit_base_distilled_patch16_224(**kwargs) -> VisionTransformerDistilled:
    """DeiT-B⚗: a distillation token and head beside the class token and head, 87.3 M parameters."""
    return _create("deit_base_distilled_patch16_224", **kwargs)


@register_model(**_deit_cfg(32, crop_pct=1.0))
def deit_tiny_patch8_32(**kwargs) -> VisionTransformer:
    """DeiT-Ti with 8×8 patches for 32×32 images (the size of ``vit_tiny_patch8_32``), 2.7 M parameters."""
    return _create("deit_tiny_patch8_32", **kwargs)


@register_model(**_deit_cfg(32, crop_pct=1.0, distilled=True))
def deit_tiny_distilled_patch8_32(**kwargs) -> VisionTransformerDistilled:
    """DeiT-Ti⚗ with 8×8 patches for 32×32 images: ``deit_tiny_patch8_32`` plus the distillation token
    and head, 2.7 M parameters."""
    return _create("deit_tiny_distilled_patch8_32", **kwargs)
