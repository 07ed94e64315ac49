"""Our VQGAN beside taming-transformers' modules: the same weights, the same images, outputs compared and reconstruction speed.

Both models are taming's ImageNet f=16 VQGAN architecture (``vqgan_imagenet_f16_16384``: 256 px, 16×16 codes, attention
at the 16-px level), with seeded random weights (nothing is downloaded): taming's ``Encoder``, ``Decoder`` and
``VectorQuantizer2`` with the 1×1 convs of its ``VQModel``, and ours built from that state dict through our checkpoint
filter. A reconstruction is encode, nearest code and decode; both run it in turn (interleaved), best of ``--repeats``,
in fp32 and under bf16 autocast (``--precision``). The codes of the two agree exactly in fp32 and the images to float
rounding, reported as the share of equal codes and the largest pixel difference.

    python benchmarks/vqgan_taming.py --batch 4 --repeats 5
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

from arguments import existing_results, output_file, positive_int, write_json
from timing import best_seconds, machine
from visionzoo.models import create_model

RESULTS = Path(__file__).parent / "results"
NAME = "vqgan_imagenet_f16_16384"
DDCONFIG = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 1, 2, 2, 4],
                num_res_blocks=2, attn_resolutions=[16], dropout=0.0)


class TamingVQGAN(nn.Module):
    """taming's VQModel without its Lightning shell: images in [-1, 1] → (reconstruction, code indices)."""

    def __init__(self, num_codes: int = 16384, embed_dim: int = 256):
        super().__init__()
        self.encoder, self.decoder = Encoder(**DDCONFIG), Decoder(**DDCONFIG)
        self.quantize = VectorQuantizer2(num_codes, embed_dim, beta=0.25, legacy=False)
        self.quant_conv = nn.Conv2d(DDCONFIG["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, DDCONFIG["z_channels"], 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quant, _, (_, _, indices) = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(quant)), indices


def the_pair() -> tuple[TamingVQGAN, nn.Module]:
    """taming's model with seeded random weights (a codebook spread as trained codes are) and ours loaded from it."""
    torch.manual_seed(0)
    theirs = TamingVQGAN().eval()
    with torch.no_grad():
        theirs.quantize.embedding.weight.normal_()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "last.ckpt"
        torch.save({"state_dict": theirs.state_dict()}, path)
        ours = create_model(NAME, checkpoint=path).eval()
    return theirs, ours


def agreement(theirs: TamingVQGAN, ours: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Share of equal codes and the largest difference of the [0, 1] images, fp32."""
    with torch.inference_mode():
        their_images, their_codes = theirs(images * 2 - 1)
        our_images, our_codes, _, _ = ours(images)
    return {"equal_codes": (our_codes.flatten() == their_codes).float().mean().item(),
            "max_pixel_difference": (our_images - ((their_images + 1) / 2).clamp(0, 1)).abs().max().item()}


def speed(theirs: TamingVQGAN, ours: nn.Module, images: torch.Tensor, repeats: int, bf16: bool) -> dict[str, float]:
    """Images/s of a whole reconstruction, the two interleaved, best of ``repeats``."""
    runs = {"taming": lambda: theirs(images * 2 - 1), "visionzoo": lambda: ours(images)}
    best = {key: float("inf") for key in runs}

    def timed(run):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            run()

    for run in runs.values():
        timed(run)  # warm-up
    for _ in range(repeats):
        for key, run in runs.items():
            best[key] = min(best[key], best_seconds(lambda r=run: timed(r), 1))
    rates = {key: len(images) / seconds for key, seconds in best.items()}
    return {**rates, "ratio": rates["visionzoo"] / rates["taming"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=positive_int, default=4, help="images per reconstruction (default 4)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="best of this many (default 5)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    parser.add_argument("--out", type=output_file, default=RESULTS / "vqgan_taming.json")
    args = parser.parse_args()
    results = existing_results(parser, args.out, __file__)
    theirs, ours = the_pair()
    images = torch.rand(args.batch, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    results["agreement_fp32"] = agreement(theirs, ours, images)
    print("fp32 agreement:", results["agreement_fp32"], flush=True)
    for precision in ("fp32", "bf16"):
        if args.precision in (precision, "both"):
            results[f"speed_{precision}"] = speed(theirs, ours, images, args.repeats, precision == "bf16")
            print(precision, "img/s:", results[f"speed_{precision}"], flush=True)
    results.update(batch=args.batch, repeats=args.repeats, model=NAME, machine=machine())
    write_json(args.out, results, __file__)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
