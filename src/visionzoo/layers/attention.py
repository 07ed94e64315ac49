"""Multi-head self-attention, and the attention product every family calls (:func:`scaled_dot_product_attention`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.layers.linear import Linear
from visionzoo.layers.norm import factory
from visionzoo.utils import is_traced, native_bf16

# On CPU in bf16/fp16 the written-out product is faster than torch's fused kernels (benchmarks/attention.py) for
# short sequences, whose fused backward is slow, while the attention matrix stays small: a training step 0.6x as
# long at 17-65 keys (fp32 logits of 0.2-8 MB). Beyond either limit the fused kernels win or tie: Image GPT's 256
# causal positions (written out 1.3x slower), and ViT-S/16 inference at batch 32 (197 keys, 30 MB of logits:
# 1.4x slower in a fresh process, where glibc returns each such buffer to the system and faults it in again).
# Only where bf16 is native: on an AVX2-only CPU the written-out bf16 matmuls are emulated, and ViT-S/16 inference
# at batch 2 ran at 0.68x timm's, which takes the fused kernels.
EXPLICIT_MAX_KEYS = 200
EXPLICIT_MAX_LOGITS_BYTES = 16 * 2**20


def writes_out(q: Tensor, k: Tensor) -> bool:
    """Whether :func:`scaled_dot_product_attention` writes the product of ``q`` Tensor[..., N, D] and ``k``
    Tensor[..., M, D] out: on a CPU that runs bf16 natively, in bf16/fp16, not traced or compiled, for at most
    ``EXPLICIT_MAX_KEYS`` keys and float32 logits Tensor[..., N, M] of at most ``EXPLICIT_MAX_LOGITS_BYTES``."""
    if is_traced():  # the CPU probe breaks a compiled graph, the fused kernels compile, and torch.fx has no sizes
        return False
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16) or k.shape[-2] > EXPLICIT_MAX_KEYS:
        return False
    if not native_bf16(q.device):
        return False
    logits = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]).numel() * q.shape[-2] * k.shape[-2]
    return 4 * logits <= EXPLICIT_MAX_LOGITS_BYTES


def _additive(attn_bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``attn_bias`` as an additive bias in ``dtype``: a boolean mask (True: attend) becomes 0 / -inf; None stays."""
    if attn_bias is None:
        return None
    if attn_bias.dtype == torch.bool:
        attn_bias = torch.zeros(attn_bias.shape, device=attn_bias.device).masked_fill_(~attn_bias, float("-inf"))
    return attn_bias.to(dtype)


# torch.fx records the conversion as one call, run on the real mask: a traced ViT's ``attn_mask`` input (None by
# default) is then converted, or left out, at each call
torch.fx.wrap("_additive")


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_bias: Tensor | None = None,
                                 is_causal: bool = False, dropout_p: float = 0.0, scale: float | None = None) -> Tensor:
    """``softmax(q·kᵀ·scale + attn_bias) · v``: q Tensor[..., N, D], k and v Tensor[..., M, D] → Tensor[..., N, D].

    ``attn_bias`` is additive (float) or a boolean mask (True: the key takes part, False: -inf, the
    convention of ``F.scaled_dot_product_attention``), and broadcasts to Tensor[..., N, M];
    ``is_causal`` masks key j > query i (top-left aligned, as ``F.scaled_dot_product_attention``);
    ``scale`` defaults to ``D ** -0.5``.

    ``F.scaled_dot_product_attention``, except for short sequences on a bf16-native CPU with bf16/fp16 inputs
    (:func:`writes_out`): there the product is written out as timm's non-fused path is under autocast
    (matmuls in the inputs' dtype, the softmax in float32). fp32 always takes the fused kernels.
    """
    if not writes_out(q, k):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_additive(attn_bias, q.dtype), dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = ((q * scale) @ k.transpose(-2, -1)).float()
    if attn_bias is not None:
        logits = logits + _additive(attn_bias, logits.dtype)
    if is_causal:
        queries, keys = logits.shape[-2:]
        future = torch.ones(queries, keys, dtype=torch.bool, device=q.device).triu(1)
        logits = logits.masked_fill(future, float("-inf"))
    weights = logits.softmax(dim=-1)
    if dropout_p:
        weights = F.dropout(weights, dropout_p)
    return weights.to(v.dtype) @ v


def timm_mask(attn_bias: Tensor | None, attn_mask: Tensor | None) -> Tensor | None:
    """The one of ``attn_bias`` (ours) and ``attn_mask`` (timm's name for it) that is given; ``ValueError`` for both."""
    if attn_mask is None:
        return attn_bias
    if attn_bias is not None:
        raise ValueError("give attn_bias or attn_mask, not both (attn_mask is timm's name for attn_bias)")
    return attn_mask


class Attention(nn.Module):
    """Multi-head self-attention: ``Tensor[B, N, dim] -> Tensor[B, N, dim]``.

    One fused ``qkv`` projection and an output ``proj`` (timm's module names and weight layout:
    ``qkv.weight`` is ``[3·dim, dim]`` with q, k, v stacked in that order, heads contiguous).

    Args:
        dim: token width; must divide by ``num_heads``.
        qkv_bias: biases on the q, k, v projections (off by default, as timm's).
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after ``proj``.
        head_dim: per-head width if not ``dim // num_heads`` (the inner width is then
            ``num_heads · head_dim``).
        qk_norm: normalise each head's queries and keys by ``norm_layer(head_dim)`` (``q_norm``, ``k_norm``).
        scale_norm: normalise the heads' concatenated output by ``norm_layer`` before ``proj`` (``norm``).
        proj_bias: a bias on ``proj``.
        norm_layer: the norm of ``qk_norm`` and ``scale_norm`` (required by either).
        device, dtype: those of the parameters.

    The arguments after ``head_dim`` are keyword-only; they and their module names are timm's.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
        *,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        norm_layer: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        for name, value in (("dim", dim), ("num_heads", num_heads), ("head_dim", head_dim)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0.0 <= attn_drop <= 1.0:  # else the first training step failed, and a negative rate as "dropout > 0"
            raise ValueError(f"attn_drop (the attention dropout rate) must be in [0, 1], got {attn_drop}")
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
            head_dim = dim // num_heads
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ValueError("qk_norm and scale_norm need a norm_layer")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        inner = num_heads * head_dim
        self.qkv = Linear(dim, 3 * inner, bias=qkv_bias, **dd)
        # absent rather than identities when off: no extra nodes in a traced graph
        self.q_norm = norm_layer(head_dim, **factory(dd)) if qk_norm else None
        self.k_norm = norm_layer(head_dim, **factory(dd)) if qk_norm else None
        self.norm = norm_layer(inner, **factory(dd)) if scale_norm else None
        self.attn_drop = attn_drop
        self.proj = Linear(inner, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None, is_causal: bool = False,
                attn_mask: Tensor | None = None) -> Tensor:
        """``x``: Tensor[B, N, dim]. ``attn_bias``: optional additive bias on the attention logits,
        broadcastable to Tensor[B, num_heads, N, N] (relative position bias, a shifted-window mask), or
        a boolean mask (True: attend) as :func:`scaled_dot_product_attention` takes it; ``attn_mask`` is
        timm's name for it. ``is_causal``: token i attends to tokens <= i only (a decoder); not together
        with ``attn_bias``."""
        attn_bias = timm_mask(attn_bias, attn_mask)
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        out = scaled_dot_product_attention(q, k, v, attn_bias, is_causal, self.attn_drop if self.training else 0.0,
                                           self.scale)
        out = out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim)
        if self.norm is not None:
            out = self.norm(out)
        return self.proj_drop(self.proj(out))
