"""visionzoo's Selective Search beside OpenCV-contrib's, on the same Shapes val images (128 x 128).

For each method and image: the proposals (capped at ``--max-proposals``, 2,000 by default) against
the ground-truth boxes (``Shapes("val")[i][1]["boxes"]``, xyxy, x2/y2 exclusive):

- recall at IoU 0.5 and 0.7: the fraction of all ground-truth boxes (pooled over the images) whose
  best IoU with a proposal reaches the threshold;
- MABO: per image, the mean over its ground-truth boxes of the best IoU; then the mean over images;
  also MABO over each method's first ``--top`` proposals only (100 by default), which compares
  the rankings at an equal budget (OpenCV's fast mode returns about 100 boxes at this size);
- proposals per image, and seconds per image (CPU time of the process and wall clock).

Methods (all but ``ours-single`` by default): ``ours-single``, ``ours-fast``, ``ours-quality``
(``visionzoo.detection.selective_search`` on the float image, default arguments) and ``opencv-fast``,
``opencv-quality`` (``cv2.ximgproc.segmentation.createSelectiveSearchSegmentation`` with its default
parameters on the image as BGR uint8; its ``x, y, w, h`` become ``x, y, x + w, y + h``). Each
method runs once on the first image before its timing starts.

    python benchmarks/selective_search.py                     # the README's table, one thread
    python benchmarks/selective_search.py --images 20 --methods ours-fast,opencv-fast --out /tmp/ss.json

A run writes its methods' rows into ``--out`` and keeps the file's rows of the other methods; every row says the
``--images``, ``--max-proposals``, ``--top`` and ``--threads`` it was measured with.
"""

from __future__ import annotations

import os
import sys


def _threads() -> str:
    """--threads as given, the last one where it is given more than once as argparse reads it (1 by default);
    argparse refuses it later when it is not a positive integer."""
    given = "1"
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            given = sys.argv[i + 1]
        elif arg.startswith("--threads="):
            given = arg.split("=", 1)[1]
    return given


_THREADS = _threads()
if _THREADS.isdecimal() and int(_THREADS) > 0:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # before the pools start
        os.environ[_var] = str(int(_THREADS))

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from arguments import existing_results, merge_rows, output_file, positive_int, write_json  # noqa: E402
from timing import machine  # noqa: E402
from visionzoo.data import Shapes  # noqa: E402
from visionzoo.detection import selective_search  # noqa: E402
from visionzoo.ops import box_iou  # noqa: E402

METHODS = ("ours-fast", "ours-quality", "opencv-fast", "opencv-quality")
CHOICES = ("ours-single", "ours-fast", "ours-quality", "opencv-fast", "opencv-quality")
SETTINGS = ("images", "max_proposals", "top", "threads")  # what each row was measured with


def opencv_proposals(image: torch.Tensor, mode: str, cap: int) -> torch.Tensor:
    """OpenCV's Selective Search on ``image`` float Tensor[3, H, W]: float32 Tensor[N, 4] xyxy."""
    rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(rgb[:, :, ::-1]))
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    boxes = torch.from_numpy(search.process()[:cap].astype(np.float32)).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def proposer(method: str, cap: int) -> Callable[[torch.Tensor], torch.Tensor]:
    source, mode = method.split("-")
    if source == "ours":
        return lambda image: selective_search(image, mode=mode, max_proposals=cap)
    return lambda image: opencv_proposals(image, mode, cap)


def evaluate(method: str, samples: list, cap: int, top: int) -> dict:
    propose = proposer(method, cap)
    propose(samples[0][0])  # warm-up: imports and first-call costs
    best, mabo, mabo_top, counts, cpu, wall = [], [], [], [], 0.0, 0.0
    for image, boxes in samples:
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        proposals = propose(image)
        cpu += time.process_time() - start_cpu
        wall += time.perf_counter() - start_wall
        overlaps = box_iou(boxes, proposals) if len(proposals) else torch.zeros(len(boxes), 1)
        ious = overlaps.amax(1)
        best.append(ious)
        mabo.append(ious.mean().item())
        mabo_top.append(overlaps[:, :top].amax(1).mean().item())
        counts.append(len(proposals))
    best = torch.cat(best)
    n = len(samples)
    return {
        "method": method,
        "recall@0.5": (best >= 0.5).float().mean().item(),
        "recall@0.7": (best >= 0.7).float().mean().item(),
        "mabo": float(np.mean(mabo)),
        f"mabo_first_{top}": float(np.mean(mabo_top)),
        "proposals_per_image": float(np.mean(counts)),
        "cpu_s_per_image": cpu / n,
        "wall_s_per_image": wall / n,
        "ground_truth_boxes": len(best),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)  # sys.argv is read before parsing too
    parser.add_argument("--images", type=positive_int, default=200, help="the first N Shapes val images")
    parser.add_argument("--threads", type=positive_int, default=1, help="threads for torch, OpenCV and BLAS")
    parser.add_argument("--max-proposals", type=positive_int, default=2000)
    parser.add_argument("--top", type=positive_int, default=100, help="MABO over the first TOP proposals too")
    parser.add_argument("--methods", action="append",
                        help=f"comma-separated, repeatable, from {', '.join(CHOICES)} (default {','.join(METHODS)})")
    parser.add_argument("--out", type=output_file, default=Path(__file__).parent / "results" / "selective_search.json",
                        help="results JSON; its rows of the methods not measured now are kept (default: %(default)s)")
    args = parser.parse_args()
    methods = list(dict.fromkeys(m for text in args.methods or [",".join(METHODS)] for m in text.split(",")))
    unknown = sorted(set(methods) - set(CHOICES))
    if unknown:
        parser.error(f"unknown --methods {', '.join(unknown)}; choose from {', '.join(CHOICES)}")
    earlier = existing_results(parser, args.out, __file__)
    dataset = Shapes("val")
    if args.images > len(dataset):
        parser.error(f"--images {args.images}: the Shapes val split has {len(dataset)} images")
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    samples = [(image, target["boxes"]) for image, target in (dataset[i] for i in range(args.images))]
    top = f"mabo_first_{args.top}"
    print(f"{'method':16s} {'R@0.5':>7s} {'R@0.7':>7s} {'MABO':>7s} {'MABO@' + str(args.top):>9s} {'props':>7s} "
          f"{'cpu s':>7s} {'wall s':>7s}")
    rows = []
    for method in methods:
        row = evaluate(method, samples, args.max_proposals, args.top)
        rows.append({**row, **{name: getattr(args, name) for name in SETTINGS}})
        print(f"{method:16s} {row['recall@0.5']:7.4f} {row['recall@0.7']:7.4f} {row['mabo']:7.4f} {row[top]:9.4f} "
              f"{row['proposals_per_image']:7.1f} {row['cpu_s_per_image']:7.3f} {row['wall_s_per_image']:7.3f}",
              flush=True)
    boxes = sum(len(b) for _, b in samples)
    print(f"\n| method | recall@0.5 | recall@0.7 | MABO | MABO, first {args.top} | proposals / image | "
          "CPU s / image | wall s / image |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['method']} | {row['recall@0.5']:.4f} | {row['recall@0.7']:.4f} | {row['mabo']:.4f} | "
              f"{row[top]:.4f} | {row['proposals_per_image']:.0f} | {row['cpu_s_per_image']:.3f} | "
              f"{row['wall_s_per_image']:.3f} |")
    print(f"\n{args.images} Shapes val images, {boxes} ground-truth boxes, at most {args.max_proposals} "
          f"proposals, {args.threads} thread(s); OpenCV {cv2.__version__}.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"images": args.images, "ground_truth_boxes": boxes, "max_proposals": args.max_proposals, "top": args.top,
            "opencv": cv2.__version__, **machine(), "threads": args.threads}
    # the file's rows of methods not measured now are kept, with the settings of the run that measured them
    earlier_meta = earlier.get("meta") if isinstance(earlier.get("meta"), dict) else {}
    kept = [{**{name: earlier_meta[name] for name in SETTINGS if name in earlier_meta}, **row}
            for row in earlier.get("rows") if isinstance(row, dict)] if isinstance(earlier.get("rows"), list) else []
    rows = merge_rows(kept, rows, "method", CHOICES)
    write_json(args.out, {"meta": meta, "rows": rows}, __file__)


if __name__ == "__main__":
    main()
