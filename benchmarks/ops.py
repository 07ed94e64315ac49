"""visionzoo.ops against torchvision.ops, side by side in one run on this machine.

- ``nms`` at 5,000 and 20,000 boxes on three kinds of random sets (seeded; scores uniform, distinct):
  ``uniform``: torchvision's test boxes, corner and size uniform in [0, 500) (about 1 in 4 kept);
  ``spread``: centres over a 1000x1000 image, sides log-uniform in [10, 300] (2 in 3 kept);
  ``clustered``: jittered copies of 20 objects, like a detector's raw output (under 1 in 100 kept);
- ``batched_nms`` with 80 categories on ``spread`` boxes;
- ``roi_align`` of 1,024 RoIs on a 2x256x100x100 map (sides uniform in [4, 64] cells, centres anywhere
  on the map), forward, with the adaptive sampling grid (aligned=False) and with Faster R-CNN's
  sampling_ratio=2 (aligned=True), and forward + backward; ``roi_pool`` on the same RoIs.

Each timing is the best of ``--repeats``; "equal" checks the results on that run (the kept indices
for NMS, max |difference| <= 1e-5 for the RoI ops). IoU threshold 0.5.

    python benchmarks/ops.py                 # the README's table, default threads
    python benchmarks/ops.py --quick --out /tmp/ops_quick.json   # fewer repeats
    python benchmarks/ops.py --one-thread    # one thread everywhere, CPU seconds, into results/ops_one_thread.json

torchvision's CPU NMS and RoI kernels are single-threaded loops; visionzoo's are tensor operations
that use torch's thread pool. On a loaded shared machine a thread pool waits for its slowest
thread, so wall-clock ratios move with the load; ``--one-thread`` measures CPU time on one thread
for both, which the load barely changes.
"""

from __future__ import annotations

import os
import sys

ONE_THREAD = "--one-thread" in sys.argv
if ONE_THREAD:  # before torch starts its thread pool
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision import ops as tv  # noqa: E402

from arguments import existing_results, output_file, positive_int, write_json  # noqa: E402
from timing import machine  # noqa: E402
from visionzoo import ops  # noqa: E402

CLOCK = time.process_time if ONE_THREAD else time.perf_counter


def uniform_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    boxes = torch.rand(n, 4, generator=gen) * 500
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def spread_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    centres = torch.rand(n, 2, generator=gen) * 1000
    sizes = torch.exp(torch.empty(n, 2).uniform_(2.3, 5.7, generator=gen))
    return torch.cat([centres - sizes / 2, centres + sizes / 2], 1)


def clustered_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    objects = torch.rand(20, 2, generator=gen) * 800
    object_sizes = torch.rand(20, 2, generator=gen) * 150 + 30
    which = torch.randint(0, 20, (n,), generator=gen)
    centres = objects[which] + torch.randn(n, 2, generator=gen) * 10
    sizes = object_sizes[which] * (1 + 0.1 * torch.randn(n, 2, generator=gen))
    return torch.cat([centres - sizes / 2, centres + sizes / 2], 1)


BOXES = {"uniform": uniform_boxes, "spread": spread_boxes, "clustered": clustered_boxes}


def rois(k: int, gen: torch.Generator, n_images: int = 2, size: int = 100) -> torch.Tensor:
    centres = torch.rand(k, 2, generator=gen) * size
    sides = torch.empty(k, 2).uniform_(4, 64, generator=gen)
    boxes = torch.cat([centres - sides / 2, centres + sides / 2], 1)
    batch = torch.randint(0, n_images, (k, 1), generator=gen).float()
    return torch.cat([batch, boxes], 1)


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = CLOCK()
        out = fn()
        times.append(CLOCK() - start)
    return min(times) * 1e3, out


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= 1e-5) if a.numel() else a.shape == b.shape


def run(repeats: int) -> list[dict]:
    rows = []

    def add(op: str, size: str, theirs: Callable, ours: Callable, same: Callable[[object, object], bool]):
        ours()  # warm-up (first-call costs on both sides)
        theirs()
        t_ref, ref = best_of(theirs, repeats)
        t_ours, got = best_of(ours, repeats)
        rows.append(
            {"op": op, "size": size, "torchvision_ms": t_ref, "visionzoo_ms": t_ours,
             "ratio": t_ours / t_ref, "equal": bool(same(got, ref))}
        )
        r = rows[-1]
        print(f"{op:28s} {size:28s} {t_ref:9.1f} {t_ours:9.1f} {r['ratio']:6.2f} {r['equal']}", flush=True)

    for kind, make in BOXES.items():
        for n in (5000, 20000):
            gen = torch.Generator().manual_seed(n)
            boxes, scores = make(n, gen), torch.rand(n, generator=gen)
            add(f"nms ({kind})", f"{n:,} boxes", lambda b=boxes, s=scores: tv.nms(b, s, 0.5),
                lambda b=boxes, s=scores: ops.nms(b, s, 0.5), torch.equal)
    for n in (5000, 20000):
        gen = torch.Generator().manual_seed(n + 1)
        boxes, scores = spread_boxes(n, gen), torch.rand(n, generator=gen)
        idxs = torch.randint(0, 80, (n,), generator=gen)
        add("batched_nms (spread)", f"{n:,} boxes, 80 classes",
            lambda b=boxes, s=scores, i=idxs: tv.batched_nms(b, s, i, 0.5),
            lambda b=boxes, s=scores, i=idxs: ops.batched_nms(b, s, i, 0.5), torch.equal)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 256, 100, 100, generator=gen)
    r = rois(1024, gen)
    size = "1,024 RoIs, 2x256x100x100"
    for label, ratio, aligned in [("adaptive grid", -1, False), ("sampling_ratio=2, aligned", 2, True)]:
        add(f"roi_align ({label})", size, lambda s=ratio, a=aligned: tv.roi_align(x, r, 7, 1.0, s, a),
            lambda s=ratio, a=aligned: ops.roi_align(x, r, 7, 1.0, s, a), close)
    grad = torch.randn(1024, 256, 7, 7, generator=gen)

    def forward_backward(fn: Callable) -> Callable[[], torch.Tensor]:
        def step() -> torch.Tensor:
            leaf = x.clone().requires_grad_()
            (fn(leaf, r, 7, 1.0, 2, True) * grad).sum().backward()
            return leaf.grad

        return step

    add("roi_align fwd+bwd (sr=2)", size, forward_backward(tv.roi_align), forward_backward(ops.roi_align), close)
    add("roi_pool", size, lambda: tv.roi_pool(x, r, 7, 1.0), lambda: ops.roi_pool(x, r, 7, 1.0), close)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)  # sys.argv is read before parsing too
    parser.add_argument("--repeats", type=positive_int, help="best of this many runs (default 5, --quick 2)")
    parser.add_argument("--quick", action="store_true", help="2 repeats unless --repeats is given")
    parser.add_argument("--one-thread", action="store_true", help="one thread everywhere, CPU time")
    parser.add_argument("--out", type=output_file, help="results JSON (default: %(default)s)",
                        default=Path(__file__).parent / "results" / f"ops{'_one_thread' if ONE_THREAD else ''}.json")
    args = parser.parse_args()
    earlier = existing_results(parser, args.out, __file__)
    meta = earlier.get("meta")  # the README's file predates "quick": a full run
    if args.quick and earlier and not (isinstance(meta, dict) and meta.get("quick") is True):
        parser.error(f"--quick would replace the full run of --out {args.out}; give another --out for the trial")
    if args.one_thread:
        torch.set_num_threads(1)
    repeats = args.repeats or (2 if args.quick else 5)
    print(f"{'op':28s} {'size':28s} {'tv ms':>9s} {'ours ms':>9s} {'ratio':>6s} equal")
    rows = run(repeats)
    clock = "CPU time, one thread" if args.one_thread else f"wall clock, {torch.get_num_threads()} threads"
    print(f"\n| op | size | torchvision {torchvision.__version__} ms | visionzoo ms | ratio | equal |")
    print("|---|---|---:|---:|---:|---|")
    for row in rows:
        print(f"| {row['op']} | {row['size']} | {row['torchvision_ms']:.1f} | {row['visionzoo_ms']:.1f} | "
              f"{row['ratio']:.2f} | {'yes' if row['equal'] else 'NO'} |")
    print(f"\n{clock}, best of {repeats}; ratio = visionzoo / torchvision (below 1: faster).")
    meta = {"clock": clock, "repeats": repeats, "quick": args.quick, "torchvision": torchvision.__version__, **machine()}
    write_json(args.out, {"meta": meta, "rows": rows}, __file__)


if __name__ == "__main__":
    main()
