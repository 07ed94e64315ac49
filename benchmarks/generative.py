"""Generative models trained on built-in data on this CPU, one model per run, each writing its JSON result.

``--model vqvae``: ``vqvae_small`` (512 codes) trained from scratch for ``--minutes`` on Digits at
32 px and on Shapes at 64 px, through the engine (``visionzoo train``'s path). Reported on the test
split: reconstruction PSNR, the share of the 512 codes in use and the codes' perplexity; beside it
the untrained codec at the same bit rate: k-means vector quantisation of the raw pixel patches
(patch = the VQ-VAE's downsampling factor, so the same code grid), with as many centroids as codes,
fitted on the training images (scikit-learn's MiniBatchKMeans).

    python benchmarks/generative.py --model vqvae --minutes 4
    python benchmarks/generative.py --model vqvae --minutes 9.5 --data shapes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.cluster import MiniBatchKMeans

from visionzoo.train import TrainConfig
from visionzoo.train.reconstruction import psnr
from visionzoo.train.run import run_training

RESULTS = Path(__file__).parent / "results"
DATA = (("digits", 32), ("shapes", 64))


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


def vqvae(minutes: float, only: list[str] | None = None) -> dict[str, Any]:
    rows = {}
    for data, size in DATA:
        if only and data not in only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            config = TrainConfig(out=str(Path(tmp) / "run"), minutes=minutes, batch_size=64, lr=1e-3, overwrite=True,
                                 progress=False, eval_every=0, checkpoint_every=10**9, precision="auto")
            start = time.perf_counter()
            setup, result = run_training("vqvae_small", data, config, size)
            wall = time.perf_counter() - start
        model = setup.model.eval()
        with torch.no_grad():
            test = setup.task.evaluate(model, setup.splits["test"], 128, contextlib.nullcontext)
        codes = model.quantizer.num_codes
        factor = 2 ** model.downsample
        baseline = kmeans_psnr(stack(setup.splits["train"], 2000), stack(setup.splits["test"]), codes, factor)
        rows[data] = {"img_size": size, "code_grid": size // factor, "codes": codes, "steps": result.steps,
                      "train_seconds": round(result.train_seconds, 1), "wall_seconds": round(wall, 1),
                      "test": test, "kmeans_patch_vq_psnr": baseline}
        print(f"vqvae_small on {data} {size}px: PSNR {test['psnr']:.2f} dB, codes in use "
              f"{test['codebook_usage']:.3f}, perplexity {test['perplexity']:.1f} ({result.steps} steps, "
              f"{result.train_seconds:.0f} s); k-means patch VQ {baseline:.2f} dB", flush=True)
    return {"minutes": minutes, "threads": torch.get_num_threads(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("vqvae",), required=True)
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per data set")
    parser.add_argument("--data", action="append", choices=[name for name, _ in DATA], help="only these data sets")
    args = parser.parse_args()
    result = vqvae(args.minutes, args.data)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if not args.data else "_" + "_".join(args.data)
    path = RESULTS / f"generative_{args.model}{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
