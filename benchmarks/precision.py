"""bf16 autocast against fp32: end-to-end training throughput of the engine on this machine.

Each configuration trains the same model on the same data for the same steps through
``visionzoo.train`` (data loading included; the median step after the first), once in fp32 and once with bf16
autocast, alternating, best of ``--repeats``. A first row times one 1024×1024 matmul in each dtype,
which says whether the CPU has native bf16 (AMX / AVX512-BF16) or emulates it.

    python benchmarks/precision.py --steps 12 --repeats 3      # the README's table
    python benchmarks/precision.py --steps 4 --repeats 1 --only resnet18-digits32 --out /tmp/precision_trial.json
    python benchmarks/precision.py --steps 40 --repeats 1 --bf16-only --only convnext-digits32 --only vit_vqgan-shapes64 --out benchmarks/results/precision_bf16_glibc_default.json
    python benchmarks/precision.py --steps 40 --repeats 1 --bf16-only --only convnext-digits32 --only vit_vqgan-shapes64 --keep-freed-memory --out benchmarks/results/precision_bf16_keep_freed_memory.json

``--keep-freed-memory`` first makes glibc keep freed blocks for reuse, as the ``visionzoo`` command does for its process
(``visionzoo.utils.keep_freed_memory``): the training then maps its activations once, not at every step. Its effect
shows in a process that trains in bf16 alone (``--bf16-only``), as a ``visionzoo train`` does: alternating with fp32,
whose larger activations raise glibc's own (dynamic) thresholds, hides it.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from arguments import (
    AppendOnce,
    at_least_two,
    existing_results,
    merge_rows,
    output_file,
    positive_int,
    write_json,
)
from timing import machine
from visionzoo.train import TrainConfig, fit
from visionzoo.train.run import build_setup
from visionzoo.utils import keep_freed_memory, native_bf16

RESULTS = Path(__file__).parent / "results"
MATMUL = "matmul 1024² (GFLOP/s)"
CONFIGS = {
    # name: (model, data, image size, model arguments, batch size)
    "resnet18-digits32": ("resnet18", "digits", 32, {}, 64),
    # the tour's backbones (README's Digits rows) and a tokenizer of issue 12
    "vit-digits32": ("vit_tiny_patch8_32", "digits", 32, {"global_pool": "avg"}, 64),
    "swin-digits32": ("swin_tiny_patch2_window4_32", "digits", 32, {}, 64),
    "convnext-digits32": ("convnext_atto_32", "digits", 32, {}, 64),
    "vit_vqgan-shapes64": ("vit_vqgan_64", "shapes", 64, {}, 32),
    # the convolutional networks on larger images, where each convolution has more work per call
    "resnet18-shapes128": ("resnet18", "shapes", 128, {}, 32),
    "convnext_atto-shapes128": ("convnext_atto", "shapes", 128, {}, 32),
}


def matmul_gflops(dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def measure(name: str, precision: str, steps: int, seed: int = 0, keep_freed: bool = False) -> dict:
    if keep_freed:  # process-wide: here, with the measuring, not where a refused run or the README check would set it
        keep_freed_memory()
    model, data, size, model_args, batch = CONFIGS[name]
    setup = build_setup(model, data, size, model_args)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(out=str(Path(tmp) / "run"), max_steps=steps, batch_size=batch, precision=precision,
                             seed=seed, progress=False, checkpoint_every=10**9)
        fit(setup.task, setup.model, setup.splits["train"], None, config)
        rates = [json.loads(line)["samples_per_s"] for line in (Path(tmp) / "run" / "metrics.jsonl").open()]
    # The first step pays one-off costs (allocator, kernel selection): the median of the others.
    return {"samples_per_s": statistics.median(rates[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=at_least_two, default=5, help="training steps per measurement (the first is not timed)")
    parser.add_argument("--repeats", type=positive_int, default=1)
    parser.add_argument("--only", action=AppendOnce, choices=sorted(CONFIGS))
    parser.add_argument("--bf16-only", action="store_true", help="train in bf16 autocast only, as --precision auto does here")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="keep glibc's freed blocks for reuse first, as the visionzoo command does")
    parser.add_argument("--out", type=output_file, default=RESULTS / "precision.json",
                        help="results JSON; its rows of configs not measured now are kept (default: %(default)s)")
    args = parser.parse_args()
    earlier = existing_results(parser, args.out, __file__)
    longer = [(row["config"], row["steps"]) for row in earlier.get("rows") or [] if isinstance(row, dict)
              and row.get("config") in (args.only or CONFIGS) and isinstance(row.get("steps"), int)
              and row["steps"] > args.steps]
    if longer:  # a trial of fewer steps is not the same measurement
        parser.error(f"--steps {args.steps} would replace the {', '.join(name for name, _ in longer)} row of --out "
                     f"{args.out} measured with {max(steps for _, steps in longer)} steps; give another --out for the "
                     "trial")
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.only or CONFIGS:
        best = {"fp32": None, "bf16": None}
        for _ in range(args.repeats):
            for precision in ("bf16",) if args.bf16_only else ("fp32", "bf16"):
                run = measure(name, precision, args.steps, keep_freed=args.keep_freed_memory)
                if best[precision] is None or run["samples_per_s"] > best[precision]["samples_per_s"]:
                    best[precision] = run
        rows.append({"config": name, "steps": args.steps, "keep_freed_memory": args.keep_freed_memory,
                     **{f"{p}_{k}": v for p, r in best.items() if r is not None for k, v in r.items()},
                     "speedup": None if args.bf16_only else
                     best["bf16"]["samples_per_s"] / best["fp32"]["samples_per_s"], **machine()})
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    rows.insert(0, {"config": MATMUL, "fp32_samples_per_s": fp32, "bf16_samples_per_s": bf16,
                    "speedup": bf16 / fp32, **machine()})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16(torch.device('cpu'))}; "
          f"{args.steps} training steps, best of {args.repeats}\n")
    print("| config | fp32 samples/s | bf16 autocast samples/s | bf16 / fp32 |")
    print("|---|---:|---:|---:|")
    for row in rows:
        fp32_rate, speedup = row.get("fp32_samples_per_s"), row["speedup"]
        print(f"| {row['config']} | {'' if fp32_rate is None else f'{fp32_rate:.1f}'} | {row['bf16_samples_per_s']:.1f} | "
              f"{'' if speedup is None else f'{speedup:.2f}x'} |")
    rows = merge_rows(earlier.get("rows"), rows, "config", [MATMUL, *CONFIGS])
    write_json(args.out, {"rows": rows}, __file__)


if __name__ == "__main__":
    main()
