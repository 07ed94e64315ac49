"""``visionzoo coco-eval GT.json DETS.json``: the COCO table (pycocotools' layout) or JSON; ``visionzoo fid A B``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from visionzoo.cli import add_device_argument, positive_int, register_command
from visionzoo.metrics.coco import (
    IOU_TYPES,
    SUMMARY_NAMES,
    CocoDetections,
    CocoGroundTruth,
    coco_evaluate,
    load_detections,
    load_ground_truth,
    no_ground_truth_note,
)
from visionzoo.metrics.domain import DOMAIN_DATA, MIN_IMAGE_SIZE, smallest_size
from visionzoo.train.engine import PRECISIONS, autocast_context, resolve_precision
from visionzoo.utils import resolve_device

if TYPE_CHECKING:
    from torch import nn

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


def images_without_results(ground: CocoGroundTruth, detections: CocoDetections) -> tuple[int, int]:
    """(how many of them ``detections`` has no result on, how many images of ``ground`` have objects): crowd regions
    alone are no objects. The command notes most of them without results: a detector that ran on an image gives
    results of low scores too, so those images were not given to it."""
    with_objects = np.unique(ground.image[~ground.iscrowd])
    return int((~np.isin(with_objects, detections.image)).sum()), len(with_objects)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gt", help="COCO ground-truth JSON (images, annotations, categories)")
    parser.add_argument("dets", help="COCO results JSON: a list of {image_id, category_id, bbox, score}")
    parser.add_argument("--iou-type", choices=IOU_TYPES, default="bbox", help="bbox (default) or segm")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")


@register_command("coco-eval", help="COCO mAP of detections (pycocotools' numbers)", arguments=_arguments)
def coco_eval_command(args: argparse.Namespace) -> int:
    ground = load_ground_truth(args.gt, args.iou_type)
    detections = load_detections(args.dets, ground, args.iou_type)
    result = coco_evaluate(ground, detections, iou_type=args.iou_type)
    missed, total = images_without_results(ground, detections)
    if 2 * missed > total:  # predict --coco-json on a few files, scored against a whole split's file
        print(f"note: {args.dets} has no results on {missed} of the {total} images with objects in {args.gt}, whose "
              "objects count as missed (pycocotools' rule); to score only the images predicted, give a ground-truth "
              "file of those images", file=sys.stderr)
    # pycocotools stores matches by annotation id, 0 meaning none (a crowd region is ignored either way)
    if ground.ids.dtype.kind != "U" and bool(((ground.ids == 0) & ~ground.iscrowd).any()):
        print(f"note: {args.gt} has an annotation of id 0, which pycocotools never counts as found (its matching takes "
              "id 0 for none), so its numbers on these files can be lower; here it counts as any other id",
              file=sys.stderr)
    note = no_ground_truth_note((result[name] for name in SUMMARY_NAMES), str(args.gt))
    if note is not None:
        print(f"note: {note}", file=sys.stderr)
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


FID_BATCH_SIZE = 50


def _folder_options_given(args: argparse.Namespace) -> list[str]:
    """The options given that only choose how image folders are read (features, sizes, batches)."""
    given = {"--features": args.features != "inception", "--data": args.data is not None,
             "--img-size": args.img_size is not None, "--checkpoint": args.checkpoint is not None,
             "--resize": args.resize is not None, "--batch-size": args.batch_size != FID_BATCH_SIZE,
             "--precision": args.precision != "fp32", "--device": args.device is not None}
    return [option for option, is_given in given.items() if is_given]


def _fid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path_a", help="a folder of images or an .npz of statistics (pytorch-fid's mu, sigma)")
    parser.add_argument("path_b", help="the other folder or .npz")
    parser.add_argument("--features", choices=("inception", "domain"), default="inception",
                        help="inception (default): pytorch-fid's Inception-v3; domain: a classifier trained on the "
                             "built-in --data (offline; numbers comparable only with other domain FIDs)")
    parser.add_argument("--data", choices=DOMAIN_DATA, help="--features domain: the built-in data set the images are like")
    parser.add_argument("--img-size", type=positive_int,
                        help="--features domain: the side the images are resized to (default: 32 digits, 64 shapes)")
    parser.add_argument("--checkpoint", help="inception: pytorch-fid's pt_inception-2015-12-05 weights file (default: "
                                             "download it once into the weights cache); domain: a domain features file "
                                             "(default: train it once and cache it)")
    parser.add_argument("--resize", choices=("legacy", "clean"),
                        help="inception: legacy (default): pytorch-fid's bilinear resize; clean: clean-fid's PIL bicubic")
    parser.add_argument("--batch-size", type=positive_int, default=FID_BATCH_SIZE,
                        help=f"images per forward (default {FID_BATCH_SIZE}, as pytorch-fid's)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default, as pytorch-fid computes: FID moves with the features' precision); bf16: "
                             "bf16 autocast, faster on a GPU or a bf16-native CPU (2.4× on AMX), its FIDs comparable "
                             "only with each other; auto: bf16 where the CPU/GPU runs it natively, else fp32")
    add_device_argument(parser)
    parser.add_argument("--save-stats", metavar="FILE",
                        help="also write PATH_A's statistics to FILE, an .npz file (pytorch-fid's format)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --save-stats file")


def _check_fid_arguments(args: argparse.Namespace) -> None:
    if args.features == "domain" and args.data is None:
        raise ValueError("--features domain needs --data digits or --data shapes (the domain's classifier)")
    if args.features != "domain" and (args.data or args.img_size):
        given = [option for option, value in (("--data", args.data), ("--img-size", args.img_size)) if value]
        add = "--features domain" + ("" if args.data else " --data digits (or shapes)")  # which it would ask for next
        raise ValueError(f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to --features domain, not to "
                         f"Inception's features; add {add}")
    if args.features == "domain" and args.img_size is not None and args.img_size < MIN_IMAGE_SIZE:
        raise ValueError(f"--img-size {args.img_size}: domain features need images of at least {MIN_IMAGE_SIZE} px")
    if args.features == "domain" and args.img_size is not None and args.img_size < smallest_size(args.data):
        raise ValueError(f"--img-size {args.img_size}: domain features of {args.data} need images of at least "
                         f"{smallest_size(args.data)} px (Shapes' smallest scenes)")
    if args.features == "domain" and args.resize:
        raise ValueError(f"--resize {args.resize} chooses how Inception's input is resized; domain features read "
                         "images resized to --img-size")


def _save_stats_target(args: argparse.Namespace) -> Path | None:
    """The file ``--save-stats`` names, refused before any feature is computed where it cannot or should not be
    written: one not ending in .npz, to which np.savez would append it, is refused too."""
    from visionzoo.metrics.fid import IMAGE_EXTENSIONS, is_statistics

    if not args.save_stats:
        return None
    if is_statistics(args.path_a):
        raise ValueError(f"--save-stats writes the statistics of an image folder; {args.path_a} already is statistics")
    if args.save_stats.endswith("/"):
        # statistics_path would drop the slash and write a file beside the folder, not in it
        raise ValueError(f"--save-stats {args.save_stats} names a folder; name the file, e.g. "
                         f"{Path(args.save_stats) / 'stats.npz'}")
    suffix = Path(args.save_stats).suffix.lower().lstrip(".")
    if suffix in IMAGE_EXTENSIONS:  # np.savez would write x.png.npz: PATH_A's statistics, not a picture
        raise ValueError(f"--save-stats {args.save_stats} names an image; the statistics are an .npz file, e.g. "
                         f"{Path(args.save_stats).with_suffix('.npz')}")
    if not is_statistics(args.save_stats):
        # written as named, neither fid nor pytorch-fid would take it for statistics: both tell them by .npz
        raise ValueError(f"--save-stats {args.save_stats} is not an .npz file, the only statistics that fid (and "
                         f"pytorch-fid) read back; name it {args.save_stats}.npz")
    target = Path(args.save_stats)
    if target.parent.exists() and not target.parent.is_dir():
        raise NotADirectoryError(f"--save-stats {args.save_stats}: {target.parent} is a file, not a folder")
    if not target.parent.is_dir():
        raise ValueError(f"--save-stats {args.save_stats}: folder {target.parent} does not exist")
    if target.resolve() == Path(args.path_b).resolve():
        # the statistics of PATH_A would replace the ones they are compared with
        raise ValueError(f"--save-stats {args.save_stats} is PATH_B; choose another file")
    if target.is_dir():  # else --overwrite fails at the end, after PATH_A's features: "[Errno 21] Is a directory"
        raise IsADirectoryError(f"--save-stats {args.save_stats} is a folder; name a file")
    if target.exists() and not args.overwrite:
        raise ValueError(f"--save-stats: {target} exists; pass --overwrite to replace it")
    return target


def _check_statistics_fit_the_features(args: argparse.Namespace, stats: dict) -> None:
    """ValueError before the network is built (or downloaded) when a statistics file cannot be compared with the
    features ``--features`` gives the folder: they have another dimension."""
    from visionzoo.metrics.domain import WIDTHS

    dims = {"domain": WIDTHS[-1], "inception": 2048}  # the domain network's and Inception's pool features
    for path, (mu, _) in stats.items():
        if mu.shape[0] != dims[args.features]:
            other = [name for name, dim in dims.items() if dim == mu.shape[0]]
            hint = f" (statistics of --features {other[0]}?)" if other else ""
            raise ValueError(f"{path} has statistics of {mu.shape[0]} dimensions; --features {args.features} gives "
                             f"{dims[args.features]}{hint}")


def _fid_features(args: argparse.Namespace) -> tuple[nn.Module, dict]:
    """(the feature network the options choose, how folders are read for it)."""
    from visionzoo.metrics.inception import InceptionFeatures

    if args.features == "domain":
        from visionzoo.metrics.domain import DEFAULT_SIZES, domain_features

        size = args.img_size or DEFAULT_SIZES[args.data]
        features = domain_features(args.data, size, checkpoint=args.checkpoint)
        return features, {"size": size, "channels": features.in_chans}
    from visionzoo.models._hub import DownloadError

    try:
        features = InceptionFeatures(args.checkpoint, resize=args.resize or "legacy", pretrained=args.checkpoint is None)
    except DownloadError as error:  # offline, say what works without the download
        raise DownloadError(f"{error}; without it, give pytorch-fid's weights file as --checkpoint "
                            "(pt_inception-2015-12-05-6726825d.pth), or use --features domain --data digits|shapes "
                            "(offline, a classifier of the built-in data)") from None
    return features, {}


def _note_folder_reading(folder: str, files: list[Path]) -> None:
    """Say where ``folder`` is read otherwise than pytorch-fid would: subfolders, whose images FID leaves out (as
    pytorch-fid; clean-fid reads them), and files of upper-case extensions (``a.PNG``), which FID reads and
    pytorch-fid's case-sensitive listing skips on Linux, so the two FIDs of such a folder differ."""
    subfolders = sorted(path.name for path in Path(folder).iterdir() if path.is_dir())
    if subfolders:
        shown = ", ".join(subfolders[:3]) + (", ..." if len(subfolders) > 3 else "")
        print(f"note: {folder} has subfolders ({shown}), which are not read (as in pytorch-fid); its statistics are "
              f"of the {len(files)} images in the folder itself", file=sys.stderr)
    upper = [path.name for path in files if path.suffix != path.suffix.lower()]
    if upper:
        shown = ", ".join(upper[:3]) + (", ..." if len(upper) > 3 else "")
        print(f"note: {folder} has {len(upper)} of its {len(files)} images under upper-case extensions ({shown}); "
              "they are read, where pytorch-fid's case-sensitive listing skips them on Linux, so its FID of this "
              "folder would differ", file=sys.stderr)


@register_command("fid", help="Fréchet Inception Distance between two image folders or .npz statistics",
                  arguments=_fid_arguments)
def fid_command(args: argparse.Namespace) -> int:
    from visionzoo.metrics.fid import (
        check_same_features,
        feature_fingerprint,
        folder_statistics,
        image_files,
        is_statistics,
        load_statistics,
        save_statistics,
        statistics_fingerprint,
    )
    from visionzoo.metrics.frechet import frechet_distance

    _check_fid_arguments(args)
    device = resolve_device(args.device)
    target = _save_stats_target(args)
    paths = (args.path_a, args.path_b)
    # statistics files first: a bad one fails before any feature is computed, and two of them need no network
    stats = {path: load_statistics(path) for path in paths if is_statistics(path)}
    fingerprints = {path: statistics_fingerprint(path) for path in stats}
    check_same_features(fingerprints)
    folders = [path for path in dict.fromkeys(paths) if path not in stats]
    unused = _folder_options_given(args)
    if not folders and unused:
        print(f"note: {', '.join(unused)} choose how image folders are read; both paths are statistics files, "
              "so they were not used", file=sys.stderr)
    for path in folders:  # a missing or empty PATH_B fails before PATH_A's features, not after
        _note_folder_reading(path, image_files(path))
    if folders:
        _check_statistics_fit_the_features(args, stats)
        features, reading = _fid_features(args)
        precision = resolve_precision(args.precision, device)
        fingerprint = feature_fingerprint(features)  # hashes the weights: once, for the check and --save-stats
        if precision == "bf16":  # FID moves with the features' precision: bf16 statistics are compared with their own
            fingerprint += " precision=bf16"
        check_same_features({**fingerprints, f"{folders[0]} (read with these options)": fingerprint})
        features = features.to(device)
        autocast = autocast_context(device, precision)
    for path in folders:
        folder = folder_statistics(path, features, args.batch_size, device=device, autocast=autocast, **reading)
        if target is not None and path == args.path_a:
            print(f"statistics of {path}: {save_statistics(target, folder, fingerprint)}")
        stats[path] = folder.mean.numpy(), folder.covariance.numpy()
    (mu_a, sigma_a), (mu_b, sigma_b) = stats[args.path_a], stats[args.path_b]
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"{args.path_a} has statistics of {mu_a.shape[0]} dimensions and {args.path_b} of "
                         f"{mu_b.shape[0]}; both must come from the same feature network")
    print(f"FID: {frechet_distance(mu_a, sigma_a, mu_b, sigma_b):.6f}")
    return 0
