"""The pre-norm transformer block shared by the ViT family, HIPT and the ViT-VQGAN codec (timm's ``Block``)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from visionzoo.layers.attention import Attention, timm_mask
from visionzoo.layers.drop import DropPath
from visionzoo.layers.layer_scale import LayerScale
from visionzoo.layers.mlp import Mlp
from visionzoo.layers.norm import factory
from visionzoo.utils import inference_chunk_elements, runs_in_cache_chunks

LayerNorm = partial(nn.LayerNorm, eps=1e-6)

# Hidden MLP activations computed at once in inference (bf16: 4 MiB), see Block._mlp_residual_in_chunks.
_MLP_CHUNK_ELEMENTS = 1 << 21


def _mlp_chunk_elements(x: Tensor) -> int:
    """Hidden MLP activations computed at once in inference (:func:`visionzoo.utils.inference_chunk_elements`);
    where freed memory is kept, ViT-S/16 bf16 at batch 32 on 2 AMX cores ran 87 img/s in one chunk against 76 at
    2^21 elements."""
    return inference_chunk_elements(x, _MLP_CHUNK_ELEMENTS)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``,
    ``Tensor[B, N, dim] -> Tensor[B, N, dim]``.

    Each residual branch is optionally scaled by LayerScale (``ls1``/``ls2``, when ``init_values``
    is given; identities otherwise) and dropped per sample by stochastic depth (``drop_path``).
    ``qk_norm``, ``scale_attn_norm``, ``scale_mlp_norm`` (norms by ``norm_layer`` inside the attention and
    the MLP), ``proj_bias`` (the biases of ``attn.proj`` and the MLP), ``device`` and ``dtype`` are timm's, and
    the arguments are in timm's order.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_attn_norm: bool = False,
        scale_mlp_norm: bool = False,
        proj_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values: float | None = None,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: Any = LayerNorm,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = norm_layer(dim, **factory(dd))
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                              qk_norm=qk_norm, scale_norm=scale_attn_norm, proj_bias=proj_bias, norm_layer=norm_layer,
                              **dd)
        self.ls1 = LayerScale(dim, init_values, **dd) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim, **factory(dd))
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, norm_layer=norm_layer if scale_mlp_norm else None,
                       bias=proj_bias, drop=proj_drop, **dd)
        self.ls2 = LayerScale(dim, init_values, **dd) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, attn_bias: Tensor | None = None, is_causal: bool = False,
                attn_mask: Tensor | None = None) -> Tensor:
        """``x``: Tensor[B, N, dim]; ``attn_bias``: optional additive attention bias or boolean mask (``attn_mask``:
        timm's name for it), and ``is_causal``: attend to earlier tokens only (see :class:`Attention`)."""
        attn_bias = timm_mask(attn_bias, attn_mask)
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_bias, is_causal)))
        if self.training or not runs_in_cache_chunks(x):
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return self._mlp_residual_in_chunks(x)

    def _mlp_residual_in_chunks(self, x: Tensor) -> Tensor:
        """``x + ls2(mlp(norm2(x)))`` in inference, a few tokens at a time and in place (``x`` is the
        attention residual's fresh output), so the MLP's wide hidden activations stay in cache."""
        x = x.contiguous()  # the sum keeps its operands' strides
        rows = x.view(-1, x.shape[-1])
        step = max(1, _mlp_chunk_elements(x) // self.mlp.fc1.out_features)
        for start in range(0, rows.shape[0], step):
            chunk = rows[start:start + step]
            chunk += self.ls2(self.mlp(self.norm2(chunk)))
        return x
