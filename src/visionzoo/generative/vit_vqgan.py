"""ViT-VQGAN (Yu et al. 2022, "Vector-quantized Image Modeling with Improved VQGAN"): VQGAN with ViT codecs.

The encoder cuts the image into ``patch_size`` patches (:class:`~visionzoo.layers.PatchEmbed`),
layer-normalises their embeddings (our addition, against codebook collapse on low-contrast images), adds
fixed 2-D sin-cos positions, and runs pre-norm transformer blocks (:class:`~visionzoo.layers.Block`,
no class token); at the output of the blocks, as in the paper, a final LayerNorm and a two-layer
feed-forward network with a tanh in the middle. The shared
:class:`~visionzoo.layers.vector_quantizer.VectorQuantizer` looks each token up with the paper's
factorised codes: a linear projection to a low ``code_dim`` (8 to 32 in the paper) where the vector and
the codes are l2-normalised, so the nearest code is the one of largest cosine similarity; the code is
projected back to the token width. The decoder adds the positions again, runs its own blocks, and the
same tanh feed-forward network maps each token to its patch's ``patch_size² · in_chans`` pixels.
Images are in [0, 1]; the network sees them in [-1, 1] and reconstructs in [0, 1] (a tanh, rescaled,
as in :mod:`~visionzoo.generative.vqvae`).

The positions are computed for the input's token grid, so the model takes any image whose sides are
multiples of the patch size (a 64 px image through ``vit_vqgan``, built for 32 px, gives a 16×16 grid).

The model owns its PatchGAN discriminator (``self.discriminator``, fed images in [-1, 1]) as
:class:`~visionzoo.generative.vqgan.VQGAN` does and trains with the same "vqgan" task
(:mod:`visionzoo.train.vqgan`: L1/L2 + perceptual + adaptive-weight hinge GAN); the forward never
calls it.

``model(images)`` returns ``(reconstruction, indices, vq_loss, stats)``; ``encode(images)`` the code
indices Tensor[B, H/p, W/p] and ``decode(indices)`` the images, for a prior over the indices.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from visionzoo.generative.patchgan import PatchGAN
from visionzoo.layers import Block, PatchEmbed
from visionzoo.layers.block import LayerNorm
from visionzoo.layers.pos_embed import sincos_pos_embed_2d
from visionzoo.layers.vector_quantizer import QUANTIZER_NONE_ARGS, VectorQuantizer
from visionzoo.models._registry import register_model
from visionzoo.utils import check_argument_types, check_unit_range


def _tanh_ffn(dim: int, hidden: int, out: int) -> nn.Sequential:
    """The paper's output network of both codecs: Linear, tanh, Linear (Tensor[..., dim] → Tensor[..., out])."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, out))


def _positions(grid: tuple[int, int], norm_weight: Tensor) -> Tensor:
    """The sin-cos positions of a ``grid``, Tensor[gh·gw, dim], in the codec's parameter dtype, as a learnt table
    would be: float32 keeps the token stream in float32 under autocast, a codec cast to bf16 stays in bf16."""
    return sincos_pos_embed_2d(grid, norm_weight.shape[0], norm_weight.device).to(norm_weight.dtype)


class ViTEncoder(nn.Module):
    """Images Tensor[B, in_chans, H, W] in [-1, 1] → tokens Tensor[B, (H/p)·(W/p), dim], raster order."""

    def __init__(self, patch_size: int, in_chans: int, dim: int, depth: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.patch_embed = PatchEmbed(None, patch_size, in_chans, dim)
        # Normalising the patch embeddings puts the content on the scale of the fixed sin-cos positions: on
        # low-contrast images (Shapes' 8×8 patches) the raw embeddings vary across tokens 2-3× less than the
        # positions do, the first codes mostly encode position and training collapses to one code.
        self.embed_norm = LayerNorm(dim)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = LayerNorm(dim)
        self.head = _tanh_ffn(dim, int(dim * mlp_ratio), dim)

    def forward(self, images: Tensor) -> Tensor:
        tokens = self.embed_norm(self.patch_embed(images))
        p = self.patch_embed.patch_size[0]
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        tokens = tokens + _positions(grid, self.norm.weight)
        return self.head(self.norm(self.blocks(tokens)))


class ViTDecoder(nn.Module):
    """Tokens Tensor[B, gh·gw, dim] of a ``(gh, gw)`` grid → pixels Tensor[B, out_chans, gh·p, gw·p].

    The pixels are pre-activation (the model applies the tanh)."""

    def __init__(self, patch_size: int, out_chans: int, dim: int, depth: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.patch_size = patch_size
        self.out_chans = out_chans
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = LayerNorm(dim)
        self.head = _tanh_ffn(dim, int(dim * mlp_ratio), patch_size * patch_size * out_chans)

    def forward(self, tokens: Tensor, grid_size: tuple[int, int]) -> Tensor:
        (gh, gw), p, c = grid_size, self.patch_size, self.out_chans
        tokens = tokens + _positions(grid_size, self.norm.weight)
        patches = self.head(self.norm(self.blocks(tokens)))  # [B, gh·gw, p·p·C], each patch (row, col, channel)
        return patches.reshape(-1, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(-1, c, gh * p, gw * p)


class ViTVQGAN(nn.Module):
    """ViT-VQGAN autoencoder (with its discriminator) for images in [0, 1].

    Args:
        patch_size: the side of a patch; the code grid is the image / ``patch_size``.
        in_chans: image channels (1 for Digits, 3 for Shapes).
        embed_dim, depth, num_heads, mlp_ratio: the transformers' width, blocks per codec, heads and
            MLP expansion (also the hidden width of the tanh output networks, ``embed_dim · mlp_ratio``).
        decoder_depth: the decoder's blocks, if not ``depth``.
        num_codes, code_dim: codebook size and the factorised lookup dimension.
        l2_normalize: look up l2-normalised codes (the paper's; cosine similarity).
        commitment, ema_decay, dead_code_threshold, dead_code_restart, kmeans_init: the quantizer's (EMA codebook by
            default).
        disc_width, disc_layers: the PatchGAN's first width and number of stride-2 layers.
    """

    @check_argument_types
    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 128, depth: int = 2,
                 decoder_depth: int | None = None, num_heads: int = 4, mlp_ratio: float = 4.0,
                 num_codes: int = 512, code_dim: int = 8, l2_normalize: bool = True, commitment: float = 0.25,
                 ema_decay: float | None = 0.99, dead_code_threshold: float = 1.0, disc_width: int = 64,
                 disc_layers: int = 2, dead_code_restart: str = "random", kmeans_init: bool = False):
        super().__init__()
        if in_chans < 1 or patch_size < 1:
            raise ValueError(f"in_chans and patch_size must be at least 1, got {in_chans} and {patch_size}")
        decoder_depth = depth if decoder_depth is None else decoder_depth
        if depth < 1 or decoder_depth < 1:
            raise ValueError(f"each codec needs at least one block, got depth={depth}, decoder_depth={decoder_depth}")
        if embed_dim % 4:
            raise ValueError(f"embed_dim must be divisible by 4 (2-D sin-cos positions), got {embed_dim}")
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.encoder = ViTEncoder(patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio)
        self.quantizer = VectorQuantizer(num_codes, embed_dim, commitment, ema_decay, dead_code_threshold, code_dim,
                                         l2_normalize, dead_code_restart=dead_code_restart,
                                         kmeans_init=kmeans_init)
        self.decoder = ViTDecoder(patch_size, in_chans, embed_dim, decoder_depth, num_heads, mlp_ratio)
        self.discriminator = PatchGAN(in_chans, disc_width, disc_layers)
        # The quantizer's projections too: with PyTorch's default bias the projected (small, freshly
        # initialised) tokens all point the bias's way and pick one code at the first step.
        for part in (self.encoder, self.quantizer, self.decoder):
            part.apply(_init_linear)

    def _grid(self, images: Tensor) -> tuple[int, int]:
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"ViT-VQGAN takes Tensor[B, {self.in_chans}, H, W] images in [0, 1], "
                             f"got {tuple(images.shape)}")
        check_unit_range(images, "ViT-VQGAN")  # else 0..255 or [-1, 1] images are encoded as other images
        p = self.patch_size
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(f"image sides must be multiples of the patch size {p}, got {tuple(images.shape[-2:])}")
        return images.shape[-2] // p, images.shape[-1] // p

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Tensor[B, C, H, W] in [0, 1] → (reconstruction in [0, 1], indices [B, H/p, W/p], vq loss, stats)."""
        grid = self._grid(images)
        quantised, indices, loss, stats = self.quantizer(self.encoder(images * 2 - 1))
        return self._decode(quantised, grid), indices.reshape(-1, *grid), loss, stats

    def encode(self, images: Tensor) -> Tensor:
        """Code indices, int64 Tensor[B, H/p, W/p]."""
        grid = self._grid(images)
        return self.quantizer.encode(self.encoder(images * 2 - 1)).reshape(-1, *grid)

    def decode(self, indices: Tensor) -> Tensor:
        """Images in [0, 1], Tensor[B, C, h·p, w·p], from code indices Tensor[B, h, w]."""
        if indices.dim() != 3:
            raise ValueError(f"decode takes code indices Tensor[B, h, w], got {tuple(indices.shape)}")
        return self._decode(self.quantizer.decode_indices(indices.flatten(1)), tuple(indices.shape[1:]))

    def _decode(self, quantised: Tensor, grid: tuple[int, int]) -> Tensor:
        return (torch.tanh(self.decoder(quantised, grid)) + 1) / 2

    def last_layer_weight(self) -> nn.Parameter:
        """The decoder's last linear map (to pixels), whose gradient norms set the GAN loss's adaptive weight."""
        return self.decoder.head[-1].weight


def _init_linear(module: nn.Module) -> None:
    """ViT's initialisation of the linear maps: truncated normal (std 0.02), zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# Variants are sizes only: both give an 8×8 code grid at their input size (32 px Digits, 64 px Shapes).
_SIZES = {
    "vit_vqgan": dict(patch_size=4, embed_dim=128, depth=2, num_heads=4, disc_layers=2),
    "vit_vqgan_64": dict(patch_size=8, embed_dim=192, depth=3, num_heads=4, disc_width=32, disc_layers=3),
}


# The paper's loss weights (perceptual 0.1, adversarial 0.1; L2 1.0): on Digits they beat taming's 1.0 / 0.8
# by 1 dB of PSNR at equal time (benchmarks/generative.py).
_TASK_OPTIONS = {"perceptual_weight": 0.1, "disc_weight": 0.1}


@register_model(task="vqgan", none_args=QUANTIZER_NONE_ARGS, input_size=(3, 32, 32), task_options=_TASK_OPTIONS)
def vit_vqgan(**kwargs) -> ViTVQGAN:
    """ViT-VQGAN with 4×4 patches (an 8×8 code grid at 32 px), 128 wide, 2 blocks per codec, 512 codes in 8-d."""
    return ViTVQGAN(**{**_SIZES["vit_vqgan"], **kwargs})


@register_model(task="vqgan", none_args=QUANTIZER_NONE_ARGS, input_size=(3, 64, 64), task_options=_TASK_OPTIONS)
def vit_vqgan_64(**kwargs) -> ViTVQGAN:
    """ViT-VQGAN with 8×8 patches (an 8×8 code grid at 64 px), 192 wide, 3 blocks per codec, a 3-layer PatchGAN
    32 wide (in a 3-minute probe a 64-wide one made 18% fewer steps and lost 1.1 dB of PSNR)."""
    return ViTVQGAN(**{**_SIZES["vit_vqgan_64"], **kwargs})
