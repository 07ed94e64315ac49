"""Pictures of predictions, drawn with PIL."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont


def to_pil(image: torch.Tensor, min_side: int = 192) -> Image.Image:
    """``Tensor[C, H, W]`` in [0, 1] (C = 1 or 3) as an RGB PIL image, enlarged (nearest) to ``min_side``."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    pil = Image.fromarray(array.permute(1, 2, 0).contiguous().numpy(), "RGB")
    scale = max(1, -(-min_side // min(pil.size)))
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil


def draw_classification(image: torch.Tensor, labels: Sequence[str], scores: Sequence[float],
                        truth: str | None = None) -> Image.Image:
    """The image with its top predictions (and the true class, if known) written in a band below it."""
    picture = to_pil(image)
    font = ImageFont.load_default()
    lines = [f"{label}: {score:.1%}" for label, score in zip(labels, scores)]
    if truth is not None:
        lines.append(f"true: {truth}")
    band = 14 * len(lines) + 8
    canvas = Image.new("RGB", (picture.width, picture.height + band), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, line in enumerate(lines):
        correct = truth is None or row != 0 or labels[0] == truth
        colour = (0, 110, 0) if correct and row == 0 else (160, 0, 0) if row == 0 else (40, 40, 40)
        draw.text((4, picture.height + 4 + 14 * row), line, fill=colour, font=font)
    return canvas


def grid(pictures: Sequence[Image.Image], columns: int = 4) -> Image.Image:
    """Pictures pasted into a grid of cells as large as the largest picture (top-left in their cell)."""
    width, height = max(p.width for p in pictures), max(p.height for p in pictures)
    rows = -(-len(pictures) // columns)
    canvas = Image.new("RGB", (width * min(columns, len(pictures)), height * rows), "white")
    for index, picture in enumerate(pictures):
        canvas.paste(picture, ((index % columns) * width, (index // columns) * height))
    return canvas


_BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
                (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40))


def draw_detections(image: torch.Tensor, boxes: Sequence[Sequence[float]], labels: Sequence[str],
                    scores: Sequence[float], truth: tuple[Sequence[Sequence[float]], Sequence[str]] | None = None,
                    min_side: int = 384) -> Image.Image:
    """The image (enlarged to ``min_side``) with predicted ``boxes`` (xyxy in the image's pixels), each
    labelled "class score" in a colour of its class (above the box, inside it at the picture's top edge);
    ground-truth boxes ``truth`` (boxes, labels) in grey."""
    picture = to_pil(image, min_side)
    scale = picture.width / image.shape[-1]
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    names = sorted(set(labels) | set(truth[1] if truth else ()))
    if truth is not None:
        for box in truth[0]:
            draw.rectangle([v * scale for v in box], outline=(128, 128, 128), width=1)
    for box, label, score in zip(boxes, labels, scores):
        colour = _BOX_COLOURS[names.index(label) % len(_BOX_COLOURS)]
        x1, y1, x2, y2 = (v * scale for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        text = f"{label} {score:.2f}"
        _, _, width, height = draw.textbbox((0, 0), text, font=font)
        # above the box, or inside it where the box starts at the picture's top (no room above)
        band_top = y1 - height - 1 if y1 >= height + 1 else y1
        draw.rectangle([x1, band_top, x1 + width + 2, band_top + height + 1], fill=colour)
        draw.text((x1 + 1, band_top), text, fill=(255, 255, 255), font=font)
    return picture
