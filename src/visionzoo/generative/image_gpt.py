"""Image GPT (Chen et al. 2020): a colour palette turns pixels into tokens, a GPT models their raster sequence.

The palette is fitted by k-means (:func:`kmeans`, k-means++ seeding, Lloyd iterations) on the training
pixels and kept as a buffer, so a checkpoint carries it; each pixel becomes the index of its nearest
palette colour, read row by row. The transformer (:class:`~visionzoo.generative.gpt.GPT`) predicts each
index from the ones before it, optionally given the class. ``complete`` keeps the top half of an image
and samples the rest.

The paper evaluates the representation with linear probes: average-pool each layer's features over
the positions, fit a logistic regression on them, and report accuracy per layer; the middle layers
probe best. :func:`layer_features`, :func:`probe_accuracies`, :func:`raw_pixel_probe` and
:func:`plot_probe_curve` do that.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from visionzoo.generative.gpt import GPT, ImageSampler, _check_integers
from visionzoo.layers.vector_quantizer import lloyd_kmeans
from visionzoo.metrics.probe import linear_probe_accuracy
from visionzoo.models._registry import register_model
from visionzoo.utils import (
    check_argument_types,
    check_generator,
    check_unit_range,
    eval_mode,
    positive_batch_size,
)


def kmeans(points: Tensor, k: int, iterations: int = 50, generator: torch.Generator | None = None) -> Tensor:
    """Lloyd's k-means with k-means++ seeding: float Tensor[M, C] → centroids Tensor[k, C] (float32).

    The seeding and so the result are a function of ``generator``'s state. A cluster that empties
    keeps its previous centre. Stops early when the centres no longer move.
    """
    if points.dim() != 2 or points.shape[0] < k or k < 1:
        raise ValueError(f"k-means of {k} clusters needs points Tensor[M, C] with M >= k, got {tuple(points.shape)}")
    check_generator(generator, "k-means'")
    points = points.float()
    count = points.shape[0]
    centroids = points[torch.randint(count, (1,), generator=generator)]
    distances = (points - centroids[0]).pow(2).sum(1)
    for _ in range(1, k):
        if distances.sum() > 0:
            chosen = torch.multinomial(distances, 1, generator=generator)
        else:  # fewer distinct points than clusters
            chosen = torch.randint(count, (1,), generator=generator)
        centroids = torch.cat([centroids, points[chosen]])
        distances = torch.minimum(distances, (points - points[chosen]).pow(2).sum(1))
    return lloyd_kmeans(points, centroids, iterations)[0]


class ImageGPT(ImageSampler, nn.Module):
    """Image GPT over ``img_size`` × ``img_size`` images of ``in_chans`` channels in [0, 1].

    Args:
        in_chans, img_size: the images' channels and side; the sequence has ``img_size**2`` tokens.
        palette_size: colours in the palette, the GPT's vocabulary (default 16 for grey images, 32 for colour).
        num_classes: 0 for an unconditional model, else the number of classes it is conditioned on.
        embed_dim, depth, num_heads, mlp_ratio, drop: the GPT's.

    The palette starts as a grey ramp; :meth:`fit_palette` fits it to data (the task does, on the training split).
    """

    @check_argument_types
    def __init__(self, in_chans: int = 1, img_size: int = 16, palette_size: int | None = None, num_classes: int = 0,
                 embed_dim: int = 128, depth: int = 6, num_heads: int = 4, mlp_ratio: float = 4.0, drop: float = 0.0):
        super().__init__()
        if palette_size is None:  # not `or`: palette_size=0 must be refused, not mean the default
            palette_size = 16 if in_chans == 1 else 32
        if in_chans < 1 or img_size < 2 or palette_size < 2:
            raise ValueError(f"Image GPT needs in_chans >= 1, img_size >= 2 and palette_size >= 2, "
                             f"got {in_chans}, {img_size}, {palette_size}")
        self.in_chans = in_chans
        self.img_size = img_size
        self.register_buffer("palette", torch.linspace(0, 1, palette_size)[:, None].repeat(1, in_chans))
        self.gpt = GPT(palette_size, img_size * img_size, num_classes, embed_dim, depth, num_heads, mlp_ratio, drop)

    @torch.no_grad()
    def fit_palette(self, images: Tensor, max_pixels: int = 200_000, generator: torch.Generator | None = None) -> None:
        """Fit the palette by k-means on the pixels of ``images`` Tensor[B, C, H, W] in [0, 1] (at most
        ``max_pixels`` of them, drawn at random); colours are stored darkest first."""
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"fit_palette takes Tensor[B, {self.in_chans}, H, W], got {tuple(images.shape)}")
        check_unit_range(images, "Image GPT")  # else colours of 0..255, or NaN, that tokens() can never match
        pixels = images.permute(0, 2, 3, 1).reshape(-1, self.in_chans).float()
        colours = self.palette.shape[0]
        if min(pixels.shape[0], max_pixels) < colours:  # else k-means' own error, which names neither
            batch, _, height, width = images.shape
            given = (f"{pixels.shape[0]} ({batch} images of {height} x {width})" if pixels.shape[0] <= max_pixels
                     else f"max_pixels={max_pixels}")
            raise ValueError(f"Image GPT's palette_size={colours} needs at least {colours} pixels to fit its colours "
                             f"to, got {given}")
        if pixels.shape[0] > max_pixels:
            pixels = pixels[torch.randperm(pixels.shape[0], generator=generator)[:max_pixels]]
        palette = kmeans(pixels, colours, generator=generator)
        self.palette.copy_(palette[palette.mean(1).argsort()])

    def tokens(self, images: Tensor) -> Tensor:
        """Palette indices in raster order: Tensor[B, C, S, S] in [0, 1] → int64 Tensor[B, S·S]; ValueError for
        values outside [0, 1] or NaN."""
        size = self.img_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (self.in_chans, size, size):
            raise ValueError(f"Image GPT takes Tensor[B, {self.in_chans}, {size}, {size}] images, "
                             f"got {tuple(images.shape)}")
        check_unit_range(images, "Image GPT")  # else 0..255 images all take the brightest colour, NaN the first
        pixels = images.permute(0, 2, 3, 1).reshape(images.shape[0], size * size, 1, self.in_chans).float()
        return (pixels - self.palette.float()).pow(2).sum(-1).argmin(-1)

    def images_from_tokens(self, tokens: Tensor) -> Tensor:
        """Palette colours of int64 Tensor[B, S·S] → images Tensor[B, C, S, S] in [0, 1]."""
        size = self.img_size
        if tokens.dim() != 2 or tokens.shape[1] != size * size:
            raise ValueError(f"Image GPT tokens must be Tensor[B, {size * size}], got {tuple(tokens.shape)}")
        _check_integers("Image GPT tokens", tokens, tuple(tokens.shape), self.palette.shape[0])
        # long: a uint8 index would be read as a boolean mask
        return self.palette[tokens.long()].reshape(tokens.shape[0], size, size, self.in_chans).permute(0, 3, 1, 2)

    def forward(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        """Next-token logits Tensor[B, N, palette_size] of ``tokens`` Tensor[B, N] (see :meth:`GPT.forward`)."""
        return self.gpt(tokens, labels)

    @torch.no_grad()
    def complete(self, images: Tensor, generator: torch.Generator | None = None, labels: Tensor | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> Tensor:
        """Keep the top half (rows ``0 .. S/2 - 1``) of ``images`` Tensor[B, C, S, S] and sample the rest:
        Tensor[B, C, S, S] in [0, 1], the kept half in palette colours."""
        tokens = self.tokens(images)
        half = (self.img_size // 2) * self.img_size
        completed = self.gpt.generate(tokens[:, :half], labels=labels, temperature=temperature, top_k=top_k,
                                      top_p=top_p, generator=generator)
        return self.images_from_tokens(completed)


@torch.no_grad()
def layer_features(model: nn.Module, images: Tensor, batch_size: int = 256) -> list[Tensor]:
    """Average-pooled features of every layer for linear probes: ``depth + 1`` float Tensor[B, embed_dim]
    (the embedding output, then each block's).

    ``model`` is an Image GPT (or anything with ``tokens`` and a ``gpt``), ``images`` Tensor[B, C, S, S]
    in [0, 1]. The model runs in eval mode (its own mode given back, also after an error), unconditionally (no
    label reaches the features).
    """
    batch_size = positive_batch_size(batch_size, "layer_features' batch_size")
    pooled: list[list[Tensor]] = []
    with eval_mode(model):  # its own mode back also after an error (bad images), not eval mode for its training
        # At least one batch, so that no images give depth + 1 empty layers, not none
        for start in range(0, max(images.shape[0], 1), batch_size):
            batch = images[start:start + batch_size].to(model.gpt.pos_embed.device)
            layers = model.gpt.forward_layers(model.tokens(batch))
            pooled.append([layer.float().mean(1).cpu() for layer in layers])
    return [torch.cat(chunks) for chunks in zip(*pooled)]


def probe_accuracies(model: nn.Module, train_images: Tensor, train_labels: Tensor | Sequence[int],
                     test_images: Tensor, test_labels: Tensor | Sequence[int], batch_size: int = 256) -> list[float]:
    """Linear-probe test accuracy of every layer (``depth + 1`` floats, the embedding first).

    One logistic regression per layer on the standardised average-pooled features of ``train_images``
    Tensor[B, C, S, S] (labels Tensor[B] int), scored on ``test_images``.
    """
    train = layer_features(model, train_images, batch_size)
    test = layer_features(model, test_images, batch_size)
    return [linear_probe_accuracy(a, train_labels, b, test_labels) for a, b in zip(train, test)]


def raw_pixel_probe(train_images: Tensor, train_labels: Tensor | Sequence[int], test_images: Tensor,
                    test_labels: Tensor | Sequence[int]) -> float:
    """The baseline: the same linear probe on the raw pixels Tensor[B, C, H, W] (flattened)."""
    return linear_probe_accuracy(train_images.flatten(1), train_labels, test_images.flatten(1), test_labels)


def plot_probe_curve(accuracies: Sequence[float] | Sequence[Sequence[float]], raw_pixel: float | None,
                     path: str | Path, title: str = "Image GPT linear probes") -> Path:
    """Write a PNG of probe accuracy per layer (0: the embedding) with the raw-pixel probe as a line; returns the
    file written: ``path``, with ``.png`` added where it has no suffix (as matplotlib's ``savefig`` adds it).

    ``accuracies``: one list per layer, or one such list per seed (drawn as the mean and the min–max band).
    """
    from matplotlib.figure import Figure

    values = np.asarray(accuracies, dtype=float)
    values = values[None] if values.ndim == 1 else values
    if values.ndim != 2 or values.shape[1] < 1:
        raise ValueError(f"accuracies must be a list per layer (or one per seed), got shape {values.shape}")
    layers = np.arange(values.shape[1])
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    label = "Image GPT" if len(values) == 1 else f"Image GPT (mean of {len(values)} seeds, range shaded)"
    ax.plot(layers, values.mean(0), marker="o", label=label)
    if len(values) > 1:
        ax.fill_between(layers, values.min(0), values.max(0), alpha=0.25)
    if raw_pixel is not None:
        ax.axhline(raw_pixel, color="grey", linestyle="--", label=f"raw pixels ({raw_pixel:.3f})")
    ax.set_xlabel("layer (0: token + position embedding)")
    ax.set_ylabel("linear probe accuracy")
    ax.set_xticks(layers)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path = path if path.suffix else path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


@register_model(task="autoregressive", input_size=(1, 16, 16), class_conditional=False)
def image_gpt(**kwargs) -> ImageGPT:
    """Image GPT for CPU training: 6 blocks 128 wide, 4 heads, over 16×16 images (256 tokens)."""
    return ImageGPT(**kwargs)


@register_model(task="autoregressive", input_size=(1, 16, 16), class_conditional=False)
def image_gpt_small(**kwargs) -> ImageGPT:
    """A smaller Image GPT: 4 blocks 64 wide, 4 heads."""
    return ImageGPT(**{"embed_dim": 64, "depth": 4, "num_heads": 4, **kwargs})
