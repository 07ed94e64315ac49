"""VQ-VAE (van den Oord, Vinyals, Kavukcuoglu 2017): a CNN encoder, a vector-quantised bottleneck, a CNN decoder.

The encoder halves the image ``downsample`` times with 4×4 stride-2 convolutions and ends in residual
blocks (ReLU, 3×3 conv, ReLU, 1×1 conv, added back); a 1×1 convolution maps to the code dimension, the
shared :class:`~visionzoo.layers.vector_quantizer.VectorQuantizer` replaces every position by its
nearest code, and the decoder mirrors the encoder with 4×4 stride-2 transposed convolutions. Images
are in [0, 1]; the network sees them in [-1, 1] and reconstructs in [0, 1] (a tanh, rescaled).

``model(images)`` returns ``(reconstruction, indices, vq_loss, stats)``; ``encode(images)`` the code
indices Tensor[B, H/f, W/f] and ``decode(indices)`` the images, for a prior over the indices.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from visionzoo.layers.vector_quantizer import QUANTIZER_NONE_ARGS, VectorQuantizer
from visionzoo.models._registry import register_model
from visionzoo.utils import check_argument_types, check_unit_range


class ResidualBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))``: Tensor[B, C, H, W] → same."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class Encoder(nn.Module):
    """Tensor[B, in_chans, H, W] → Tensor[B, embed_dim, H / 2**downsample, W / 2**downsample]."""

    def __init__(self, in_chans: int, channels: int, res_channels: int, num_res: int, downsample: int, embed_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_chans
        for index in range(downsample):
            out = channels // 2 if index < downsample - 1 else channels
            layers += [nn.Conv2d(width, out, 4, stride=2, padding=1), nn.ReLU()]
            width = out
        layers += [nn.Conv2d(width, channels, 3, padding=1)]
        layers += [ResidualBlock(channels, res_channels) for _ in range(num_res)]
        layers += [nn.ReLU(), nn.Conv2d(channels, embed_dim, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """Tensor[B, embed_dim, h, w] → Tensor[B, out_chans, h * 2**upsample, w * 2**upsample] (pre-activation)."""

    def __init__(self, out_chans: int, channels: int, res_channels: int, num_res: int, upsample: int, embed_dim: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(embed_dim, channels, 3, padding=1)]
        layers += [ResidualBlock(channels, res_channels) for _ in range(num_res)]
        layers += [nn.ReLU()]
        width = channels
        for index in range(upsample):
            last = index == upsample - 1
            out = out_chans if last else channels // 2
            layers.append(nn.ConvTranspose2d(width, out, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
            width = out
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class VQVAE(nn.Module):
    """VQ-VAE for images in [0, 1].

    Args:
        in_chans: image channels.
        channels, res_channels, num_res: widths of the convolutions and residual blocks, and their number.
        downsample: stride-2 stages (the code grid is the image / 2**downsample).
        embed_dim, num_codes: code dimension and codebook size.
        commitment, ema_decay, dead_code_threshold, code_dim, l2_normalize, dead_code_restart, kmeans_init: the
            quantizer's.
    """

    @check_argument_types
    def __init__(self, in_chans: int = 3, channels: int = 128, res_channels: int = 64, num_res: int = 2,
                 downsample: int = 2, embed_dim: int = 64, num_codes: int = 512, commitment: float = 0.25,
                 ema_decay: float | None = 0.99, dead_code_threshold: float = 1.0, code_dim: int | None = None,
                 l2_normalize: bool = False, dead_code_restart: str = "random", kmeans_init: bool = False):
        super().__init__()
        if downsample < 1:
            raise ValueError(f"downsample must be at least 1, got {downsample}")
        self.in_chans = in_chans
        self.downsample = downsample
        self.encoder = Encoder(in_chans, channels, res_channels, num_res, downsample, embed_dim)
        self.quantizer = VectorQuantizer(num_codes, embed_dim, commitment, ema_decay, dead_code_threshold, code_dim,
                                         l2_normalize, dead_code_restart=dead_code_restart,
                                         kmeans_init=kmeans_init)
        self.decoder = Decoder(in_chans, channels, res_channels, num_res, downsample, embed_dim)

    def _check(self, images: Tensor) -> None:
        factor = 2 ** self.downsample
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"VQ-VAE takes Tensor[B, {self.in_chans}, H, W] images in [0, 1], got {tuple(images.shape)}")
        check_unit_range(images, "VQ-VAE")  # else 0..255 or [-1, 1] images are encoded as other images
        if images.shape[-1] % factor or images.shape[-2] % factor:
            raise ValueError(f"image sides must be multiples of {factor} (2**downsample), got {tuple(images.shape[-2:])}")

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Tensor[B, C, H, W] in [0, 1] → (reconstruction in [0, 1], indices [B, h, w], vq loss, stats)."""
        self._check(images)
        quantised, indices, loss, stats = self.quantizer(self.encoder(images * 2 - 1))
        return self._to_image(self.decoder(quantised)), indices, loss, stats

    def encode(self, images: Tensor) -> Tensor:
        """Code indices, int64 Tensor[B, H / 2**downsample, W / 2**downsample]."""
        self._check(images)
        return self.quantizer.encode(self.encoder(images * 2 - 1))

    def decode(self, indices: Tensor) -> Tensor:
        """Images in [0, 1] from code indices Tensor[B, h, w]."""
        if indices.dim() != 3:
            raise ValueError(f"decode takes code indices Tensor[B, h, w], got {tuple(indices.shape)}")
        return self._to_image(self.decoder(self.quantizer.decode_indices(indices).permute(0, 3, 1, 2)))

    @staticmethod
    def _to_image(x: Tensor) -> Tensor:
        return (torch.tanh(x) + 1) / 2


@register_model(task="reconstruction", none_args=QUANTIZER_NONE_ARGS, input_size=(3, 32, 32))
def vqvae(**kwargs) -> VQVAE:
    """VQ-VAE with 512 codes of 64 dimensions, a 4× smaller code grid (8×8 for 32 px), 128-wide convolutions."""
    return VQVAE(**kwargs)


@register_model(task="reconstruction", none_args=QUANTIZER_NONE_ARGS, input_size=(3, 64, 64))
def vqvae_small(**kwargs) -> VQVAE:
    """A narrower VQ-VAE for CPU training: 64-wide convolutions, 512 codes of 32 dimensions."""
    return VQVAE(**{"channels": 64, "res_channels": 32, "embed_dim": 32, **kwargs})
