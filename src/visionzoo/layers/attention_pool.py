"""Attention pooling of a token sequence into one vector: timm's ViT ``global_pool`` "map" and "prr"."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from visionzoo.layers.attention import scaled_dot_product_attention
from visionzoo.layers.linear import Linear
from visionzoo.layers.mlp import Mlp
from visionzoo.layers.norm import factory


class AttentionPoolLatent(nn.Module):
    """Multi-head attention pooling with learned queries (the "MAP" head of big_vision's ViT and SigLIP):
    ``Tensor[B, N, embed_dim] -> Tensor[B, out_features]`` (``pool_type`` "token": the first latent's output,
    "avg": the latents' mean, "": every latent's, ``Tensor[B, latent_len, out_features]``).

    ``latent_len`` learned latent tokens, projected by ``q``, attend over the N tokens (keys and values
    from ``kv``); ``proj`` mixes the heads into ``out_features``, then a residual MLP on ``norm``'s output
    (None: no norm, as timm's default; timm's ViT passes its LayerNorm) follows. ``out_features=0`` leaves
    out ``proj``, ``norm`` and the MLP (the pooled ``embed_dim`` features). The arguments after ``num_heads``
    are keyword-only. Keys (``latent``, ``q``, ``kv``, ``proj``, ``norm``, ``mlp.fc1``, ``mlp.fc2``), defaults
    and arithmetic are those of timm's ``AttentionPoolLatent`` (without its optional position table, query
    and key norms and latent width).
    """

    def __init__(self, in_features: int, out_features: int | None = None, embed_dim: int | None = None,
                 num_heads: int = 8, *, mlp_ratio: float = 4.0, qkv_bias: bool = True, latent_len: int = 1,
                 pool_type: str = "token", norm_layer: Any = None, act_layer: type[nn.Module] = nn.GELU,
                 drop: float = 0.0, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        embed_dim = embed_dim or in_features
        out_features = in_features if out_features is None else out_features
        if num_heads < 1:
            raise ValueError(f"num_heads must be positive, got {num_heads}")
        if embed_dim % num_heads:
            raise ValueError(f"dim {embed_dim} is not divisible by num_heads {num_heads}")
        if pool_type not in ("token", "avg", ""):
            raise ValueError(f"pool_type must be 'token', 'avg' or '', got {pool_type!r}")
        self.num_heads = num_heads
        self.pool_type = pool_type
        self.latent = nn.Parameter(torch.zeros(1, latent_len, embed_dim, **dd))
        self.q = Linear(embed_dim, embed_dim, bias=qkv_bias, **dd)
        self.kv = Linear(embed_dim, 2 * embed_dim, bias=qkv_bias, **dd)
        if out_features > 0:
            self.proj = Linear(embed_dim, out_features, **dd)
            self.proj_drop = nn.Dropout(drop)
            self.norm = norm_layer(out_features, **factory(dd)) if norm_layer is not None else nn.Identity()
            self.mlp = Mlp(out_features, int(out_features * mlp_ratio), act_layer=act_layer, **dd)
        else:
            self.proj, self.proj_drop, self.norm, self.mlp = nn.Identity(), nn.Dropout(drop), nn.Identity(), None
            out_features = embed_dim
        self.out_features = out_features
        self.init_weights()

    def init_weights(self) -> None:
        """The latent from a normal of std ``embed_dim ** -0.5`` truncated at two deviations (timm's)."""
        std = self.latent.shape[-1] ** -0.5
        nn.init.trunc_normal_(self.latent, std=std, a=-2 * std, b=2 * std)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """``x``: Tensor[B, N, embed_dim]; ``attn_mask``: optional bias or boolean mask (True: attend) broadcasting
        to Tensor[B, num_heads, latent_len, N]."""
        batch, tokens, dim = x.shape
        latents, head_dim = self.latent.shape[1], dim // self.num_heads
        q = self.q(self.latent).view(1, latents, self.num_heads, head_dim).transpose(1, 2).expand(batch, -1, -1, -1)
        k, v = self.kv(x).view(batch, tokens, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        pooled = scaled_dot_product_attention(q, k, v, attn_mask).transpose(1, 2).reshape(batch, latents, dim)
        pooled = self.proj_drop(self.proj(pooled))
        if self.mlp is not None:
            pooled = pooled + self.mlp(self.norm(pooled))
        if self.pool_type == "token":
            return pooled[:, 0]
        return pooled.mean(dim=1) if self.pool_type == "avg" else pooled


class AttentionPoolPrr(nn.Module):
    """Patch representation refinement ("Locality-Attending Vision Transformer", timm's ``global_pool="prr"``):
    ``Tensor[B, N, dim] -> Tensor[B, dim]``, without parameters but its optional norms.

    Each token attends to all of them with itself as query, key and value (split into ``num_heads``
    heads, no projections); then the first token is taken (``pool_type="token"``, a class token) or
    the tokens are averaged ("avg"). ``pre_norm``/``post_norm`` normalise the tokens before/after the
    attention by ``norm_layer`` (``nn.LayerNorm`` when None). Arguments and module names are timm's.
    """

    def __init__(self, dim: int, num_heads: int = 8, pool_type: str = "token", pre_norm: bool = False,
                 post_norm: bool = False, norm_layer: Any = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        dd = factory(dict(device=device, dtype=dtype))
        if pool_type not in ("token", "avg"):
            raise ValueError(f"pool_type must be 'token' or 'avg', got {pool_type!r}")
        if num_heads < 1:
            raise ValueError(f"num_heads must be positive, got {num_heads}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        norm_layer = norm_layer or nn.LayerNorm
        self.num_heads = num_heads
        self.pool_type = pool_type
        self.out_features = dim
        self.pre_norm = norm_layer(dim, **dd) if pre_norm else nn.Identity()
        self.post_norm = norm_layer(dim, **dd) if post_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        heads = self.pre_norm(x).reshape(batch, tokens, self.num_heads, dim // self.num_heads).transpose(1, 2)
        x = scaled_dot_product_attention(heads, heads, heads).transpose(1, 2).reshape(batch, tokens, dim)
        x = self.post_norm(x)
        return x[:, 0] if self.pool_type == "token" else x.mean(dim=1)
