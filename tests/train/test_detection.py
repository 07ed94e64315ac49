"""The detection task: flips that move boxes, a short Faster R-CNN run on Shapes, COCO metrics, drawings."""

import contextlib
import json

import pytest
import torch
from torch.utils.data import Subset

from visionzoo.train import TrainConfig
from visionzoo.train.detection import DetectionTask, hflip
from visionzoo.train.run import build_setup, run_training


def test_hflip_moves_boxes_with_the_pixels():
    image = torch.zeros(3, 8, 10)
    image[:, 2:5, 1:4] = 1.0  # a block at x 1..3, y 2..4: box [1, 2, 4, 5]
    target = {"boxes": torch.tensor([[1.0, 2.0, 4.0, 5.0]]), "labels": torch.tensor([2])}
    flipped, moved = hflip(image, target)
    ys, xs = torch.where(flipped[0] > 0)
    assert moved["boxes"].tolist() == [[float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]]
    assert torch.equal(target["boxes"], torch.tensor([[1.0, 2.0, 4.0, 5.0]]))  # the input is left alone
    assert torch.equal(hflip(*hflip(image, target))[1]["boxes"], target["boxes"])


def test_a_short_run_trains_evaluates_and_draws(tmp_path):
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=12, batch_size=4, overwrite=True, progress=False,
                         eval_every=0, checkpoint_every=10**9, precision="fp32")
    setup, result = run_training("fasterrcnn_shapes", "shapes", config, model_args={"rpn_pre_nms_top_n_test": 100})
    losses = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) >= 2 and result.steps == 12
    first, last = (float(line.split('"loss": ')[1].split(",")[0]) for line in (losses[0], losses[-1]))
    assert last < first  # the four losses fall
    task, model = setup.task, setup.model.eval()
    assert isinstance(task, DetectionTask) and task.classes[0] == "circle"
    metrics = task.evaluate(model, Subset(setup.splits["val"], range(8)), 4, contextlib.nullcontext)
    assert {"map", "map_50", "map_75", "ap/circle"} <= set(metrics) and 0.0 <= metrics["map"] <= 1.0
    image, target = setup.splits["val"][0]
    prediction = task.predict(model, image[None], contextlib.nullcontext)[0]
    assert set(prediction) == {"boxes", "labels", "label_ids", "scores"}
    assert all(label in task.classes for label in prediction["labels"])
    picture = task.draw(image, prediction, target, min_score=0.0)
    assert picture.size == (384, 384)


def test_the_detector_reloads_from_its_checkpoint(tmp_path):
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, overwrite=True, progress=False,
                         eval_every=0, checkpoint_every=10**9, precision="fp32")
    setup, _ = run_training("fasterrcnn_shapes", "shapes", config)
    again = build_setup("fasterrcnn_shapes", "shapes", checkpoint=tmp_path / "run" / "checkpoint.safetensors")
    image = setup.splits["val"][0][0]
    with torch.no_grad():
        expected = setup.model.eval()([image])[0]
        got = again.model.eval()([image])[0]
    assert torch.equal(expected["boxes"], got["boxes"]) and torch.equal(expected["scores"], got["scores"])


def test_unknown_detector_name_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown model 'fasterrcnn_resnet5_fpn'"):
        build_setup("fasterrcnn_resnet5_fpn", "shapes")


def test_predict_draws_and_writes_coco_results_for_grey_and_rgba_files(tmp_path, capsys):
    from pycocotools.coco import COCO

    from visionzoo.cli import main
    from visionzoo.train.drawing import to_pil

    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, overwrite=True, progress=False,
                         eval_every=0, checkpoint_every=10**9, precision="fp32")
    setup, _ = run_training("fasterrcnn_shapes", "shapes", config, model_args={"box_score_thresh": 0.0})
    picture = to_pil(setup.splits["val"][0][0], min_side=1)
    picture.convert("L").save(tmp_path / "7.png")
    picture.resize((160, 96)).convert("RGBA").save(tmp_path / "rgba.png")
    coco_json = tmp_path / "results.json"
    argv = ["predict", "fasterrcnn_shapes", str(tmp_path / "7.png"), str(tmp_path / "rgba.png"), "--checkpoint",
            str(tmp_path / "run" / "checkpoint.safetensors"), "--out", str(tmp_path / "pred"), "--coco-json", str(coco_json)]
    assert main(argv) == 0
    assert (tmp_path / "pred" / "7.png").is_file() and (tmp_path / "pred" / "rgba.png").is_file()
    records = json.loads(coco_json.read_text())
    assert {r["image_id"] for r in records} == {7, 2} and all(1 <= r["category_id"] <= 6 for r in records)
    wide = [r for r in records if r["image_id"] == 2]
    assert wide and all(r["bbox"][0] + r["bbox"][2] <= 160.001 and r["bbox"][1] + r["bbox"][3] <= 96.001 for r in wide)
    ground_truth = COCO()
    ground_truth.dataset = {"images": [{"id": 7}, {"id": 2}], "annotations": [],
                            "categories": [{"id": k} for k in range(1, 7)]}
    ground_truth.createIndex()
    assert len(ground_truth.loadRes(str(coco_json)).getAnnIds()) == len(records)
    capsys.readouterr()
    assert main(argv) == 2 and "exists" in capsys.readouterr().err  # nothing overwritten without --overwrite
