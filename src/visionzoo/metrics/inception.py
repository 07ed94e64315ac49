"""The FID Inception-v3: pytorch-fid's network (the 2015 TensorFlow graph ported to PyTorch), 2048-d features.

FID numbers are only comparable when computed with this exact network and preprocessing. It is
torchvision's Inception-v3 layout (the module names of the weight file, ``Conv2d_1a_3x3`` ...
``Mixed_7c`` and a 1008-way ``fc``) with the TensorFlow graph's differences: every average pool
inside an Inception block leaves the zero padding out of its mean (``count_include_pad=False``),
and the last block pools its side branch with a max instead of an average.

Preprocessing, where the notes warn that FID is sensitive (Parmar et al., "On Aliased Resizing and
Surprising Subtleties in GAN Evaluation"):

- ``resize="legacy"``: pytorch-fid's, a bilinear resize of the float image to 299×299 without
  antialiasing (``F.interpolate``, ``align_corners=False``);
- ``resize="clean"``: clean-fid's, the image quantised to uint8 as an image file would be, then PIL's
  bicubic filter with antialiasing on each channel in float mode, clipped to [0, 255].

Both then map the pixels to about [-1, 1] as their library does: legacy ``2 x - 1`` of x in [0, 1]
(pytorch-fid's ``normalize_input``), clean ``(x - 128) / 128`` of x in [0, 255] (clean-fid's, the
TensorFlow graph's own), which differ by up to 1/128. The weights are pytorch-fid's
``pt_inception-2015-12-05`` file: ``checkpoint=PATH`` loads a local copy, ``pretrained=True`` downloads
it once into the weights cache (hash-checked).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from visionzoo.checkpoint import CheckpointError
from visionzoo.models._registry import Pretrained
from visionzoo.utils import check_unit_range, inference_layout

log = logging.getLogger(__name__)

FID_WEIGHTS = Pretrained(
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    sha256="6726825d",
)
INPUT_SIZE = 299
# The smallest side the network takes: its stride-2 convolutions and pools leave no 3×3 window below 75 px.
MIN_INPUT_SIZE = 75
RESIZE_MODES = ("legacy", "clean", "none")


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 0.001), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _side_pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35×35 block: 1×1, 5×5, double 3×3 and pooled branches (64 + 64 + 96 + ``pool_features`` channels)."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_side_pool(x)),
        ], 1)


class InceptionB(nn.Module):
    """35→17 reduction: a stride-2 3×3, a stride-2 double 3×3 and a max pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (1×7 and 7×1), 4 × 192 channels out."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(_side_pool(x)),
        ], 1)


class InceptionD(nn.Module):
    """17→8 reduction: a stride-2 3×3 after a 1×1, a stride-2 3×3 after a factorised 7×7, and a max pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8×8 block with split 1×3 / 3×1 branches; ``max_pool`` for the side branch of the last one (FID)."""

    def __init__(self, in_channels: int, max_pool: bool = False):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _side_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], 1)


def resize_legacy(images: Tensor) -> Tensor:
    """pytorch-fid's resize: Tensor[B, 3, H, W] → Tensor[B, 3, 299, 299], bilinear, no antialiasing."""
    return F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)


def resize_clean(images: Tensor) -> Tensor:
    """clean-fid's resize of images in [0, 1]: quantised to uint8, PIL bicubic (antialiased) per channel in
    float mode to 299×299, clipped to [0, 255]; returned in [0, 1] as Tensor[B, 3, 299, 299] float32."""
    quantised = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    out = np.empty((images.shape[0], images.shape[1], INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for index, image in enumerate(quantised):
        for channel, plane in enumerate(image):
            resized = Image.fromarray(plane.astype(np.float32), mode="F").resize((INPUT_SIZE, INPUT_SIZE),
                                                                                 resample=Image.BICUBIC)
            out[index, channel] = np.asarray(resized).clip(0, 255)
    return torch.from_numpy(out / 255.0).to(images.device)


class InceptionFeatures(nn.Module):
    """``forward(images Tensor[B, 3, H, W] in [0, 1], any dtype) -> Tensor[B, 2048]``: FID's pool features.

    Args:
        checkpoint: pytorch-fid's ``pt_inception-2015-12-05`` weights file (torchvision's Inception-v3 keys).
        resize: "legacy" (pytorch-fid), "clean" (clean-fid) or "none" (inputs already 299×299; any side of at
            least ``MIN_INPUT_SIZE`` = 75 px runs, but FID's numbers are for 299).
        pretrained: download pytorch-fid's file (once, hash-checked) when no ``checkpoint`` is given. With neither,
            the weights are random (timm's default, not pytorch-fid's or torchmetrics'), and a warning is logged.

    ``logits(images)`` gives the 1008-way classifier output; ``logits_unbiased(images)`` the same without its
    bias, which is what the Inception Score is defined on (give those to
    :func:`~visionzoo.metrics.sample_quality.inception_score`).
    """

    def __init__(self, checkpoint: str | Path | None = None, resize: str = "legacy", pretrained: bool = False):
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        if pretrained and checkpoint is not None:
            raise ValueError("give either pretrained=True or checkpoint=PATH, not both")
        self.resize = resize
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        if pretrained:
            from visionzoo.models._hub import fetch_weights

            checkpoint = fetch_weights(FID_WEIGHTS, "pytorch-fid's weights")
            try:
                self.load_weights(checkpoint)
            except CheckpointError as error:  # a cached file that fails to load would fail every time
                raise CheckpointError(f"{error}; it is the cached download of pytorch-fid's weights: delete it to "
                                      "download them again") from None
        elif checkpoint is not None:
            self.load_weights(checkpoint)
        else:  # timm's default, but pytorch-fid's InceptionV3 and torchmetrics' FID load the FID weights unasked
            log.warning("InceptionFeatures has random weights (no checkpoint, pretrained=False): an FID, KID or "
                        "Inception Score of its features is comparable with no published one; give "
                        "pretrained=True or checkpoint=PATH for pytorch-fid's network")
        self.eval()

    def load_weights(self, checkpoint: str | Path) -> None:
        """Load pytorch-fid's weight file (or any state dict of this layout), strictly: a file that does not fit raises
        ``ValueError`` and leaves the network unchanged."""
        from visionzoo.checkpoint import read_checkpoint

        tensors, _ = read_checkpoint(checkpoint)
        own = self.state_dict()
        # a shape mismatch (torchvision's 1000-class ImageNet Inception-v3) would raise inside load_state_dict
        resized = [f"{k} {list(v.shape)} (FID's {list(own[k].shape)})" for k, v in tensors.items()
                   if k in own and v.shape != own[k].shape]
        if resized:
            raise ValueError(f"{checkpoint} is not an FID Inception-v3 weights file (pytorch-fid's "
                             f"pt_inception-2015-12-05): its {', '.join(resized[:2])} differ in shape")
        # checked before any copy: load_state_dict(strict=False) would copy what fits and leave the network half loaded
        missing = [k for k in own if k not in tensors and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in tensors if k not in own]
        if missing or unexpected:
            raise ValueError(f"{checkpoint} is not an FID Inception-v3 weights file: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]} ({len(missing)} and {len(unexpected)} in all)")
        self.load_state_dict(tensors, strict=False)  # pytorch-fid's file has no batch-norm step counters

    def preprocess(self, images: Tensor) -> Tensor:
        """Images Tensor[B, 3, H, W] in [0, 1] of any dtype, resized per ``self.resize``, mapped to about [-1, 1]
        as that resize's library does (see the module notes) and converted to the network's dtype (float32 unless
        converted): Tensor[B, 3, 299, 299]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"InceptionFeatures takes Tensor[B, 3, H, W] RGB images in [0, 1], got {tuple(images.shape)}")
        check_unit_range(images, "InceptionFeatures")
        if self.resize == "none" and min(images.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(f"InceptionFeatures(resize='none') takes images of at least {MIN_INPUT_SIZE}×{MIN_INPUT_SIZE} "
                             f"px, got {images.shape[-2]}×{images.shape[-1]}; resize them to 299×299 first, or use "
                             "resize='legacy' or 'clean'")
        if self.resize == "clean":  # PIL works in float32 whatever the network's dtype
            return ((resize_clean(images) * 255 - 128) / 128).to(self.fc.weight.dtype)
        images = images.to(self.fc.weight.dtype)
        if self.resize == "legacy":
            images = resize_legacy(images)
        return 2 * images - 1

    def pool_features(self, x: Tensor) -> Tensor:
        """Preprocessed Tensor[B, 3, 299, 299] → Tensor[B, 2048] (the average of the last 8×8 map). In bf16 on a CPU
        the maps are channels-last (:func:`~visionzoo.utils.inference_layout`: 2.5× the images/s); fp32 keeps
        pytorch-fid's layout and its features exactly."""
        x = inference_layout(x)
        for layer in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3):
            x = layer(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, images: Tensor) -> Tensor:
        return self.pool_features(self.preprocess(images))

    def logits(self, images: Tensor) -> Tensor:
        """The 1008-way logits of the original graph's classifier: Tensor[B, 1008]."""
        return self.fc(self.forward(images))

    def logits_unbiased(self, images: Tensor) -> Tensor:
        """The logits without the classifier's bias, Tensor[B, 1008]: what the Inception Score is computed from
        (the original code's ``softmax/logits/MatMul``, torch-fidelity's and torchmetrics' ``logits_unbiased``)."""
        return self.forward(images) @ self.fc.weight.T
