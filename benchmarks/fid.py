"""FID's feature network and FID itself beside pytorch-fid and clean-fid, in one run on this machine.

No weights can be downloaded here, so both sides get the same random FID Inception-v3 weights
(batch norms calibrated on noise so activations stay O(1)), saved in pytorch-fid's file layout and
handed to pytorch-fid in place of its download:

* features: ``InceptionFeatures(resize="legacy")`` against pytorch-fid's ``InceptionV3([3])`` on random
  images of several sizes: the largest difference relative to the largest feature magnitude;
* ``visionzoo fid A B`` against pytorch-fid's ``calculate_fid_given_paths`` on two folders of PNGs;
* ``resize="clean"`` against clean-fid's ``make_resizer("PIL", False, "bicubic", (299, 299))``;
* seconds per image of the features, ours and pytorch-fid's, each in fp32 and under bf16 autocast, best of 3;
* KID and Inception Score against torchmetrics' on the same random features and seed.

    python benchmarks/fid.py --images 64
    python benchmarks/fid.py --images 2 --out /tmp/fid_trial.json   # a trial: the README's fid.json stays
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cleanfid.resize import make_resizer
from PIL import Image
from pytorch_fid import inception as pytorch_fid_inception
from pytorch_fid.fid_score import calculate_fid_given_paths

from arguments import at_least_two_images, existing_results, output_file, write_json
from timing import best_seconds, machine
from visionzoo.cli import main as cli_main
from visionzoo.metrics.inception import InceptionFeatures, resize_clean

RESULTS = Path(__file__).parent / "results"
SIZES = ((299, 299), (64, 64), (96, 128), (384, 512))


def random_weights(path: Path) -> None:
    torch.manual_seed(0)
    model = InceptionFeatures(resize="none")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model.pool_features(torch.randn(8, 3, 299, 299))
    torch.save(model.state_dict(), path)


def run(images: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "pt_inception-2015-12-05-6726825d.pth"
        random_weights(weights)
        state = torch.load(weights)
        pytorch_fid_inception.load_state_dict_from_url = lambda *a, **k: state
        reference = pytorch_fid_inception.InceptionV3([3]).eval()
        ours = InceptionFeatures(weights)
        generator = torch.Generator().manual_seed(1)
        features = {}
        for height, width in SIZES:
            batch = torch.rand(4, 3, height, width, generator=generator)
            with torch.no_grad():
                expected, got = reference(batch)[0].flatten(1), ours(batch)
            features[f"{height}x{width}"] = float((got - expected).abs().max() / expected.abs().max())
            print(f"features {height}x{width}: max |Δ| / max |f| = {features[f'{height}x{width}']:.2e}", flush=True)

        folders = []
        for index in range(2):
            folder = tmp / f"images_{index}"
            folder.mkdir()
            pixels = (torch.rand(images, 64, 64, 3, generator=generator) * 255).to(torch.uint8).numpy()
            pixels[:, :32] //= 1 + index
            for number, image in enumerate(pixels):
                Image.fromarray(image).save(folder / f"{number:04d}.png")
            folders.append(str(folder))
        theirs = calculate_fid_given_paths(folders, batch_size=16, device="cpu", dims=2048, num_workers=0)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cli_main(["fid", *folders, "--checkpoint", str(weights), "--batch-size", "16"])
        mine = float(out.getvalue().split("FID: ")[1])
        print(f"FID on two folders of {images} images: ours {mine:.6f}, pytorch-fid {theirs:.6f}", flush=True)

        resizer = make_resizer("PIL", False, "bicubic", (299, 299))
        batch = torch.rand(4, 3, 40, 52, generator=generator)
        clean_equal = all(
            np.array_equal(resize_clean(image[None])[0].numpy(),
                           (resizer((image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()) / 255)
                           .transpose(2, 0, 1).astype(np.float32))
            for image in batch)

        timing = feature_seconds({"ours": ours, "pytorch_fid": reference},
                                 torch.rand(16, 3, 299, 299, generator=generator))
        print(f"seconds per 299 px image: {timing}", flush=True)
    kid, inception = kid_and_is()
    return {"feature_max_relative_difference": features, "kid": kid, "inception_score": inception,
            "fid_folders": {"images_per_folder": images, "ours": mine, "pytorch_fid": theirs,
                            "relative_difference": abs(mine - theirs) / theirs},
            "clean_resize_equal_to_clean_fid": clean_equal, "seconds_per_image": timing,
            "threads": torch.get_num_threads()}


def feature_seconds(networks: dict[str, Callable[[torch.Tensor], Any]], batch: torch.Tensor) -> dict[str, float]:
    """Seconds per image of each feature network on ``batch`` (Tensor[B, 3, H, W] float32), best of 3, in fp32
    and under bf16 autocast: every network in both, so that no side is timed in a faster dtype than the other.
    Keys ``NAME_fp32`` and ``NAME_bf16``."""
    timing = {}
    for precision in ("fp32", "bf16"):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            for name, network in networks.items():
                timing[f"{name}_{precision}"] = best_seconds(lambda n=network: n(batch)) / len(batch)
    return timing


def kid_and_is() -> tuple[dict, dict]:
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    from visionzoo.metrics import inception_score, kernel_inception_distance

    generator = torch.Generator().manual_seed(2)
    real = torch.randn(1000, 2048, generator=generator, dtype=torch.float64)
    fake = torch.randn(1000, 2048, generator=generator, dtype=torch.float64) + 0.05
    reference = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=20, subset_size=500)
    reference.real_features, reference.fake_features = [real], [fake]
    torch.manual_seed(0)
    theirs = [float(v) for v in reference.compute()]
    torch.manual_seed(0)
    kid = {"ours": list(kernel_inception_distance(real, fake, subsets=20, subset_size=500)), "torchmetrics": theirs}
    logits = torch.randn(1000, 1008, generator=generator, dtype=torch.float64) * 3
    reference = InceptionScore(feature=torch.nn.Identity(), splits=10)
    reference.features = [logits]
    torch.manual_seed(0)
    theirs = [float(v) for v in reference.compute()]
    torch.manual_seed(0)
    inception = {"ours": list(inception_score(logits, splits=10)), "torchmetrics": theirs}
    print(f"KID (mean, std): {kid}\nIS (mean, std): {inception}", flush=True)
    return kid, inception


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=at_least_two_images, default=64, help="images per folder for the FID comparison")
    parser.add_argument("--out", type=output_file, default=RESULTS / "fid.json",
                        help="the JSON result (default: %(default)s)")
    args = parser.parse_args()
    existing_results(parser, args.out, __file__)  # not another script's results
    result = run(args.images)
    write_json(args.out, {**machine(), **result}, __file__)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
