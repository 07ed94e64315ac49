"""Attention pooling of a token sequence into one vector: timm's ViT ``global_pool`` "map" and "prr"."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from visionzoo.layers.attention import scaled_dot_product_attention
from visionzoo.layers.block import LayerNorm
from visionzoo.layers.linear import Linear
from visionzoo.layers.mlp import Mlp


class AttentionPoolLatent(nn.Module):
    """Multi-head attention pooling with a learned query (the "MAP" head of big_vision's ViT and SigLIP):
    ``Tensor[B, N, dim] -> Tensor[B, dim]``.

    A learned latent token, projected by ``q``, attends over the N tokens (keys and values from ``kv``);
    ``proj`` mixes the heads, then a pre-norm MLP residual (``norm``, ``mlp``) follows, and the latent's
    output is the pooled vector. Keys (``latent``, ``q``, ``kv``, ``proj``, ``norm``, ``mlp.fc1``,
    ``mlp.fc2``) and arithmetic are those of timm's ``AttentionPoolLatent`` as its ViT builds it.
    """

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_layer: Any = LayerNorm):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be positive, got {num_heads}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = Linear(dim, dim, bias=qkv_bias)
        self.kv = Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.norm = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.init_weights()

    def init_weights(self) -> None:
        """The latent from a normal of std ``dim ** -0.5`` truncated at two deviations (timm's)."""
        std = self.latent.shape[-1] ** -0.5
        nn.init.trunc_normal_(self.latent, std=std, a=-2 * std, b=2 * std)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """``x``: Tensor[B, N, dim]; ``attn_mask``: optional bias or boolean mask (True: attend) broadcasting
        to Tensor[B, num_heads, 1, N]."""
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(self.latent).view(1, self.num_heads, 1, head_dim).expand(batch, -1, -1, -1)
        k, v = self.kv(x).view(batch, tokens, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        pooled = scaled_dot_product_attention(q, k, v, attn_mask).transpose(1, 2).reshape(batch, 1, dim)
        pooled = self.proj(pooled)
        pooled = pooled + self.mlp(self.norm(pooled))
        return pooled[:, 0]


class AttentionPoolPrr(nn.Module):
    """Patch representation refinement ("Locality-Attending Vision Transformer", timm's ``global_pool="prr"``):
    ``Tensor[B, N, dim] -> Tensor[B, dim]``, without parameters.

    Each token attends to all of them with itself as query, key and value (split into ``num_heads``
    heads, no projections); then the first token is taken (``pool_type="token"``, a class token) or
    the tokens are averaged ("avg").
    """

    def __init__(self, num_heads: int, pool_type: str = "token"):
        super().__init__()
        if pool_type not in ("token", "avg"):
            raise ValueError(f"pool_type must be 'token' or 'avg', got {pool_type!r}")
        self.num_heads = num_heads
        self.pool_type = pool_type

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        heads = x.view(batch, tokens, self.num_heads, dim // self.num_heads).transpose(1, 2)
        x = scaled_dot_product_attention(heads, heads, heads).transpose(1, 2).reshape(batch, tokens, dim)
        return x[:, 0] if self.pool_type == "token" else x.mean(dim=1)
