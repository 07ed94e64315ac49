"""Patch embedding: a stride-``patch_size`` convolution that turns an image into a grid of tokens."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.layers.norm import factory
from visionzoo.utils import is_integer, require_image_batch

log = logging.getLogger(__name__)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """``value`` (an int, NumPy's too, or a pair) as a pair of Python ints."""
    return (int(value), int(value)) if is_integer(value) else (int(value[0]), int(value[1]))


def positive_pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """``value`` (an int or an (h, w) pair of ints, NumPy's too) as (h, w) Python ints, or ``ValueError`` naming
    ``name`` when a side is below 1: the sizes of images, patches and windows."""
    pair = _pair(value)
    if min(pair) < 1:
        raise ValueError(f"{name} must be positive, got {pair}")
    return pair


def _check_fits(img_size: tuple[int, int] | None, patch_size: tuple[int, int]) -> None:
    """``ValueError`` when an ``img_size`` side is smaller than the patch's: a grid of no patches."""
    if img_size is not None and (img_size[0] < patch_size[0] or img_size[1] < patch_size[1]):
        raise ValueError(f"img_size {img_size} is smaller than one patch {patch_size}")


def resample_patch_embed(weight: Tensor, new_size: tuple[int, int] | list[int], interpolation: str = "bicubic",
                         antialias: bool = True, verbose: bool = False) -> Tensor:
    """A patch-embedding kernel for another patch size by FlexiViT's pseudo-inverse resize (Beyer et al. 2023;
    timm's ``resample_patch_embed``, its arguments): ``Tensor[C_out, C_in, h, w] -> Tensor[C_out, C_in, H, W]``.

    With ``B`` the linear map that resizes an h×w patch to H×W (``interpolation``, ``antialias``), the new
    kernel is ``pinv(Bᵀ)`` applied to the old one: the least-squares kernel whose embedding of a resized patch
    equals the old embedding of the patch. Computed in float32, returned in the kernel's dtype.
    """
    old_size, new_size = tuple(weight.shape[-2:]), _pair(new_size)
    if old_size == new_size:
        return weight
    if verbose:
        log.info("resampling the patch embedding kernel from %s to %s", old_size, new_size)
    basis = torch.eye(old_size[0] * old_size[1], device=weight.device).view(-1, 1, *old_size)
    resized = F.interpolate(basis, size=new_size, mode=interpolation, antialias=antialias, align_corners=False)
    resize = resized.flatten(1).t()  # Tensor[H·W, h·w]: column j is basis patch j resized
    kernel = weight.float().flatten(2) @ torch.linalg.pinv(resize)
    return kernel.view(*weight.shape[:2], *new_size).to(weight.dtype)


def _checked_images(x: Tensor, in_chans: int, patch_size: tuple[int, int], img_size: tuple[int, int] | None,
                    pad: bool) -> Tensor:
    """``x`` (``Tensor[B, in_chans, H, W]``), with ``pad`` zero-padded on the right and bottom up to a multiple of
    ``patch_size`` (an image smaller than a patch too, as timm's); ``ValueError`` for wrong channels, an image
    smaller than a patch (without ``pad``; with it, one without pixels), another size than
    ``img_size`` (where given: a strict embedding), or (without ``pad``, for a size that is not the built one) a
    size that is no multiple of the patch. An ``img_size`` that is no multiple is taken as timm's: the conv leaves
    out the last rows and columns, which make no whole patch."""
    require_image_batch(x, in_chans)
    height, width = x.shape[-2:]
    ph, pw = patch_size
    if (height < ph or width < pw) and not (pad and height and width):
        raise ValueError(f"image {height}×{width} is smaller than one {ph}×{pw} patch")
    if img_size is not None and (height, width) != img_size:
        raise ValueError(
            f"the model is built for {img_size[0]}×{img_size[1]} images, got {height}×{width}; "
            "build it with img_size=... or dynamic_img_size=True"
        )
    if pad and (height % ph or width % pw):
        return F.pad(x, (0, -width % pw, 0, -height % ph))
    if img_size is None and (height % ph or width % pw):
        raise ValueError(f"image {height}×{width} is not a multiple of the {ph}×{pw} patch size")
    return x


# torch.fx (torchvision's create_feature_extractor) records the check and padding as one call, run on the real
# input, whose size its symbols cannot branch on; the images flow through it, so that pruning the graph keeps it
torch.fx.wrap("_checked_images")


class PatchEmbed(nn.Module):
    """``Tensor[B, in_chans, H, W] -> tokens`` with one token per ``patch_size`` patch.

    Output layout by ``output_fmt``: "NLC" ``Tensor[B, (H/p)·(W/p), embed_dim]`` (ViT), "NHWC"
    ``Tensor[B, H/p, W/p, embed_dim]`` (Swin), "NCHW" ``Tensor[B, embed_dim, H/p, W/p]`` or "NCL"
    ``Tensor[B, embed_dim, (H/p)·(W/p)]``; None (timm's default) is "NLC", or "NCHW" with ``flatten=False``.

    Args:
        img_size: the size the model is built for (sets ``grid_size``/``num_patches``); None for
            models that take any size.
        norm_layer: optional normalisation of the tokens over ``embed_dim`` whatever the layout (module
            name ``norm``, as timm's).
        flatten: timm's older spelling of the layout, read only when ``output_fmt`` is None.
        strict_img_size: refuse any other input size (a ViT without position-embedding resampling).
        dynamic_img_pad: pad the right/bottom edges up to a multiple of the patch size instead of
            refusing an input that is not one (Swin); ``pad`` is the same (visionzoo's earlier name).

    The arguments, in timm's order (``device`` and ``dtype`` too), and the projection's name ``proj`` are
    timm's, so its checkpoints load key for key. Inputs with the wrong number of channels or smaller than
    one patch raise a ``ValueError`` that says so.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] | None = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer: type[nn.Module] | None = None,
        flatten: bool = True,
        output_fmt: str | None = None,
        bias: bool = True,
        strict_img_size: bool = True,
        dynamic_img_pad: bool = False,
        pad: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if output_fmt is None:
            output_fmt = "NLC" if flatten else "NCHW"
        else:
            flatten = False  # as timm's: the layout is output_fmt's
        layouts = ("NLC", "NHWC", "NCHW", "NCL")
        if output_fmt not in layouts:
            raise ValueError(f"output_fmt must be NLC, NHWC, NCHW or NCL, got {output_fmt!r}")
        self.patch_size = positive_pair(patch_size, "patch_size")
        self.img_size = None if img_size is None else positive_pair(img_size, "img_size")
        _check_fits(self.img_size, self.patch_size)
        self._set_grid()
        self.in_chans = in_chans
        self.flatten = flatten
        self.output_fmt = layouts[layouts.index(output_fmt)]  # a plain string for timm's Format enum too
        self.strict_img_size = strict_img_size and self.img_size is not None
        self.dynamic_img_pad = dynamic_img_pad or pad
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias, **dd)
        self.norm = norm_layer(embed_dim, **factory(dd)) if norm_layer is not None else nn.Identity()

    def _set_grid(self) -> None:
        if self.img_size is not None:
            self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
            self.num_patches = self.grid_size[0] * self.grid_size[1]
        else:
            self.grid_size, self.num_patches = None, None

    def set_input_size(self, img_size: int | tuple[int, int] | None = None,
                       patch_size: int | tuple[int, int] | None = None) -> None:
        """Another input size and/or patch size from now on (timm's method): ``img_size`` sets ``grid_size``
        and ``num_patches``; another ``patch_size`` replaces ``proj`` by a conv of that kernel and stride whose
        kernel is :func:`resample_patch_embed`'s (bias, device, dtype, ``requires_grad`` and mode kept)."""
        if img_size is not None:
            img_size = positive_pair(img_size, "img_size")
        new_patch = self.patch_size if patch_size is None else positive_pair(patch_size, "patch_size")
        _check_fits(img_size or self.img_size, new_patch)
        if new_patch != self.patch_size:
            old, new_size = self.proj, new_patch
            proj = nn.Conv2d(old.in_channels, old.out_channels, new_size, stride=new_size, bias=old.bias is not None,
                             device=old.weight.device, dtype=old.weight.dtype)
            with torch.no_grad():
                proj.weight.copy_(resample_patch_embed(old.weight, new_size))
                if old.bias is not None:
                    proj.bias.copy_(old.bias)
            for new_param, old_param in zip(proj.parameters(), old.parameters()):
                new_param.requires_grad_(old_param.requires_grad)
            self.proj = proj.train(old.training)
            self.patch_size = new_size
        if img_size is not None:
            self.img_size = img_size
        self._set_grid()

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        """The stride of the token grid (timm's method): the larger patch side, or with ``as_scalar=False``
        the patch size (h, w)."""
        return max(self.patch_size) if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """The token grid (rows, columns) of ``img_size`` (H, W) images (timm's method): rounded up with
        ``dynamic_img_pad``, which pads the last patches, down otherwise."""
        height, width, (ph, pw) = img_size[0], img_size[1], self.patch_size  # indexed: torch.fx's sizes do not unpack
        if self.dynamic_img_pad:
            return -(-height // ph), -(-width // pw)
        return height // ph, width // pw

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` for an input this embedding cannot take (channels, size)."""
        _checked_images(x, self.in_chans, self.patch_size, self.img_size if self.strict_img_size else None,
                        self.dynamic_img_pad)

    def forward(self, x: Tensor) -> Tensor:
        x = _checked_images(x, self.in_chans, self.patch_size, self.img_size if self.strict_img_size else None,
                            self.dynamic_img_pad)
        x = self.proj(x)
        if self.output_fmt == "NCHW":
            if isinstance(self.norm, nn.Identity):
                return x
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x.permute(0, 2, 3, 1)
        if self.output_fmt == "NHWC":
            return self.norm(x)
        x = self.norm(x.flatten(1, 2))
        return x.transpose(1, 2) if self.output_fmt == "NCL" else x
