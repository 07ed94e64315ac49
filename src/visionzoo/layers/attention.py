"""Multi-head self-attention through ``F.scaled_dot_product_attention`` (fused kernels on CPU and CUDA)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.layers.linear import Linear


class Attention(nn.Module):
    """Multi-head self-attention: ``Tensor[B, N, dim] -> Tensor[B, N, dim]``.

    One fused ``qkv`` projection and an output ``proj`` (timm's module names and weight layout:
    ``qkv.weight`` is ``[3·dim, dim]`` with q, k, v stacked in that order, heads contiguous).

    Args:
        dim: token width; must divide by ``num_heads``.
        qkv_bias: biases on the q, k, v projections.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after ``proj``.
        head_dim: per-head width if not ``dim // num_heads`` (the inner width is then
            ``num_heads · head_dim``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
    ):
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
            head_dim = dim // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        inner = num_heads * head_dim
        self.qkv = Linear(dim, 3 * inner, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """``x``: Tensor[B, N, dim]. ``attn_bias``: optional additive bias on the attention logits,
        broadcastable to Tensor[B, num_heads, N, N] (relative position bias, a shifted-window mask).
        ``is_causal``: token i attends to tokens <= i only (a decoder); not together with ``attn_bias``."""
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.attn_drop if self.training else 0.0, is_causal=is_causal,
            scale=self.scale,
        )
        out = out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(out))
