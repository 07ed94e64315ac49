"""Patch embedding: a stride-``patch_size`` convolution that turns an image into a grid of tokens."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class PatchEmbed(nn.Module):
    """``Tensor[B, in_chans, H, W] -> tokens`` with one token per ``patch_size`` patch.

    Output layout by ``output_fmt``: "NLC" ``Tensor[B, (H/p)·(W/p), embed_dim]`` (ViT), "NHWC"
    ``Tensor[B, H/p, W/p, embed_dim]`` (Swin) or "NCHW" ``Tensor[B, embed_dim, H/p, W/p]``.

    Args:
        img_size: the size the model is built for (sets ``grid_size``/``num_patches``); None for
            models that take any size.
        strict_img_size: refuse any other input size (a ViT without position-embedding resampling).
        pad: pad the right/bottom edges up to a multiple of the patch size instead of refusing an
            input that is not one (Swin).
        norm_layer: optional normalisation of the tokens (module name ``norm``, as timm's).

    The projection is named ``proj`` as in timm, so its checkpoints load key for key. Inputs with
    the wrong number of channels or smaller than one patch raise a ``ValueError`` that says so.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] | None = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer: type[nn.Module] | None = None,
        output_fmt: str = "NLC",
        strict_img_size: bool = True,
        pad: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        if output_fmt not in ("NLC", "NHWC", "NCHW"):
            raise ValueError(f"output_fmt must be NLC, NHWC or NCHW, got {output_fmt!r}")
        self.patch_size = _pair(patch_size)
        self.img_size = None if img_size is None else _pair(img_size)
        if self.img_size is not None:
            self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
            self.num_patches = self.grid_size[0] * self.grid_size[1]
        else:
            self.grid_size, self.num_patches = None, None
        self.in_chans = in_chans
        self.output_fmt = output_fmt
        self.strict_img_size = strict_img_size and self.img_size is not None
        self.pad = pad
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` for an input this embedding cannot take (channels, size)."""
        if x.ndim != 4:
            raise ValueError(f"expected images Tensor[B, C, H, W], got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"the model takes {self.in_chans}-channel images, got {x.shape[1]} channels "
                f"(input shape {tuple(x.shape)}); build it with in_chans={x.shape[1]}"
            )
        height, width = x.shape[-2:]
        ph, pw = self.patch_size
        if height < ph or width < pw:
            raise ValueError(f"image {height}×{width} is smaller than one {ph}×{pw} patch")
        if self.strict_img_size and (height, width) != self.img_size:
            raise ValueError(
                f"the model is built for {self.img_size[0]}×{self.img_size[1]} images, got {height}×{width}; "
                "build it with img_size=... or dynamic_img_size=True"
            )
        if not self.pad and (height % ph or width % pw):
            raise ValueError(f"image {height}×{width} is not a multiple of the {ph}×{pw} patch size")

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if self.pad:
            ph, pw = self.patch_size
            pad_h, pad_w = -x.shape[-2] % ph, -x.shape[-1] % pw
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.proj(x)
        if self.output_fmt == "NCHW":
            if isinstance(self.norm, nn.Identity):
                return x
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x.permute(0, 2, 3, 1)
        if self.output_fmt == "NLC":
            x = x.flatten(1, 2)
        return self.norm(x)
