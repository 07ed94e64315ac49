"""Detectors beside torchvision on this CPU: conformance, latency, and training on Shapes.

One job at a time (``--job NAME``, repeatable), each writing ``benchmarks/results/detection_<job>.json`` (or into
``--out-dir``, for a trial):

* ``conformance``: torchvision's fasterrcnn_resnet50_fpn with random weights and sharpened heads, saved
  and loaded through ``create_model(..., checkpoint=)``, ``box_score_thresh=0``, on images of three
  sizes: the RPN's proposals compared, and every detection looked up in the other model's output
  (same label, box IoU > 0.999, score within 1e-4) in both directions. Then eval latency for one
  480×640 image (800/1333 resize, as torchvision's default), fp32 and bf16 autocast, best of
  ``--repeats``, interleaved.
* ``shapes``: ``fasterrcnn_shapes`` trained from scratch for ``--minutes`` on 128 px Shapes through the
  engine (``visionzoo train``'s path), COCO metrics on the 500 val images; then torchvision's
  ``fasterrcnn_mobilenet_v3_large_fpn`` (no pretrained weights) through the same engine, task, data,
  budget, input size, threads and batch size.

* ``rcnn``: ``rcnn_shapes`` (ResNet-18 over 64 px warps of Selective Search regions) trained from scratch
  for ``--minutes`` the same way, COCO metrics on the 500 val images; inference seconds per image with
  Selective Search included (20 val images); the cost of a 224 px warp measured on 10 images; and the
  sliding-window detector (the same trained CNN over every window instead of the proposals): windows
  and seconds per image and its mAP on 20 val images.
* ``fast-rcnn``: ``fastrcnn_shapes`` (one ResNet-18 pass per image, RoI pooling of the proposals) the same way.

The R-CNN jobs compute the Selective Search boxes of the train and val splits once and cache them
(``$VISIONZOO_CACHE/proposals``); ``proposal_seconds`` is that time (near 0 on a cache hit).

    python benchmarks/detection.py --job conformance
    python benchmarks/detection.py --job shapes --minutes 8
    python benchmarks/detection.py --job rcnn --minutes 8
    python benchmarks/detection.py --job fast-rcnn --minutes 8
    python benchmarks/detection.py --job shapes --minutes 0.2 --out-dir /tmp/trial   # the README's files stay
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn
from torchvision.ops import box_iou

from arguments import AppendOnce, existing_results, output_folder, positive_float, positive_int, write_json
from timing import machine
from visionzoo.models import create_model
from visionzoo.train import TrainConfig
from visionzoo.train.detection import coco_mean_ap
from visionzoo.train.engine import fit, resolve_precision
from visionzoo.train.run import build_setup

RESULTS = Path(__file__).parent / "results"
SIZES = ((480, 640), (600, 400), (333, 500))


def found(wanted: dict, pool: dict, iou_min: float = 0.999, score_tol: float = 1e-4) -> float:
    """Fraction of ``wanted``'s detections present in ``pool`` (same label, IoU > iou_min, close score)."""
    if len(wanted["boxes"]) == 0:
        return 1.0
    iou = box_iou(wanted["boxes"], pool["boxes"])
    same = (wanted["labels"][:, None] == pool["labels"][None, :]) & (iou > iou_min)
    close = (wanted["scores"][:, None] - pool["scores"][None, :]).abs() <= score_tol
    return float((same & close).any(dim=1).float().mean())


def conformance(repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    reference = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0).eval()
    with torch.no_grad():
        reference.roi_heads.box_predictor.cls_score.weight.mul_(30)
        reference.rpn.head.cls_logits.weight.mul_(30)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fasterrcnn_resnet50_fpn.pth"
        torch.save(reference.state_dict(), path)
        ours = create_model("fasterrcnn_resnet50_fpn", checkpoint=path, box_score_thresh=0.0).eval()
    generator = torch.Generator().manual_seed(1)
    rows = []
    for height, width in SIZES:
        image = torch.rand(3, height, width, generator=generator)
        with torch.inference_mode():
            theirs, mine = reference([image])[0], ours([image])[0]
            batch, _ = ours.transform([image])
            proposals = ours.rpn(batch, ours.backbone(batch.tensors))[0][0]
            ref_batch, _ = reference.transform([image])
            ref_proposals = reference.rpn(ref_batch, reference.backbone(ref_batch.tensors))[0][0]
        same_count = proposals.shape == ref_proposals.shape
        row = {"size": [height, width], "detections_ours": len(mine["boxes"]), "detections_torchvision": len(theirs["boxes"]),
               "classes_detected": int(theirs["labels"].unique().numel()),
               "theirs_found_in_ours": found(theirs, mine), "ours_found_in_theirs": found(mine, theirs),
               "proposals": int(proposals.shape[0]), "proposals_same_count": same_count,
               "proposals_max_abs_diff": float((proposals - ref_proposals).abs().max()) if same_count else None}
        rows.append(row)
        print(f"{height}x{width}: {row}", flush=True)
    image = torch.rand(3, 480, 640, generator=generator)
    latency = {}
    for precision in ("fp32", "bf16"):
        best = {"ours": float("inf"), "torchvision": float("inf")}
        for _ in range(repeats):
            for name, model in (("torchvision", reference), ("ours", ours)):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    start = time.perf_counter()
                    model([image])
                    best[name] = min(best[name], time.perf_counter() - start)
        latency[precision] = {**best, "ratio": best["ours"] / best["torchvision"]}
        print(f"latency 480x640 {precision}: ours {best['ours']:.3f} s, torchvision {best['torchvision']:.3f} s", flush=True)
    return {"images": rows, "latency_480x640": latency, "threads": torch.get_num_threads(),
            "torchvision": torchvision.__version__}


def train_and_evaluate(name: str, model: torch.nn.Module | None, minutes: float, batch_size: int, out: Path,
                       registered: str = "fasterrcnn_shapes") -> dict[str, Any]:
    """Train ``model`` (or the ``registered`` one) on Shapes through the engine; val COCO metrics."""
    setup = build_setup(registered, "shapes")
    model = setup.model if model is None else model
    config = TrainConfig(out=str(out), minutes=minutes, batch_size=batch_size, overwrite=True, progress=False,
                         eval_every=0, checkpoint_every=10**9, precision="auto")
    start = time.perf_counter()
    proposal_seconds = None
    if hasattr(setup.splits["train"], "proposals"):  # computed (or read from the cache) before the clock starts
        for split in ("train", "val"):  # the test split is never used here
            setup.splits[split].proposals  # noqa: B018
        proposal_seconds = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
    result = fit(setup.task, model, setup.splits["train"], None, config, {"data": "shapes", "img_size": 128})
    wall = time.perf_counter() - start
    model.eval()
    val = setup.splits["val"]
    start = time.perf_counter()
    metrics = setup.task.evaluate(model, val, 16, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    eval_seconds = time.perf_counter() - start
    row = {"model": name, "parameters": sum(p.numel() for p in model.parameters()), "steps": result.steps,
           "batch_size": batch_size, "train_seconds": round(result.train_seconds, 1), "wall_seconds": round(wall, 1),
           "val_images": len(val), "eval_seconds": round(eval_seconds, 1),
           "inference_ms_per_image": round(1000 * eval_seconds / len(val), 1),
           "precision": resolve_precision("auto", torch.device("cpu")), "val": metrics,
           **({"proposal_seconds": proposal_seconds} if proposal_seconds is not None else {})}
    row["_model"] = model
    print(f"{name}: map {metrics['map']:.4f}, map_50 {metrics['map_50']:.4f} ({result.steps} steps, "
          f"{result.train_seconds:.0f} s)", flush=True)
    return row


def shapes(minutes: float, batch_size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        ours = train_and_evaluate("fasterrcnn_shapes", None, minutes, batch_size, Path(tmp) / "ours")
        ours.pop("_model")
        torch.manual_seed(0)
        reference = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=7,
                                                       min_size=128, max_size=128)
        reference.model_name = "torchvision_fasterrcnn_mobilenet_v3_large_fpn"
        reference.model_args = {}
        theirs = train_and_evaluate("torchvision fasterrcnn_mobilenet_v3_large_fpn", reference, minutes, batch_size,
                                    Path(tmp) / "torchvision")
        theirs.pop("_model")
    return {"minutes": minutes, "ours": ours, "torchvision": theirs, "threads": torch.get_num_threads()}


def timed_detections(model: torch.nn.Module, images: list[torch.Tensor], repeats: int = 1) -> tuple[list[dict], float]:
    """(the model's detections of each image, eval seconds per image): one image at a time under bf16 autocast, the
    model's own proposals, best of ``repeats`` after one untimed image, so that a freshly built model (the 224 px
    warp, the sliding window) is not charged the first call's costs (allocator, kernel selection) that the trained
    model it is compared with paid in its evaluation."""
    model.eval()
    best, detections = float("inf"), []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model([images[0]])
        for _ in range(repeats):
            start = time.perf_counter()
            detections = [model([image])[0] for image in images]
            best = min(best, time.perf_counter() - start)
    return detections, best / len(images)


def proposal_detector(registered: str, minutes: float, batch_size: int) -> dict[str, Any]:
    """Train and evaluate an R-CNN or Fast R-CNN on Shapes; its inference time with Selective Search included."""
    from visionzoo.data import create_dataset

    val = create_dataset("shapes", "val")
    with tempfile.TemporaryDirectory() as tmp:
        row = train_and_evaluate(registered, None, minutes, batch_size, Path(tmp) / "run", registered=registered)
    model = row.pop("_model")
    images = [val[i][0] for i in range(20)]
    row["seconds_per_image_with_proposals"] = round(timed_detections(model, images)[1], 3)
    result: dict[str, Any] = {"minutes": minutes, "threads": torch.get_num_threads(), "ours": row}
    if registered == "rcnn_shapes":
        wide = create_model("rcnn_shapes", warp_size=224).eval()
        result["warp_224_seconds_per_image"] = round(timed_detections(wide, images[:10])[1], 3)
        windows = create_model("sliding_window_shapes").eval()
        windows.load_state_dict(model.state_dict())
        detections, seconds = timed_detections(windows, images)
        metric = coco_mean_ap()  # as the detectors' eval scores
        metric.update(detections, [val[i][1] for i in range(len(images))])
        scores = metric.compute()
        result["sliding_window"] = {"windows_per_image": int(windows.propose(images[0]).shape[0]),
                                    "seconds_per_image": round(seconds, 3), "val_images": len(images),
                                    "map": float(scores["map"]), "map_50": float(scores["map_50"])}
        print(f"sliding window: {result['sliding_window']}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", action=AppendOnce, choices=("conformance", "shapes", "rcnn", "fast-rcnn"), required=True)
    parser.add_argument("--repeats", type=positive_int, help="latency repeats (conformance; default 3)")
    parser.add_argument("--minutes", type=positive_float,
                        help="training budget of each detector (shapes, rcnn, fast-rcnn; default 8)")
    parser.add_argument("--batch-size", type=positive_int, help="training batch (shapes, rcnn, fast-rcnn; default 8)")
    parser.add_argument("--out-dir", type=output_folder, default=RESULTS,
                        help="the folder of the detection_JOB.json results (default: %(default)s)")
    args = parser.parse_args()
    trainings = ("shapes", "rcnn", "fast-rcnn")
    for flag, jobs, default in (("--repeats", ("conformance",), 3), ("--minutes", trainings, 8.0),
                                ("--batch-size", trainings, 8)):
        name = flag.removeprefix("--").replace("-", "_")
        if getattr(args, name) is not None and not set(args.job) & set(jobs):  # given, not ignored
            parser.error(f"{flag} is not used by --job {' --job '.join(args.job)} (only by {', '.join(jobs)})")
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    for job in args.job:  # not another script's results
        existing_results(parser, args.out_dir / f"detection_{job}.json", __file__, "--out-dir")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for job in args.job:
        start = time.perf_counter()
        if job == "conformance":
            result = conformance(args.repeats)
        elif job == "shapes":
            result = shapes(args.minutes, args.batch_size)
        else:
            result = proposal_detector({"rcnn": "rcnn_shapes", "fast-rcnn": "fastrcnn_shapes"}[job], args.minutes,
                                       args.batch_size)
        result["job_seconds"] = round(time.perf_counter() - start, 1)
        result["machine"] = machine()
        path = args.out_dir / f"detection_{job}.json"
        write_json(path, result, __file__)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
