"""``visionzoo export-data shapes --out DIR [--split ...] [--num N] [--image-size N] [--overwrite]``."""

from __future__ import annotations

import argparse

from visionzoo.cli import parse_number, positive_int, register_command
from visionzoo.data.export import MAX_EXPORT_IMAGES, export_shapes
from visionzoo.data.shapes import DEFAULT_LENGTHS, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, SPLIT_SEEDS

EXPORTABLE = ("shapes",)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help=f"built-in dataset to export: {', '.join(EXPORTABLE)}")
    parser.add_argument(
        "--out", required=True, help="output folder (COCO layout: SPLIT/*.png, annotations/*.json)"
    )
    parser.add_argument(
        "--split",
        nargs="+",
        action="extend",  # --split val --split test is both, as --split val test
        choices=list(SPLIT_SEEDS),
        help="splits to write (default: all)",
    )
    parser.add_argument(
        "--num",
        type=positive_int,
        help="images per split, at most "
        + str(MAX_EXPORT_IMAGES)
        + " (default: the split's length, "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_LENGTHS.items())
        + ")",
    )
    parser.add_argument(
        "--image-size", type=shapes_image_size, default=128,
        help=f"image side in pixels, {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} (default 128)",
    )
    parser.add_argument("--seed", type=shapes_seed, default=0, help="base seed of the dataset, in [0, 2**32) (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")


def shapes_image_size(text: str) -> int:
    """Shapes' image side: an integer in [MIN_IMAGE_SIZE, MAX_IMAGE_SIZE] (what its scenes are drawn at)."""
    return parse_number(text, int, f"an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]",
                        lambda value: MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE)


def shapes_seed(text: str) -> int:
    """Shapes' base seed: an integer in [0, 2**32) (what its scenes' generators take)."""
    return parse_number(text, int, "an integer in [0, 2**32)", lambda value: 0 <= value < 2**32)


@register_command(
    "export-data", help="write a built-in dataset as PNG files + COCO JSON", arguments=_arguments
)
def export_data_command(args: argparse.Namespace) -> int:
    if args.dataset.lower() not in EXPORTABLE:
        raise ValueError(
            f"cannot export {args.dataset!r}: export-data writes detection data; "
            f"choose from {', '.join(EXPORTABLE)}"
        )
    written = export_shapes(
        args.out,
        splits=args.split or list(SPLIT_SEEDS),
        num=args.num,
        image_size=args.image_size,
        overwrite=args.overwrite,
        seed=args.seed,
    )
    for split, path in written.items():
        print(f"{split}: images in {path.parent.parent / split}, annotations in {path}")
    return 0
