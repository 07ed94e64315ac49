"""The detection task: flips that move boxes, a short Faster R-CNN run on Shapes, COCO metrics, drawings."""

import contextlib
import copy
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from visionzoo.data import Shapes
from visionzoo.models import create_model
from visionzoo.train import TrainConfig, fit
from visionzoo.train.detection import DetectionTask, apply_scale_jitter, hflip, scale_jitter_sizes
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
    setup, result = run_training("fasterrcnn_shapes", "shapes", config, model_args={"rpn_pre_nms_top_n_test": 100},
                                 val_images=2)
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
    setup, _ = run_training("fasterrcnn_shapes", "shapes", config, val_images=2)
    again = build_setup("fasterrcnn_shapes", "shapes", checkpoint=tmp_path / "run" / "checkpoint.safetensors")
    image = setup.splits["val"][0][0]
    with torch.no_grad():
        expected = setup.model.eval()([image])[0]
        got = again.model.eval()([image])[0]
    assert torch.equal(expected["boxes"], got["boxes"]) and torch.equal(expected["scores"], got["scores"])


def test_an_images_detections_do_not_depend_on_the_other_sizes_in_its_batch():
    """Evaluation batches padded every image to the largest, so a mixed-size COCO folder's mAP moved with
    --batch-size (and differed from the run's own validation score)."""
    torch.manual_seed(0)
    model = create_model("fasterrcnn_shapes", num_classes=7, box_score_thresh=0.0).eval()
    generator = torch.Generator().manual_seed(1)
    wide, tall, other_wide = (torch.rand(3, h, w, generator=generator) for h, w in ((96, 128), (128, 96), (96, 128)))
    task = DetectionTask(classes=[str(k) for k in range(6)])
    alone = [task.detect(model, [image], contextlib.nullcontext)[0] for image in (wide, tall, other_wide)]
    together = task.detect(model, [wide, tall, other_wide], contextlib.nullcontext)
    assert len(alone[0]["scores"]) > 0
    for one, batched in zip(alone, together):
        assert one.keys() == batched.keys()
        for key in one:
            torch.testing.assert_close(batched[key], one[key], rtol=1e-5, atol=1e-4)


def test_predict_says_nothing_was_found_rather_than_an_empty_line():
    task = DetectionTask(classes=["circle"])
    assert task.describe({"labels": [], "scores": []}) == "nothing found"
    assert task.describe({"labels": ["circle"], "scores": [0.9]}) == "circle 0.900"


def test_describe_leaves_out_detections_under_the_min_score_and_says_so():
    task = DetectionTask(classes=["circle", "square"])
    prediction = {"labels": ["circle", "square"], "scores": [0.7, 0.2]}
    assert task.describe(prediction, min_score=0.5) == "circle 0.700"
    assert task.describe(prediction) == "circle 0.700, square 0.200"
    assert task.describe(prediction, min_score=0.8) == "nothing scored 0.8 or more (best 0.700; see --min-score)"
    assert task.describe({"labels": [], "scores": []}, min_score=0.8) == "nothing found"


def test_predict_min_score_sets_what_is_drawn_and_printed_but_the_json_keeps_everything(tmp_path, capsys):
    from visionzoo.cli import main
    from visionzoo.train.drawing import to_pil

    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, overwrite=True, progress=False,
                         eval_every=0, checkpoint_every=10**9, precision="fp32")
    setup, _ = run_training("fasterrcnn_shapes", "shapes", config, model_args={"box_score_thresh": 0.0},
                               val_images=2)
    to_pil(setup.splits["val"][0][0], min_side=1).save(tmp_path / "scene.png")
    base = ["predict", "fasterrcnn_shapes", str(tmp_path / "scene.png"), "--checkpoint",
            str(tmp_path / "run" / "checkpoint.safetensors"), "--overwrite"]
    capsys.readouterr()
    printed, drawn, saved = {}, {}, {}
    for name, extra in (("all", ["--min-score", "0"]), ("none", ["--min-score", "1"])):
        assert main(base + ["--out", str(tmp_path / name)] + extra) == 0
        printed[name] = capsys.readouterr().out.splitlines()[0]
        with Image.open(tmp_path / name / "scene.png") as picture:
            drawn[name] = picture.convert("RGB").tobytes()
        saved[name] = json.loads((tmp_path / name / "predictions.json").read_text())
    scores = saved["all"][0]["scores"]
    assert scores and max(scores) < 1  # one step of training: every score is under 1, so "none" draws none
    assert saved["none"] == saved["all"]
    assert printed["none"].endswith(f"nothing scored 1 or more (best {max(scores):.3f}; see --min-score)")
    assert printed["all"].count(" 0.") == min(3, len(scores))
    assert drawn["none"] != drawn["all"]
    assert main(base + ["--out", str(tmp_path / "pct"), "--min-score", "50"]) == 2
    assert "--min-score must be in [0, 1], got 50" in capsys.readouterr().err and not (tmp_path / "pct").exists()


def test_unknown_detector_name_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown model 'fasterrcnn_resnet5_fpn'"):
        build_setup("fasterrcnn_resnet5_fpn", "shapes")


@pytest.mark.parametrize("name", ["rcnn_shapes", "fasterrcnn_shapes"])
def test_a_data_set_of_class_labels_is_refused_naming_it(name):
    """train rcnn_shapes --data digits (or fasterrcnn_shapes) ended in a TypeError traceback ("'int' object is not a
    mapping" from the proposal cache, "'int' object is not subscriptable" from the collate), after R-CNN had
    computed Selective Search boxes for every digit."""
    with pytest.raises(ValueError, match=f"{name} is a detector: it trains on boxes, and digits gives one class label "
                                         "per image; give --data shapes or a COCO folder"):
        build_setup(name, "digits")


def test_predict_draws_and_writes_coco_results_for_grey_and_rgba_files(tmp_path, capsys):
    from pycocotools.coco import COCO

    from visionzoo.cli import main
    from visionzoo.train.drawing import to_pil

    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, overwrite=True, progress=False,
                         eval_every=0, checkpoint_every=10**9, precision="fp32")
    setup, _ = run_training("fasterrcnn_shapes", "shapes", config, model_args={"box_score_thresh": 0.0},
                               val_images=2)
    picture = to_pil(setup.splits["val"][0][0], min_side=1)
    picture.convert("L").save(tmp_path / "7.png")
    picture.resize((160, 96)).convert("RGBA").save(tmp_path / "rgba.png")
    coco_json = tmp_path / "results.json"
    argv = ["predict", "fasterrcnn_shapes", str(tmp_path / "7.png"), str(tmp_path / "rgba.png"), "--checkpoint",
            str(tmp_path / "run" / "checkpoint.safetensors"), "--out", str(tmp_path / "pred"), "--coco-json", str(coco_json)]
    assert main(argv) == 0
    assert (tmp_path / "pred" / "7.png").is_file() and (tmp_path / "pred" / "rgba.png").is_file()
    records = json.loads(coco_json.read_text())
    assert {r["image_id"] for r in records} == {1, 2} and all(1 <= r["category_id"] <= 6 for r in records)
    wide = [r for r in records if r["image_id"] == 2]
    assert wide and all(r["bbox"][0] + r["bbox"][2] <= 160.001 and r["bbox"][1] + r["bbox"][3] <= 96.001 for r in wide)
    ground_truth = COCO()
    ground_truth.dataset = {"images": [{"id": 1}, {"id": 2}], "annotations": [],
                            "categories": [{"id": k} for k in range(1, 7)]}
    ground_truth.createIndex()
    assert len(ground_truth.loadRes(str(coco_json)).getAnnIds()) == len(records)
    capsys.readouterr()
    assert main(argv) == 2 and "exists" in capsys.readouterr().err  # nothing overwritten without --overwrite
    # the ids of the user's own annotation file, matched by file name (numbers and positions would not match it)
    instances = tmp_path / "instances_val.json"
    instances.write_text(json.dumps({"images": [{"id": "r", "file_name": "rgba.png"}, {"id": 70, "file_name": "7.png"}]}))
    assert main([*argv, "--overwrite", "--image-ids", str(instances)]) == 0
    renumbered = json.loads(coco_json.read_text())
    assert [r["image_id"] for r in renumbered] == [{1: 70, 2: "r"}[r["image_id"]] for r in records]


def test_a_tiny_run_writes_precision_recall_curves_and_detections(tmp_path):
    setup = build_setup("fasterrcnn_shapes", "shapes", model_args={"rpn_pre_nms_top_n_test": 100})
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=2, batch_size=2, overwrite=True, progress=False,
                         eval_every=0, checkpoint_every=10**9, precision="fp32")
    fit(setup.task, setup.model, Shapes("train", length=4), Shapes("val", length=4), config)
    for name, size in (("loss.png", None), ("pr_curve.png", (600, 500)), ("detections.png", (4 * 384, 384))):
        with Image.open(tmp_path / "run" / name) as picture:
            assert picture.format == "PNG" and (size is None or picture.size == size), name
            picture.verify()


def test_scale_jitter_sizes_put_the_eval_size_last():
    assert scale_jitter_sizes("96-160", 128) == (96, 160, 128)
    assert scale_jitter_sizes("64-128", 128) == (64, 96, 128)
    assert scale_jitter_sizes(" 96, 112 ", 128) == (96, 112, 128)
    assert scale_jitter_sizes("160", 128) == (160, 128)


@pytest.mark.parametrize("text", ["", "96-", "-96", "96-100", "160-96", "96-96", "0-64", "96,x", "96,,128",
                                  "96,96", "0,128", "96:160"])
def test_bad_scale_jitter_is_one_clear_error(text):
    with pytest.raises(ValueError, match="--scale-jitter"):
        scale_jitter_sizes(text, 128)


def test_scale_jitter_resizes_training_images_and_their_boxes():
    model = create_model("fasterrcnn_shapes", max_size=160)
    apply_scale_jitter(model, "96-160")
    assert model.transform.min_size == (96, 160, 128) and model.model_args["min_size"] == (96, 160, 128)
    image = torch.rand(3, 100, 100)
    box = torch.tensor([[10.0, 20.0, 50.0, 40.0]])
    seen = set()
    torch.manual_seed(0)
    for _ in range(30):
        batch, targets = model.transform([image], [{"boxes": box, "labels": torch.tensor([1])}])
        height, width = batch.image_sizes[0]
        assert height == width and height in (96, 128, 160)
        torch.testing.assert_close(targets[0]["boxes"], box * height / 100)
        seen.add(height)
    assert seen == {96, 128, 160}
    model.eval()
    assert model.transform([image])[0].image_sizes == [(128, 128)]


def test_scale_jitter_beyond_max_size_is_refused():
    with pytest.raises(ValueError, match="size 160 is above fasterrcnn_shapes's max_size 128.*max_size=160"):
        apply_scale_jitter(create_model("fasterrcnn_shapes"), "96-160")


def test_a_checkpoint_rebuilds_the_scale_jitter(tmp_path):
    setup = build_setup("fasterrcnn_shapes", "shapes", model_args={"max_size": 160})
    apply_scale_jitter(setup.model, "96-160")
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, overwrite=True, progress=False,
                         eval_every=0, checkpoint_every=10**9, precision="fp32")
    fit(setup.task, setup.model, Shapes("train", length=2), None, config)
    again = create_model("fasterrcnn_shapes", checkpoint=tmp_path / "run" / "checkpoint.safetensors")
    assert again.transform.min_size == (96, 160, 128) and again.transform.max_size == 160


def _one_step_run_on_a_coco_folder(tmp_path):
    """A Shapes export in ``tmp_path/coco`` (2 train, 2 val images) and a 1-step Faster R-CNN run on it in
    ``tmp_path/run``; returns the folder."""
    from visionzoo.cli import main

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--split", "train", "val"]) == 0
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False,
                         checkpoint_every=10**9, precision="fp32")
    run_training("fasterrcnn_shapes", str(folder), config, model_args={"rpn_pre_nms_top_n_test": 50})
    return folder


def test_eval_of_other_data_scores_a_box_without_area_as_pycocotools_instead_of_refusing_it(tmp_path, capsys, caplog):
    """eval --data FILE with a box of no area inside its image, of a run trained without --skip-invalid-boxes, was
    refused with advice for another command (`visionzoo train --skip-invalid-boxes`): no way to score the file,
    which pycocotools scores (the box as an object not found). Inference reads data to score it, never to train."""
    from visionzoo.cli import main

    folder = _one_step_run_on_a_coco_folder(tmp_path)
    ann_file = folder / "annotations" / "instances_val.json"
    annotations = json.loads(ann_file.read_text())
    annotations["annotations"][0]["bbox"][2] = 0
    ann_file.write_text(json.dumps(annotations))
    capsys.readouterr()
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", str(tmp_path / "run" / "checkpoint.safetensors"),
                 "--data", str(folder), "--split", "val", "--json", "--no-progress"]) == 0, capsys.readouterr().err
    assert "map" in json.loads(capsys.readouterr().out)
    assert "skipped 1 boxes with no area" in caplog.text


def test_a_checkpoint_refuses_data_with_a_class_fewer_or_more_naming_it(tmp_path):
    """A val file without the checkpoint's last class was refused as naming "class 5 'nothing', not 'diamond'", as if
    a category were named 'nothing'."""
    from visionzoo.train.run import load_for_inference

    folder = _one_step_run_on_a_coco_folder(tmp_path)
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    ann_file = folder / "annotations" / "instances_val.json"
    annotations = json.loads(ann_file.read_text())
    shorter = dict(annotations, categories=annotations["categories"][:-1],
                   annotations=[a for a in annotations["annotations"] if a["category_id"] != 6])
    ann_file.write_text(json.dumps(shorter))
    with pytest.raises(ValueError, match=r"the val split of .* has no class 5 \('diamond'\): its scores") as error:
        load_for_inference("fasterrcnn_shapes", checkpoint, data=str(folder))
    assert "nothing" not in str(error.value)
    longer = dict(annotations, categories=[*annotations["categories"], {"id": 7, "name": "blob"}])
    ann_file.write_text(json.dumps(longer))
    with pytest.raises(ValueError, match=r"the val split of .* names class 6 'blob', which it was not trained on"):
        load_for_inference("fasterrcnn_shapes", checkpoint, data=str(folder))


def test_a_checkpoint_refuses_data_whose_classes_have_other_names(tmp_path):
    """Same class count, other names: eval counted the detector's 'circle' scores as the folder's 'cat'."""
    from visionzoo.train.run import checkpoint_metadata, load_for_inference

    folder = _one_step_run_on_a_coco_folder(tmp_path)
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    assert checkpoint_metadata(checkpoint)["run"]["classes"][0] == "circle"
    load_for_inference("fasterrcnn_shapes", checkpoint, data=str(folder))  # the same names load
    ann_file = folder / "annotations" / "instances_val.json"
    annotations = json.loads(ann_file.read_text())
    annotations["categories"][0]["name"] = "cat"
    ann_file.write_text(json.dumps(annotations))
    with pytest.raises(ValueError, match="the val split of .* names class 0 'cat', not 'circle'"):
        load_for_inference("fasterrcnn_shapes", checkpoint, data=str(folder))
    # The folder moved: predict (which takes no --data) said "unknown dataset '...coco'; closest: none close". It now
    # rebuilds the model from what the checkpoint records; one written before that was recorded names the folder.
    from visionzoo.checkpoint import read_checkpoint, save_checkpoint

    folder.rename(tmp_path / "elsewhere")
    assert load_for_inference("fasterrcnn_shapes", checkpoint, data_free=True).task.classes[0] == "circle"
    tensors, meta = read_checkpoint(checkpoint)
    del meta["run"]["inference"]
    save_checkpoint(checkpoint, tensors, meta)
    for data_free in (False, True):
        with pytest.raises(FileNotFoundError, match=f"was trained on {folder}, which is not there: .* put the data"):
            load_for_inference("fasterrcnn_shapes", checkpoint, data_free=data_free)


def test_a_download_of_the_val_split_alone_is_evaluated_and_training_on_it_names_the_train_file(tmp_path, capsys):
    # before: eval built every split, so a folder holding only COCO's val annotations failed on instances_train.json
    import shutil

    from visionzoo.cli import main

    folder = _one_step_run_on_a_coco_folder(tmp_path)
    checkpoint = str(tmp_path / "run" / "checkpoint.safetensors")
    (folder / "annotations" / "instances_train.json").unlink()
    shutil.rmtree(folder / "train")
    capsys.readouterr()
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", checkpoint, "--data", str(folder), "--split", "val",
                 "--json"]) == 0
    assert "map_50" in json.loads(capsys.readouterr().out)
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", checkpoint, "--data", str(folder)]) == 2  # test split
    assert "no annotations for split 'test'" in capsys.readouterr().err
    assert main(["train", "fasterrcnn_shapes", "--data", str(folder), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no annotations for split 'train'" in err and "instances_train.json" in err


def test_eval_of_one_split_reads_no_other_splits_annotation_file(tmp_path, capsys):
    """eval --split val also parsed the folder's other annotation files: a train file still downloading (cut short)
    stopped it with "instances_train.json: invalid JSON at line 1, ...", a file it does not score, and COCO's
    instances_train2017.json (448 MB) was read through to evaluate val2017. It now reads the split it scores."""
    from visionzoo.cli import main

    folder = _one_step_run_on_a_coco_folder(tmp_path)
    checkpoint = str(tmp_path / "run" / "checkpoint.safetensors")
    train_file = folder / "annotations" / "instances_train.json"
    train_file.write_bytes(train_file.read_bytes()[:100])
    capsys.readouterr()
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", checkpoint, "--data", str(folder), "--split", "val",
                 "--json", "--no-progress"]) == 0
    assert "map_50" in json.loads(capsys.readouterr().out)
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", checkpoint, "--data", str(folder), "--split", "train",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "instances_train.json: invalid JSON" in err, err


def test_eval_runs_a_detector_at_its_runs_batch_size_unless_told(tmp_path, capsys, monkeypatch):
    """eval's --batch-size defaulted to 128 for every model: a detector trained (and evaluated) 8 images at a time
    ran 128 through its FPN at once, 1.5 GB for Shapes' 128 px val split against 0.9 GB at 8, and tens of GB for
    800 px photos (predict takes them one at a time for that reason). eval now takes the run's own batch size, as
    its training's evaluation did, unless --batch-size is given."""
    from visionzoo.cli import main

    folder = _one_step_run_on_a_coco_folder(tmp_path)  # trained with batch_size=2
    checkpoint = str(tmp_path / "run" / "checkpoint.safetensors")
    sizes = []
    original = DetectionTask.evaluate

    def recording(self, model, dataset, batch_size, autocast):
        sizes.append(batch_size)
        return original(self, model, dataset, batch_size, autocast)

    monkeypatch.setattr(DetectionTask, "evaluate", recording)
    for extra in ([], ["--batch-size", "3"]):
        assert main(["eval", "fasterrcnn_shapes", "--checkpoint", checkpoint, "--data", str(folder), "--split", "val",
                     "--no-progress", *extra]) == 0
    assert sizes == [2, 3]


def test_training_on_one_annotation_file_warns_that_validation_is_on_the_training_images(tmp_path, caplog):
    # before: a .json file served as train, val and test without a word, so val mAP was on training images
    import shutil

    from visionzoo.cli import main

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--split", "train"]) == 0
    ann_file = folder / "train" / "annotations.json"  # the images beside their JSON
    shutil.move(folder / "annotations" / "instances_train.json", ann_file)
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False,
                         checkpoint_every=10**9, precision="fp32")
    with caplog.at_level("WARNING", logger="visionzoo.train.run"):
        run_training("fasterrcnn_shapes", str(ann_file), config, model_args={"rpn_pre_nms_top_n_test": 50})
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(ann_file) in w and "serve as the train, val and test splits" in w for w in warnings)


def test_train_on_a_val_split_without_objects_says_why_its_val_figures_are_minus_one(tmp_path, capsys):
    """train on a COCO folder whose instances_val.json lists no annotations printed "val map -1.0000" and every other
    metric at -1 without a word, where eval of the same split says in one line that it holds no ground-truth
    objects; train now says so too, in eval's words."""
    from visionzoo.cli import main

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--split", "train", "val"]) == 0
    ann_file = folder / "annotations" / "instances_val.json"
    ann_file.write_text(json.dumps({**json.loads(ann_file.read_text()), "annotations": []}))
    capsys.readouterr()
    assert main(["train", "fasterrcnn_shapes", "--data", str(folder), "--out", str(tmp_path / "run"), "--max-steps",
                 "1", "--batch-size", "2", "--no-progress", "--precision", "fp32", "--model-arg",
                 "rpn_pre_nms_top_n_test=50"]) == 0
    out, err = capsys.readouterr()
    assert "  val map          -1.0000" in out
    assert err == ("note: the val split holds no ground-truth objects to score (no annotations, as an image-info "
                   "file, or only crowd regions): every metric is -1, pycocotools' mark for nothing to score\n")


def test_training_a_detector_on_a_train_split_without_objects_warns_before_the_first_step(tmp_path, caplog):
    """A COCO folder whose instances_train.json lists no annotations (images exported before they were labelled)
    trained a detector for its whole budget on background alone, without a word, and its val map was 0. A warning
    naming the file now comes before the first step; a split of crowd regions alone has no objects to learn either."""
    from visionzoo.cli import main

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--split", "train", "val"]) == 0
    ann_file = folder / "annotations" / "instances_train.json"
    content = json.loads(ann_file.read_text())
    argv = ["train", "fasterrcnn_shapes", "--data", str(folder), "--max-steps", "1", "--batch-size", "2",
            "--no-progress", "--precision", "fp32", "--model-arg", "rpn_pre_nms_top_n_test=50"]
    for index, annotations in enumerate(([], [dict(a, iscrowd=1) for a in content["annotations"]],
                                         content["annotations"])):
        ann_file.write_text(json.dumps({**content, "annotations": annotations}))
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert main([*argv, "--out", str(tmp_path / f"run{index}")]) == 0
        warned = [r.getMessage() for r in caplog.records if "no objects to learn" in r.getMessage()]
        assert warned == ([f"{ann_file} lists no objects to learn in the train split (no annotation, or only crowd "
                           "regions): the detector learns to find nothing"] if annotations is not
                          content["annotations"] else [])


def test_skip_invalid_boxes_trains_on_a_folder_with_a_zero_area_box_and_evaluates_it(tmp_path, capsys, caplog):
    # before: the refusal's advice, skip_invalid=True, had no CLI flag
    from visionzoo.cli import main
    from visionzoo.train.run import checkpoint_metadata

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--split", "train", "val"]) == 0
    for split in ("train", "val"):
        ann_file = folder / "annotations" / f"instances_{split}.json"
        content = json.loads(ann_file.read_text())
        content["annotations"][0]["bbox"][2] = 0
        ann_file.write_text(json.dumps(content))
    run = tmp_path / "run"
    train = ["train", "fasterrcnn_shapes", "--data", str(folder), "--out", str(run), "--max-steps", "1",
             "--batch-size", "2", "--no-progress", "--model-arg", "rpn_pre_nms_top_n_test=50"]
    capsys.readouterr()
    assert main(train) == 2
    assert "--skip-invalid-boxes" in capsys.readouterr().err
    assert main([*train, "--skip-invalid-boxes"]) == 0
    assert "skipped 1 boxes with no area" in caplog.text
    checkpoint = run / "checkpoint.safetensors"
    assert checkpoint_metadata(checkpoint)["run"]["options"]["skip_invalid_boxes"] is True
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", str(checkpoint), "--data", str(folder), "--split", "val",
                 "--json"]) == 0
    assert main(["train", "resnet18", "--data", "digits", "--out", str(tmp_path / "other"), "--skip-invalid-boxes"]) == 2
    assert "--skip-invalid-boxes is for detection models" in capsys.readouterr().err



def test_a_detector_reads_a_coco_folder_without_decoding_the_masks_it_never_uses(tmp_path):
    """The detection set-up decoded every segmentation of every sample into masks that collate then dropped: one
    crowd RLE whose counts cover 5 pixels too many ended a run after all its training steps, at the evaluation,
    with "RLE counts sum to 16389", on data a box detector (and pycocotools' bbox evaluation) never reads."""
    from visionzoo.cli import main

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--split", "train", "val"]) == 0
    ann_file = folder / "annotations" / "instances_val.json"
    content = json.loads(ann_file.read_text())
    content["annotations"][-1].update(iscrowd=1, segmentation={"size": [128, 128], "counts": [100, 20, 16269]})
    ann_file.write_text(json.dumps(content))
    setup = build_setup("fasterrcnn_shapes", str(folder))
    for split in ("train", "val"):
        targets = [setup.splits[split][i][1] for i in range(2)]
        assert all("masks" not in target and len(target["boxes"]) for target in targets)

def test_a_coco_folder_without_categories_is_refused_naming_its_file(tmp_path, capsys):
    # before: "num_classes counts the background and must be at least 2, got 1", naming no file
    from PIL import Image

    from visionzoo.cli import main

    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (tmp_path / "coco" / split).mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / "coco" / split / "a.png")
        content = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": []}
        (tmp_path / "coco" / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))
    ann_file = tmp_path / "coco" / "annotations" / "instances_train.json"
    with pytest.raises(ValueError, match=r"instances_train\.json: 'categories' is empty: a detector needs at least one class"):
        build_setup("fasterrcnn_shapes", str(tmp_path / "coco"))
    assert main(["train", "fasterrcnn_shapes", "--data", str(tmp_path / "coco"), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"visionzoo train: error: {ann_file}: 'categories' is empty: a detector needs at least one class\n"


def test_predict_refuses_a_coco_json_that_is_a_folder_before_predicting(tmp_path, capsys):
    from visionzoo.cli import main

    folder = tmp_path / "results"
    folder.mkdir()
    out = tmp_path / "pictures"
    assert main(["predict", "fasterrcnn_shapes", "x.png", "--checkpoint", str(tmp_path / "missing.safetensors"),
                 "--out", str(out), "--coco-json", str(folder), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"visionzoo predict: error: --coco-json {folder} is a folder; give the path of a .json file"]
    assert not out.exists()


def test_predict_takes_a_coco_json_in_the_out_folder_it_makes_but_not_one_named_as_its_own_files(tmp_path, capsys):
    """--coco-json OUT/results.json was refused ("its folder does not exist") though predict makes OUT, and
    --coco-json OUT/predictions.json replaced predict's own predictions.json with the COCO results."""
    from visionzoo.cli import main

    out = tmp_path / "pictures"
    argv = ["predict", "fasterrcnn_shapes", "x.png", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(out)]
    assert main(argv + ["--coco-json", str(out / "results.json")]) == 2
    # past the --coco-json checks, to the images' (checked before the checkpoint is read)
    assert "image x.png does not exist" in capsys.readouterr().err
    for name in ("predictions.json", "x.png"):
        assert main(argv + ["--coco-json", str(out / name), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"visionzoo predict: error: --coco-json {out / name} is the {name} that predict writes into "
                       "--out; give the COCO results another name")
    assert main(argv + ["--coco-json", str(tmp_path / "typo" / "results.json")]) == 2
    assert "its folder does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_predict_never_draws_over_the_images_it_predicts_even_with_overwrite(tmp_path, capsys):
    """predict OUT/a.png --out OUT --overwrite replaced the photo a.png by its drawing, and --coco-json b.jpg
    --overwrite (b.jpg an input) replaced the photo by JSON; both are now refused before the model is loaded."""
    from PIL import Image

    from visionzoo.cli import main

    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.png", "b.jpg"):
        Image.new("RGB", (8, 8), (10, 200, 30)).save(out / name)
    before = {name: (out / name).read_bytes() for name in ("a.png", "b.jpg")}
    base = ["predict", "fasterrcnn_shapes", str(out / "a.png"), str(out / "b.jpg"),
            "--checkpoint", str(tmp_path / "missing.safetensors"), "--overwrite"]
    assert main(base + ["--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"visionzoo predict: error: {out / 'a.png'} would replace the input "
                                               f"image {out / 'a.png'}; give another --out")
    assert main(base + ["--out", str(tmp_path / "pictures"), "--coco-json", str(out / "b.jpg")]) == 2
    assert capsys.readouterr().err.strip() == (f"visionzoo predict: error: {out / 'b.jpg'} would replace the input "
                                               f"image {out / 'b.jpg'}; give another --coco-json")
    assert {name: (out / name).read_bytes() for name in ("a.png", "b.jpg")} == before


def test_evaluate_names_the_ap_of_a_single_class_data_set(monkeypatch):
    """MeanAveragePrecision gives map_per_class and classes 0-d for one class (as torchmetrics); the per-class loop
    zipped them as lists and failed ('zip argument #1 must support iteration')."""
    task = DetectionTask(["circle"])
    box = torch.tensor([[2.0, 2.0, 12.0, 12.0]])
    detections = [{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}]
    monkeypatch.setattr(task, "detect_all", lambda *args: (detections, detections,
                                                                [{"boxes": box, "labels": torch.tensor([1])}]))
    metrics = task.evaluate(None, None, 1, contextlib.nullcontext)
    assert metrics["ap/circle"] == pytest.approx(1.0) and metrics["map"] == pytest.approx(1.0)


class _FixedDetector(torch.nn.Module):
    """Returns the same detections for every image, whatever it is given."""

    def __init__(self, detection):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.detection = detection

    def forward(self, images):
        return [dict(self.detection) for _ in images]


def _one_image_coco(folder: Path, size: tuple[int, int], rest: dict, **dataset_options):
    """A COCO folder in ``folder``: one black image a.png (id 1) of ``size`` (width, height), with the ground truth's
    ``rest`` ("categories", "annotations"); (that ground truth as a dict, its CocoDetection without masks)."""
    from visionzoo.data.coco import CocoDetection

    Image.new("RGB", size).save(folder / "a.png")
    ground_truth = {"images": [{"id": 1, "file_name": "a.png", "width": size[0], "height": size[1]}], **rest}
    (folder / "instances.json").write_text(json.dumps(ground_truth))
    return ground_truth, CocoDetection(folder, folder / "instances.json", load_masks=False, **dataset_options)


def test_evaluate_on_a_coco_folder_ignores_crowd_regions_and_reads_areas_from_the_file_as_pycocotools(tmp_path):
    # before: the batches lost 'iscrowd' and 'area', so a crowd region counted as an object to find (map 0.5)
    # and a box's area replaced the file's mask area in the small/medium/large split (map_small 1, map_medium -1)
    from visionzoo.metrics import coco_evaluate

    ground_truth, dataset = _one_image_coco(tmp_path, (64, 64), {
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 16, 16], "area": 2000.0, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 30, 30, 30], "area": 900.0, "iscrowd": 1},
        ],
    })
    detection = {"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([1])}
    metrics = DetectionTask(["thing"]).evaluate(_FixedDetector(detection), dataset, 2, contextlib.nullcontext)
    reference = coco_evaluate(ground_truth, [{"image_id": 1, "category_id": 1, "bbox": [4, 4, 16, 16], "score": 0.9}])
    names = {"map": "AP", "map_small": "APs", "map_medium": "APm", "map_large": "APl", "mar_100": "AR100"}
    assert [metrics[k] for k in names] == pytest.approx([reference[v] for v in names.values()])
    assert (metrics["map"], metrics["map_small"], metrics["map_medium"]) == (pytest.approx(1.0), -1.0, pytest.approx(1.0))


def test_evaluate_scores_a_box_running_outside_its_image_unclipped_as_pycocotools(tmp_path):
    """A ground-truth box partly outside its image was clipped before scoring, so a detection of its visible part
    matched it at IoU 1 where pycocotools finds 0.67: eval reported AP 1.0 where pycocotools gives 0.4."""
    from visionzoo.metrics import coco_evaluate

    ground_truth, dataset = _one_image_coco(tmp_path, (64, 48), {
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [-8, 4, 24, 16], "area": 384.0,
                         "iscrowd": 0}],
    })
    assert dataset[0][1]["boxes"].tolist() == [[0.0, 4.0, 16.0, 20.0]]  # training still sees the visible part
    detection = {"boxes": torch.tensor([[0.0, 4.0, 16.0, 20.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([1])}
    metrics = DetectionTask(["thing"]).evaluate(_FixedDetector(detection), dataset, 2, contextlib.nullcontext)
    reference = coco_evaluate(ground_truth, [{"image_id": 1, "category_id": 1, "bbox": [0, 4, 16, 16], "score": 0.9}])
    assert reference["AP"] == pytest.approx(0.4)
    assert [metrics["map"], metrics["map_50"], metrics["map_75"]] == pytest.approx(
        [reference["AP"], reference["AP50"], reference["AP75"]])


def test_evaluate_at_another_img_size_scores_in_the_files_pixels_as_pycocotools(tmp_path):
    """With --img-size, ground truth and detections were scored in the resized image's pixels, so a 40 x 30 box
    (area 1200, medium in the file) of a 100 x 50 image resized to 50 x 50 counted as small: eval gave map_small 1
    and map_medium -1 where pycocotools, on the file, gives map_medium 1 and map_small -1."""
    from visionzoo.metrics import coco_evaluate

    ground_truth, dataset = _one_image_coco(tmp_path, (100, 50), {
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 30], "area": 1200.0,
                         "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [-10, 5, 30, 20], "area": 600.0,
                         "iscrowd": 0}],
    }, image_size=50)
    image, target = dataset[0]
    assert tuple(image.shape[-2:]) == (50, 50)
    assert target["boxes"].tolist() == [[5.0, 10.0, 25.0, 40.0], [0.0, 5.0, 10.0, 25.0]]  # training: resized
    # the first box found exactly, in the resized image's pixels; the second one's visible part
    detection = {"boxes": torch.tensor([[5.0, 10.0, 25.0, 40.0], [0.0, 5.0, 10.0, 25.0]]),
                 "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 1])}
    metrics = DetectionTask(["thing"]).evaluate(_FixedDetector(detection), dataset, 2, contextlib.nullcontext)
    reference = coco_evaluate(ground_truth, [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 30], "score": 0.9},
                                             {"image_id": 1, "category_id": 1, "bbox": [0, 5, 20, 20], "score": 0.8}])
    names = {"map": "AP", "map_50": "AP50", "map_75": "AP75", "map_small": "APs", "map_medium": "APm",
             "map_large": "APl", "mar_100": "AR100"}
    assert [metrics[k] for k in names] == pytest.approx([reference[v] for v in names.values()])
    assert reference["APm"] == pytest.approx(1.0)


def _pycocotools_stats(ground_truth, results, folder):
    """pycocotools' 12 bbox numbers of ``results`` against ``ground_truth`` (dicts), quietly."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    (folder / "gt.json").write_text(json.dumps(ground_truth))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(folder / "gt.json"))
        evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def test_evaluate_with_skip_invalid_boxes_scores_the_skipped_boxes_as_misses_as_pycocotools(tmp_path):
    """With --skip-invalid-boxes, a box with no area in its image left evaluation too, so an image whose
    other object was found exactly scored AP 1.0 where pycocotools, which scores the file, counts the skipped
    box as an object not found (AP 0.505)."""
    ground_truth, dataset = _one_image_coco(tmp_path, (64, 64), {
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 16, 16], "area": 256.0, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [70, 10, 10, 10], "area": 100.0, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [30, 30, 0, 12], "area": 0.0, "iscrowd": 0},
            {"id": 4, "image_id": 1, "category_id": 2, "bbox": [30, 30, 20, 20], "area": 400.0, "iscrowd": 0},
        ],
    }, skip_invalid=True)
    assert dataset.num_skipped == 2
    assert dataset[0][1]["boxes"].tolist() == [[4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 50.0, 50.0]]  # what trains
    detection = {"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0], [30.0, 30.0, 50.0, 50.0]]),
                 "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])}
    metrics = DetectionTask(["thing", "other"]).evaluate(_FixedDetector(detection), dataset, 2, contextlib.nullcontext)
    stats = _pycocotools_stats(ground_truth, [
        {"image_id": 1, "category_id": 1, "bbox": [4, 4, 16, 16], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [30, 30, 20, 20], "score": 0.8}], tmp_path)
    names = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large"]
    assert [metrics[k] for k in names] == pytest.approx(stats[:6].tolist(), abs=1e-6)
    assert metrics["mar_100"] == pytest.approx(stats[8], abs=1e-6)
    assert metrics["map"] == pytest.approx(0.505, abs=1e-3)


def test_evaluate_counts_an_area_of_zero_in_the_file_as_small_as_pycocotools(tmp_path):
    """An annotation whose file gives "area": 0 (converters write it as a placeholder) was scored by its box's
    area, so eval split small/medium/large otherwise than pycocotools on the same file (it counts 0 as small):
    here APs -1 and APm 1.0 where pycocotools gives 1.0 and -1. A missing area still means the box's."""
    ground_truth, dataset = _one_image_coco(tmp_path, (96, 96), {
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 40, 40], "area": 0, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40], "iscrowd": 0},
            # no area inside the image and none in the file: the unclipped box's, 0, so small, as coco-eval's default
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [100, 10, 0, 8], "iscrowd": 0},
        ],
    }, skip_invalid=True)
    detection = {"boxes": torch.tensor([[4.0, 4.0, 44.0, 44.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([1])}
    metrics = DetectionTask(["thing"]).evaluate(_FixedDetector(detection), dataset, 1, contextlib.nullcontext)
    results = [{"image_id": 1, "category_id": 1, "bbox": [4, 4, 40, 40], "score": 0.9}]
    with_areas = copy.deepcopy(ground_truth)  # pycocotools needs every area: coco-eval's default, the box's w * h
    with_areas["annotations"][1]["area"], with_areas["annotations"][2]["area"] = 1600.0, 0.0
    stats = _pycocotools_stats(with_areas, results, tmp_path)
    names = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large"]
    assert [metrics[k] for k in names] == pytest.approx(stats[:6].tolist(), abs=1e-6)
    assert metrics["map_small"] == pytest.approx(0.5, abs=1e-2) and metrics["map_medium"] == 0.0


def test_training_leaves_crowd_regions_out_of_the_targets():
    # before: an iscrowd region (a crowd of people as one box) trained as one more object of its class
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, images, targets):
            seen.extend(targets)
            return {"loss": torch.zeros(())}

    task = DetectionTask(["a", "b"], flip=0.0)
    boxes = torch.tensor([[1.0, 1.0, 9.0, 9.0], [2.0, 2.0, 30.0, 30.0], [5.0, 5.0, 12.0, 14.0]])
    sample = {"boxes": boxes, "labels": torch.tensor([1, 2, 2]), "iscrowd": torch.tensor([0, 1, 0]),
              "area": torch.tensor([64.0, 700.0, 63.0])}
    task.training_step(Recorder(), task.collate([(torch.zeros(3, 32, 32), sample)]), "adamw")
    assert set(seen[0]) == {"boxes", "labels"}
    assert seen[0]["boxes"].tolist() == boxes[[0, 2]].tolist() and seen[0]["labels"].tolist() == [1, 2]


def test_eval_and_resume_of_a_run_on_a_coco_folder_keep_its_images_at_their_own_sizes(tmp_path):
    # before: the run recorded the first training image's width (160) as its img_size, and eval and --resume
    # rebuilt the folder at that size, squashing every image to 160×160 (boxes with it), unlike the training
    from visionzoo.train.run import checkpoint_metadata, load_for_inference

    folder = tmp_path / "coco"
    (folder / "annotations").mkdir(parents=True)
    sizes = [(96, 160), (128, 80)]
    for split in ("train", "val"):
        (folder / split).mkdir()
        images = [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i, (h, w) in enumerate(sizes, 1)]
        for image in images:
            Image.new("RGB", (image["width"], image["height"]), (40, 40, 40)).save(folder / split / image["file_name"])
        annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [20, 10, 50, 40], "area": 2000, "iscrowd": 0}
                       for i in (1, 2)]
        content = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}
        (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False,
                         checkpoint_every=10**9, precision="fp32")
    run_training("fasterrcnn_shapes", str(folder), config, model_args={"rpn_pre_nms_top_n_test": 50})
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    assert checkpoint_metadata(checkpoint)["run"]["img_size"] is None
    val = load_for_inference("fasterrcnn_shapes", checkpoint).splits["val"]
    assert [tuple(val[i][0].shape[-2:]) for i in range(2)] == sizes
    assert val[0][1]["boxes"].tolist() == [[20.0, 10.0, 70.0, 50.0]]
    config.resume, config.max_steps = True, 2
    setup, result = run_training("fasterrcnn_shapes", str(folder), config)
    assert result.steps == 2 and [tuple(setup.splits["train"][i][0].shape[-2:]) for i in range(2)] == sizes
    resized = build_setup("fasterrcnn_shapes", str(folder), img_size=64)  # --img-size still resizes them
    assert resized.run_meta["img_size"] == 64 and tuple(resized.splits["val"][0][0].shape[-2:]) == (64, 64)
    assert build_setup("fasterrcnn_shapes", "shapes").run_meta["img_size"] == 128


def test_eval_at_another_img_size_does_not_warn_of_a_scale_a_detector_resizes_away(tmp_path, capsys, monkeypatch):
    # before: "objects appear at 0.75x the scale it learned, so its scores can fall far", though the detector
    # scales every image to its min_size (128), where the objects of 96 px Shapes are as large as in training
    from visionzoo.cli import main

    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False,
                         checkpoint_every=10**9, precision="fp32", eval_every=0)
    run_training("fasterrcnn_shapes", "shapes", config, model_args={"rpn_pre_nms_top_n_test": 50}, val_images=2)
    seen = []
    monkeypatch.setattr(DetectionTask, "evaluate", lambda self, model, data, *rest: seen.append(data[0][0].shape) or {})
    capsys.readouterr()
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", str(tmp_path / "run" / "checkpoint.safetensors"),
                 "--split", "val", "--img-size", "96"]) == 0
    assert seen == [(3, 96, 96)] and "note:" not in capsys.readouterr().err



def test_predict_gives_an_image_the_same_detections_whatever_other_images_are_given(tmp_path, capsys):
    # before: the files went through the detector in one batch, padded to the largest, so the scores of a
    # 100×140 image moved (0.5890 -> 0.5897) when a 140×100 one was predicted with it, and memory grew with the
    # number of files
    from visionzoo.cli import main

    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False,
                         checkpoint_every=10**9, precision="fp32", eval_every=0)
    run_training("fasterrcnn_shapes", "shapes", config, model_args={"box_score_thresh": 0.0}, val_images=2)
    for name, size in (("wide", (140, 100)), ("tall", (100, 140))):
        Image.effect_noise(size, 60).convert("RGB").save(tmp_path / f"{name}.png")
    checkpoint = str(tmp_path / "run" / "checkpoint.safetensors")
    for out, names in (("alone", ["wide"]), ("together", ["wide", "tall"])):
        assert main(["predict", "fasterrcnn_shapes", *(str(tmp_path / f"{n}.png") for n in names), "--checkpoint",
                     checkpoint, "--out", str(tmp_path / out)]) == 0
    alone, together = (json.loads((tmp_path / out / "predictions.json").read_text()) for out in ("alone", "together"))
    assert len(together) == 2 and len(alone[0]["scores"]) > 0 and together[0] == alone[0]
    Image.new("RGB", (300, 2)).save(tmp_path / "strip.png")
    capsys.readouterr()
    assert main(["predict", "fasterrcnn_shapes", str(tmp_path / "wide.png"), str(tmp_path / "strip.png"), "--checkpoint",
                 checkpoint, "--out", str(tmp_path / "strip")]) == 2
    assert f"{tmp_path / 'strip.png'}: 2×300 px is too thin" in capsys.readouterr().err


def test_a_run_started_from_backbone_weights_evaluates_and_resumes_without_that_file(tmp_path):
    """The backbone's file (``backbone_args={"checkpoint": ...}``) is recorded among the model's arguments; eval,
    predict and --resume read it again, so they failed ("checkpoint .../backbone.pth does not exist") once it was
    gone, although the run's own checkpoint holds every weight."""
    import torchvision

    from visionzoo.cli import main
    from visionzoo.train.run import load_for_inference

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--split", "train", "val"]) == 0
    backbone = tmp_path / "backbone.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), backbone)
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False,
                         checkpoint_every=10**9, precision="fp32")
    setup, _ = run_training("fasterrcnn_shapes", str(folder), config,
                            model_args={"backbone_args": {"checkpoint": str(backbone)}, "rpn_pre_nms_top_n_test": 50})
    backbone.unlink()
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    again = load_for_inference("fasterrcnn_shapes", checkpoint).model
    for key, value in setup.model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    assert create_model("fasterrcnn_shapes", checkpoint=checkpoint).state_dict().keys() == again.state_dict().keys()
    resumed = TrainConfig(out=str(tmp_path / "run"), max_steps=2, batch_size=2, progress=False, resume=True,
                          checkpoint_every=10**9, precision="fp32")
    assert run_training("fasterrcnn_shapes", str(folder), resumed)[1].steps == 2


def test_a_checkpoint_whose_folder_now_has_more_classes_is_refused_naming_the_folder(tmp_path):
    """Without --data (predict), the message named the data as None: "... with 7 classes, None has 8". It also counted
    the detector's background as a class: a folder of 6 categories, now 7, was said to have 7, now 8."""
    from visionzoo.train.run import load_for_inference

    folder = _one_step_run_on_a_coco_folder(tmp_path)
    for split in ("train", "val"):
        ann_file = folder / "annotations" / f"instances_{split}.json"
        annotations = json.loads(ann_file.read_text())
        annotations["categories"].append({"id": 99, "name": "cat"})
        ann_file.write_text(json.dumps(annotations))
    with pytest.raises(ValueError, match=f"was trained on {folder} with 6 classes, {folder} has 7: its classifier"):
        load_for_inference("fasterrcnn_shapes", tmp_path / "run" / "checkpoint.safetensors")


def test_no_progress_also_hides_the_proposals_bar(tmp_path, monkeypatch, capfd):
    """train fastrcnn_shapes --no-progress still drew the Selective Search bar ("proposals: 100%|...| 2/2") of each
    split into a script's or CI's log."""
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False, precision="fp32")
    run_training("fastrcnn_shapes", "shapes", config, train_images=2, val_images=2)
    assert len(list((tmp_path / "cache" / "proposals").glob("*.safetensors"))) == 2, "no proposals were computed"
    assert "proposals" not in capfd.readouterr().err


def test_eval_no_progress_hides_the_proposals_bar(tmp_path, monkeypatch, capfd):
    """`visionzoo eval fastrcnn_shapes` had no --no-progress (train has): a split whose Selective Search boxes were
    not cached yet always drew their bar ("proposals: 100%|...| 2/2") into a script's or CI's log."""
    import shutil

    from visionzoo.cli import main

    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--split", "train", "val"]) == 0
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False, precision="fp32",
                         checkpoint_every=10**9)
    run_training("fastrcnn_shapes", str(folder), config)
    cache = tmp_path / "cache" / "proposals"
    argv = ["eval", "fastrcnn_shapes", "--checkpoint", str(tmp_path / "run" / "checkpoint.safetensors"), "--split", "val"]
    for flags, shown in (([], True), (["--no-progress"], False)):
        shutil.rmtree(cache)
        capfd.readouterr()
        assert main(argv + flags) == 0
        assert len(list(cache.glob("*.safetensors"))) == 1, "no proposals were computed"
        assert ("proposals" in capfd.readouterr().err) == shown


def test_train_workers_sets_the_processes_that_compute_the_proposals(tmp_path, monkeypatch):
    """`visionzoo train fastrcnn_shapes --workers 1` (or 0) computed the Selective Search boxes in one process per
    CPU all the same: --workers reached the data loader only."""
    from visionzoo.cli import main
    from visionzoo.detection import proposal_cache

    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--split", "train", "val"]) == 0
    asked, compute = [], proposal_cache.compute_proposals

    def recorded(dataset, propose, workers=None, *args, **kwargs):
        asked.append(workers)
        return compute(dataset, propose, workers, *args, **kwargs)

    monkeypatch.setattr(proposal_cache, "compute_proposals", recorded)
    assert main(["train", "fastrcnn_shapes", "--data", str(folder), "--max-steps", "1", "--batch-size", "2",
                 "--workers", "1", "--no-progress", "--precision", "fp32", "--out", str(tmp_path / "run")]) == 0
    assert asked == [1, 1]  # the train and val splits
    # at the default --workers 0 (the data loader in the main process) the costly proposals still use every CPU
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "other-cache"))
    assert main(["train", "fastrcnn_shapes", "--data", str(folder), "--max-steps", "1", "--batch-size", "2",
                 "--no-progress", "--precision", "fp32", "--out", str(tmp_path / "default")]) == 0
    assert asked == [1, 1, None, None]


def test_evaluate_takes_pycocotools_thresholds_so_a_recall_of_exactly_one_falls_on_its_step(tmp_path):
    """eval read torchmetrics' float32 recall thresholds (0.60000002 for 0.6): three of five objects found
    exactly, a recall of 0.6, missed the 0.6 step, so eval gave AP 0.594 where pycocotools gives 61/101 = 0.604."""

    boxes = [[2 + 20 * i, 4, 14, 14] for i in range(5)]
    ground_truth, dataset = _one_image_coco(tmp_path, (100, 40), {
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 196.0, "iscrowd": 0}
                        for i, box in enumerate(boxes)],
    })
    found = boxes[:3]
    detection = {"boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in found], dtype=torch.float32),
                 "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 1, 1])}
    metrics = DetectionTask(["thing"]).evaluate(_FixedDetector(detection), dataset, 2, contextlib.nullcontext)
    stats = _pycocotools_stats(ground_truth, [{"image_id": 1, "category_id": 1, "bbox": box, "score": score}
                                              for box, score in zip(found, (0.9, 0.8, 0.7))], tmp_path)
    assert stats[0] == pytest.approx(61 / 101)
    names = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large"]
    assert [metrics[k] for k in names] == pytest.approx(stats[:6].tolist(), abs=1e-6)
    assert metrics["mar_100"] == pytest.approx(stats[8], abs=1e-6)


def test_evaluate_takes_a_missing_area_as_the_files_box_w_h_as_coco_eval(tmp_path):
    """A box running out of its image with no "area" in the file took its clipped box's area (600, small) where
    coco-eval takes the file's w * h (1200, medium): eval gave map_small 1 and map_medium -1, coco-eval the reverse."""
    from visionzoo.metrics import coco_evaluate

    ground_truth, dataset = _one_image_coco(tmp_path, (64, 64), {
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [-20, 0, 40, 30], "iscrowd": 0}],
    })
    detection = {"boxes": torch.tensor([[-20.0, 0.0, 20.0, 30.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([1])}
    metrics = DetectionTask(["thing"]).evaluate(_FixedDetector(detection), dataset, 2, contextlib.nullcontext)
    reference = coco_evaluate(ground_truth, [{"image_id": 1, "category_id": 1, "bbox": [-20, 0, 40, 30],
                                              "score": 0.9}])
    assert (reference["APs"], reference["APm"]) == pytest.approx((-1.0, 1.0))
    assert (metrics["map_small"], metrics["map_medium"]) == pytest.approx((reference["APs"], reference["APm"]))


def test_predict_needs_only_the_checkpoint_once_the_training_folder_is_gone(tmp_path, capsys):
    # before: predict opened every split of the training folder for its class names (and so parsed each annotation
    # file), and once the folder had moved it stopped with "... was trained on FOLDER, which is not there"
    import shutil

    from visionzoo.cli import main
    from visionzoo.train.drawing import to_pil

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--split", "train", "val"]) == 0
    for split in ("train", "val"):  # category ids other than the labels: --coco-json must still name the folder's
        ann_file = folder / "annotations" / f"instances_{split}.json"
        annotations = json.loads(ann_file.read_text())
        for entry in annotations["categories"]:
            entry["id"] *= 10
        for entry in annotations["annotations"]:
            entry["category_id"] *= 10
        ann_file.write_text(json.dumps(annotations))
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False,
                         checkpoint_every=10**9, precision="fp32")
    setup, _ = run_training("fasterrcnn_shapes", str(folder), config,
                            model_args={"rpn_pre_nms_top_n_test": 50, "box_score_thresh": 0.0})
    to_pil(setup.splits["val"][0][0], min_side=1).save(tmp_path / "scene.png")
    argv = ["predict", "fasterrcnn_shapes", str(tmp_path / "scene.png"), "--checkpoint",
            str(tmp_path / "run" / "checkpoint.safetensors")]
    assert main([*argv, "--out", str(tmp_path / "before"), "--coco-json", str(tmp_path / "before.json")]) == 0
    shutil.rmtree(folder)
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "after"), "--coco-json", str(tmp_path / "after.json")]) == 0, \
        capsys.readouterr().err
    before = json.loads((tmp_path / "before" / "predictions.json").read_text())
    assert before and before == json.loads((tmp_path / "after" / "predictions.json").read_text())
    results = json.loads((tmp_path / "before.json").read_text())
    assert results and {r["category_id"] for r in results} <= {10, 20, 30, 40, 50, 60}
    assert results == json.loads((tmp_path / "after.json").read_text())


def test_predict_coco_json_scored_by_pycocotools_gives_evals_map_on_the_same_images(tmp_path, capsys):
    """predict --coco-json rounded scores and boxes, so its file could score another mAP than eval on the same
    images (tied scores ranked by image order); both now give pycocotools' numbers of the same detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from visionzoo.cli import main

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "8", "--split", "train", "val"]) == 0
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=20, batch_size=4, progress=False,
                         checkpoint_every=10**9, precision="fp32")
    run_training("fasterrcnn_shapes", str(folder), config)
    checkpoint, ann_file = str(tmp_path / "run" / "checkpoint.safetensors"), folder / "annotations" / "instances_val.json"
    capsys.readouterr()
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", checkpoint, "--data", str(folder), "--split", "val",
                 "--json", "--no-progress"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    images = sorted(str(path) for path in (folder / "val").glob("*.png"))
    assert main(["predict", "fasterrcnn_shapes", *images, "--checkpoint", checkpoint, "--out", str(tmp_path / "pred"),
                 "--coco-json", str(tmp_path / "dets.json"), "--image-ids", str(ann_file)]) == 0
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(ann_file))
        scored = COCOeval(ground_truth, ground_truth.loadRes(str(tmp_path / "dets.json")), "bbox")
        scored.evaluate()
        scored.accumulate()
        scored.summarize()
    assert metrics["map"] > 0 and metrics["images_scored"] == len(images) == 8
    names = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")
    assert [metrics[name] for name in names] == pytest.approx(scored.stats[:6].tolist(), abs=1e-6)


def _widened_shapes_folder(folder, splits, num):
    """A COCO folder of ``num`` Shapes images a split, each widened from 128×128 to 192×128 (boxes and areas with
    them, masks dropped); each split's annotation file as read back."""
    from visionzoo.cli import main

    assert main(["export-data", "shapes", "--out", str(folder), "--num", str(num), "--split", *splits]) == 0
    contents = {}
    for split in splits:
        ann_file = folder / "annotations" / f"instances_{split}.json"
        content = json.loads(ann_file.read_text())
        for entry in content["images"]:
            path = folder / split / entry["file_name"]
            Image.open(path).resize((192, 128), Image.BILINEAR).save(path)
            entry["width"] = 192
        for annotation in content["annotations"]:
            x, y, w, h = annotation["bbox"]
            annotation.update(bbox=[1.5 * x, y, 1.5 * w, h], area=1.5 * w * h)
            annotation.pop("segmentation", None)
        ann_file.write_text(json.dumps(content))
        contents[split] = content
    return contents


def test_predict_squashes_the_files_of_a_folder_trained_at_an_img_size_as_eval_does(tmp_path):
    """A detector trained on a COCO folder with --img-size 128 learns, and eval scores it, on every file squashed to
    128×128, but predict gave it the files at their own shapes: the objects of a 192×128 file came 1.5 times as wide as
    it had learned them, and predict --coco-json of the val images scored far under eval (mAP 0.045 against 0.082 after
    60 steps on Shapes widened to 192×128). predict now squashes such files as eval does, and maps the boxes back to
    the file's pixels, so that it returns the detections eval scores."""
    from visionzoo.cli import main
    from visionzoo.train.run import load_for_inference

    folder = tmp_path / "coco"
    content = _widened_shapes_folder(folder, ("train", "val"), 3)["val"]
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False, eval_every=0,
                         checkpoint_every=10**9, precision="fp32")
    run_training("fasterrcnn_shapes", str(folder), config, 128,
                 model_args={"box_score_thresh": 0.0, "rpn_pre_nms_top_n_test": 50})
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    setup = load_for_inference("fasterrcnn_shapes", checkpoint, split="val")
    _, scored, _ = setup.task.detect_all(setup.model.eval(), setup.splits["val"], 1, contextlib.nullcontext)
    names = [entry["file_name"] for entry in content["images"]]
    assert main(["predict", "fasterrcnn_shapes", *(str(folder / "val" / name) for name in names), "--checkpoint",
                 str(checkpoint), "--out", str(tmp_path / "pred")]) == 0
    records = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    for record, detection in zip(records, scored, strict=True):
        assert len(record["scores"]) > 0
        torch.testing.assert_close(torch.tensor(record["scores"]), detection["scores"], rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.tensor(record["boxes"]), detection["boxes"], rtol=0, atol=1e-3)
        assert max(box[2] for box in record["boxes"]) > 128  # in the file's pixels, 192 wide


def test_eval_of_a_folder_by_a_detector_trained_on_shapes_keeps_its_files_shapes_as_predict_does(tmp_path, capsys):
    """eval --data FOLDER of a detector trained on built-in Shapes squashed the folder's 192×128 files to the run's
    128×128 (its objects then 2/3 as wide as the detector learned them), while predict of the same files kept their
    shape. eval now reads them at their own size, as predict does, unless --img-size is given."""
    from visionzoo.cli import main
    from visionzoo.train.run import load_for_inference

    folder = tmp_path / "coco"
    _widened_shapes_folder(folder, ("val",), 2)
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False, eval_every=0,
                         checkpoint_every=10**9, precision="fp32")
    run_training("fasterrcnn_shapes", "shapes", config, model_args={"rpn_pre_nms_top_n_test": 50}, val_images=2)
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    val = load_for_inference("fasterrcnn_shapes", checkpoint, str(folder), split="val").splits["val"]
    assert [tuple(val[i][0].shape[-2:]) for i in range(2)] == [(128, 192)] * 2
    resized = load_for_inference("fasterrcnn_shapes", checkpoint, str(folder), 64, split="val").splits["val"]
    assert tuple(resized[0][0].shape[-2:]) == (64, 64)  # --img-size still squashes them
    shapes = load_for_inference("fasterrcnn_shapes", checkpoint, "shapes", split="val").splits["val"]
    assert tuple(shapes[0][0].shape[-2:]) == (128, 128)
    capsys.readouterr()
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", str(checkpoint), "--data", str(folder), "--split", "val",
                 "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["images_scored"] == 2


def test_predict_reads_a_detectors_files_one_at_a_time(tmp_path, monkeypatch):
    # before: every file was decoded before the first was predicted, 3.7 MB a 640×480 photo (18 GB for COCO's val)
    import visionzoo.train.commands as commands
    from visionzoo.cli import main

    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False,
                         checkpoint_every=10**9, precision="fp32", eval_every=0)
    run_training("fasterrcnn_shapes", "shapes", config, model_args={"rpn_pre_nms_top_n_test": 50}, val_images=2)
    paths = []
    for index, size in enumerate([(140, 100), (100, 140), (128, 128)]):
        Image.effect_noise(size, 60).convert("RGB").save(tmp_path / f"{index}.png")
        paths.append(str(tmp_path / f"{index}.png"))
    read = []
    original = commands.load_images
    monkeypatch.setattr(commands, "load_images", lambda files, *rest: read.append(len(files)) or original(files, *rest))
    assert main(["predict", "fasterrcnn_shapes", *paths, "--checkpoint", str(tmp_path / "run" / "checkpoint.safetensors"),
                 "--out", str(tmp_path / "pred"), "--batch-size", "8"]) == 0
    assert read == [1, 1, 1]
    assert [record["image"] for record in json.loads((tmp_path / "pred" / "predictions.json").read_text())] == paths


def _edited_detector_checkpoint(tmp_path, name: str, edit) -> Path:
    """``tmp_path / name``: the checkpoint of a one-step fasterrcnn_shapes run (in ``tmp_path / "run"``) whose box
    classifier's weight ``edit`` changed in place."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False, eval_every=0,
                         checkpoint_every=10**9, precision="fp32")
    run_training("fasterrcnn_shapes", "shapes", config, model_args={"rpn_pre_nms_top_n_test": 50}, val_images=2)
    with safe_open(tmp_path / "run" / "checkpoint.safetensors", "pt") as source:
        tensors = {key: source.get_tensor(key) for key in source.keys()}
        metadata = source.metadata()
    edit(tensors["model.roi_heads.box_predictor.cls_score.weight"])
    save_file(tensors, tmp_path / name, metadata=metadata)
    return tmp_path / name


def test_eval_and_predict_of_a_detector_whose_weights_hold_nan_refuse_rather_than_find_nothing(tmp_path, capsys):
    """A detector whose weights hold NaN (a diverged run) gave NaN scores, which its score threshold dropped: eval
    printed an mAP of 0 and predict "nothing found", as for a model that merely learned nothing. Both now refuse
    in one line naming the checkpoint and the first non-finite tensor; predict writes nothing."""

    from visionzoo.cli import main

    broken = _edited_detector_checkpoint(tmp_path, "nan.safetensors", lambda weight: weight[0, 0].fill_(float("nan")))
    message = (f"error: {broken}: fasterrcnn_shapes's weights hold non-finite values (NaN or infinity), first in "
               "roi_heads.box_predictor.cls_score.weight: its outputs would not be finite (did the run diverge?)\n")
    capsys.readouterr()
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", str(broken), "--split", "val", "--json",
                 "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"visionzoo eval: {message}"
    image = tmp_path / "0.png"
    Image.new("RGB", (128, 128), (90, 30, 30)).save(image)
    out = tmp_path / "pred"
    assert main(["predict", "fasterrcnn_shapes", str(image), "--checkpoint", str(broken), "--out", str(out),
                 "--coco-json", str(tmp_path / "results.json")]) == 2
    assert capsys.readouterr().err == f"visionzoo predict: {message}"
    assert not out.exists() and not (tmp_path / "results.json").exists()


def test_eval_and_predict_of_a_detector_whose_outputs_overflow_refuse_rather_than_find_nothing(tmp_path, capsys):
    """A detector with finite weights whose box head's logits overflowed (bf16's range, or weights grown large)
    gave NaN scores, which its score threshold dropped: eval printed a low mAP and predict "nothing found". The
    task's evaluation now raises NonFiniteOutputError, and eval and predict refuse in one line, as a classifier's."""

    from visionzoo.cli import main
    from visionzoo.train.task import NonFiniteOutputError

    # finite, but sums past the range
    broken = _edited_detector_checkpoint(tmp_path, "overflow.safetensors", lambda weight: weight.fill_(1e38))
    setup = build_setup("fasterrcnn_shapes", "shapes", checkpoint=broken, splits=("val",))
    with pytest.raises(NonFiniteOutputError):
        setup.task.evaluate(setup.model.eval(), Subset(setup.splits["val"], range(2)), 2, contextlib.nullcontext)
    capsys.readouterr()
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", str(broken), "--split", "val", "--json",
                 "--precision", "bf16", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (f"visionzoo eval: error: fasterrcnn_shapes's outputs are not finite "
                                                   f"(NaN or infinity) with {broken}; try --precision fp32\n")
    image = tmp_path / "0.png"
    Image.new("RGB", (128, 128), (90, 30, 30)).save(image)
    out = tmp_path / "pred"
    assert main(["predict", "fasterrcnn_shapes", str(image), "--checkpoint", str(broken), "--out", str(out),
                 "--coco-json", str(tmp_path / "results.json")]) == 2
    assert capsys.readouterr().err == (f"visionzoo predict: error: {image}: fasterrcnn_shapes's outputs are not "
                                       f"finite (NaN or infinity) with {broken}\n")
    assert not out.exists() and not (tmp_path / "results.json").exists()


def test_predict_that_stops_at_a_later_image_leaves_no_pictures_of_the_earlier_ones(tmp_path, capsys):
    """predict drew each image as it went: a later image the detector cannot take (a strip too thin to resize) stopped
    it with one line naming that file, but left the earlier pictures in --out without predictions.json, so the same
    command without that file was refused ("... exists; use --overwrite"). What the failed run drew is now removed,
    and --out with it where the run made it."""
    from visionzoo.cli import main

    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False, eval_every=0,
                         checkpoint_every=10**9, precision="fp32")
    run_training("fasterrcnn_shapes", "shapes", config, model_args={"rpn_pre_nms_top_n_test": 50}, val_images=2)
    checkpoint = str(tmp_path / "run" / "checkpoint.safetensors")
    images = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "thin.png"]
    for path, size in zip(images, [(64, 64), (40, 90), (2000, 10)]):
        Image.new("RGB", size, (90, 30, 30)).save(path)
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", "fasterrcnn_shapes", *map(str, images), "--checkpoint", checkpoint, "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"visionzoo predict: error: {images[2]}: 10×2000 px is too thin to "
                                       "detect in: with its long side at max_size 128 its short side would be under "
                                       "1 px\n")
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["predict", "fasterrcnn_shapes", *map(str, images), "--checkpoint", checkpoint, "--out", str(out)]) == 2
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]  # the user's folder and file stay
    assert main(["predict", "fasterrcnn_shapes", *map(str, images[:2]), "--checkpoint", checkpoint, "--out",
                 str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["a.png", "b.png", "notes.txt", "predictions.json"]


def _folder_with_a_thin_strip(folder, annotation_name: str) -> None:
    """Four black PNGs in ``folder`` (the third, 2.png, a 10×2000 strip too thin to resize) and their COCO file."""
    images, annotations = [], []
    for index, size in enumerate([(64, 64), (64, 64), (2000, 10), (64, 64)]):
        Image.new("RGB", size).save(folder / f"{index}.png")
        images.append({"id": index + 1, "file_name": f"{index}.png", "width": size[0], "height": size[1]})
        annotations.append({"id": index + 1, "image_id": index + 1, "category_id": 1, "bbox": [1, 1, 5, 5],
                            "iscrowd": 0, "area": 25})
    (folder / annotation_name).write_text(json.dumps({"images": images, "annotations": annotations,
                                                    "categories": [{"id": 1, "name": "circle"}]}))


def test_evaluate_names_the_file_of_an_image_the_detector_cannot_take(tmp_path):
    """Evaluation over a COCO folder holding a strip too thin to resize stopped with "image 0 of 10×2000 px is too
    thin to detect in: ...", numbering the image in its batch of images of one size (0 here, the split's 2): the user
    had to search the folder for it. The error now begins with that image's file."""
    from visionzoo.data.coco import CocoDetection

    _folder_with_a_thin_strip(tmp_path, "instances.json")
    data = CocoDetection(tmp_path, tmp_path / "instances.json", load_masks=False)
    torch.manual_seed(0)
    model = create_model("fasterrcnn_shapes", num_classes=2, rpn_pre_nms_top_n_test=50).eval()
    with pytest.raises(ValueError) as error:
        DetectionTask(["circle"]).evaluate(model, data, 4, contextlib.nullcontext)
    assert str(error.value) == (f"{tmp_path / '2.png'}: 10×2000 px is too thin to detect in: with its long "
                                "side at max_size 128 its short side would be under 1 px")


def test_training_on_a_folder_with_an_image_too_thin_to_resize_names_its_file_before_training(tmp_path, capsys):
    """train on a COCO file holding a strip too thin to resize failed at the step that drew it, with "image 2 of
    10×2000 px is too thin to detect in: ...", numbering the image in its shuffled batch and naming no file. The
    set-up now reads the sizes the annotation file gives and names the file before the first step."""
    from visionzoo.cli import main

    _folder_with_a_thin_strip(tmp_path, "ann.json")
    capsys.readouterr()
    assert main(["train", "fasterrcnn_shapes", "--data", str(tmp_path / "ann.json"), "--max-steps", "1",
                 "--batch-size", "4", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"visionzoo train: error: {tmp_path / '2.png'}: 10×2000 px is too thin for fasterrcnn_shapes to detect in: with "
        f"its long side at max_size 128 its short side would be under 1 px; leave it out of {tmp_path / 'ann.json'}, or "
        "give --img-size to squash every image to that square")
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_eval_of_a_split_without_ground_truth_that_counts_says_why_every_metric_is_minus_one(tmp_path, capsys):
    """eval on a split whose annotations are none (or only crowd regions) printed -1.0000 for every metric and
    nothing else: pycocotools' mark for nothing to score, read as a score. It now says so."""
    from visionzoo.cli import main

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--split", "val"]) == 0
    annotations = folder / "annotations" / "instances_val.json"
    coco = json.loads(annotations.read_text())
    for annotation in coco["annotations"]:
        annotation["iscrowd"] = 1
    annotations.write_text(json.dumps(coco))
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False, eval_every=0,
                         checkpoint_every=10**9, precision="fp32")
    run_training("fasterrcnn_shapes", "shapes", config, model_args={"rpn_pre_nms_top_n_test": 50}, val_images=2)
    capsys.readouterr()
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", str(tmp_path / "run" / "checkpoint.safetensors"),
                 "--data", str(folder), "--split", "val", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "-1.0000" in out
    assert "note: the val split holds no ground-truth objects to score (no annotations, as an image-info file, or " \
           "only crowd regions): every metric is -1, pycocotools' mark for nothing to score" in err


def test_predict_names_the_file_too_small_for_every_sliding_window_not_image_0(tmp_path, monkeypatch, caplog):
    # before: predict runs the detector a file at a time, so the warning said "image 0 of 8×8 px holds no sliding
    # window" of whichever file it was; evaluation numbered the image in its group of one size in a batch
    import visionzoo.train.commands as commands
    from visionzoo.cli import main

    torch.manual_seed(0)
    setup = build_setup("sliding_window_shapes", "shapes", splits=("val",))
    monkeypatch.setattr(commands, "load_for_inference", lambda *args, **kwargs: setup)
    paths = [tmp_path / "big.png", tmp_path / "tiny.png"]
    Image.effect_noise((40, 40), 60).convert("RGB").save(paths[0])
    Image.effect_noise((8, 8), 60).convert("RGB").save(paths[1])
    with caplog.at_level("WARNING", logger="visionzoo"):
        assert main(["predict", "sliding_window_shapes", *map(str, paths), "--checkpoint", "run.safetensors",
                     "--out", str(tmp_path / "pred")]) == 0
    assert [record.getMessage() for record in caplog.records] == [
        f"{paths[1]} of 8×8 px holds no sliding window (sizes (16, 24, 32, 48, 64) at aspect ratios (0.5, 1.0, 2.0)): "
        "nothing is detected in it (said once for this model; later ones are logged at debug level)"]
    caplog.clear()
    with torch.no_grad(), caplog.at_level("WARNING", logger="visionzoo"):
        setup.task.detect(create_model("sliding_window_shapes").eval(), [torch.rand(3, 40, 40), torch.rand(3, 8, 8)],
                          contextlib.nullcontext, name_of=["a.png", "b.png"].__getitem__)
    assert caplog.records[0].getMessage().startswith("b.png of 8×8 px holds no sliding window")


def test_an_image_info_file_numbers_predictions_and_is_refused_for_scoring_by_name(tmp_path, capsys):
    """A COCO file without 'annotations' (an image-info file, as COCO's image_info_test2017.json) gives predict
    --image-ids its ids as pycocotools would; eval of it said only "the top level is missing 'annotations'", and now
    says the file is an image-info file, with no boxes to score against."""
    from visionzoo.cli import main

    folder = _one_step_run_on_a_coco_folder(tmp_path)
    ann_file = folder / "annotations" / "instances_val.json"
    content = json.loads(ann_file.read_text())
    del content["annotations"]
    ann_file.write_text(json.dumps(content))
    checkpoint = str(tmp_path / "run" / "checkpoint.safetensors")
    images = sorted(str(path) for path in (folder / "val").glob("*.png"))
    capsys.readouterr()
    assert main(["predict", "fasterrcnn_shapes", *images, "--checkpoint", checkpoint, "--out", str(tmp_path / "pred"),
                 "--coco-json", str(tmp_path / "dets.json"), "--image-ids", str(ann_file)]) == 0
    ids = {entry["file_name"]: entry["id"] for entry in content["images"]}
    assert {r["image_id"] for r in json.loads((tmp_path / "dets.json").read_text())} <= set(ids.values())
    capsys.readouterr()
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", checkpoint, "--data", str(folder), "--split", "val",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{ann_file}: it holds no 'annotations', as an image-info file" in err


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_an_unreadable_val_image_is_named_before_training_not_at_the_final_evaluation(tmp_path, capsys, damage):
    """A val image that is no image (or a truncated PNG), whose entry gives its width and height, was found only when
    read: train spent its whole budget, then stopped at the final evaluation. Set-up now names the file."""
    from visionzoo.cli import main

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--image-size", "64", "--split",
                 "train", "val"]) == 0
    bad = folder / "val" / "000001.png"
    bad.write_bytes(b"not an image" if damage == "text" else bad.read_bytes()[:-40])
    capsys.readouterr()
    assert main(["train", "fasterrcnn_shapes", "--data", str(folder), "--max-steps", "1", "--batch-size", "2",
                 "--precision", "fp32", "--no-progress", "--out", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    assert "training fasterrcnn_shapes" not in captured.out + captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert f"instances_val.json: image id 1: image {bad} cannot be read" in captured.err
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_eval_names_an_unreadable_image_before_evaluating_any(tmp_path, capsys, monkeypatch):
    """eval of a split with a file that is no image evaluated every image before it (minutes on COCO's val), then
    stopped naming it; it is now named before the first image is evaluated."""
    from visionzoo.cli import main
    from visionzoo.train.detection import DetectionTask

    folder = _one_step_run_on_a_coco_folder(tmp_path)
    bad = folder / "val" / "000001.png"
    bad.write_bytes(b"not an image")
    evaluated = []
    monkeypatch.setattr(DetectionTask, "evaluate", lambda *args, **kwargs: evaluated.append(1) or {})
    capsys.readouterr()
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", str(tmp_path / "run" / "checkpoint.safetensors"),
                 "--data", str(folder), "--split", "val", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"instances_val.json: image id 1: image {bad} cannot be read" in err
    assert evaluated == []


def test_predict_pretrained_names_a_detectors_objects_with_cocos_categories(tmp_path, monkeypatch, capsys):
    """`visionzoo predict fasterrcnn_resnet50_fpn --pretrained`: torchvision's COCO weights (here a random file of
    their layout, served over loopback) detect objects named by COCO's categories as torchvision names them, with
    the detector's own resizing; --coco-json writes each label as its COCO category id."""
    import dataclasses
    import hashlib

    import numpy as np
    import torchvision
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    from served_file import served_file
    from visionzoo.cli import main
    from visionzoo.models import _registry as registry
    from visionzoo.models import get_model_entry

    name = "fasterrcnn_resnet50_fpn"
    torch.manual_seed(0)
    payload = tmp_path / "fasterrcnn_resnet50_fpn_coco-random.pth"
    torch.save(torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(),
               payload)
    entry = get_model_entry(name)
    # small inputs to be quick, and every detection of the random head kept (its scores are about 1/91)
    small = {**entry.pretrained.model_args, "min_size": 160, "max_size": 160, "box_score_thresh": 0.0}
    weights = dataclasses.replace(entry.pretrained, model_args=small,
                                  sha256=hashlib.sha256(payload.read_bytes()).hexdigest())
    monkeypatch.setitem(registry._MODELS, name, dataclasses.replace(entry, pretrained=weights))
    pixels = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "street.png")
    with served_file(payload, monkeypatch, tmp_path):
        assert main(["predict", name, "--pretrained", str(tmp_path / "street.png"), "--out", str(tmp_path / "preds"),
                     "--coco-json", str(tmp_path / "results.json")]) == 0
        model = create_model(name, pretrained=True).eval()
    (record,) = json.loads((tmp_path / "preds" / "predictions.json").read_text())
    with torch.no_grad():
        (expected,) = model([torch.from_numpy(pixels).permute(2, 0, 1).float() / 255])
    categories = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    assert len(record["labels"]) > 0
    assert record["label_ids"] == expected["labels"].tolist()
    assert record["labels"] == [categories[label] for label in expected["labels"].tolist()]
    torch.testing.assert_close(torch.tensor(record["boxes"]), expected["boxes"])
    torch.testing.assert_close(torch.tensor(record["scores"]), expected["scores"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["category_id"] for r in results] == record["label_ids"]


def test_a_detector_too_large_for_the_memory_is_refused_before_the_run(tmp_path, monkeypatch):
    """Only the autoregressive task checked that a model's training fits in memory; a detection run made its folder
    and started whatever the memory; the engine refuses it before the folder is made."""
    import visionzoo.train.task as task_module

    monkeypatch.setattr(task_module, "available_memory", lambda: 2**16)
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=2, progress=False, precision="fp32")
    with pytest.raises(ValueError, match=r"^fasterrcnn_shapes has [\d,]+ parameters: training it needs at least .* "
                                         r"this machine has .* available: .*--task detection"):
        run_training("fasterrcnn_shapes", "shapes", config, val_images=2)
    assert not (tmp_path / "run").exists()
