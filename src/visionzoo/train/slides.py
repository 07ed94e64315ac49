"""HIPT's second stage on :class:`~visionzoo.data.slides.ShapeSlides`: a ViT-4K trained on frozen tile features.

The pipeline, shared by ``benchmarks/hipt_slides.py`` and the tour's ``hipt-slides`` row:

1. :func:`train_encoder`: ``hipt_vit256_small`` trained through the engine to classify single-object Shapes tiles
   (:func:`encoder_tiles`, the tiles ShapeSlides is made of), then frozen.
2. :func:`encode_pool`: each split's tile pool encoded once; :func:`grids`: every slide's grid of its tiles'
   features, ``Tensor[N, D, G, G]``.
3. :func:`train_vit4k`: ``vit4k_xs`` trained on these grids with a plain loop; :func:`slide_model` puts the two
   back together as one :class:`~visionzoo.models.hipt.HIPT4K` that reads a slide image.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visionzoo.data.shapes import CLASSES, Shapes
from visionzoo.data.slides import ShapeSlides
from visionzoo.models import create_model
from visionzoo.models.hipt import HIPT4K
from visionzoo.train.classification import ClassificationTask
from visionzoo.train.engine import TrainConfig, TrainResult, fit, lr_factor
from visionzoo.train.task import weight_decay_groups

ENCODER = "hipt_vit256_small"
MEAN = STD = 0.5  # the encoder's normalisation (HIPT's, the engine's for this model)
# HIPT's ViT-256 design scaled to minutes of one CPU core: ViT-Ti's width, 4 blocks, 8-pixel patches (8 × 8 tokens
# a 64-pixel tile) and max pooling over the patch tokens; with the [CLS] token instead, the same model stayed
# at chance on the easy tiles (see the README's HIPT section)
SCALED_ENCODER: dict[str, Any] = {"patch_size": 8, "embed_dim": 192, "num_heads": 3, "depth": 4, "global_pool": "max"}
# What "easy" tiles show: one large shape over a plain background (Shapes' own options)
EASY_TILES: dict[str, Any] = {"object_sizes": ("large",), "background": "plain"}
# The demo's sizes (the benchmark's, and the tour's within its time share): slides of 4 × 4 tiles of 64 pixels
# (HIPT's tiles are 256 pixels, far too slow to train on a CPU), the tile encoder's data and batch, and the
# scaled-down encoder's recipe
TILE_SIZE, GRID_SIZE = 64, 4
ENCODER_TILES = {"train": 4000, "val": 200, "test": 500}
ENCODER_BATCH = 64
SCALED_STEPS, SCALED_LR = 300, 5e-4
SLIDES = {"train": 3000, "test": 600}
POOLS = {"train": 600, "test": 300}
VIT4K_STEPS = 300
VIT4K_BATCH = 32
VIT4K_LR = 5e-4
VIT4K_WEIGHT_DECAY = 0.05


def normalize(images: torch.Tensor) -> torch.Tensor:
    """``Tensor[..., 3, H, W]`` in [0, 1] as the encoder reads it."""
    return (images - MEAN) / STD


def encoder_tiles(split: str, tile_size: int, length: int, seed: int, **data: Any) -> Shapes:
    """``length`` single-object Shapes tiles of ``split`` (``Tensor[3, tile_size, tile_size]``, ``label``), drawn
    with Shapes' ``data`` options (``object_sizes``, ``background``) as the slides' tiles are."""
    return Shapes(split, image_size=tile_size, length=length, seed=seed, min_objects=1, max_objects=1, **data)


def encoder_task(tile_size: int) -> ClassificationTask:
    """The tile encoder's supervised task: the 6 shape classes, shifted by up to ``tile_size // 16`` pixels."""
    return ClassificationTask(CLASSES, (MEAN,) * 3, (STD,) * 3, translate=tile_size // 16)


def train_encoder(train: Shapes, val: Shapes, config: TrainConfig,
                  model_args: Mapping[str, Any]) -> tuple[nn.Module, TrainResult]:
    """``hipt_vit256_small(**model_args)`` trained by the engine under ``config`` (its budget: steps or minutes) to
    classify the tiles of ``train``; returned in eval mode with its head (6 classes), seeded by ``config.seed``."""
    torch.manual_seed(config.seed or 0)
    model = create_model(ENCODER, num_classes=len(CLASSES), **model_args)
    tile_size = train.image_size
    result = fit(encoder_task(tile_size), model, train, val, config,
                 {"data": "shapes (1 object)", "img_size": tile_size})
    return model.eval(), result


@torch.no_grad()
def tile_accuracy(encoder: nn.Module, tiles: Shapes) -> float:
    """The encoder's own head's accuracy on ``tiles``."""
    return encoder_task(tiles.image_size).evaluate(encoder.eval(), tiles, 256, contextlib.nullcontext)["accuracy"]


@torch.inference_mode()
def encode_pool(encoder: nn.Module, slides: ShapeSlides, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen encoder on every pool tile, read on the encoder's device: (features ``Tensor[P, D]``, head logits
    ``Tensor[P, K]``, or ``Tensor[P, 0]`` once the head is removed), on the CPU."""
    features, logits = [], []
    head = encoder.get_classifier()
    device = next(encoder.parameters()).device
    for start in range(0, len(slides.pool), batch):
        tiles = torch.stack([slides.tile(j) for j in range(start, min(start + batch, len(slides.pool)))])
        tokens = encoder.forward_features(normalize(tiles.to(device)))
        cls = encoder.forward_head(tokens, pre_logits=True)
        features.append(cls.cpu())
        logits.append((head(cls) if isinstance(head, nn.Linear) else cls[:, :0]).cpu())
    return torch.cat(features), torch.cat(logits)


def grids(slides: ShapeSlides, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Every slide's grid ``Tensor[N, D, G, G]`` of its pool tiles' ``features`` (``Tensor[P, D]``), its label
    ``Tensor[N]`` and tile indices int64[N, G, G]."""
    layouts = [slides.layout(i) for i in range(len(slides))]
    indices = np.stack([layout.tile_indices for layout in layouts])
    grid = features[torch.from_numpy(indices)].permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([layout.label for layout in layouts])
    return grid, labels, indices


def train_vit4k(train_grids: torch.Tensor, train_labels: torch.Tensor, num_classes: int, steps: int, seed: int = 0,
                seconds: float | None = None, device: torch.device | str = "cpu") -> tuple[nn.Module, float, int]:
    """``vit4k_xs`` on precomputed grids ``Tensor[N, D, G, G]`` (``in_dim`` D, HIPT's 384 unless the tile
    encoder is narrower) and labels ``Tensor[N]``: AdamW, linear warmup then cosine decay over ``steps``, seeded
    batches, on ``device``; stops early once ``seconds`` have passed (None: never). Returns the model (on
    ``device``) in eval mode, the seconds and the steps it trained."""
    torch.manual_seed(seed)
    model = create_model("vit4k_xs", num_classes=num_classes, in_dim=train_grids.shape[1]).to(device)
    optimizer = torch.optim.AdamW(weight_decay_groups(model, VIT4K_WEIGHT_DECAY), lr=VIT4K_LR)
    warmup = steps // 10
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, warmup, min_ratio=0.0))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_labels), generator=generator)
    cursor = done = 0
    model.train()
    start = time.perf_counter()
    while done < steps and (seconds is None or time.perf_counter() - start < seconds):
        if cursor + VIT4K_BATCH > len(order):
            order, cursor = torch.randperm(len(train_labels), generator=generator), 0
        pick = order[cursor:cursor + VIT4K_BATCH]
        cursor += VIT4K_BATCH
        loss = F.cross_entropy(model(train_grids[pick].to(device)), train_labels[pick].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        done += 1
    return model.eval(), time.perf_counter() - start, done


@torch.inference_mode()
def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    """``model``'s accuracy on ``inputs`` ``Tensor[N, ...]`` against ``labels`` ``Tensor[N]``, read on the model's
    device."""
    device = next(model.parameters()).device
    predictions = torch.cat([model(inputs[i:i + batch].to(device)).argmax(-1).cpu()
                             for i in range(0, len(inputs), batch)])
    return float((predictions == labels).float().mean())


def slide_model(encoder: nn.Module, vit4k: nn.Module, tile_size: int, tile_batch_size: int = 5) -> HIPT4K:
    """The frozen tile ``encoder`` (its head removed) and the trained ``vit4k`` as one :class:`HIPT4K` in eval mode,
    which reads a normalised slide image ``Tensor[B, 3, G * tile_size, G * tile_size]`` (tiles streamed)."""
    hipt = HIPT4K(num_classes=vit4k.num_classes, tile_size=tile_size, tile_batch_size=tile_batch_size)
    hipt.model256, hipt.model4k = encoder, vit4k
    return hipt.eval()
