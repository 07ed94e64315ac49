"""visionzoo.metrics against the references, side by side in one run on this machine.

- ``coco_evaluate`` from JSON files to the 12 numbers, against pycocotools and faster-coco-eval on
  the same files: 5,000 images / 100k detections, generated (seeded) into a temporary folder;
- ``coco_evaluate(..., iou_type="segm")`` the same way, at the same sizes, with an instance mask (480x640,
  compressed RLE, written with pycocotools' ``mask.encode``) for each ground truth and each result;
- ``MeanAveragePrecision`` against torchmetrics' (``backend="faster_coco_eval"``) on the same
  per-image tensors (update + compute);
- ``frechet_distance`` against pytorch-fid's ``calculate_frechet_distance`` at d=2048;
- ``FeatureStatistics`` against pytorch-fid's ``np.mean`` + ``np.cov`` of the features.

Each timing is the best of ``--repeats`` (``--slow-repeats`` for pycocotools and pytorch-fid, which
take tens of seconds); "equal" compares the numbers of the two sides.

    python benchmarks/metrics.py                    # the README's table
    python benchmarks/metrics.py --quick --out /tmp/metrics_quick.json   # smaller sizes, one repeat
    python benchmarks/metrics.py --one-thread       # every library on one thread, CPU seconds

On a shared machine wall-clock ratios move with the load (the libraries' thread pools suffer from
it differently); ``--one-thread`` measures CPU time with one thread everywhere, which the load
barely changes.
"""

from __future__ import annotations

import os
import sys

if "--one-thread" in sys.argv:  # before NumPy and torch start their thread pools
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from arguments import AppendOnce, existing_results, merge_rows, output_file, positive_int, write_json  # noqa: E402
from timing import best_of  # noqa: E402
from visionzoo.metrics import FeatureStatistics, MeanAveragePrecision, coco_evaluate, frechet_distance  # noqa: E402
from visionzoo.metrics.coco import SUMMARY_NAMES  # noqa: E402

CLOCK = time.process_time if "--one-thread" in sys.argv else time.perf_counter


def make_coco(n_images: int, n_dets: int, seed: int = 0, n_cats: int = 80) -> tuple[dict, list]:
    """A COCO-like dataset: ~7 objects per image (1% crowd), log-uniform sizes, GT ``area`` below the
    box area as masks are; detections are jittered copies of the ground truth (mostly the right
    class) plus background boxes, unevenly spread so some images have more than 100."""
    rng = np.random.default_rng(seed)
    cat_ids = np.sort(rng.choice(np.arange(1, 91), n_cats, replace=False))
    images = [
        {"id": i, "width": 640, "height": 480, "file_name": f"{i:012d}.jpg"} for i in range(1, n_images + 1)
    ]
    n_gt = rng.poisson(7, n_images)
    n_gt[rng.random(n_images) < 0.05] = 0
    img = np.repeat(np.arange(1, n_images + 1), n_gt)
    g = len(img)
    wh = np.exp(rng.uniform(np.log(4), np.log(400), (g, 2)))
    xy = rng.uniform(0, 1, (g, 2)) * (np.array([640, 480]) - np.minimum(wh, [639, 479]))
    boxes = np.round(np.concatenate([xy, wh], 1), 2)
    cats = cat_ids[rng.integers(0, n_cats, g)]
    area = np.round(boxes[:, 2] * boxes[:, 3] * rng.uniform(0.5, 1.0, g), 2)
    crowd = rng.random(g) < 0.01
    anns = [
        {
            "id": i + 1,
            "image_id": int(img[i]),
            "category_id": int(cats[i]),
            "bbox": boxes[i].tolist(),
            "area": float(area[i]),
            "iscrowd": int(crowd[i]),
        }
        for i in range(g)
    ]
    n_true = min(int(n_dets * 0.4), 2 * g)
    src = rng.integers(0, g, n_true)
    tb = boxes[src] + rng.normal(0, 0.1, (n_true, 4)) * boxes[src][:, [2, 3, 2, 3]]
    tb[:, 2:] = np.abs(tb[:, 2:]) + 1
    tcat = np.where(rng.random(n_true) < 0.9, cats[src], cat_ids[rng.integers(0, n_cats, n_true)])
    n_bg = n_dets - n_true
    weights = rng.gamma(0.5, size=n_images)
    bimg = rng.choice(np.arange(1, n_images + 1), n_bg, p=weights / weights.sum())
    bwh = np.exp(rng.uniform(np.log(4), np.log(400), (n_bg, 2)))
    bb = np.concatenate([rng.uniform(0, 1, (n_bg, 2)) * [600, 440], bwh], 1)
    all_boxes = np.round(np.concatenate([tb, bb]), 2)
    all_img = np.concatenate([img[src], bimg])
    all_cat = np.concatenate([tcat, cat_ids[rng.integers(0, n_cats, n_bg)]])
    scores = np.round(np.concatenate([rng.uniform(0.3, 1, n_true), rng.uniform(0, 0.7, n_bg)]), 4)
    dets = [
        {
            "image_id": int(all_img[i]),
            "category_id": int(all_cat[i]),
            "bbox": all_boxes[i].tolist(),
            "score": float(scores[i]),
        }
        for i in rng.permutation(n_dets)
    ]
    categories = [{"id": int(c), "name": f"class{c}"} for c in cat_ids]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def best_ms(repeats: int, fn: Callable[[], object]) -> tuple[float, object]:
    seconds, out = best_of(fn, repeats, CLOCK)
    return seconds * 1000, out


def quiet(fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()

    return run


def evaluation_rows(gt: dict, dets: list, iou_type: str, what: str, size: str, repeats: int,
                    slow_repeats: int) -> list[dict]:
    """``coco_evaluate(iou_type=...)`` from JSON files of ``gt`` and ``dets`` against faster-coco-eval's (where
    installed) and pycocotools' evaluation of the same files: one row per reference, labelled ``what`` and ``size``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    try:
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        FasterCOCO = None

    with tempfile.TemporaryDirectory() as tmp:
        gt_path, dt_path = Path(tmp) / "gt.json", Path(tmp) / "dets.json"
        gt_path.write_text(json.dumps(gt))
        dt_path.write_text(json.dumps(dets))
        del gt, dets

        def ours():
            result = coco_evaluate(gt_path, dt_path, iou_type=iou_type)
            return np.array([result[n] for n in SUMMARY_NAMES])

        def faster():
            coco = FasterCOCO(str(gt_path))
            ev = COCOeval_faster(coco, coco.loadRes(str(dt_path)), iou_type, print_function=lambda *a, **k: None)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            return np.array(ev.stats[:12])

        def pycoco():
            coco = COCO(str(gt_path))
            ev = COCOeval(coco, coco.loadRes(str(dt_path)), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            return np.array(ev.stats)

        references = [("faster-coco-eval", repeats, faster)] if FasterCOCO is not None else []
        references.append(("pycocotools", slow_repeats, pycoco))
        ours_ms, ours_stats = best_ms(repeats, ours)
        rows = []
        for name, reps, fn in references:
            ref_ms, ref_stats = best_ms(reps, quiet(fn))
            diff = float(np.abs(ref_stats - ours_stats).max())
            rows.append(row(what, size, name, ref_ms, ours_ms, diff <= 1e-9, diff, reps, repeats))
    return rows


def coco_rows(n_images: int, n_dets: int, repeats: int, slow_repeats: int) -> list[dict]:
    gt, dets = make_coco(n_images, n_dets)
    return evaluation_rows(gt, dets, "bbox", "coco_evaluate (12 numbers)",
                           f"{n_images:,} images / {n_dets:,} dets (JSON files)", repeats, slow_repeats)


def ellipse_rles(boxes: np.ndarray, height: int, width: int) -> list[dict]:
    """The ellipses inscribed in ``boxes`` (float[N, 4] x, y, w, h; clipped to the image) as pycocotools'
    compressed RLEs, their counts as str (JSON)."""
    from pycocotools import mask as mask_utils

    if not len(boxes):
        return []
    masks = np.zeros((height, width, len(boxes)), dtype=np.uint8, order="F")
    for i, (x, y, w, h) in enumerate(boxes):
        x0, y0 = max(int(x), 0), max(int(y), 0)
        x1, y1 = min(int(np.ceil(x + w)), width), min(int(np.ceil(y + h)), height)
        rows, cols = np.arange(y0, y1)[:, None] + 0.5, np.arange(x0, x1)[None, :] + 0.5
        masks[y0:y1, x0:x1, i] = ((cols - x - w / 2) / (w / 2)) ** 2 + ((rows - y - h / 2) / (h / 2)) ** 2 <= 1
    rles = mask_utils.encode(masks)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def make_coco_segm(n_images: int, n_dets: int, seed: int = 3, n_cats: int = 20) -> tuple[dict, list]:
    """``make_coco``'s images, boxes, classes and scores with instance masks: each ground truth and each result is
    the ellipse inscribed in its box (a jittered copy of a ground truth's, or a false positive's anywhere), as
    compressed RLE; the ground truth's ``area`` and ``bbox`` are its mask's, as in COCO, and the results carry
    ``segmentation`` and ``score`` only (pycocotools' loadRes takes a result's area from its box when it has one)."""
    from pycocotools import mask as mask_utils

    gt, dets = make_coco(n_images, n_dets, seed=seed, n_cats=n_cats)
    height, width = gt["images"][0]["height"], gt["images"][0]["width"]
    by_image: dict[int, tuple[list, list]] = {img["id"]: ([], []) for img in gt["images"]}
    for a in gt["annotations"]:
        by_image[a["image_id"]][0].append(a)
    for d in dets:
        by_image[d["image_id"]][1].append(d)
    for anns, mine in by_image.values():
        for a, rle in zip(anns, ellipse_rles(np.array([a["bbox"] for a in anns]), height, width)):
            a["segmentation"], a["area"] = rle, float(mask_utils.area(rle))
            a["bbox"] = mask_utils.toBbox(rle).tolist()
        for d, rle in zip(mine, ellipse_rles(np.array([d.pop("bbox") for d in mine]), height, width)):
            d["segmentation"] = rle
    return gt, dets


def segm_rows(n_images: int, n_dets: int, repeats: int, slow_repeats: int) -> list[dict]:
    """coco_evaluate(iou_type="segm") from the JSON files against pycocotools' and (where installed)
    faster-coco-eval's segm evaluation of the same files."""
    gt, dets = make_coco_segm(n_images, n_dets)
    return evaluation_rows(gt, dets, "segm", "coco_evaluate segm (12 numbers)",
                           f"{n_images:,} images / {n_dets:,} dets, 480x640 masks (JSON files, compressed RLE)",
                           repeats, slow_repeats)


def xyxy(xywh: list) -> torch.Tensor:
    b = torch.tensor(xywh, dtype=torch.float32).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


def per_image_tensors(gt: dict, dets: list) -> tuple[list, list]:
    by_image: dict[int, tuple[list, list]] = {img["id"]: ([], []) for img in gt["images"]}
    for a in gt["annotations"]:
        by_image[a["image_id"]][0].append(a)
    for d in dets:
        by_image[d["image_id"]][1].append(d)
    preds, targets = [], []
    for anns, mine in by_image.values():
        targets.append(
            {
                "boxes": xyxy([a["bbox"] for a in anns]),
                "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.int64),
                "area": torch.tensor([a["area"] for a in anns], dtype=torch.float32),
            }
        )
        preds.append(
            {
                "boxes": xyxy([d["bbox"] for d in mine]),
                "scores": torch.tensor([d["score"] for d in mine], dtype=torch.float32),
                "labels": torch.tensor([d["category_id"] for d in mine], dtype=torch.int64),
            }
        )
    return preds, targets


def mean_ap_rows(n_images: int, n_dets: int, repeats: int) -> list[dict]:
    from torchmetrics.detection import MeanAveragePrecision as TorchmetricsMAP

    preds, targets = per_image_tensors(*make_coco(n_images, n_dets, seed=1))
    keys = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100"]

    def run(metric):
        def go():
            for i in range(0, len(preds), 16):
                metric.update(preds[i : i + 16], targets[i : i + 16])
            out = metric.compute()
            metric.reset()
            return np.array([float(out[k]) for k in keys])

        return go

    reference = TorchmetricsMAP(backend="faster_coco_eval")
    reference.warn_on_many_detections = False
    ours_ms, ours_out = best_ms(repeats, run(MeanAveragePrecision()))
    ref_ms, ref_out = best_ms(repeats, quiet(run(reference)))
    diff = float(np.abs(ours_out - ref_out).max())
    size = f"{n_images:,} images / {n_dets:,} dets (per-image tensors, batches of 16)"
    return [
        row(
            "MeanAveragePrecision (update + compute)",
            size,
            "torchmetrics (faster_coco_eval)",
            ref_ms,
            ours_ms,
            diff == 0,
            diff,
            repeats,
            repeats,
        )
    ]


def frechet_rows(dim: int, n: int, repeats: int, slow_repeats: int) -> list[dict]:
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(2)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    feats = [(rng.normal(size=(n, dim)) @ mix + shift).astype(np.float32) for shift in (0.0, 0.02)]

    def numpy_stats():
        return [(f.mean(axis=0), np.cov(f, rowvar=False)) for f in feats]

    def our_stats():
        return [
            (s.mean.numpy(), s.covariance.numpy()) for s in (FeatureStatistics().update(f) for f in feats)
        ]

    rows = []
    ref_ms, ref_stats = best_ms(repeats, numpy_stats)
    ours_ms, ours_stats = best_ms(repeats, our_stats)
    diff = max(float(np.abs(a[1] - b[1]).max() / np.abs(a[1]).max()) for a, b in zip(ref_stats, ours_stats))
    rows.append(
        row(
            "feature mean + covariance",
            f"2 x {n:,} x {dim} float32",
            "pytorch-fid (np.mean + np.cov)",
            ref_ms,
            ours_ms,
            diff <= 1e-10,
            diff,
            repeats,
            repeats,
        )
    )
    (mu1, s1), (mu2, s2) = ref_stats
    ref_ms, ref_fid = best_ms(slow_repeats, quiet(lambda: calculate_frechet_distance(mu1, s1, mu2, s2)))
    ours_ms, ours_fid = best_ms(repeats, lambda: frechet_distance(mu1, s1, mu2, s2))
    rel = abs(ours_fid - ref_fid) / abs(ref_fid)
    rows.append(
        row(
            "frechet_distance",
            f"d={dim}",
            "pytorch-fid calculate_frechet_distance",
            ref_ms,
            ours_ms,
            rel <= 1e-6,
            rel,
            slow_repeats,
            repeats,
            f"FID {ours_fid:.6f} vs {ref_fid:.6f}",
        )
    )
    return rows


RESULTS = Path(__file__).parent / "results"
PARTS = ["coco", "segm", "mean_ap", "frechet"]


def row(what, size, reference, ref_ms, ours_ms, equal, diff, ref_repeats, ours_repeats, note=""):
    return {
        "what": what,
        "size": size,
        "reference": reference,
        "reference_ms": round(ref_ms, 1),
        "visionzoo_ms": round(ours_ms, 1),
        "speedup": round(ref_ms / ours_ms, 2),
        "equal": bool(equal),
        "max_difference": diff,
        "reference_repeats": ref_repeats,
        "visionzoo_repeats": ours_repeats,
        "note": note,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)  # sys.argv is read before parsing too
    parser.add_argument("--repeats", type=positive_int, help="best of this many runs (default 3, --quick 1)")
    parser.add_argument(
        "--slow-repeats", type=positive_int, default=1, help="runs of pycocotools and pytorch-fid (default 1)"
    )
    parser.add_argument("--quick", action="store_true",
                        help="1,000 images / 20k dets (bbox and segm), d=512, one repeat unless --repeats is given")
    parser.add_argument("--only", choices=PARTS, action=AppendOnce,
                        help="measure this part only (repeatable); the file's rows of the other parts (same clock) are kept")
    parser.add_argument("--one-thread", action="store_true", help="one thread everywhere; CPU time, not wall")
    parser.add_argument("--out", type=output_file, default=None, help="default benchmarks/results/metrics[_one_thread].json")
    args = parser.parse_args()
    if args.one_thread:
        torch.set_num_threads(1)
    args.out = Path(args.out or RESULTS / f"metrics{'_one_thread' if args.one_thread else ''}.json")
    earlier = existing_results(parser, args.out, __file__)
    parts = args.only or PARTS
    clock = "cpu, one thread" if args.one_thread else "wall"
    # rows from before rows said their clock have the file's ("wall" where the file said none either)
    earlier_rows = [{"clock": earlier.get("clock", "wall"), **row} for row in earlier.get("rows")
                    if isinstance(row, dict)] if isinstance(earlier.get("rows"), list) else []
    other = sorted({row["clock"] for row in earlier_rows if row.get("part") not in parts} - {clock})
    if other:
        parser.error(f"--out {args.out} keeps rows timed with clock {' and '.join(map(repr, other))}, and this run's "
                     f"clock is {clock!r}; give another --out, or measure every part (no --only)")
    full = sorted({row["part"] for row in earlier_rows if row.get("part") in parts and row.get("quick") is False})
    if args.quick and full:  # a trial's smaller sizes are not the same measurement
        parser.error(f"--quick would replace the full-size {', '.join(full)} rows of --out {args.out}; give another "
                     "--out for the trial")
    images, dets, dim = (1000, 20_000, 512) if args.quick else (5000, 100_000, 2048)
    repeats = args.repeats or (1 if args.quick else 3)
    rows = []

    def save() -> None:
        """The file's rows with those measured so far, written out: a run stopped later keeps them."""
        write_json(args.out, {"rows": merge_rows(earlier_rows, rows, "part", PARTS), "clock": clock,
                              "torch_threads": torch.get_num_threads(), "quick": args.quick}, __file__)

    for part, measure in (("coco", lambda: coco_rows(images, dets, repeats, args.slow_repeats)),
                          ("segm", lambda: segm_rows(images, dets, repeats, args.slow_repeats)),
                          ("mean_ap", lambda: mean_ap_rows(images, dets, repeats)),
                          ("frechet", lambda: frechet_rows(dim, 2 * dim, repeats, args.slow_repeats))):
        if part in parts:
            rows += [{**r, "part": part, "quick": args.quick, "clock": clock, "torch_threads": torch.get_num_threads()}
                     for r in measure()]
            save()
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numpy {np.__version__}; best of {repeats} (pycocotools, pytorch-fid: {args.slow_repeats}); "
        f"{'CPU time, one thread everywhere' if args.one_thread else 'wall clock'}\n"
    )
    print("| what | size | reference | reference ms | visionzoo ms | speed-up | numbers equal? |")
    print("|---|---|---|---:|---:|---:|---|")
    for r in rows:
        equal = f"{'yes' if r['equal'] else 'NO'} (max diff {r['max_difference']:.1e})"
        print(
            f"| {r['what']} | {r['size']} | {r['reference']} | {r['reference_ms']:,.0f} | {r['visionzoo_ms']:,.0f} "
            f"| {r['speedup']:.1f}x | {equal} |"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
