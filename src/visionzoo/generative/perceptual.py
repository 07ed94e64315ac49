"""An LPIPS-style perceptual distance (Zhang et al. 2018) over a feature network that works offline.

For each tapped layer the feature maps of both images are unit-normalised over channels, their
squared difference is summed over channels and averaged over positions; the layers' terms are
summed. LPIPS proper weighs the channels with learnt linear layers; those weights are a download,
so here every channel weighs 1 (LPIPS's "baseline" variant; the distance still vanishes exactly for
identical images and grows with their difference).

The feature network, by default, is the classifier trained on the built-in data
(:func:`visionzoo.metrics.domain.domain_features`, its ``feature_maps``): features that know digits or
shapes, as MNIST work uses LeNet features. With a user-supplied torchvision ``vgg16`` weights file,
:class:`VGG16Features` rebuilds VGG16's convolutional stack in torchvision's ``features.N`` layout and
taps it after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, as taming-transformers' LPIPS does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.checkpoint import read_checkpoint
from visionzoo.models._registry import load_state_dict_strict

# torchvision's cfgs["D"]: convolution widths, "M" a 2×2 max-pool; the last pool is not needed.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Indices in ``features`` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
VGG16_TAPS = (3, 8, 15, 22, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16Features(nn.Module):
    """VGG16 up to relu5_3: images Tensor[B, 1 or 3, H, W] in [0, 1] (H, W >= 16) → five feature maps
    ``[B, 64, H, W], [B, 128, H/2, W/2], [B, 256, H/4, W/4], [B, 512, H/8, W/8], [B, 512, H/16, W/16]``.

    ImageNet normalisation is applied inside; a grey image is repeated to three channels.
    """

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for entry in VGG16_LAYOUT:
            if entry == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, entry, 3, padding=1), nn.ReLU()]
                channels = entry
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_torchvision(cls, path: str | Path) -> VGG16Features:
        """Frozen, eval-mode features from a torchvision ``vgg16`` state dict file (its ``classifier.*`` is ignored)."""
        tensors, _ = read_checkpoint(path)
        network = cls()
        load_state_dict_strict(network, {k: v for k, v in tensors.items() if k.startswith("features.")}, str(path))
        return network.eval().requires_grad_(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        if images.dim() != 4 or images.shape[1] not in (1, 3) or min(images.shape[-2:]) < 16:
            raise ValueError(f"VGG16 features take Tensor[B, 1 or 3, H, W] with sides >= 16, got {tuple(images.shape)}")
        x = (images.expand(-1, 3, -1, -1) - self.mean) / self.std
        maps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in VGG16_TAPS:
                maps.append(x)
        return maps


class PerceptualLoss(nn.Module):
    """``forward(x, y)``: images Tensor[B, C, H, W] in [0, 1], a pair → distance Tensor[B] (float32, >= 0).

    Args:
        feature_maps_fn: images → a list of feature maps Tensor[B, C_i, H_i, W_i]; a module, or a method
            of one (``DomainFeatures.feature_maps``). That module is kept as ``network``, frozen and in
            eval mode, so ``.to(device)`` moves it and no optimizer sees it.
    """

    def __init__(self, feature_maps_fn: Callable[[Tensor], Sequence[Tensor]]):
        super().__init__()
        owner = feature_maps_fn if isinstance(feature_maps_fn, nn.Module) else getattr(feature_maps_fn, "__self__", None)
        self.network = owner if isinstance(owner, nn.Module) else None
        if self.network is not None:
            self.network.eval().requires_grad_(False)
        self._method = None if feature_maps_fn is owner else feature_maps_fn

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        if self.network is not None:
            self.network.eval()  # a frozen feature network keeps its eval behaviour (BatchNorm, dropout)
        return self

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.dim() != 4:
            raise ValueError(f"PerceptualLoss compares two Tensor[B, C, H, W] of one shape, got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        maps = self._method(torch.cat([x, y])) if self._method is not None else self.network(torch.cat([x, y]))
        distance = x.new_zeros(len(x), dtype=torch.float32)
        for both in maps:
            fx, fy = F.normalize(both.float(), dim=1, eps=1e-10).chunk(2)
            distance = distance + (fx - fy).pow(2).sum(1).mean((-2, -1))
        return distance


def build_perceptual_loss(checkpoint: str | Path | None = None, data: str | None = None,
                          image_size: int | None = None, in_chans: int | None = None) -> PerceptualLoss:
    """The perceptual distance over VGG16 from a torchvision ``checkpoint`` file, or else over the
    classifier trained on the built-in ``data`` ("digits" or "shapes") at ``image_size`` with ``in_chans``."""
    if checkpoint is not None:
        return PerceptualLoss(VGG16Features.from_torchvision(checkpoint))
    if data is None or image_size is None or in_chans is None:
        raise ValueError("the perceptual loss needs a VGG16 checkpoint, or the data set, image size and channels "
                         f"of the domain classifier; got data={data!r}, image_size={image_size}, in_chans={in_chans}")
    from visionzoo.metrics.domain import domain_features

    return PerceptualLoss(domain_features(data, image_size, in_chans).feature_maps)
