"""HIPT's hierarchical forward over one large region: seconds and peak memory of ``hipt_4k`` on a 4096² image.

``hipt_4k`` (ViT-256 over 256 px tiles, ``--tile-batch-size`` at a time, then ViT-4K over the 16×16 grid of their
[CLS] tokens) reads one seeded random region of ``--side`` pixels (values in [-1, 1], HIPT's input range) under
``torch.inference_mode``, in fp32 and under bf16 autocast (``--precision``); best of ``--repeats`` after one
untimed call. Each precision runs in a fresh process of its own, so that its peak resident memory (``ru_maxrss``)
is its own: the figure counts everything the process holds (Python, torch, the model and the region itself), and
the resident memory before the first forward is reported beside it. The weights are random: the time and memory
of a forward do not depend on them.

    python benchmarks/hipt_region.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from arguments import existing_results, output_file, positive_int, write_json
from timing import best_seconds, machine
from visionzoo.models import create_model

RESULTS = Path(__file__).parent / "results"
TILE = 256


def region_side(text: str) -> int:
    side = positive_int(text)
    if side % TILE:
        raise argparse.ArgumentTypeError(f"{text} is not a multiple of HIPT's {TILE} px tiles")
    return side


def resident_mib() -> float:
    """This process's peak resident memory so far, MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(precision: str, side: int, tile_batch_size: int, repeats: int) -> dict[str, float]:
    """Seconds of one forward over a ``side``² region (best of ``repeats``) and this process's peak memory."""
    model = create_model("hipt_4k", tile_batch_size=tile_batch_size).eval()
    region = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    before = resident_mib()
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")

    def forward() -> torch.Tensor:
        with torch.inference_mode(), autocast:
            return model(region)

    embedding = forward()
    seconds = best_seconds(forward, repeats)
    return {"seconds": seconds, "tiles_per_s": (side // TILE) ** 2 / seconds, "peak_resident_mib": resident_mib(),
            "resident_before_forward_mib": before, "embedding": list(embedding.shape)}


def in_fresh_process(precision: str, side: int, tile_batch_size: int, repeats: int) -> dict[str, float]:
    """:func:`measure` in a new Python process (its output's last line is the row, as JSON)."""
    command = [sys.executable, __file__, "--one", precision, "--side", str(side),
               "--tile-batch-size", str(tile_batch_size), "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"the {precision} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=region_side, default=4096, help="the region's side in pixels (default 4096)")
    parser.add_argument("--tile-batch-size", type=positive_int, default=16,
                        help="256 px tiles through ViT-256 at once (default 16)")
    parser.add_argument("--repeats", type=positive_int, default=2, help="best of this many (default 2)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    parser.add_argument("--one", choices=("fp32", "bf16"), help=argparse.SUPPRESS)  # the child process's run
    parser.add_argument("--out", type=output_file, default=RESULTS / "hipt_region.json")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.side, args.tile_batch_size, args.repeats)))
        return
    results = existing_results(parser, args.out, __file__)
    for precision in ("fp32", "bf16"):
        if args.precision in (precision, "both"):
            results[precision] = in_fresh_process(precision, args.side, args.tile_batch_size, args.repeats)
            print(precision, results[precision], flush=True)
    results.update(side=args.side, tile_batch_size=args.tile_batch_size, repeats=args.repeats, machine=machine())
    write_json(args.out, results, __file__)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
