"""Domain features: a small classifier of the built-in data whose pooled features stand in for Inception's.

FID needs a feature network. pytorch-fid's Inception-v3 was trained on ImageNet photographs and its
weights cannot be fetched on an offline machine; for MNIST-like data people use the features of a
classifier trained on that data (a "domain FID", as LeNet features for MNIST). This module trains
such a classifier once per data set and image size, deterministically, and caches its weights in the
weights cache (``$VISIONZOO_CACHE/domain``); numbers from these features are comparable with each
other, not with published Inception FIDs.

The network: three stages of a 3×3 convolution (BatchNorm, ReLU), 2×2 max-pools between them, widths 32,
64, 128, then a global average pool (the 128-d features) and a linear classifier. Targets: the digit
on Digits; on Shapes every class and every colour present in the scene (multi-label, binary
cross-entropy), which asks the features to see every object rather than only the largest.

``feature_maps`` gives each stage's activations, for an LPIPS-style perceptual loss.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.checkpoint import atomic_write
from visionzoo.utils import check_unit_range, inference_layout, is_integer, whole_number

log = logging.getLogger(__name__)

DOMAIN_DATA = ("digits", "shapes")
# The sides the generative models train at: Digits' 8 px scans upsampled to 32, Shapes at 64.
DEFAULT_SIZES = {"digits": 32, "shapes": 64}
WIDTHS = (32, 64, 128)
# The smallest side the network reads: its stages after the first halve the side.
MIN_IMAGE_SIZE = 2 ** (len(WIDTHS) - 1)
# Bump when the network, its targets or its training change, so that stale cached weights are not reused.
# v2: trained outside the caller's autocast and RNG (a v1 file first built inside a bf16 training step
# learnt in bf16 and is a worse network).
VERSION = 2


def _stage(in_chans: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True))


class DomainFeatures(nn.Module):
    """Images in [0, 1] → pooled features of a small CNN classifier.

    Args:
        in_chans: image channels (1 for Digits, 3 for Shapes).
        num_outputs: classifier outputs (10 digits; Shapes' classes + colours).
        widths: channels of the three stages.
        stem_stride: stride of the first convolution (2 for 64 px images, so that every size costs the same).
        image_size: the side of the images it was trained on; ``forward`` (the FID features) then refuses other
            sizes, whose features are not comparable (None: any size).

    ``forward(images: Tensor[B, in_chans, H, W] in [0, 1])`` (any dtype, converted to the network's; values outside
    [0, 1] raise ValueError) → Tensor[B, widths[-1]];
    ``logits`` → Tensor[B, num_outputs]; ``feature_maps`` → one Tensor[B, widths[i], H / (stem_stride · 2**i),
    W / (stem_stride · 2**i)] per stage.
    """

    def __init__(self, in_chans: int = 1, num_outputs: int = 10, widths: tuple[int, ...] = WIDTHS, stem_stride: int = 1,
                 image_size: int | None = None):
        super().__init__()
        self.in_chans = in_chans
        self.image_size = image_size
        self.num_features = widths[-1]
        channels = (in_chans, *widths)
        self.stages = nn.ModuleList(_stage(a, b) for a, b in zip(channels[:-1], channels[1:]))
        self.stages[0][0].stride = (stem_stride, stem_stride)
        self.head = nn.Linear(widths[-1], num_outputs)

    def _check(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"domain features take Tensor[B, {self.in_chans}, H, W] images in [0, 1], "
                             f"got {tuple(images.shape)}")
        smallest = self.stages[0][0].stride[0] * 2 ** (len(self.stages) - 1)
        if min(images.shape[-2:]) < smallest:
            raise ValueError(f"domain features need images of at least {smallest} px, got {tuple(images.shape[-2:])}")

    def feature_maps(self, images: Tensor) -> list[Tensor]:
        """Each stage's activations (before its pool) for ``images`` Tensor[B, C, H, W] in [0, 1]; channels-last
        without autograd on a CPU (:func:`~visionzoo.utils.inference_layout`: 1.9× the fp32 images/s of the 64 px
        Shapes network), which no reference's numbers tie to the contiguous layout."""
        self._check(images)
        x = inference_layout((images - 0.5) / 0.25, in_fp32=True)
        maps = []
        for index, stage in enumerate(self.stages):
            if index:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, images: Tensor) -> Tensor:
        if self.image_size is not None and tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"these domain features were trained on {self.image_size}×{self.image_size} images, "
                             f"got {tuple(images.shape[-2:])}; resize them to {self.image_size} px first")
        # the FID/KID features: 0..255 or [-1, 1] images would give other images' features without a word (the
        # perceptual loss' feature_maps take a decoder's unclamped output, so only here)
        check_unit_range(images, "DomainFeatures")
        return self.feature_maps(images.to(self.head.weight.dtype))[-1].mean(dim=(2, 3))

    def logits(self, images: Tensor) -> Tensor:
        return self.head(self.forward(images))


def stem_stride(image_size: int) -> int:
    """The first convolution's stride for ``image_size`` px images: their side over 32, at least 1."""
    return max(1, image_size // 32)


def domain_targets(data: str, target) -> Tensor:
    """The classifier's target of one sample: the digit (int64 scalar) or Shapes' multi-hot float Tensor[K + colours]."""
    if data == "digits":
        return torch.tensor(int(target))
    from visionzoo.data.shapes import CLASSES, COLOR_NAMES

    multi_hot = torch.zeros(len(CLASSES) + len(COLOR_NAMES))
    multi_hot[target["labels"] - 1] = 1.0
    multi_hot[len(CLASSES) + target["colors"]] = 1.0
    return multi_hot


def _split_tensors(data: str, split: str, image_size: int, in_chans: int) -> tuple[Tensor, Tensor]:
    from visionzoo.data import create_dataset

    kwargs = {"channels": in_chans} if data == "digits" else {}
    dataset = create_dataset(data, split, image_size=image_size, **kwargs)
    samples = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([image for image, _ in samples])
    if images.shape[1] != in_chans:
        raise ValueError(f"{data} images have {images.shape[1]} channels, not {in_chans}")
    return images, torch.stack([domain_targets(data, target) for _, target in samples])


def _loss(data: str, logits: Tensor, targets: Tensor) -> Tensor:
    if data == "digits":
        return F.cross_entropy(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets)


def domain_accuracy(model: DomainFeatures, data: str, images: Tensor, targets: Tensor) -> float:
    """Top-1 accuracy on Digits; on Shapes the share of (sample, class or colour) decisions that are right."""
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model.logits(part) for part in images.split(256)])
    if data == "digits":
        return float((logits.argmax(1) == targets).float().mean())
    return float(((logits > 0).float() == targets).float().mean())


def train_domain_classifier(data: str, image_size: int, in_chans: int, steps: int = 600, batch_size: int = 64,
                            lr: float = 2e-3, seed: int = 0) -> tuple[DomainFeatures, float]:
    """A :class:`DomainFeatures` trained on ``data``'s train split (AdamW, cosine schedule, random ±2 px shifts);
    returns it in eval mode with its val accuracy (:func:`domain_accuracy`).

    The result does not depend on where it is called from: the perceptual loss first builds this network inside
    a training step, under bf16 autocast, and it must not learn in bf16 there nor move that run's random stream.
    """
    if data not in DOMAIN_DATA:
        raise ValueError(f"domain features exist for {', '.join(DOMAIN_DATA)}, not {data!r}")
    with (torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad(),
          torch.autocast("cpu", enabled=False)):
        return _train_domain_classifier(data, image_size, in_chans, steps, batch_size, lr, seed)


def _train_domain_classifier(data: str, image_size: int, in_chans: int, steps: int, batch_size: int, lr: float,
                             seed: int) -> tuple[DomainFeatures, float]:
    images, targets = _split_tensors(data, "train", image_size, in_chans)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    num_outputs = 10 if data == "digits" else targets.shape[1]
    model = DomainFeatures(in_chans, num_outputs, stem_stride=stem_stride(image_size), image_size=image_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        picks = torch.randint(len(images), (batch_size,), generator=generator)
        shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
        batch = torch.roll(images[picks], shifts=shift, dims=(2, 3))
        loss = _loss(data, model.logits(batch), targets[picks])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    val_images, val_targets = _split_tensors(data, "val", image_size, in_chans)
    accuracy = domain_accuracy(model, data, val_images, val_targets)
    return model.eval(), accuracy


def domain_weights_path(data: str, image_size: int, in_chans: int) -> Path:
    from visionzoo.models._hub import cache_dir

    return cache_dir() / "domain" / f"{data}-{image_size}px-{in_chans}ch-v{VERSION}.safetensors"


def _load_domain_features(path: Path, data: str, image_size: int, in_chans: int) -> DomainFeatures:
    """The network in domain-features file ``path``; ValueError naming the file when it is not one for ``in_chans``,
    or its metadata (files written since it was added) says it was trained on other data or another image size."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(path)
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a domain-features file (safetensors): {error}") from None
    trained_data, trained_size = metadata.get("data", data), metadata.get("image_size", str(image_size))
    if trained_data != data:
        raise ValueError(f"{path} holds domain features of {trained_data}, not {data}")
    if trained_size != str(image_size):
        # the features of another size are not comparable, and another stem stride is another network
        raise ValueError(f"{path} holds domain features trained on {trained_size} px images, not {image_size} "
                         f"(--img-size {trained_size})")
    stem, head = state.get("stages.0.0.weight"), state.get("head.weight")
    if stem is None or head is None or stem.dim() != 4 or head.dim() != 2:
        raise ValueError(f"{path} is not a domain-features file: it lacks the tensors stages.0.0.weight and "
                         "head.weight (a checkpoint of another model?)")
    if stem.shape[1] != in_chans:
        raise ValueError(f"{path} holds domain features of {stem.shape[1]}-channel images; {data} needs {in_chans}")
    model = DomainFeatures(in_chans, head.shape[0], stem_stride=stem_stride(image_size), image_size=image_size)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        # the first line only says "Error(s) in loading state_dict for DomainFeatures:"; the reasons follow
        reasons = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise ValueError(f"{path} is not a {data} domain-features file for {in_chans} channels: "
                         f"{reasons[0] if reasons else error}") from None
    return model


def smallest_size(data: str) -> int:
    """The smallest image side the domain features of ``data`` (``"digits"`` or ``"shapes"``) take: the network's
    (:data:`MIN_IMAGE_SIZE`), and for Shapes its smallest scenes, which it is trained on."""
    from visionzoo.data.shapes import MIN_IMAGE_SIZE as SHAPES_MIN_SIZE

    return max(MIN_IMAGE_SIZE, SHAPES_MIN_SIZE) if data == "shapes" else MIN_IMAGE_SIZE


def domain_features(data: str, image_size: int, in_chans: int | None = None,
                    checkpoint: str | Path | None = None) -> DomainFeatures:
    """The frozen domain feature network of ``data`` (``"digits"`` or ``"shapes"``) at ``image_size``.

    Loaded from ``checkpoint`` when given, else from the weights cache, else trained now (about a minute on
    two CPU cores) and cached. ``in_chans`` defaults to the data's (1 for Digits, 3 for Shapes).
    """
    from safetensors.torch import save_file

    if not isinstance(data, str) or data.lower() not in DOMAIN_DATA:  # else None.lower()'s AttributeError
        raise ValueError(f"domain features exist for {', '.join(DOMAIN_DATA)}, not {data!r}")
    data = data.lower()
    if not is_integer(image_size):  # 32.0 would name another cache file and fingerprint than 32
        raise ValueError(f"domain_features' image_size must be an integer, got {image_size!r}")
    image_size = int(image_size)
    if image_size < MIN_IMAGE_SIZE:  # else the train split is loaded and the first training step fails
        raise ValueError(f"domain features need images of at least {MIN_IMAGE_SIZE} px, got image_size {image_size}")
    if image_size < smallest_size(data):  # else "Shapes image_size must be ..." after "training the ... classifier"
        raise ValueError(f"domain features of {data} need images of at least {smallest_size(data)} px, got image_size "
                         f"{image_size}")
    if in_chans is None:
        in_chans = 1 if data == "digits" else 3
    in_chans = whole_number(in_chans, "domain_features' in_chans", 1)
    path = Path(checkpoint) if checkpoint else domain_weights_path(data, image_size, in_chans)
    if checkpoint and not path.is_file():
        raise FileNotFoundError(f"domain features checkpoint {path} does not exist")
    if path.is_file():
        model = _load_domain_features(path, data, image_size, in_chans)
    else:
        log.info("training the %s domain classifier at %d px (once; cached in %s)", data, image_size, path)
        model, accuracy = train_domain_classifier(data, image_size, in_chans)
        log.info("%s domain classifier: val accuracy %.4f", data, accuracy)
        # A cache, not a secret: the file gets the umask's mode (atomic_write), not safetensors' 0o600.
        metadata = {"val_accuracy": f"{accuracy:.6f}", "data": data, "image_size": str(image_size)}
        atomic_write(path, lambda tmp: save_file(model.state_dict(), tmp, metadata=metadata))
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()
