"""The memory a VQGAN's reconstruction takes per image: what `visionzoo predict`'s default batch for reconstructions
(``RECONSTRUCTION_BYTES_PER_PIXEL``) is sized from.

Each row runs in a process of its own: it builds the model with seeded random weights (nothing is downloaded), then
reconstructs a batch of random images through the task's ``predict`` on the CPU in fp32, one thread, and reports the
peak resident memory (Linux's VmHWM, reset just before) above the resident memory before the batch.

    python benchmarks/reconstruction_memory.py                     # vqgan_imagenet_f16_16384, the README's figure
    python benchmarks/reconstruction_memory.py --rows 2x128 4x128
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from pathlib import Path

from arguments import existing_results, output_file, write_json
from timing import machine

RESULTS = Path(__file__).parent / "results"


def status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(model_name: str, batch: int, side: int) -> int:
    """The peak resident bytes that reconstructing ``batch`` random ``side`` px images adds (this process)."""
    import torch

    from visionzoo.models import create_model
    from visionzoo.train.reconstruction import ReconstructionTask

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(model_name).eval()
    images = torch.rand(batch, model.in_chans, side, side)
    before = status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM back to the current resident memory
    ReconstructionTask().predict(model, images, contextlib.nullcontext)
    return status_bytes("VmHWM") - before


def measure_in_child(model_name: str, batch: int, side: int) -> int:
    """:func:`measure` in a fresh process, whose peak memory no earlier row has raised."""
    done = subprocess.run([sys.executable, __file__, "--model", model_name, "--child", str(batch), str(side)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def row(text: str) -> tuple[int, int]:
    batch, _, side = text.partition("x")
    if not (batch.isdigit() and side.isdigit() and int(batch) > 0 and int(side) > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give BATCHxSIDE, two positive whole numbers, e.g. 4x256")
    return int(batch), int(side)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vqgan_imagenet_f16_16384")
    parser.add_argument("--rows", nargs="+", type=row, default=[(1, 256), (2, 256), (4, 256), (8, 256), (4, 128)],
                        metavar="BATCHxSIDE", help="batches and image sides, one process each (default 1x256 2x256 "
                                                   "4x256 8x256 4x128)")
    parser.add_argument("--out", type=output_file, default=RESULTS / "reconstruction_memory.json",
                        help="results JSON (default: %(default)s)")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(measure(args.model, *args.child))
        return
    existing_results(parser, args.out, __file__)
    rows = []
    print(f"{args.model}, fp32 on the CPU, one thread: peak resident memory added by a reconstruction")
    print(f"{'batch':>5} {'side':>5} {'added MiB':>10} {'MiB/image':>10} {'KiB/pixel':>10}")
    for batch, side in args.rows:
        added = measure_in_child(args.model, batch, side)
        print(f"{batch:>5} {side:>5} {added / 2**20:>10.0f} {added / batch / 2**20:>10.0f} "
              f"{added / batch / side ** 2 / 2**10:>10.2f}")
        rows.append({"model": args.model, "batch": batch, "side": side, "added_bytes": added,
                     "mib_per_image": added / batch / 2**20, "kib_per_pixel": added / batch / side ** 2 / 2**10})
    write_json(args.out, {"measurements": rows, **machine(), "threads": 1}, __file__)  # each row measured on one thread


if __name__ == "__main__":
    main()
