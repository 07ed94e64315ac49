"""LPIPS (Zhang et al. 2018), the perceptual distance of taming-transformers' VQGAN, and its baseline variant.

For each tapped layer the feature maps of both images are unit-normalised over channels (each position's
channel vector divided by its norm + 1e-10), their squared difference is weighed per channel and summed over
channels, then averaged over positions; the layers' terms are summed. LPIPS proper weighs the channels with
its learnt linear layers: given VGG16 (a torchvision ``vgg16`` file, :class:`VGG16Features`) and those
weights (the lpips package's ``weights/v0.1/vgg.pth``, also taming-transformers' ``vgg.pth``;
:func:`read_lpips_weights`), :class:`PerceptualLoss` computes what ``lpips.LPIPS(net="vgg")`` does, on
images in [0, 1] rather than [-1, 1]. Without them every channel weighs 1 (LPIPS's "baseline" variant;
the distance still vanishes exactly for identical images and grows with their difference).

The feature network, by default, is the classifier trained on the built-in data
(:func:`visionzoo.metrics.domain.domain_features`, its ``feature_maps``; it has no learnt LPIPS weights):
features that know digits or shapes, as MNIST work uses LeNet features. :class:`VGG16Features` rebuilds
VGG16's convolutional stack in torchvision's ``features.N`` layout and taps it after relu1_2, relu2_2,
relu3_3, relu4_3 and relu5_3, as LPIPS does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from visionzoo.checkpoint import CheckpointError, read_checkpoint
from visionzoo.models._registry import load_state_dict_strict

# torchvision's cfgs["D"]: convolution widths, "M" a 2×2 max-pool; the last pool is not needed.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Indices in ``features`` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
VGG16_TAPS = (3, 8, 15, 22, 29)
VGG16_TAP_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS's input scaling of images in [-1, 1]: ImageNet's mean and std on [0, 1], as (1 + shift) / 2 and scale / 2.
# Its arithmetic is kept: another rounding of the inputs can flip a near-tie in a max-pool and so route the
# gradient to another pixel.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_EPS = 1e-10
# The key of the learnt weights of tap i in the lpips package's (and taming's) files: lin{i} is a Sequential of
# dropout and a bias-free 1×1 convolution to one channel.
LPIPS_KEY = "lin{}.model.1.weight"


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
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

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
        x = (images.expand(-1, 3, -1, -1) * 2 - 1 - self.shift) / self.scale
        maps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in VGG16_TAPS:
                maps.append(x)
        return maps


def read_lpips_weights(path: str | Path) -> list[Tensor]:
    """LPIPS's learnt channel weights for VGG16's five taps from a file of the lpips package
    (``lpips/weights/v0.1/vgg.pth``) or taming-transformers (``vgg.pth``): keys ``lin{i}.model.1.weight``,
    Tensor[1, C_i, 1, 1] for C_i in 64, 128, 256, 512, 512 → five Tensor[C_i] float32.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: an unreadable file, or one whose keys or shapes are not those, naming the differences.
    """
    tensors, _ = read_checkpoint(path)
    expected = {LPIPS_KEY.format(i): (1, channels, 1, 1) for i, channels in enumerate(VGG16_TAP_CHANNELS)}
    problems = []
    if missing := [key for key in expected if key not in tensors]:
        problems.append(f"missing keys {', '.join(missing)}")
    if unexpected := sorted(key for key in tensors if key not in expected):
        shown = ", ".join(unexpected[:5]) + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        problems.append(f"unexpected keys {shown}")
    problems += [f"{key} has shape {list(tensors[key].shape)}, expected {list(shape)}" for key, shape in expected.items()
                 if key in tensors and tuple(tensors[key].shape) != shape]
    if problems:
        raise CheckpointError(f"checkpoint {path} holds no LPIPS weights for VGG16 ({'; '.join(problems)}); expected "
                              "lin0.model.1.weight [1, 64, 1, 1] to lin4.model.1.weight [1, 512, 1, 1], as in the lpips "
                              "package's weights/v0.1/vgg.pth or taming-transformers' vgg.pth")
    return [tensors[key].float().flatten() for key in expected]


def unit_normalize(features: Tensor, eps: float = LPIPS_EPS) -> Tensor:
    """Feature maps Tensor[B, C, H, W] → each position's channel vector divided by its norm + ``eps``, as LPIPS
    (not by max(norm, eps), as ``F.normalize``)."""
    return features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + eps)


class PerceptualLoss(nn.Module):
    """``forward(x, y)``: images Tensor[B, C, H, W] in [0, 1], a pair → distance Tensor[B] (float32, >= 0).

    Args:
        feature_maps_fn: images → a list of feature maps Tensor[B, C_i, H_i, W_i]; a module, or a method
            of one (``DomainFeatures.feature_maps``). That module is kept as ``network``, frozen and in
            eval mode, so ``.to(device)`` moves it and no optimizer sees it.
        layer_weights: one Tensor[C_i] (>= 0) per feature map weighing its channels (LPIPS's learnt linear
            layers, :func:`read_lpips_weights`); None weighs every channel 1 (the baseline variant).
    """

    def __init__(self, feature_maps_fn: Callable[[Tensor], Sequence[Tensor]],
                 layer_weights: Sequence[Tensor] | None = None):
        super().__init__()
        self.num_weighed = None if layer_weights is None else len(layer_weights)
        for index, weight in enumerate(layer_weights or ()):
            if weight.dim() != 1:
                raise ValueError(f"layer_weights[{index}] must be a Tensor[C], got shape {tuple(weight.shape)}")
            self.register_buffer(f"layer_weight{index}", weight.detach().float().clone())
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
        weights = self.layer_weights()
        if weights is not None and [len(w) for w in weights] != [m.shape[1] for m in maps]:
            raise ValueError(f"the layer weights are for {[len(w) for w in weights]} channels, the feature network "
                             f"gives maps of {[m.shape[1] for m in maps]}")
        distance = x.new_zeros(len(x), dtype=torch.float32)
        for index, both in enumerate(maps):
            fx, fy = unit_normalize(both.float()).chunk(2)
            squared = (fx - fy).pow(2)
            # LPIPS's 1×1 convolution as a product: autocast would run a convolution in half precision.
            weighed = (squared if weights is None else squared * weights[index].view(1, -1, 1, 1)).sum(1)
            distance = distance + weighed.mean((-2, -1))
        return distance

    def layer_weights(self) -> list[Tensor] | None:
        """The channel weights Tensor[C_i] of each feature map, or None for the baseline variant."""
        if self.num_weighed is None:
            return None
        return [getattr(self, f"layer_weight{index}") for index in range(self.num_weighed)]


def build_perceptual_loss(checkpoint: str | Path | None = None, data: str | None = None,
                          image_size: int | None = None, in_chans: int | None = None,
                          lpips_weights: str | Path | None = None) -> PerceptualLoss:
    """The perceptual distance over VGG16 from a torchvision ``checkpoint`` file (LPIPS with the learnt
    ``lpips_weights`` file, see :func:`read_lpips_weights`, else its baseline variant), or else over the
    classifier trained on the built-in ``data`` ("digits" or "shapes") at ``image_size`` with ``in_chans``
    (the baseline variant)."""
    if lpips_weights is not None and checkpoint is None:
        raise ValueError(f"the LPIPS weights {lpips_weights} weigh VGG16's channels: give the VGG16 checkpoint "
                         "(torchvision vgg16 weights) too")
    if checkpoint is not None:
        weights = read_lpips_weights(lpips_weights) if lpips_weights is not None else None
        return PerceptualLoss(VGG16Features.from_torchvision(checkpoint), weights)
    if data is None or image_size is None or in_chans is None:
        raise ValueError("the perceptual loss needs a VGG16 checkpoint, or the data set, image size and channels "
                         f"of the domain classifier; got data={data!r}, image_size={image_size}, in_chans={in_chans}")
    from visionzoo.metrics.domain import domain_features

    return PerceptualLoss(domain_features(data, image_size, in_chans).feature_maps)
