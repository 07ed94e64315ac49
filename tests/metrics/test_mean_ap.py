"""MeanAveragePrecision against torchmetrics' (faster_coco_eval backend) on the same per-image tensors."""

import warnings

import numpy as np
import pytest
import torch

from visionzoo.metrics import MeanAveragePrecision

torchmetrics_detection = pytest.importorskip("torchmetrics.detection")


def per_image_tensors(gt, dets, box_format="xyxy", seed=0):
    """The random COCO dataset as torchmetrics-style per-image dicts; some targets omit ``area``."""
    rng = np.random.default_rng(seed)

    def convert(xywh):
        b = torch.tensor(xywh, dtype=torch.float32).reshape(-1, 4)
        x, y, w, h = b.unbind(-1)
        if box_format == "xywh":
            return b
        if box_format == "cxcywh":
            return torch.stack((x + w / 2, y + h / 2, w, h), -1)
        return torch.stack((x, y, x + w, y + h), -1)

    preds, targets = [], []
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"]]
        mine = [d for d in dets if d["image_id"] == img["id"]]
        target = {
            "boxes": convert([a["bbox"] for a in anns]),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.int64),
        }
        if rng.random() < 0.7:  # else the area comes from the box
            target["area"] = torch.tensor([a["area"] if rng.random() < 0.8 else 0.0 for a in anns])
        targets.append(target)
        preds.append(
            {
                "boxes": convert([d["bbox"] for d in mine]),
                "scores": torch.tensor([d["score"] for d in mine], dtype=torch.float32),
                "labels": torch.tensor([d["category_id"] for d in mine], dtype=torch.int64),
            }
        )
    return preds, targets


def run_both(preds, targets, batch=7, **kwargs):
    ref = torchmetrics_detection.MeanAveragePrecision(backend="faster_coco_eval", **kwargs)
    ref.warn_on_many_detections = False
    ours = MeanAveragePrecision(**kwargs)
    for i in range(0, len(preds), batch):
        ref.update(preds[i : i + batch], targets[i : i + batch])
        ours.update(preds[i : i + batch], targets[i : i + batch])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ref.compute()
    return ours.compute(), expected


@pytest.mark.parametrize(
    ("seed", "kwargs"),
    [
        (0, {}),
        (1, {"box_format": "xywh", "class_metrics": True}),
        (2, {"box_format": "cxcywh", "max_detection_thresholds": [1, 5, 50]}),
        (3, {"iou_thresholds": [0.3, 0.5, 0.75], "class_metrics": True}),
        (4, {"average": "micro", "class_metrics": True}),
    ],
    ids=["default", "xywh-per-class", "cxcywh-maxdets", "iou-thresholds", "micro"],
)
def test_equals_torchmetrics_faster_coco_eval(seed, kwargs, make_coco):
    # seed 0 adds boxes with x2 < x1 or y2 <= y1 and +-inf scores
    gt, dets = make_coco(seed, ties=seed % 2 == 0, n_images=30, degenerate=seed == 0)
    preds, targets = per_image_tensors(gt, dets, kwargs.get("box_format", "xyxy"), seed)
    ours, ref = run_both(preds, targets, **kwargs)
    assert_same_results(ours, ref)
    assert ours["map"] > 0.05


def assert_same_results(ours, ref):
    """The same keys, and for each the same shape, dtype and values."""
    assert set(ours) == set(ref)
    for key in ref:
        assert (ours[key].shape, ours[key].dtype) == (ref[key].shape, ref[key].dtype), key
        np.testing.assert_array_equal(ours[key].numpy(), ref[key].numpy(), err_msg=key)


@pytest.mark.parametrize("class_metrics", [False, True])
@pytest.mark.parametrize("average", ["macro", "micro"])
@pytest.mark.parametrize("labels", [[], [3], [1, 1], [1, 2]], ids=["no-image", "one-class", "one-class-twice",
                                                                     "two-classes"])
def test_per_class_results_have_torchmetrics_shapes(class_metrics, average, labels):
    """map_per_class and mar_100_per_class were float32[1] where torchmetrics gives 0-d tensors (it squeezes every
    one-element result: one class, or -1 without class_metrics), and classes int32[1] for one class."""
    boxes = torch.tensor([[0.0, 0, 10, 10]] * len(labels)) + 20 * torch.arange(len(labels))[:, None]
    preds = [{"boxes": boxes, "scores": torch.linspace(0.9, 0.5, len(labels)), "labels": torch.tensor(labels)}]
    targets = [{"boxes": boxes, "labels": torch.tensor(labels)}]
    if not labels:
        preds = targets = []
    ours, ref = run_both(preds, targets, class_metrics=class_metrics, average=average)
    assert_same_results(ours, ref)


def test_reset_and_empty_inputs():
    metric = MeanAveragePrecision()
    assert metric.compute()["map"] == -1
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}
    metric.update([empty], [target])
    out = metric.compute()
    assert out["map"] == 0 and out["mar_100"] == 0 and out["classes"].shape == () and out["classes"].item() == 1
    metric.update(
        [
            {
                "boxes": torch.tensor([[0.0, 0, 10, 10]]),
                "scores": torch.tensor([0.9]),
                "labels": torch.tensor([1]),
            }
        ],
        [target],
    )
    assert metric.compute()["map_50"] == pytest.approx(0.50495, abs=1e-4)  # one of two images found
    metric.reset()
    metric.update([empty], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    assert metric.compute()["map"] == -1


def test_bad_input_raises():
    metric = MeanAveragePrecision()
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}
    nan = {
        "boxes": torch.tensor([[0.0, 0, 10, 10]]),
        "scores": torch.tensor([float("nan")]),
        "labels": torch.tensor([1]),
    }
    with pytest.raises(ValueError, match="preds 0: 'scores' has NaN"):
        metric.update([nan], [target])
    with pytest.raises(ValueError, match="same length"):
        metric.update([], [target])
    with pytest.raises(ValueError, match="preds 0 has no 'scores'"):
        metric.update([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}], [target])
    bad_shape = {
        "boxes": torch.zeros(2, 3),
        "scores": torch.zeros(2),
        "labels": torch.zeros(2, dtype=torch.int64),
    }
    with pytest.raises(ValueError, match=r"'boxes' must be \[N, 4\]"):
        metric.update([bad_shape], [target])
    with pytest.raises(ValueError, match="box_format"):
        MeanAveragePrecision(box_format="yxyx")


def test_mixed_box_dtypes_equal_torchmetrics(make_coco):
    """Boxes are converted in their own dtype, as torchmetrics converts them per image."""
    gt, dets = make_coco(7, n_images=20)
    preds, targets = per_image_tensors(gt, dets, "cxcywh", 7)
    for i in range(0, len(preds), 3):
        preds[i]["boxes"] = preds[i]["boxes"].double()
        targets[i]["boxes"] = targets[i]["boxes"].round().long()
    ours, ref = run_both(preds, targets, box_format="cxcywh")
    for key in ref:
        np.testing.assert_array_equal(
            ours[key].numpy().reshape(-1), ref[key].numpy().reshape(-1), err_msg=key
        )


def test_precision_recall_curve_by_hand():
    """Two objects, three detections, the middle one false: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1."""
    metric = MeanAveragePrecision()
    metric.update(
        [{"boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 31]]),
          "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([4, 4, 4])}],
        [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([4, 4])}],
    )
    curves = metric.precision_recall(0.5)
    assert curves["classes"].tolist() == [4]
    torch.testing.assert_close(curves["recall"], torch.linspace(0, 1, 101))
    # interpolated: the best precision at recall >= r is 1 up to r = 1/2, then 2/3
    expected = torch.tensor([1.0] * 51 + [2 / 3] * 50)
    torch.testing.assert_close(curves["precision"], expected[None])
    torch.testing.assert_close(curves["ap"], torch.tensor([(51 + 50 * 2 / 3) / 101]))
    # the third box overlaps its object at IoU 10/11: a miss at 0.95, so recall stops at 1/2 there
    strict = metric.precision_recall(0.95)["precision"][0]
    assert strict[:51].eq(1).all() and strict[51:].eq(0).all()


def test_precision_recall_of_perfect_detections_is_one():
    boxes = [torch.tensor([[0.0, 0, 10, 10], [20, 5, 40, 30]]), torch.tensor([[3.0, 3, 9, 12]])]
    labels = [torch.tensor([1, 2]), torch.tensor([2])]
    metric = MeanAveragePrecision()
    metric.update([{"boxes": b, "scores": torch.linspace(0.9, 0.5, len(b)), "labels": la}
                   for b, la in zip(boxes, labels)],
                  [{"boxes": b, "labels": la} for b, la in zip(boxes, labels)])
    curves = metric.precision_recall()
    assert curves["classes"].tolist() == [1, 2] and curves["precision"].shape == (2, 101)
    assert curves["precision"].eq(1).all() and curves["ap"].eq(1).all()


def test_precision_recall_equals_torchmetrics_precision_array(make_coco):
    gt, dets = make_coco(5, n_images=30)
    preds, targets = per_image_tensors(gt, dets)
    ref = torchmetrics_detection.MeanAveragePrecision(backend="faster_coco_eval", extended_summary=True)
    ref.warn_on_many_detections = False
    ours = MeanAveragePrecision()
    ref.update(preds, targets)
    ours.update(preds, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ref.compute()
    curves = ours.precision_recall(0.5)
    assert torch.equal(curves["classes"], expected["classes"])
    assert torch.equal(curves["precision"], expected["precision"][0, :, :, 0, -1].T.float())
    at_50 = MeanAveragePrecision(iou_thresholds=[0.5], class_metrics=True)
    at_50.update(preds, targets)
    torch.testing.assert_close(curves["ap"], at_50.compute()["map_per_class"])
    assert (curves["ap"] > 0).any() and (curves["precision"] == -1).all(dim=1).any()  # a class without objects


@pytest.mark.parametrize("box_format", ["xyxy", "xywh", "cxcywh"])
def test_inputs_changed_in_place_after_update_do_not_change_the_result(box_format):
    """update kept the caller's box tensors (converted only in compute), so reusing or rescaling them in place after
    update changed the score (1 -> 0 here); torchmetrics copies them, as it does the scores and labels."""
    pred_boxes, scores, target_boxes = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.9]), torch.tensor([[0.0, 0, 10, 10]])
    preds = [{"boxes": pred_boxes, "scores": scores, "labels": torch.tensor([1])}]
    targets = [{"boxes": target_boxes, "labels": torch.tensor([1])}]
    metric = MeanAveragePrecision(box_format=box_format)
    metric.update(preds, targets)
    pred_boxes += 100
    target_boxes.mul_(2)
    scores.fill_(0.1)
    ref = torchmetrics_detection.MeanAveragePrecision(backend="faster_coco_eval", box_format=box_format)
    ref.update([{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}],
               [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}])
    assert_same_results(metric.compute(), ref.compute())
    assert metric.compute()["map"] == 1


def test_bfloat16_scores_and_areas_equal_torchmetrics():
    """bfloat16 scores (a detector run under autocast) or areas raised TypeError "Got unsupported ScalarType
    BFloat16" from NumPy; torchmetrics scores them."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [30, 30, 60, 60]])
    preds = [{"boxes": boxes, "scores": torch.tensor([0.8, 0.9, 0.7], dtype=torch.bfloat16),
              "labels": torch.tensor([1, 1, 2])}]
    targets = [{"boxes": boxes[[0, 2]], "labels": torch.tensor([1, 2]),
                "area": torch.tensor([100.0, 2000.0], dtype=torch.bfloat16)}]
    ours, ref = run_both(preds, targets, class_metrics=True)
    assert_same_results(ours, ref)
    assert 0 < ours["map"] < 1


def mask_images(seed, n_images=12, n_classes=3, empty_target_images=(), empty_pred_images=()):
    """Random per-image dicts with bool masks [N, H, W] and their boxes: blobs of several classes, some crowd, some
    with a given area; predictions are shifted, grown or shrunk copies of the objects plus false positives."""
    rng = np.random.default_rng(seed)

    def blob(h, w):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        y1, x1 = rng.integers(y0 + 2, h + 1), rng.integers(x0 + 2, w + 1)
        mask = np.zeros((h, w), bool)
        mask[y0:y1, x0:x1] = True
        mask &= rng.random((h, w)) < 0.9  # holes: the mask area is not the box area
        return mask

    def boxes_of(masks):
        out = []
        for m in masks:
            ys, xs = np.nonzero(m)
            out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 1, 1])
        return torch.tensor(np.array(out, dtype=np.float32).reshape(-1, 4))

    preds, targets = [], []
    for i in range(n_images):
        h, w = int(rng.integers(20, 70)), int(rng.integers(20, 90))
        n_gt = 0 if i in empty_target_images else int(rng.integers(1, 6))
        gt = [blob(h, w) for _ in range(n_gt)]
        labels = rng.integers(1, n_classes + 1, n_gt)
        target = {"masks": torch.from_numpy(np.array(gt, bool).reshape(n_gt, h, w)), "boxes": boxes_of(gt),
                  "labels": torch.from_numpy(labels), "iscrowd": torch.from_numpy((rng.random(n_gt) < 0.2).astype(np.int64))}
        if rng.random() < 0.5:  # else the area comes from the mask
            target["area"] = torch.from_numpy(np.where(rng.random(n_gt) < 0.5, rng.uniform(10, 4000, n_gt), 0.0))
        targets.append(target)
        dets, det_labels = [], []
        if i not in empty_pred_images:
            for m, label in zip(gt, labels):
                if rng.random() < 0.8:
                    m = np.roll(m, tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
                    dets.append(m | blob(h, w) if rng.random() < 0.2 else m)
                    det_labels.append(label if rng.random() < 0.9 else rng.integers(1, n_classes + 1))
            for _ in range(int(rng.integers(0, 3))):
                dets.append(blob(h, w))
                det_labels.append(rng.integers(1, n_classes + 1))
        n_det = len(dets)
        preds.append({"masks": torch.from_numpy(np.array(dets, bool).reshape(n_det, h, w)), "boxes": boxes_of(dets),
                      "scores": torch.from_numpy(rng.random(n_det).astype(np.float32)),
                      "labels": torch.tensor(det_labels, dtype=torch.int64)})
    return preds, targets


@pytest.mark.parametrize(("seed", "kwargs"), [
    (0, {"iou_type": "segm"}),
    (1, {"iou_type": "segm", "class_metrics": True}),
    (2, {"iou_type": "segm", "average": "micro", "class_metrics": True, "iou_thresholds": [0.3, 0.5, 0.75]}),
    (3, {"iou_type": ("bbox", "segm"), "class_metrics": True}),
    (4, {"iou_type": ("segm", "bbox"), "max_detection_thresholds": [1, 2, 5]}),
], ids=["segm", "segm-per-class", "segm-micro", "bbox-and-segm", "segm-and-bbox-maxdets"])
def test_masks_equal_torchmetrics(seed, kwargs):
    """MeanAveragePrecision(iou_type="segm") raised TypeError: mask mAP on bool masks [N, H, W], alone or with bbox
    (keys prefixed bbox_ / segm_), now equals torchmetrics', with several classes, crowd objects, given areas and
    images without predictions."""
    preds, targets = mask_images(seed, empty_pred_images=(2, 5))
    ours, ref = run_both(preds, targets, batch=5, **kwargs)
    assert_same_results(ours, ref)
    prefix = "segm_" if len(kwargs["iou_type"]) == 2 else ""
    assert 0.05 < ours[f"{prefix}map"] < 0.95


def test_masks_images_without_objects_count_as_in_torchmetrics_bbox_and_segm():
    """An image without objects counts: its predictions are false positives, as in torchmetrics' ("bbox", "segm")
    and in bbox mode (torchmetrics' "segm" alone leaves out every image without masks, so there they do not count,
    and predictions without any mask give -1)."""
    preds, targets = mask_images(5, empty_target_images=(1, 4), empty_pred_images=(3,))
    ours, _ = run_both(preds, targets, iou_type="segm", class_metrics=True)
    both, _ = run_both(preds, targets, iou_type=("bbox", "segm"), class_metrics=True)
    _, ref = run_both(preds, targets, iou_type=("bbox", "segm"), class_metrics=True)
    assert_same_results(both, ref)
    assert_same_results(ours, {key.removeprefix("segm_"): value for key, value in ref.items()
                               if not key.startswith("bbox_")})
    alone = MeanAveragePrecision(iou_type="segm")
    alone.update([{**p, "masks": p["masks"][:0], "scores": p["scores"][:0], "labels": p["labels"][:0]} for p in preds],
                 targets)
    assert alone.compute()["map"] == 0


def test_masks_are_only_needed_under_segm_and_boxes_only_under_bbox():
    mask = torch.zeros(1, 8, 9, dtype=torch.bool)
    mask[0, 2:6, 3:7] = True
    metric = MeanAveragePrecision(iou_type="segm")
    metric.update([{"masks": mask, "scores": torch.tensor([0.5]), "labels": torch.tensor([2])}],
                  [{"masks": mask, "labels": torch.tensor([2])}])
    out = metric.compute()
    assert out["map"] == 1 and out["classes"].item() == 2
    curves = metric.precision_recall()
    assert curves["precision"].eq(1).all()


@pytest.mark.parametrize(("iou_type", "pred", "target", "message"), [
    ("segm", {"masks": None}, {}, r"^preds 0 has no 'masks'$"),
    ("segm", {}, {"masks": None}, r"^targets 0 has no 'masks'$"),
    (("bbox", "segm"), {}, {"masks": None}, r"^targets 0 has no 'masks'$"),
    ("segm", {"masks": torch.zeros(2, 1, 8, 9, dtype=torch.bool)}, {},
     r"^preds 0: 'masks' must be \[N, H, W\], got \[2, 1, 8, 9\]; torchvision's Mask R-CNN gives masks "
     r"\[N, 1, H, W\]: take masks\[:, 0\]$"),
    ("segm", {"masks": torch.zeros(8, 9, dtype=torch.bool)}, {}, r"^preds 0: 'masks' must be \[N, H, W\], got \[8, 9\]$"),
    ("segm", {"masks": torch.zeros(3, 8, 9, dtype=torch.bool)}, {}, r"^preds 0: 3 masks but 2 scores$"),
    ("segm", {}, {"masks": torch.zeros(1, 8, 9, dtype=torch.bool)}, r"^targets 0: 1 masks but 2 labels$"),
    (("bbox", "segm"), {"boxes": torch.zeros(1, 4)}, {}, r"^preds 0: 1 boxes but 2 masks$"),
    ("segm", {"masks": np.zeros((2, 8, 9), bool)}, {}, r"^preds 0: 'masks' must be a Tensor, got ndarray$"),
    ("segm", {}, {"masks": torch.zeros(2, 8, 10, dtype=torch.bool)},
     r"^image 0: the preds' 'masks' are 8x9 but the targets' 8x10$"),
    ("segm", {"masks": torch.full((2, 8, 9), 0.7)}, {},
     r"^preds 0: 'masks' 0: a float mask must hold only 0 and 1, got .*0.7.*mask > 0.5\)$"),
])
def test_bad_masks_raise_one_line_naming_the_image_and_key(iou_type, pred, target, message):
    good = torch.zeros(2, 8, 9, dtype=torch.bool)
    preds = {"masks": good, "boxes": torch.zeros(2, 4), "scores": torch.tensor([0.5, 0.4]), "labels": torch.tensor([1, 2])}
    targets = {"masks": good, "boxes": torch.zeros(2, 4), "labels": torch.tensor([1, 2])}
    preds = {k: v for k, v in {**preds, **pred}.items() if v is not None}
    targets = {k: v for k, v in {**targets, **target}.items() if v is not None}
    metric = MeanAveragePrecision(iou_type=iou_type)
    with pytest.raises(ValueError, match=message):
        metric.update([preds], [targets])


def test_bad_iou_type_raises():
    with pytest.raises(ValueError, match=r"^iou_type must be 'bbox', 'segm' or a tuple of them, got 'mask'$"):
        MeanAveragePrecision(iou_type="mask")
    with pytest.raises(ValueError, match=r"^iou_type must be 'bbox', 'segm' or a tuple of them, got \(\)$"):
        MeanAveragePrecision(iou_type=())
