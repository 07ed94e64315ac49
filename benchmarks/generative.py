"""Generative models trained on built-in data on this CPU, one model per run, each writing its JSON result.

Tokenizers (``--model vqvae|vqgan|vit_vqgan``): trained from scratch for ``--minutes`` on Digits at 32 px
and on Shapes at 64 px through the engine (``visionzoo train``'s path). Reported on the test split:
reconstruction PSNR, the share of the codes in use and the codes' perplexity, and for the VQGANs the share
of steps with the discriminator on; beside it the untrained codec at the same bit rate: k-means vector
quantisation of the raw pixel patches (patch = the downsampling factor, so the same code grid), with as
many centroids as codes, fitted on the training images (scikit-learn's MiniBatchKMeans). The run folder
is kept under ``runs/bench/`` for the priors.

Samplers (``--model vqgan_transformer|image_gpt|dcgan``, and ``baselines``): the domain FID
(:mod:`visionzoo.metrics.domain`) of as many samples as the test split has images, against the test
split, with a 95% bootstrap interval; ``baselines`` gives the reference points: the FID between the
val and test splits (real against real) and that of a per-pixel Gaussian fitted to the training set.
Images of another side than the domain network's (Image GPT's 8 and 16 px) are resized to it, and so are the
real images they are compared with. ``--model vqgan_transformer --tokenizer vqgan`` trains the prior
over the codes of ``runs/bench/vqgan-DATA``. ``--model image_gpt`` also runs linear probes on every
layer (``--seeds`` trainings) beside a probe on raw pixels, and plots them; with ``--untrained`` it probes the
model at initialisation instead (same palette, no training), the floor those curves are read against.
``--model codebook_stats`` reads
the tokenizers kept under ``runs/bench/``: how close their nearest codes are, and how many of their codes
survive encoding under bf16.

    python benchmarks/generative.py --model vqvae --minutes 4
    python benchmarks/generative.py --model vqgan --minutes 5 --data digits --disc-start 100
    python benchmarks/generative.py --model vit_vqgan --minutes 10 --data digits --disc-start 900 --batch-size 32
    python benchmarks/generative.py --model vqgan_transformer --tokenizer vqgan --minutes 4 --data digits
    python benchmarks/generative.py --model image_gpt --minutes 3 --seeds 3 --data digits
    python benchmarks/generative.py --model image_gpt --untrained --seeds 3 --data digits   # and --data shapes
    python benchmarks/generative.py --model dcgan --minutes 4 --data digits
    python benchmarks/generative.py --model baselines
    python benchmarks/generative.py --model codebook_stats --data shapes
    python benchmarks/generative.py --model vit_vqgan --data shapes --device cuda --steps 12000 --runs /tmp/gpu \
        --out /tmp/gpu/generative_vit_vqgan_shapes.json   # a trial: the README's CPU result stays
    python benchmarks/generative.py --model vit_vqgan --data shapes --steps 300 --seed 1 --runs /tmp/probes \
        --out /tmp/probes/seed1.json   # a probe of another seed

``--steps N`` trains each model for N steps instead of ``--minutes`` (how far more steps than this CPU's
budget go) and ``--device cuda`` trains on the GPU (bf16 autocast; its result and plots are named ``..._cuda`` and its
runs go under ``runs/bench_cuda``, beside the CPU's rather than over them); what follows the training (test metrics,
probes, sampling for FID) runs on the CPU either way.
``--seed N`` seeds every training (Image GPT's ``--seeds`` trainings take N, N+1, ...) and, with ``--untrained``, the
initial weights; another seed than 0 writes ``..._seedN.json`` by default, beside the README's seed-0 result, and
trains under ``runs/bench_seedN``, beside the seed-0 tokenizers that the README's priors read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import MiniBatchKMeans

from arguments import (
    AppendOnce,
    device_name,
    existing_results,
    nonnegative_int,
    output_file,
    output_folder,
    positive_float,
    positive_int,
    write_json,
)
from timing import machine
from visionzoo.checkpoint import CheckpointError, read_metadata
from visionzoo.cli import nonnegative_float
from visionzoo.data import create_dataset
from visionzoo.metrics.domain import DEFAULT_SIZES, domain_features
from visionzoo.metrics.fid import FID
from visionzoo.models import create_model
from visionzoo.train import TrainConfig
from visionzoo.train.commands import adam_beta, parse_model_arg
from visionzoo.train.engine import CHECKPOINT_NAME, METRICS_NAME, autocast_context
from visionzoo.train.reconstruction import psnr
from visionzoo.train.run import load_for_inference, run_training
from visionzoo.train.vqgan import disc_start_argument

RESULTS = Path(__file__).parent / "results"
DEFAULT_RUNS = Path("runs/bench")  # --device cuda: runs/bench_cuda; --seed N: runs/bench_seedN
RUNS = DEFAULT_RUNS
# --device and --steps: set once by main(), over every run's own settings.
TRAINING: dict[str, Any] = {}
SEED = 0  # --seed: every training's, set once by main(); Image GPT's --seeds trainings count up from it
DATA = (("digits", 32), ("shapes", 64))
TOKENIZERS = {"vqvae": ("vqvae_small", "vqvae_small"), "vqgan": ("vqgan", "vqgan_f8"),
              "vit_vqgan": ("vit_vqgan", "vit_vqgan_64")}  # (Digits 32 px, Shapes 64 px)
CI_SAMPLES = 200
IMAGE_GPTS = ("image_gpt", "image_gpt_small")
# The flags that only some models use: given with another model they are refused, not ignored.
MODEL_FLAGS = {**dict.fromkeys(("--disc-start", "--disc-weight", "--perceptual-weight"), ("vqgan", "vit_vqgan")),
               **dict.fromkeys(("--batch-size", "--lr", "--opt-betas"), tuple(TOKENIZERS)),
               "--model-arg": (*TOKENIZERS, *IMAGE_GPTS),
               "--tokenizer": ("vqgan_transformer",), "--seeds": IMAGE_GPTS, "--untrained": IMAGE_GPTS}


def patches(images: torch.Tensor, size: int) -> np.ndarray:
    """Tensor[N, C, H, W] → float32[N * (H/size) * (W/size), C * size * size] non-overlapping patches."""
    n, c, h, w = images.shape
    grid = images.reshape(n, c, h // size, size, w // size, size).permute(0, 2, 4, 1, 3, 5)
    return grid.reshape(-1, c * size * size).numpy()


def kmeans_psnr(train: torch.Tensor, test: torch.Tensor, codes: int, size: int, seed: int = 0) -> float:
    """Test PSNR of k-means VQ of raw ``size``×``size`` patches with ``codes`` centroids fitted on ``train``."""
    kmeans = MiniBatchKMeans(codes, batch_size=4096, n_init=1, max_iter=50, random_state=seed)
    kmeans.fit(patches(train, size))
    coded = kmeans.cluster_centers_[kmeans.predict(patches(test, size))]
    n, c, h, w = test.shape
    rebuilt = torch.from_numpy(coded).float().reshape(n, h // size, w // size, c, size, size)
    rebuilt = rebuilt.permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
    return float(psnr(rebuilt, test).mean())


def stack(dataset, count: int | None = None) -> torch.Tensor:
    count = len(dataset) if count is None else min(count, len(dataset))
    return torch.stack([dataset[i][0] for i in range(count)])


def train(model: str, data: str, size: int, minutes: float, out: Path, seed: int | None = None,
          model_args: dict[str, Any] | None = None, options: dict[str, Any] | None = None, **config: Any):
    """One run through the engine, kept in ``out`` (``seed`` None: ``SEED``); (setup, result, wall seconds)."""
    settings = {"batch_size": 64, "precision": "auto", "minutes": minutes, **config, **TRAINING}
    run_config = TrainConfig(out=str(out), overwrite=True, progress=False, eval_every=0,
                             checkpoint_every=10**9, seed=SEED if seed is None else seed, **settings)
    start = time.perf_counter()
    setup, result = run_training(model, data, run_config, size, model_args, options)
    setup.model.cpu()
    return setup, result, time.perf_counter() - start


def disc_active_share(run: Path) -> float:
    """The share of logged training steps whose discriminator was on (the vqgan task logs ``disc_active``)."""
    flags = [line["autoencoder/disc_active"] for line in map(json.loads, (run / METRICS_NAME).read_text().splitlines())
             if "autoencoder/disc_active" in line]
    return sum(flags) / max(1, len(flags))


def tokenizer(kind: str, minutes: float, only: list[str] | None, losses: dict[str, Any],
              batch_size: int = 64, model_args: dict[str, Any] | None = None, lr: float | None = None,
              betas: tuple[float, float] | None = None) -> dict[str, Any]:
    rows = {}
    for (data, size), name in zip(DATA, TOKENIZERS[kind]):
        if only and data not in only:
            continue
        options = {k: v for k, v in losses.items() if v is not None} if kind != "vqvae" else None
        run = RUNS / f"{kind}-{data}"
        setup, result, wall = train(name, data, size, minutes, run, model_args=model_args, options=options,
                                    batch_size=batch_size, lr=lr, betas=betas)
        model = setup.model.eval()
        with torch.no_grad():
            test = setup.task.evaluate(model, setup.splits["test"], 128, contextlib.nullcontext)
        codes = model.quantizer.num_codes
        grid = model.encode(setup.splits["test"][0][0][None]).shape[-1]
        baseline = kmeans_psnr(stack(setup.splits["train"], 2000), stack(setup.splits["test"]), codes, size // grid)
        row = {"model": name, "img_size": size, "code_grid": grid, "codes": codes, "steps": result.steps,
               "train_seconds": round(result.train_seconds, 1), "wall_seconds": round(wall, 1), "test": test,
               "kmeans_patch_vq_psnr": baseline, "checkpoint": str(run / CHECKPOINT_NAME)}
        if kind != "vqvae":
            row["disc_active_share"] = disc_active_share(run)
        rows[data] = row
        print(f"{name} on {data} {size}px: PSNR {test['psnr']:.2f} dB, codes in use {test['codebook_usage']:.3f}, "
              f"perplexity {test['perplexity']:.1f} ({result.steps} steps, {result.train_seconds:.0f} s"
              + (f", discriminator on {row['disc_active_share']:.0%} of steps" if "disc_active_share" in row else "")
              + f"); k-means patch VQ {baseline:.2f} dB", flush=True)
    return {"minutes": minutes, "threads": torch.get_num_threads(), "batch_size": batch_size, "lr": lr,
            "betas": betas, "options": losses,
            "model_args": model_args or {}, "rows": rows}


def readable_tokenizer(kind: str, data: str) -> None:
    """Stop in one line when the tokenizer checkpoint under ``RUNS`` cannot be read (cut short, not a checkpoint)."""
    try:
        read_metadata(RUNS / f"{kind}-{data}" / CHECKPOINT_NAME)
    except CheckpointError as error:
        raise SystemExit(f"{error}; train it again with --model {kind} --data {data}") from None


def codebook_stats(only: list[str] | None) -> dict[str, Any]:
    """How far apart the trained tokenizers' codes are, and whether their codes survive bf16: for each
    ``runs/bench/KIND-DATA`` checkpoint, the median distance from a code to its nearest other code over the
    median distance between codes (near 0: near-duplicate codes), and the share of the test split's codes
    that encoding under bf16 autocast leaves unchanged."""
    rows = {}
    for kind, names in TOKENIZERS.items():
        for (data, _), name in zip(DATA, names):
            checkpoint = RUNS / f"{kind}-{data}" / CHECKPOINT_NAME
            if (only and data not in only) or not checkpoint.is_file():
                continue
            readable_tokenizer(kind, data)
            setup = load_for_inference(name, checkpoint)
            model = setup.model.eval()
            codes = model.quantizer.code_vectors().detach().float()
            distances = torch.cdist(codes, codes)
            off_diagonal = ~torch.eye(len(codes), dtype=torch.bool)
            nearest = distances.masked_fill(~off_diagonal, float("inf")).min(1).values
            between = distances[off_diagonal]  # each code's distance to itself is no distance between codes
            images = stack(setup.splits["test"], 500)
            with torch.no_grad():
                fp32 = model.encode(images)
                with autocast_context(torch.device("cpu"), "bf16")():
                    bf16 = model.encode(images)
            row = rows[f"{name} {data}"] = {"checkpoint": str(checkpoint),
                                            "nearest_over_median_distance": float(nearest.median() / between.median()),
                                            "bf16_code_agreement": float((fp32 == bf16).float().mean())}
            print(f"{name} on {data}: nearest code at {row['nearest_over_median_distance']:.3f} of the median distance; "
                  f"bf16 keeps {row['bf16_code_agreement']:.1%} of the codes", flush=True)
    if not rows:  # else a file of no rows would replace the results
        raise SystemExit(f"no tokenizer checkpoint under {RUNS} (KIND-DATA/{CHECKPOINT_NAME}): train one with "
                         f"--model {'|'.join(TOKENIZERS)} first, or give --runs")
    return {"rows": rows}


# ------------------------------------------------------------------------------------------ sample quality
def to_domain(images: torch.Tensor, data: str) -> torch.Tensor:
    """Images at any side → the domain network's side (bilinear, antialiased), clamped to [0, 1]."""
    side = DEFAULT_SIZES[data]
    if images.shape[-1] != side:
        images = F.interpolate(images.float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return images.float().clamp(0, 1)


def domain_fid(data: str, real: torch.Tensor, generated: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Domain FID of ``generated`` against ``real`` with its 95% bootstrap interval."""
    fid = FID(domain_features(data, DEFAULT_SIZES[data]), batch_size=250, keep_features=True)
    fid.update(to_domain(real, data), real=True)
    fid.update(to_domain(generated, data), real=False)
    low, high = fid.confidence_interval(CI_SAMPLES, seed=seed)
    return {"fid": fid.compute(), "ci_low": low, "ci_high": high, "real": len(real), "generated": len(generated)}


def fmt(entry: dict[str, float]) -> str:
    return f"{entry['fid']:.2f} [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}]"


def baselines(only: list[str] | None, sizes: dict[str, list[int]]) -> dict[str, Any]:
    """Real-vs-real (val against test) and per-pixel Gaussian FIDs at each side the samplers use."""
    rows = {}
    for data, _ in DATA:
        if only and data not in only:
            continue
        for size in sizes[data]:
            train_images = stack(create_dataset(data, "train", image_size=size))
            val, test = (stack(create_dataset(data, split, image_size=size)) for split in ("val", "test"))
            mean, std = train_images.mean(0), train_images.std(0)
            gaussian = (mean + std * torch.randn(len(test), *mean.shape, generator=torch.Generator().manual_seed(0)))
            row = {"real_vs_real": domain_fid(data, test, val), "per_pixel_gaussian": domain_fid(data, test, gaussian.clamp(0, 1))}
            rows[f"{data}-{size}"] = row
            print(f"{data} at {size}px: real vs real {fmt(row['real_vs_real'])}, per-pixel Gaussian "
                  f"{fmt(row['per_pixel_gaussian'])}", flush=True)
    return {"rows": rows}


def sampler_fid(setup, data: str, count: int, per_class: bool, seed: int = 0, **settings: Any) -> tuple[dict, float]:
    """Domain FID of ``count`` samples (classes in turn for a class-conditional model) against the test split."""
    test = stack(setup.splits["test"])
    generator = torch.Generator().manual_seed(seed)
    autocast = autocast_context(torch.device("cpu"), "auto")
    model = setup.model.eval()
    start = time.perf_counter()
    if per_class:
        classes = len(setup.splits["train"].classes)
        parts = [setup.task.sample(model, len(chunk), generator, autocast, label=int(label), **settings)
                 for label, chunk in enumerate(torch.arange(count).tensor_split(classes))]
        samples = torch.cat(parts)
    else:
        samples = setup.task.sample(model, count, generator, autocast, **settings)
    seconds = time.perf_counter() - start
    return domain_fid(data, test, samples), seconds / count


def prior(tokenizer_kind: str, minutes: float, only: list[str] | None) -> dict[str, Any]:
    rows = {}
    wanted = [(data, size) for data, size in DATA if not only or data in only]
    missing = [data for data, _ in wanted if not (RUNS / f"{tokenizer_kind}-{data}" / CHECKPOINT_NAME).is_file()]
    if missing:  # before any training: a prior trained on one data set would be lost at the next
        raise SystemExit("; ".join(f"no {RUNS / f'{tokenizer_kind}-{data}' / CHECKPOINT_NAME}: run --model "
                                   f"{tokenizer_kind} --data {data} first" for data in missing))
    for data, _ in wanted:
        readable_tokenizer(tokenizer_kind, data)
    for data, size in wanted:
        checkpoint = RUNS / f"{tokenizer_kind}-{data}" / CHECKPOINT_NAME
        setup, result, wall = train("vqgan_transformer", data, size, minutes,
                                    RUNS / f"vqgan_transformer-{tokenizer_kind}-{data}",
                                    options={"tokenizer": str(checkpoint), "class_conditional": True})
        with torch.no_grad():
            test = setup.task.evaluate(setup.model.eval(), setup.splits["test"], 128, contextlib.nullcontext)
        count = len(setup.splits["test"])
        fid, seconds = sampler_fid(setup, data, count, per_class=True)
        rows[data] = {"tokenizer": str(checkpoint), "steps": result.steps, "train_seconds": round(result.train_seconds, 1),
                      "test_nll": test["nll"], "fid": fid, "seconds_per_sample": seconds}
        print(f"vqgan_transformer over {tokenizer_kind} codes, {data}: test NLL {test['nll']:.3f} nats, domain FID "
              f"{fmt(fid)} ({result.steps} steps, {result.train_seconds:.0f} s; {seconds * 1000:.0f} ms/sample)", flush=True)
    return {"minutes": minutes, "tokenizer": tokenizer_kind, "rows": rows}


IMAGE_GPT_SIZES = {"digits": 8, "shapes": 16}  # Digits' own 8×8 scans; Shapes' smallest side


# What a linear probe reads out of Shapes at 16 px. The classification `label` (the largest object's shape) is
# hardly visible there: objects are 2–5 px wide and a supervised CNN stays at chance, so the visible properties
# are probed too: how many objects there are (1–6) and the largest object's colour (7).
PROBE_TARGETS = {"digits": ("digit",), "shapes": ("label", "objects", "largest_color")}


def _targets(target: Any) -> dict[str, int]:
    if not isinstance(target, dict):
        return {"digit": int(target)}
    largest = int(target["area"].argmax())
    return {"label": int(target["label"]), "objects": len(target["labels"]),
            "largest_color": int(target["colors"][largest])}


def probe_split(dataset, count: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The first ``count`` images Tensor[N, C, H, W] and each probe target's labels Tensor[N]."""
    count = len(dataset) if count is None else min(count, len(dataset))
    samples = [dataset[i] for i in range(count)]
    targets = [_targets(t) for _, t in samples]
    return torch.stack([image for image, _ in samples]), {k: torch.tensor([t[k] for t in targets]) for k in targets[0]}


def image_gpt(minutes: float, seeds: int, only: list[str] | None, model_name: str, plots: Path, tag: str = "",
              model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model_name`` (with ``model_args`` over its registered size) ``seeds`` times per data set and probe
    every layer; the probe curves go to ``plots``, their file names ending in ``tag``."""
    from visionzoo.generative.image_gpt import layer_features, plot_probe_curve, raw_pixel_probe
    from visionzoo.metrics.probe import linear_probe_accuracy

    rows = {}
    plots.mkdir(parents=True, exist_ok=True)
    for data, _ in DATA:
        if only and data not in only:
            continue
        size = IMAGE_GPT_SIZES[data]
        runs = []
        for seed in range(SEED, SEED + seeds):
            setup, result, wall = train(model_name, data, size, minutes, RUNS / f"{model_name}-{data}-seed{seed}", seed=seed,
                                        model_args=model_args)
            model = setup.model.eval()
            with torch.no_grad():
                test = setup.task.evaluate(model, setup.splits["test"], 128, contextlib.nullcontext)
                train_x, train_y = probe_split(setup.splits["train"], 2000)
                test_x, test_y = probe_split(setup.splits["test"])
                train_features, test_features = layer_features(model, train_x), layer_features(model, test_x)
            probes = {name: [linear_probe_accuracy(a, train_y[name], b, test_y[name])
                             for a, b in zip(train_features, test_features)] for name in PROBE_TARGETS[data]}
            fid, seconds = sampler_fid(setup, data, len(setup.splits["test"]), per_class=False, seed=seed)
            runs.append({"seed": seed, "steps": result.steps, "train_seconds": round(result.train_seconds, 1),
                         "test_nll": test["nll"], "probes": probes, "fid": fid, "seconds_per_sample": seconds})
            print(f"{model_name} {data} {size}px seed {seed}: NLL {test['nll']:.3f}, domain FID {fmt(fid)} "
                  f"({result.steps} steps, {result.train_seconds:.0f} s)", flush=True)
            for name, curve in probes.items():
                print(f"  probe {name}: {' '.join(f'{p:.3f}' for p in curve)} (best layer {int(np.argmax(curve))})",
                      flush=True)
        targets = {}
        for name in PROBE_TARGETS[data]:
            raw = raw_pixel_probe(train_x, train_y[name], test_x, test_y[name])
            majority = float((test_y[name] == torch.mode(train_y[name]).values).float().mean())
            curves = np.array([run["probes"][name] for run in runs])
            depth = curves.shape[1] - 1
            mean = curves.mean(0)
            best = int(np.argmax(mean))
            plot = plots / (f"image_gpt_probes_{data}{tag}.png" if name == PROBE_TARGETS[data][0]
                              else f"image_gpt_probes_{data}_{name}{tag}.png")
            plot_probe_curve(curves.tolist(), raw, plot, title=f"Image GPT linear probes: {data} {size} px, {name}")
            targets[name] = {"raw_pixel_probe": raw, "majority_class": majority, "mean_probes": mean.tolist(),
                             "std_probes": curves.std(0).tolist(), "best_layer": best,
                             "best_in_middle_third": depth / 3 <= best <= 2 * depth / 3,
                             "best_beats_first_and_last": bool(mean[best] > mean[0] and mean[best] > mean[-1]),
                             "best_minus_raw": float(mean[best] - raw), "plot": str(plot)}
            print(f"{data} {name}: mean probe per layer {' '.join(f'{p:.3f}' for p in mean)}; raw pixels {raw:.3f}; "
                  f"majority class {majority:.3f}; best layer {best} of 0..{depth}", flush=True)
        rows[data] = {"img_size": size, "runs": runs, "layers": depth + 1, "targets": targets}
    return {"minutes": minutes, "model": model_name, "model_args": model_args or {}, "rows": rows}


def untrained_image_gpt(seeds: int, only: list[str] | None, model_name: str, model_args: dict[str, Any] | None = None
                        ) -> dict[str, Any]:
    """The probes of ``model_name`` (with ``model_args`` over its registered size) at initialisation (``seeds``
    seeds), with the palette the task fits: what the architecture and palette give before any training, the floor a
    trained model's probe curve is read against."""
    from visionzoo.generative.image_gpt import layer_features
    from visionzoo.metrics.probe import linear_probe_accuracy
    from visionzoo.train.run import build_setup

    rows = {}
    for data, _ in DATA:
        if only and data not in only:
            continue
        size = IMAGE_GPT_SIZES[data]
        curves: dict[str, list[list[float]]] = {name: [] for name in PROBE_TARGETS[data]}
        for seed in range(SEED, SEED + seeds):
            torch.manual_seed(seed)
            setup = build_setup(model_name, data, size, model_args)
            model = setup.model.eval()
            with torch.no_grad():
                train_x, train_y = probe_split(setup.splits["train"], 2000)
                test_x, test_y = probe_split(setup.splits["test"])
                train_features, test_features = layer_features(model, train_x), layer_features(model, test_x)
            for name in PROBE_TARGETS[data]:
                curve = [linear_probe_accuracy(a, train_y[name], b, test_y[name])
                         for a, b in zip(train_features, test_features)]
                curves[name].append(curve)
                print(f"untrained {model_name} {data} {size}px seed {seed}, probe {name}: "
                      f"{' '.join(f'{p:.3f}' for p in curve)}", flush=True)
        rows[data] = {"img_size": size, "targets": {
            name: {"probes": runs, "mean_probes": np.mean(runs, 0).tolist(), "std_probes": np.std(runs, 0).tolist()}
            for name, runs in curves.items()}}
    return {"model": model_name, "model_args": model_args or {}, "untrained": True, "seeds": seeds, "rows": rows}


def dcgan(minutes: float, only: list[str] | None) -> dict[str, Any]:
    rows = {}
    for data, size in DATA:
        if only and data not in only:
            continue
        setup, result, wall = train("dcgan", data, size, minutes, RUNS / f"dcgan-{data}")
        fid, seconds = sampler_fid(setup, data, len(setup.splits["test"]), per_class=False)
        rows[data] = {"img_size": size, "steps": result.steps, "train_seconds": round(result.train_seconds, 1),
                      "fid": fid, "seconds_per_sample": seconds}
        print(f"dcgan on {data} {size}px: domain FID {fmt(fid)} ({result.steps} steps, {result.train_seconds:.0f} s)",
              flush=True)
    return {"minutes": minutes, "rows": rows}


def main() -> None:
    global RUNS, SEED
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True,
                        choices=(*TOKENIZERS, "vqgan_transformer", *IMAGE_GPTS, "dcgan", "baselines",
                                 "codebook_stats"))
    parser.add_argument("--minutes", type=positive_float, help="training budget per data set (and seed); default 5")
    parser.add_argument("--steps", type=positive_int, help="train this many steps instead of --minutes")
    parser.add_argument("--device", type=device_name, default="cpu", help="where the models train (cpu, cuda)")
    parser.add_argument("--data", action=AppendOnce, choices=[name for name, _ in DATA], help="only these data sets")
    parser.add_argument("--tokenizer", choices=("vqvae", "vqgan", "vit_vqgan"),
                        help="vqgan_transformer: whose codes (trained before with --model TOKENIZER; default vqgan)")
    parser.add_argument("--disc-start", type=disc_start_argument,
                        help="VQGANs: the step the discriminator starts at, or a share of the run (40%%)")
    parser.add_argument("--disc-weight", type=nonnegative_float,
                        help="VQGANs: the GAN loss weight (default: the model's registered one, else the task's 0.8)")
    parser.add_argument("--perceptual-weight", type=nonnegative_float,
                        help="VQGANs: the perceptual loss weight (default: the model's registered one, else 1.0)")
    parser.add_argument("--seed", type=nonnegative_int,
                        help="the seed of every training (image_gpt: of the first of --seeds, counting up); default 0, "
                             "and another one's result is named ..._seedN.json by default")
    parser.add_argument("--seeds", type=positive_int, help="image_gpt: trainings for the probe curve (default 3)")
    parser.add_argument("--untrained", action="store_true",
                        help="image_gpt: probe the model at initialisation (--seeds of them), without training")
    parser.add_argument("--batch-size", type=positive_int, help="tokenizers: the training batch (default 64)")
    parser.add_argument("--lr", type=positive_float, help="tokenizers: the peak learning rate (default: the task's)")
    parser.add_argument("--opt-betas", type=adam_beta, nargs=2, metavar=("BETA1", "BETA2"),
                        help="tokenizers: AdamW's betas (default: the model's, else the task's)")
    parser.add_argument("--out", type=output_file,
                        help="the JSON result (default: benchmarks/results/generative_MODEL[_DATA][_cuda].json)")
    parser.add_argument("--runs", type=output_folder,
                        help=f"the folder of the run folders (default {DEFAULT_RUNS}, {DEFAULT_RUNS}_cuda for --device cuda, "
                             f"{DEFAULT_RUNS}_seedN for --seed N, where the priors find the tokenizers; give another "
                             "one for trials that must not replace them)")
    parser.add_argument("--model-arg", type=parse_model_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="tokenizers and Image GPT: a model argument over the registered size (repeatable), e.g. "
                             "disc_width=64, drop=0.1")
    args = parser.parse_args()
    for flag, models in MODEL_FLAGS.items():
        given = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if given is not None and given is not False and given != [] and args.model not in models:  # 0 is given
            parser.error(f"{flag} is not used by --model {args.model} (only by {', '.join(models)})")
    if args.model_arg:  # each model built on the meta device: a bad argument is one line now, not a traceback later
        for (data, _), name in zip(DATA, TOKENIZERS.get(args.model, (args.model,) * len(DATA))):
            if args.data and data not in args.data:
                continue
            try:
                with torch.device("meta"):
                    create_model(name, **dict(args.model_arg))
            except ValueError as error:  # ModelArgumentError too
                parser.error(f"--model-arg: {error}")
    # a GPU run's tokenizers go beside the CPU's (those the README's priors read), not over them
    # another seed's runs, or a GPU's, go beside the CPU's seed-0 ones (the README's tokenizers, which its priors read)
    runs_tag = (f"_seed{args.seed}" if args.seed else "") + ("_cuda" if args.device == "cuda" else "")
    RUNS = args.runs or DEFAULT_RUNS.with_name(DEFAULT_RUNS.name + runs_tag)
    if args.untrained or args.model in ("baselines", "codebook_stats"):
        trains = (("--minutes", args.minutes), ("--steps", args.steps), ("--device", args.device != "cpu"),
                  *((("--seed", args.seed is not None),) if not args.untrained else ()))  # untrained: its init's
        for flag, given in trains:
            if given:
                parser.error(f"{flag} sets the training; --model {args.model}"
                             f"{' --untrained' if args.untrained else ''} trains nothing")
    if args.steps and args.minutes:
        parser.error("--steps and --minutes are two budgets: give one")
    args.minutes = args.minutes or 5.0
    TRAINING.update({"device": args.device, **({"max_steps": args.steps, "minutes": None} if args.steps else {})})
    SEED = args.seed or 0
    # a GPU run's files go beside the CPU's (the README's), not over them; so do another seed's
    tag = (f"_seed{SEED}" if SEED else "") + ("_cuda" if args.device == "cuda" else "")
    if args.model == "vqgan_transformer":
        name = f"vqgan_transformer_{args.tokenizer or 'vqgan'}"
    elif args.model.startswith("image_gpt") and args.untrained:
        name = f"{args.model}_untrained"
    else:
        name = args.model
    suffix = "" if not args.data else "_" + "_".join(args.data)
    path = args.out or RESULTS / f"generative_{name}{suffix}{tag}.json"
    existing_results(parser, path, __file__)  # not another script's results
    if args.model in TOKENIZERS:
        losses = {"disc_start": args.disc_start, "disc_weight": args.disc_weight,
                  "perceptual_weight": args.perceptual_weight}
        result = tokenizer(args.model, args.minutes, args.data, losses, args.batch_size or 64, dict(args.model_arg), args.lr,
                           tuple(args.opt_betas) if args.opt_betas else None)
    elif args.model == "vqgan_transformer":
        result = prior(args.tokenizer or "vqgan", args.minutes, args.data)
    elif args.model.startswith("image_gpt") and args.untrained:
        result = untrained_image_gpt(args.seeds or 3, args.data, args.model, dict(args.model_arg))
    elif args.model.startswith("image_gpt"):
        # the probe plots go beside the JSON, named after it when --out is given: a trial's plots leave the README's
        # pictures alone
        result = image_gpt(args.minutes, args.seeds or 3, args.data, args.model, args.out.parent if args.out else RESULTS,
                           f"{tag}_{args.out.stem}" if args.out else tag, dict(args.model_arg))
    elif args.model == "codebook_stats":
        result = codebook_stats(args.data)
    elif args.model == "dcgan":
        result = dcgan(args.minutes, args.data)
    else:
        sizes = {"digits": sorted({32, IMAGE_GPT_SIZES["digits"]}), "shapes": sorted({64, IMAGE_GPT_SIZES["shapes"]})}
        result = baselines(args.data, sizes)
    write_json(path, {**machine(args.device), "device": args.device, "steps": args.steps, "seed": SEED, **result},
               __file__)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
