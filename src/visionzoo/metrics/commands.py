"""``visionzoo coco-eval GT.json DETS.json``: the COCO table (pycocotools' layout) or JSON."""

from __future__ import annotations

import argparse
import json

from visionzoo.cli import register_command
from visionzoo.metrics.coco import IOU_TYPES, SUMMARY_NAMES, coco_evaluate

# (AP?, IoU label or None, area, which max_dets entry) of pycocotools' 12 summary lines
_LINES = [
    (True, None, "all", "100"),
    (True, 0.5, "all", 2),
    (True, 0.75, "all", 2),
    (True, None, "small", 2),
    (True, None, "medium", 2),
    (True, None, "large", 2),
    (False, None, "all", 0),
    (False, None, "all", 1),
    (False, None, "all", 2),
    (False, None, "small", 2),
    (False, None, "medium", 2),
    (False, None, "large", 2),
]


def format_summary(result: dict) -> list[str]:
    """The 12 lines pycocotools' ``summarize()`` prints, from :func:`coco_evaluate`'s result."""
    params = result["params"]
    ious = params.iou_thresholds
    lines = []
    for name, (ap, iou, area, which) in zip(SUMMARY_NAMES, _LINES):
        title = "Average Precision" if ap else "Average Recall"
        kind = "(AP)" if ap else "(AR)"
        iou_text = f"{ious[0]:0.2f}:{ious[-1]:0.2f}" if iou is None else f"{iou:0.2f}"
        max_det = 100 if which == "100" else params.max_dets[which]
        lines.append(
            f" {title:<18} {kind} @[ IoU={iou_text:<9} | area={area:>6s} | maxDets={max_det:>3d} ] = {result[name]:0.3f}"
        )
    return lines


def format_per_category(result: dict) -> list[str]:
    rows = result["per_category"]
    width = max([len("category")] + [len(r["name"]) for r in rows.values()])
    lines = [f"{'category':<{width}}  {'id':>6}  {'AP':>6}  {'AR':>6}"]
    for cid, row in rows.items():
        lines.append(f"{row['name']:<{width}}  {cid!s:>6}  {row['AP']:6.3f}  {row['AR']:6.3f}")
    return lines


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gt", help="COCO ground-truth JSON (images, annotations, categories)")
    parser.add_argument("dets", help="COCO results JSON: a list of {image_id, category_id, bbox, score}")
    parser.add_argument("--iou-type", choices=IOU_TYPES, default="bbox", help="bbox (default) or segm")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")


@register_command("coco-eval", help="COCO mAP of detections (pycocotools' numbers)", arguments=_arguments)
def coco_eval_command(args: argparse.Namespace) -> int:
    result = coco_evaluate(args.gt, args.dets, iou_type=args.iou_type)
    if args.json:
        out = {name: result[name] for name in SUMMARY_NAMES}
        out["per_category"] = {str(k): v for k, v in result["per_category"].items()}
        out["num_dropped_detections"] = result["num_dropped_detections"]
        print(json.dumps(out, indent=2))
        return 0
    print("\n".join(format_summary(result)))
    print()
    print("\n".join(format_per_category(result)))
    if result["num_dropped_detections"]:
        print(
            f"note: {result['num_dropped_detections']} detections of categories absent from {args.gt} were left out"
        )
    return 0
