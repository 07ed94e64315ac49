"""HIPT on built-in slides: a ViT-4K trained on frozen ViT-256 [CLS] features of ShapeSlides mosaics.

The data: :class:`~visionzoo.data.slides.ShapeSlides`, mosaics of ``G × G`` Shapes tiles labelled
by their most frequent shape (6 classes, never a tie). Test slides are made of Shapes test-split tiles,
never seen in training.

The pipeline (HIPT's second stage, scaled to this CPU):

1. Tile encoder: ``hipt_vit256_small`` (HIPT's ViT-256: DINO ViT-S/16, 12 blocks, a 384-wide [CLS]) trained
   supervised through the training engine on single-object Shapes tiles of the slides' tile size (the
   ``label`` target, the tiles ShapeSlides is made of), then frozen with its head removed. HIPT's tiles are
   256 pixels (16 × 16 tokens, 4.6 GFLOPs a tile forward, about 10 s a training step of 64 tiles on one
   core), far too slow here, so the tiles are 64 pixels: the same model sees 4 × 4 tokens, its 14 × 14
   position table interpolated by DINO's rule at every forward. Measured on this CPU, neither this model
   nor smaller ViTs read through their [CLS] (patch 8, 2 to 4 blocks), nor a ConvNeXt-Atto, leave chance
   level on Shapes tiles within a few hundred steps (minutes); a narrower one read through max pooling
   does (``--encoder scaled``, below). So the encoder row is reported as trained within ``steps``,
   beside two references that bracket it: the same ViT-256 frozen at its random initialisation, and
   *perfect tile features* (each tile's [CLS] replaced by a fixed random 384-vector of its true class),
   which measures what the ViT-4K stage itself learns once the tile encoder is right.
2. Each split's tile pool is encoded once (``ShapeSlides.layout`` gives every slide's pool indices without
   drawing pixels); a slide's ViT-4K input is the grid of its tiles' [CLS] tokens, ``Tensor[384, G, G]``.
3. ``vit4k_xs`` (6 classes) is trained on these grids with AdamW (plain PyTorch loop, seeded), then
   evaluated on the test slides.

``--encoder scaled`` trains HIPT's ViT-256 scaled down to minutes of one core instead (``SCALED_ENCODER``:
4 blocks, 192 wide, 8-pixel patches, max pooling over the patch tokens as its feature, which the ViT-4K then
reads; read through its [CLS], the same encoder kept a training loss of ln 6 on easy tiles for 140 steps),
300 steps. ``--tiles easy`` makes
the tiles easier to read: each shows one *large* shape over a *plain* background (ShapeSlides
``object_sizes=("large",), background="plain"``: tiles drawn from the same seeds, every object large and the
texture left out); it trains the scaled encoder by default. The rest of the pipeline, the references and the
reported numbers are the same; results go to ``hipt_slides_easy.json`` or ``hipt_slides_scaled.json``.

Reported (printed as a table and written to ``benchmarks/results/hipt_slides.json``): test accuracy of
the slide classifier, the majority-class baseline (always predicting the train split's most frequent
label), the encoder's tile accuracy on the Shapes test split (its own head) and a linear probe's tile
accuracy on the frozen features (both rows), the plurality vote of the encoder's tile predictions (what
counting alone gives), and wall times. Finally, for a few test slides, the end-to-end ``HIPT4K`` forward
on the slide image (``model256`` = the frozen encoder, ``model4k`` = the trained ViT-4K, tiles streamed)
is checked against the precomputed-grid path.

    python benchmarks/hipt_slides.py                 # about 10 minutes on 2 busy cores
    python benchmarks/hipt_slides.py --threads 1
    python benchmarks/hipt_slides.py --threads 1 --tiles easy
    python benchmarks/hipt_slides.py --threads 1 --encoder scaled
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arguments import existing_results, output_file, positive_int, write_json
from timing import machine
from visionzoo.data.shapes import CLASSES
from visionzoo.data.slides import ShapeSlides
from visionzoo.metrics.probe import linear_probe_accuracy
from visionzoo.models import create_model
from visionzoo.train import TrainConfig
from visionzoo.train.slides import (
    EASY_TILES,
    ENCODER,
    ENCODER_BATCH,
    ENCODER_TILES,
    GRID_SIZE,
    POOLS,
    SCALED_ENCODER,
    SCALED_LR,
    SCALED_STEPS,
    SLIDES,
    TILE_SIZE,
    VIT4K_BATCH,
    VIT4K_LR,
    VIT4K_STEPS,
    VIT4K_WEIGHT_DECAY,
    accuracy,
    encode_pool,
    encoder_tiles,
    grids,
    normalize,
    slide_model,
    tile_accuracy,
    train_encoder,
    train_vit4k,
)

RESULTS = Path(__file__).parent / "results"
SEED = 0
CHECK_SLIDES = 2



@dataclass(frozen=True)
class Encoder:
    """One ``--encoder`` recipe: ``hipt_vit256_small``'s keyword arguments and its supervised training."""

    args: dict[str, Any]  # {}: HIPT's ViT-S/16, 12 blocks, 384 wide, [CLS]
    steps: int
    lr: float

    def name(self) -> str:
        args = {"patch_size": 16, "depth": 12, "embed_dim": 384, "global_pool": "token", **self.args}
        feature = "[CLS]" if args["global_pool"] == "token" else f"{args['global_pool']}-pooled patch tokens"
        return (f"{ENCODER}{' scaled down' if self.args else ''} (patch {args['patch_size']}, "
                f"{args['depth']} blocks, {args['embed_dim']} wide, feature: {feature})")


@dataclass(frozen=True)
class Tiles:
    """One ``--tiles`` setting: what the tiles show, and the encoder recipe used on them by default."""

    content: str
    object_sizes: tuple[str, ...] | None  # Shapes' object_sizes (None: all three sizes)
    background: str  # Shapes' background
    encoder: str  # the default --encoder

    def data(self) -> dict[str, Any]:
        return {"object_sizes": self.object_sizes, "background": self.background}


ENCODERS = {"vit256": Encoder({}, 100, 1e-3), "scaled": Encoder(SCALED_ENCODER, SCALED_STEPS, SCALED_LR)}
TILES = {
    "textured": Tiles("Shapes' default tiles: one small, medium or large shape over a textured background",
                      None, "textured", "vit256"),
    "easy": Tiles("one large shape over a plain background (Shapes object_sizes=('large',), background='plain')",
                  EASY_TILES["object_sizes"], EASY_TILES["background"], "scaled"),
}


def results_name(tiles: str, encoder: str) -> str:
    """The default --out in benchmarks/results: hipt_slides.json, hipt_slides_easy.json (each tile setting with
    its default encoder), else with the encoder's name, e.g. hipt_slides_scaled.json."""
    return ("hipt_slides" + ("" if tiles == "textured" else f"_{tiles}")
            + ("" if encoder == TILES[tiles].encoder else f"_{encoder}") + ".json")


def train_tile_encoder(setting: Tiles, recipe: Encoder, out: Path) -> tuple[nn.Module, dict[str, Any]]:
    """``hipt_vit256_small`` trained by the engine to classify single-object Shapes tiles (the slides'
    tiles), on the CPU as the rest of this benchmark (the engine's default is a GPU where there is one); tile
    accuracy on the Shapes test split."""
    tiles = {split: encoder_tiles(split, TILE_SIZE, ENCODER_TILES[split], SEED, **setting.data())
             for split in ENCODER_TILES}
    config = TrainConfig(out=str(out), max_steps=recipe.steps, batch_size=ENCODER_BATCH, lr=recipe.lr,
                         warmup_steps=recipe.steps // 10, seed=SEED, precision="fp32", overwrite=True,
                         progress=False, checkpoint_every=10**9, eval_every=10**9, device="cpu")
    model, result = train_encoder(tiles["train"], tiles["val"], config, recipe.args)
    info = {"model": ENCODER, "model_args": recipe.args, "tile_size": TILE_SIZE, "steps": result.steps,
            "batch_size": ENCODER_BATCH, "lr": recipe.lr, "train_seconds": round(result.train_seconds, 1),
            "train_tiles": ENCODER_TILES["train"], "tile_test_accuracy": tile_accuracy(model, tiles["test"]),
            "tile_test_split": f"Shapes test, 1 object, {ENCODER_TILES['test']} tiles, {setting.data()}",
            "chance": 1 / len(CLASSES)}
    return model, info


def tile_vote(tile_logits: torch.Tensor, indices: np.ndarray, labels: torch.Tensor, num_classes: int) -> float:
    """Slide accuracy of the plurality of the encoder's own tile predictions (ties: the lowest class)."""
    predicted = tile_logits.argmax(-1)[torch.from_numpy(indices).flatten(1)]
    counts = F.one_hot(predicted, num_classes).sum(1)
    return float((counts.argmax(-1) == labels).float().mean())


@torch.inference_mode()
def end_to_end_check(encoder: nn.Module, vit4k: nn.Module, slides: ShapeSlides, test_grids: torch.Tensor) -> dict:
    """HIPT4K on the slide images (tiles cut and streamed) against ViT-4K on the precomputed grids."""
    hipt = slide_model(encoder, vit4k, TILE_SIZE)
    diffs, agree = [], []
    for index in range(CHECK_SLIDES):
        image, _ = slides[index]
        whole = hipt(normalize(image)[None])
        precomputed = vit4k(test_grids[index:index + 1])
        diffs.append(float((whole - precomputed).abs().max()))
        agree.append(bool(whole.argmax(-1) == precomputed.argmax(-1)))
    return {"slides": list(range(CHECK_SLIDES)), "slide_pixels": list(image.shape[-2:]),
            "max_abs_logit_diff": max(diffs), "same_predictions": all(agree), "passed": max(diffs) < 1e-4}


def run_row(name: str, encoder: nn.Module | None, data: dict[str, ShapeSlides], num_classes: int,
            width: int = 384) -> dict[str, Any]:
    """Encode the pools (``encoder`` None: perfect tile features, ``width`` wide), train ViT-4K on the grids,
    test it."""
    start = time.perf_counter()
    if encoder is None:
        embedding = torch.randn(num_classes, width, generator=torch.Generator().manual_seed(SEED))
        pools = {split: (embedding[torch.from_numpy(slides.pool_labels)], torch.empty(len(slides.pool), 0))
                 for split, slides in data.items()}
    else:
        encoder = encoder.eval().requires_grad_(False)
        pools = {split: encode_pool(encoder, slides) for split, slides in data.items()}
        encoder.reset_classifier(0)  # from here on the encoder gives [CLS] features, as HIPT's ViT-256 does
    encode_seconds = time.perf_counter() - start
    train_grids, train_labels, _ = grids(data["train"], pools["train"][0])
    test_grids, test_labels, test_indices = grids(data["test"], pools["test"][0])
    vit4k, seconds, _ = train_vit4k(train_grids, train_labels, num_classes, VIT4K_STEPS, SEED)
    row = {
        "tile_encoder": name,
        "linear_probe_tile_accuracy": linear_probe_accuracy(pools["train"][0], data["train"].pool_labels,
                                                             pools["test"][0], data["test"].pool_labels),
        "encode_pools_seconds": round(encode_seconds, 1),
        "vit4k_train_seconds": round(seconds, 1),
        "vit4k_train_accuracy": accuracy(vit4k, train_grids, train_labels),
        "test_accuracy": accuracy(vit4k, test_grids, test_labels),
        "tile_vote_test_accuracy": (tile_vote(pools["test"][1], test_indices, test_labels, num_classes)
                                    if pools["test"][1].shape[1] else None),
        "end_to_end_check": None if encoder is None else end_to_end_check(encoder, vit4k, data["test"], test_grids),
    }
    check = row["end_to_end_check"]
    print(f"  {name}: slide test accuracy {row['test_accuracy']:.3f} (ViT-4K {seconds:.0f} s)"
          + ("" if check is None else f"; HIPT4K end to end vs grids: max |diff| {check['max_abs_logit_diff']:.1e}"),
          flush=True)
    return row


def table(result: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    lines = [f"{'tile features (frozen)':<34}{'slide acc':>10}{'tile acc':>10}{'probe':>8}{'tile vote':>11}{'ViT-4K s':>10}"]
    for row in result["rows"]:
        lines.append(f"{row['tile_encoder']:<34}{pct(row['test_accuracy']):>10}{pct(row.get('tile_accuracy')):>10}"
                     f"{pct(row['linear_probe_tile_accuracy']):>8}{pct(row['tile_vote_test_accuracy']):>11}"
                     f"{row['vit4k_train_seconds']:>10.0f}")
    lines.append(f"{'majority-class baseline':<34}{pct(result['majority_class_baseline']):>10}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tiles", choices=TILES, default="textured",
                        help="textured: Shapes' default tiles (default); easy: one large shape over a plain background")
    parser.add_argument("--encoder", choices=ENCODERS, default=None,
                        help="vit256: HIPT's 12-block ViT-256, 100 steps; scaled: 4 blocks, 192 wide, patch 8, max "
                             "pooling, 300 steps (default: vit256 with textured tiles, scaled with easy ones)")
    parser.add_argument("--out", type=output_file, default=RESULTS / "hipt_slides.json",
                        help="results JSON (default: benchmarks/results/hipt_slides.json; hipt_slides_easy.json with "
                             "--tiles easy, hipt_slides_scaled.json with --encoder scaled)")
    args = parser.parse_args()
    setting = TILES[args.tiles]
    encoder_key = args.encoder or setting.encoder
    recipe = ENCODERS[encoder_key]
    if args.out is parser.get_default("out"):
        args.out = RESULTS / results_name(args.tiles, encoder_key)
    existing_results(parser, args.out, __file__)  # not another script's results
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = {split: ShapeSlides(split, grid_size=GRID_SIZE, tile_size=TILE_SIZE, length=SLIDES[split],
                               pool_size=POOLS[split], seed=SEED, **setting.data()) for split in ("train", "test")}
    num_classes = len(data["train"].classes)
    train_labels = np.array([data["train"].layout(i).label for i in range(len(data["train"]))])
    test_labels = np.array([data["test"].layout(i).label for i in range(len(data["test"]))])
    majority = int(np.bincount(train_labels, minlength=num_classes).argmax())

    print(f"training the tile encoder ({ENCODER} {recipe.args}, {recipe.steps} steps)...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        encoder, encoder_info = train_tile_encoder(setting, recipe, Path(tmp) / "encoder")
    print(f"  tile accuracy {encoder_info['tile_test_accuracy']:.3f} ({encoder_info['train_seconds']:.0f} s)", flush=True)
    rows = [run_row("trained ViT-256 (supervised)", encoder, data, num_classes)]
    rows[0]["tile_accuracy"] = encoder_info["tile_test_accuracy"]
    torch.manual_seed(SEED)
    rows.append(run_row("random-init ViT-256", create_model(ENCODER, **recipe.args), data, num_classes))
    rows.append(run_row("perfect (true class embedding)", None, data, num_classes, encoder.num_features))
    rows[2]["tile_accuracy"] = 1.0

    patch = recipe.args.get("patch_size", 16)
    result = {
        "command": "python benchmarks/hipt_slides.py" + (f" --threads {args.threads}" if args.threads else "")
                   + ("" if args.tiles == "textured" else f" --tiles {args.tiles}")
                   + ("" if args.encoder is None else f" --encoder {args.encoder}"),
        "design": {
            "summary": "ViT-4K (vit4k_xs) trained on the frozen feature grids of a ViT-256 tile encoder (its [CLS], or "
                       "as tile_encoder says); slide label = most frequent shape among the slide's tiles",
            "tile_encoder": f"{recipe.name()} on {TILE_SIZE}-pixel tiles (a {TILE_SIZE // patch}×"
                            f"{TILE_SIZE // patch} token grid), trained supervised {recipe.steps} steps of "
                            f"{ENCODER_BATCH} single-object tiles through the engine, then frozen; 256-pixel tiles "
                            "are too slow to train on this CPU",
            "references": "the same ViT-256 frozen at random initialisation; perfect tile features (a fixed random "
                          "384-vector per true tile class), the ViT-4K stage's ceiling with a right tile encoder",
            "vit4k": f"vit4k_xs, AdamW lr {VIT4K_LR} wd {VIT4K_WEIGHT_DECAY}, {VIT4K_STEPS} steps of {VIT4K_BATCH} "
                     "slides, warmup + cosine, grad clip 1",
            "encoder_recipe": encoder_key,
            "majority_class_baseline": "always the train split's most frequent slide label",
            "linear_probe": "logistic regression on standardised frozen features, train pool -> test pool tiles",
            "tile_vote": "plurality of the encoder's own tile predictions (trained encoder only)",
        },
        "data": {"dataset": "ShapeSlides", "tiles": args.tiles, "tile_content": setting.content, "tile_size": TILE_SIZE,
                 "grid_size": GRID_SIZE, "slide_pixels": GRID_SIZE * TILE_SIZE,
                 "classes": data["train"].classes, "slides": SLIDES, "tile_pools": POOLS, "seed": SEED,
                 "test_label_counts": np.bincount(test_labels, minlength=num_classes).tolist()},
        "encoder": encoder_info,
        "rows": rows,
        "majority_class_baseline": float((test_labels == majority).mean()),
        "machine": machine(),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    print(table(result))
    print(f"total {result['total_seconds']:.0f} s")
    write_json(args.out, result, __file__)
    print(f"wrote {args.out}")
    if not all(row["end_to_end_check"]["passed"] for row in rows if row["end_to_end_check"]):
        raise SystemExit("the end-to-end HIPT4K forward differs from the precomputed-grid path")


if __name__ == "__main__":
    main()
