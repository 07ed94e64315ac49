"""The second stage of VQGAN (Esser et al. 2021): a GPT over a frozen tokenizer's code indices.

A trained tokenizer (VQ-VAE, VQGAN, ViT-VQGAN: any model with ``encode(images) -> Tensor[B, h, w]``,
``decode(indices) -> images``, ``quantizer.num_codes`` and ``in_chans``) turns an image into an h × w
grid of codes; the transformer models that grid read row by row, usually given the class. Sampling
draws a grid code by code (top-k / top-p) and decodes it.

The tokenizer lives inside the model, frozen and always in eval mode: its weights are part of the
state dict, so one checkpoint holds both stages. A VQGAN tokenizer's discriminator only trains the tokenizer,
so the prior leaves it out (``omitted_weights``): its weights in a tokenizer checkpoint, or in a prior's
checkpoint written before it was left out, are dropped on load. It is described by a JSON record
``{"name": registry name, "args": {...}}`` (what our checkpoints store as ``model``), which makes
``create_model("vqgan_transformer", tokenizer=record, ...)`` rebuild the architecture from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from visionzoo.generative.gpt import GPT, ImageSampler
from visionzoo.models._registry import create_model, register_model
from visionzoo.utils import check_argument_types


class CodeTransformer(ImageSampler, nn.Module):
    """A GPT prior over the code grid of a frozen tokenizer.

    Args:
        tokenizer: ``{"name": ..., "args": {...}}``, the registry record of the tokenizer (built untrained
            here; the task loads its trained weights).
        img_size: the image side the tokenizer was trained at (it fixes the code grid).
        num_classes: 0 for an unconditional prior, else the number of classes it is conditioned on.
        embed_dim, depth, num_heads, mlp_ratio, drop: the GPT's.
    """

    @check_argument_types
    def __init__(self, tokenizer: Mapping[str, Any] | None = None, img_size: int = 32, num_classes: int = 0,
                 embed_dim: int = 192, depth: int = 6, num_heads: int = 6, mlp_ratio: float = 4.0, drop: float = 0.0):
        super().__init__()
        if not isinstance(tokenizer, Mapping) or not isinstance(tokenizer.get("name"), str):
            raise ValueError("the code prior needs tokenizer={'name': registry name, 'args': {...}} "
                             f"(the model record of a trained tokenizer), got {tokenizer!r}")
        self.tokenizer = create_model(tokenizer["name"], **dict(tokenizer.get("args") or {})).eval()
        if not all(hasattr(self.tokenizer, part) for part in ("encode", "decode", "quantizer")):
            raise ValueError(f"{tokenizer['name']} is not a tokenizer: a code prior needs a model with encode(), "
                             "decode() and a quantizer (vqvae_small, vqgan, vit_vqgan, ...)")
        self.tokenizer.requires_grad_(False)
        if isinstance(getattr(self.tokenizer, "discriminator", None), nn.Module):
            del self.tokenizer.discriminator
            self.tokenizer.omitted_weights = ("discriminator",)
            self.omitted_weights = ("tokenizer.discriminator",)
        self.in_chans = int(self.tokenizer.in_chans)
        self.img_size = img_size
        with torch.no_grad():
            grid = self.tokenizer.encode(torch.zeros(1, self.in_chans, img_size, img_size)).shape[1:]
        self.grid_size = (int(grid[0]), int(grid[1]))
        self.gpt = GPT(self.tokenizer.quantizer.num_codes, self.grid_size[0] * self.grid_size[1], num_classes,
                       embed_dim, depth, num_heads, mlp_ratio, drop)

    def train(self, mode: bool = True) -> CodeTransformer:
        """Train or eval mode for the GPT; the frozen tokenizer stays in eval mode (its codebook must not move)."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    @torch.no_grad()
    def tokens(self, images: Tensor) -> Tensor:
        """The tokenizer's codes in raster order: Tensor[B, C, S, S] in [0, 1] → int64 Tensor[B, h·w].

        The tokenizer always runs in float32, also under the caller's autocast: a code is the nearest of
        many, and bf16 rounding picks another one for a share of the positions (42% for the Shapes ViT-VQGAN
        of benchmarks/generative.py, whose codebook has near-duplicate codes), so a prior trained on bf16
        codes would be scored on other codes than it learnt.
        """
        if images.dim() != 4 or tuple(images.shape[1:]) != (self.in_chans, self.img_size, self.img_size):
            raise ValueError(f"this code prior takes Tensor[B, {self.in_chans}, {self.img_size}, {self.img_size}] "
                             f"images, got {tuple(images.shape)}")
        with torch.autocast(images.device.type, enabled=False):
            return self.tokenizer.encode(images.float()).flatten(1)

    @torch.no_grad()
    def images_from_tokens(self, tokens: Tensor) -> Tensor:
        """Decoded images Tensor[B, C, S, S] in [0, 1] from codes int64 Tensor[B, h·w]."""
        height, width = self.grid_size
        if tokens.dim() != 2 or tokens.shape[1] != height * width:
            raise ValueError(f"code tokens must be Tensor[B, {height * width}], got {tuple(tokens.shape)}")
        return self.tokenizer.decode(tokens.reshape(-1, height, width)).clamp(0, 1)

    def forward(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        """Next-code logits Tensor[B, N, num_codes] of ``tokens`` Tensor[B, N] (see :meth:`GPT.forward`)."""
        return self.gpt(tokens, labels)


@register_model(task="autoregressive", input_size=(3, 64, 64), class_conditional=True)
def vqgan_transformer(**kwargs) -> CodeTransformer:
    """VQGAN's class-conditional prior for CPU training: 6 blocks 192 wide, 6 heads, over a tokenizer's codes."""
    return CodeTransformer(**kwargs)
