"""The command line end to end: train → eval → predict on Digits, resume, and one-line user errors."""

import json
import logging
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from visionzoo.checkpoint import read_checkpoint, save_checkpoint
from visionzoo.cli import _COMMANDS, build_parser, main
from visionzoo.data import Digits
from visionzoo.models import create_model
from visionzoo.train.commands import parse_model_arg

TRAIN = ["train", "resnet18", "--data", "digits", "--img-size", "16", "--model-arg", "small_input=true",
         "--batch-size", "32", "--precision", "fp32", "--no-progress"]


def one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "r18"
    assert main([*TRAIN, "--max-steps", "40", "--checkpoint-every", "20", "--out", str(run)]) == 0
    return run


def test_train_writes_the_run_folder_and_eval_reproduces_its_validation_accuracy(trained, capsys):
    for name in ("checkpoint.safetensors", "checkpoint.json", "metrics.jsonl", "loss.png", "summary.json"):
        assert (trained / name).is_file(), name
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["metrics"]["accuracy"] > 0.5
    capsys.readouterr()
    assert main(["eval", "resnet18", "--checkpoint", str(trained / "checkpoint.safetensors"),
                 "--split", "val", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(summary["metrics"]["accuracy"])
    assert metrics["loss"] == pytest.approx(summary["metrics"]["loss"], rel=1e-4)
    assert capsys.readouterr().err == ""  # at its own size: no note


@pytest.mark.parametrize("split, batch_size", [("test", "128"), ("train", "100")])
def test_eval_prints_what_the_loaded_model_scores_on_the_split(trained, capsys, split, batch_size):
    """eval's numbers against the checkpoint's model run here on the same split: top-1, top-5 and the mean
    cross-entropy, whatever the batching (100 leaves a last batch of 57 of the 1,257 training images)."""
    digits = Digits(split, image_size=16)
    images = torch.stack([digits[i][0] for i in range(len(digits))])
    labels = torch.tensor([digits[i][1] for i in range(len(digits))])
    model = create_model("resnet18", checkpoint=trained / "checkpoint.safetensors").eval()
    with torch.no_grad():
        logits = model(_normalised(model, images))
    capsys.readouterr()
    assert main(["eval", "resnet18", "--checkpoint", str(trained / "checkpoint.safetensors"), "--split", split,
                 "--batch-size", batch_size, "--json", "--no-progress"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == (logits.argmax(1) == labels).sum().item() / len(labels)
    assert metrics["top5"] == (logits.topk(5).indices == labels[:, None]).any(1).sum().item() / len(labels)
    assert metrics["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


def test_eval_at_another_size_than_trained_says_so_beside_its_numbers(trained, capsys):
    """A detector evaluated at an odd --img-size reported mAP ~0 without a word."""
    capsys.readouterr()
    assert main(["eval", "resnet18", "--checkpoint", str(trained / "checkpoint.safetensors"),
                 "--img-size", "24", "--json"]) == 0
    captured = capsys.readouterr()
    assert "accuracy" in json.loads(captured.out)
    assert captured.err.startswith("note: ") and "trained at 16 px; at --img-size 24" in captured.err
    assert captured.err.count("\n") == 1


def test_predict_draws_pngs_with_the_models_top_class(trained, tmp_path, capsys):
    digits = Digits("test", image_size=16)
    paths = digit_files(tmp_path, [f"digit{index}" for index in range(3)])
    out = tmp_path / "pred"
    assert main(["predict", "resnet18", *paths, "--checkpoint", str(trained / "checkpoint.safetensors"),
                 "--out", str(out)]) == 0
    records = json.loads((out / "predictions.json").read_text())
    model = create_model("resnet18", checkpoint=trained / "checkpoint.safetensors").eval()
    for index, record in enumerate(records):
        assert (out / f"digit{index}.png").is_file()
        image, _ = digits[index]
        quantised = (image * 255).round() / 255
        with torch.no_grad():
            logits = model(_normalised(model, quantised[None]))
        assert record["labels"][0] == str(int(logits.argmax()))
        assert record["scores"] == sorted(record["scores"], reverse=True)
    capsys.readouterr()
    one_line_error(capsys, ["predict", "resnet18", *paths, "--checkpoint", str(trained / "checkpoint.safetensors"),
                            "--out", str(out)], "exists", "--overwrite")
    one_line_error(capsys, ["predict", "resnet18", *paths, "--checkpoint", str(trained / "checkpoint.safetensors"),
                            "--out", str(tmp_path / "other"), "--min-score", "0.3"], "--min-score filters detections")



def test_predict_into_a_folder_of_the_users_files_names_every_file_overwrite_would_replace(trained, tmp_path, capsys):
    """predict into a folder holding the user's own a.png and b.png said "OUT/a.png exists; use --overwrite to replace
    it": --overwrite then replaced b.png too, which it never named. The refusal now counts and names them all."""
    out, images = tmp_path / "mine", tmp_path / "photos"
    out.mkdir()
    images.mkdir()
    for name in ("a", "b"):
        (out / f"{name}.png").write_bytes(b"the user's own picture")
    paths = digit_files(images, "abc", ".jpg")
    capsys.readouterr()
    one_line_error(capsys, ["predict", "resnet18", *paths, "--checkpoint", str(trained / "checkpoint.safetensors"),
                            "--out", str(out)], f"{out / 'a.png'} exists, and 1 more file predict writes (b.png); "
                                                 "use --overwrite to replace them")
    assert (out / "b.png").read_bytes() == b"the user's own picture" and not (out / "c.png").exists()


def test_predict_runs_a_classifier_batch_size_images_at_a_time(trained, tmp_path, capsys, monkeypatch):
    """predict ran every image given through the classifier in one forward: a folder's thousand photos at 224 px
    held the activations of all of them at once (200 images at 128 px took 400 MB more than 10). It now takes
    --batch-size images at a time (default 64), with the same predictions; --batch-size 0 is one line."""
    from visionzoo.train.classification import ClassificationTask

    paths = digit_files(tmp_path, [f"d{index}" for index in range(5)])
    sizes = []
    original = ClassificationTask.predict

    def counting(self, model, images, autocast):
        sizes.append(len(images))
        return original(self, model, images, autocast)

    monkeypatch.setattr(ClassificationTask, "predict", counting)
    checkpoint = ["--checkpoint", str(trained / "checkpoint.safetensors")]
    assert main(["predict", "resnet18", *paths, *checkpoint, "--out", str(tmp_path / "two"), "--batch-size", "2"]) == 0
    assert sizes == [2, 2, 1]
    sizes.clear()
    assert main(["predict", "resnet18", *paths, *checkpoint, "--out", str(tmp_path / "all")]) == 0
    assert sizes == [5]
    batched, whole = (json.loads((tmp_path / name / "predictions.json").read_text()) for name in ("two", "all"))
    for one, other in zip(batched, whole, strict=True):
        assert one["labels"] == other["labels"]
        assert one["scores"] == pytest.approx(other["scores"], abs=1e-5)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "resnet18", *paths, *checkpoint, "--out", str(tmp_path / "zero"), "--batch-size", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--batch-size: expected a positive integer, got 0" in err


def test_predict_decodes_the_files_a_batch_at_a_time_and_refuses_an_unreadable_one_before_writing(trained, tmp_path,
                                                                                                  capsys, monkeypatch):
    """predict decoded every file before predicting any: a folder of 200 photos of 640×480 took 650 MB more than 20
    (3.7 MB of float pixels a photo, 18 GB for COCO's 5,000 val images). It now reads --batch-size files at a time
    (a detector one), drawing each batch before the next is read, and still refuses a file it cannot read, or a
    missing one, before it writes anything."""
    import visionzoo.train.commands as commands

    paths = digit_files(tmp_path, [f"d{index}" for index in range(5)])
    read = []
    original = commands.load_images

    def counting(files, *rest):
        read.append(len(files))
        return original(files, *rest)

    monkeypatch.setattr(commands, "load_images", counting)
    checkpoint = ["--checkpoint", str(trained / "checkpoint.safetensors")]
    assert main(["predict", "resnet18", *paths, *checkpoint, "--out", str(tmp_path / "two"), "--batch-size", "2"]) == 0
    assert read == [2, 2, 1]
    read.clear()
    assert main(["predict", "resnet18", *paths, *checkpoint, "--out", str(tmp_path / "all")]) == 0
    assert read == [5]
    batched, whole = (json.loads((tmp_path / name / "predictions.json").read_text()) for name in ("two", "all"))
    for one, other in zip(batched, whole, strict=True):
        assert one["image"] == other["image"] and one["labels"] == other["labels"]
        assert one["scores"] == pytest.approx(other["scores"], abs=1e-5)
    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == ["d0.png", "d1.png", "d2.png", "d3.png",
                                                                        "d4.png", "predictions.json"]
    (tmp_path / "broken.png").write_bytes(b"not an image")
    capsys.readouterr()
    for last, problem in ((tmp_path / "broken.png", "cannot be read"), (tmp_path / "gone.png", "does not exist")):
        one_line_error(capsys, ["predict", "resnet18", *paths, str(last), *checkpoint, "--out", str(tmp_path / "bad"),
                                "--batch-size", "2"], f"image {last} {problem}")
        assert not (tmp_path / "bad").exists()


def test_eval_on_the_cpu_by_device_gives_todays_metrics_and_cuda_without_a_gpu_is_one_line(trained, capsys,
                                                                                           monkeypatch):
    """eval took no --device (refused as an unrecognized argument) and always ran on the CPU. --device cpu gives the
    metrics eval gave without it; --device cuda where no GPU is says so in one line before the checkpoint is read."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the default is then the CPU, as before
    argv = ["eval", "resnet18", "--checkpoint", str(trained / "checkpoint.safetensors"), "--split", "val", "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    before = json.loads(capsys.readouterr().out)
    assert main([*argv, "--device", "cpu", "--precision", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out) == before
    one_line_error(capsys, [*argv[:3], str(trained / "missing.safetensors"), "--device", "cuda"],
                   "--device cuda was asked for, but no CUDA device is available")


def test_eval_in_bf16_scores_close_to_fp32(trained, capsys):
    # 64 of the 270 images: where bf16 is emulated (a CPU without AMX or AVX512-BF16) the whole split takes 40 s
    argv = ["eval", "resnet18", "--checkpoint", str(trained / "checkpoint.safetensors"), "--split", "val", "--json",
            "--device", "cpu", "--max-images", "64"]
    capsys.readouterr()
    assert main([*argv, "--precision", "fp32"]) == 0
    fp32 = json.loads(capsys.readouterr().out)
    assert main([*argv, "--precision", "bf16"]) == 0
    bf16 = json.loads(capsys.readouterr().out)
    assert bf16["loss"] != fp32["loss"]  # bf16 autocast ran
    assert abs(bf16["accuracy"] - fp32["accuracy"]) <= 0.05
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05)


def test_predict_on_the_cpu_by_device_writes_todays_files_and_cuda_without_a_gpu_is_one_line(trained, tmp_path,
                                                                                            capsys, monkeypatch):
    """predict took no --device (refused as an unrecognized argument) and always ran on the CPU. --device cpu writes
    the predictions and pictures predict wrote without it; --device cuda where no GPU is says so in one line and
    writes nothing."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the default is then the CPU, as before
    paths = digit_files(tmp_path, [f"d{index}" for index in range(3)])
    argv = ["predict", "resnet18", *paths, "--checkpoint", str(trained / "checkpoint.safetensors")]
    assert main([*argv, "--out", str(tmp_path / "before")]) == 0
    assert main([*argv, "--out", str(tmp_path / "cpu"), "--device", "cpu", "--precision", "fp32"]) == 0
    for name in ("predictions.json", "d0.png", "d1.png", "d2.png"):
        assert (tmp_path / "cpu" / name).read_bytes() == (tmp_path / "before" / name).read_bytes(), name
    capsys.readouterr()
    one_line_error(capsys, [*argv, "--out", str(tmp_path / "cuda"), "--device", "cuda"],
                   "--device cuda was asked for, but no CUDA device is available")
    assert not (tmp_path / "cuda").exists()


def test_eval_on_a_folder_without_coco_annotations_names_every_split_looked_for(trained, tmp_path, capsys):
    """eval --data FOLDER (a folder of images, no COCO annotations) at the default --split test said "no annotations
    for split 'train'", a split the user never asked for; it now says the folder has none for any split."""
    Image.new("L", (16, 16)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    capsys.readouterr()
    err = one_line_error(capsys, ["eval", "resnet18", "--checkpoint", str(trained / "checkpoint.safetensors"),
                                  "--data", str(tmp_path)], f"{tmp_path} has no COCO annotations for any split",
                         "instances_{train,val,test}.json")
    assert "split 'train'" not in err


def test_eval_at_a_split_a_coco_folder_lacks_names_the_splits_it_has(trained, tmp_path, capsys):
    """eval --data FOLDER without --split, on a folder exported with --split train val, said "no annotations for split
    'test' in FOLDER: looked for ..." and left the user to find which splits there are; it now names them and the
    --split to give."""
    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--split", "train", "val"]) == 0
    capsys.readouterr()
    one_line_error(capsys, ["eval", "resnet18", "--checkpoint", str(trained / "checkpoint.safetensors"),
                            "--data", str(folder)], "no annotations for split 'test'", "instances_test.json",
                   "; it has train and val: give --split val")
    (folder / "annotations" / "instances_train.json").unlink()
    one_line_error(capsys, ["eval", "resnet18", "--checkpoint", str(trained / "checkpoint.safetensors"),
                            "--data", str(folder), "--split", "train"], "; it has val: give --split val")

def digit_files(folder, names, suffix=".png"):
    """Digits' first test images saved as ``folder/NAME+suffix`` (grayscale, 16 px), one per name: their paths."""
    digits = Digits("test", image_size=16)
    paths = []
    for index, name in enumerate(names):
        path = folder / f"{name}{suffix}"
        Image.fromarray((digits[index][0][0] * 255).round().byte().numpy(), "L").save(path)
        paths.append(str(path))
    return paths


def _normalised(model, images):
    from visionzoo.train.classification import normalization

    mean, std = normalization(model, images.shape[1])
    return (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def test_resume_extends_a_finished_run_to_a_longer_budget(tmp_path):
    run = tmp_path / "short"
    assert main([*TRAIN, "--max-steps", "4", "--out", str(run)]) == 0
    assert main([*TRAIN, "--max-steps", "7", "--out", str(run), "--resume"]) == 0
    _, meta = read_checkpoint(run / "checkpoint.safetensors")
    assert meta["step"] == 7 and meta["total_steps"] == 7
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"split"' not in line]
    assert steps == list(range(1, 8))


def test_resume_with_eval_every_0_drops_the_runs_evaluations_until_the_end(tmp_path, capsys):
    """A resumed run keeps its --eval-every, and --eval-every took only positive periods: a run started with
    --eval-every 2 could not be resumed with its evaluations left to the end (--eval-every 0 was an argparse error)."""
    run = tmp_path / "run"
    assert main([*TRAIN, "--max-steps", "2", "--eval-every", "2", "--train-size", "64", "--out", str(run)]) == 0
    assert main([*TRAIN, "--max-steps", "6", "--eval-every", "0", "--out", str(run), "--resume"]) == 0
    evaluated = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
                 if '"split"' in line]
    assert evaluated == [2, 6]


def test_resume_keeps_the_model_args_the_run_was_trained_with(tmp_path):
    """Without --model-arg small_input=true the resumed ResNet had a 7x7 stride-2 stem, and its weights did not load."""
    run = tmp_path / "run"
    assert main([*TRAIN, "--max-steps", "2", "--out", str(run)]) == 0
    bare = [arg for arg in TRAIN if arg not in ("--model-arg", "small_input=true")]
    assert len(bare) == len(TRAIN) - 2
    assert main([*bare, "--max-steps", "3", "--out", str(run), "--resume"]) == 0
    _, meta = read_checkpoint(run / "checkpoint.safetensors")
    assert meta["step"] == 3 and meta["run"]["model_args"] == {"small_input": True}
    assert meta["model"]["args"]["small_input"] is True


@pytest.mark.parametrize("model", ["resnet18", "vit_tiny_patch16_224"])
def test_resume_with_a_model_arg_its_weights_do_not_fit_is_one_line_naming_it(tmp_path, capsys, model):
    """--resume with --model-arg small_input=false (or embed_dim=96) failed as 'checkpoint RUN/checkpoint.safetensors
    does not fit model ...: 151 shape mismatches: ...', naming neither --model-arg nor the key; an argument the weights
    still fit (drop_path_rate) is taken."""
    run = tmp_path / "run"
    small = ["train", model, "--data", "digits", "--img-size", "16", "--batch-size", "4", "--precision", "fp32",
             "--no-progress", "--out", str(run), "--model-arg"]
    trained, changed, was = {"resnet18": ("small_input=true", "small_input=false", "with small_input=true"),
                             "vit_tiny_patch16_224": ("patch_size=4", "embed_dim=96", "without embed_dim")}[model]
    assert main([*small, trained, "--model-arg", "img_size=16" if "vit" in model else trained, "--max-steps", "1"]) == 0
    capsys.readouterr()
    one_line_error(capsys, [*small, changed, "--max-steps", "2", "--resume"],
                   f"--model-arg {changed}: the run in {run} was trained {was}",
                   f"leave --model-arg {changed.split('=')[0]} out to continue it")
    assert main([*small, "drop_path_rate=0.1", "--max-steps", "2", "--resume"]) == 0


def test_resume_continues_at_the_trained_size_and_refuses_another(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--max-steps", "2", "--out", str(run)]) == 0
    unsized = TRAIN[:4] + TRAIN[6:]  # without --img-size 16
    assert "--img-size" not in unsized
    # Continued at its 16 px, not the data set's 8 px (which the resume check would refuse).
    assert main([*unsized, "--max-steps", "3", "--out", str(run), "--resume"]) == 0
    assert read_checkpoint(run / "checkpoint.safetensors")[1]["step"] == 3
    one_line_error(capsys, [*unsized, "--img-size", "24", "--max-steps", "4", "--out", str(run), "--resume"],
                   "trained at 16 px", "--img-size 16")


def test_resume_on_another_built_in_data_set_is_refused_naming_the_runs(tmp_path, capsys):
    """It failed in the strict load, naming mismatched tensor shapes and not the data."""
    run = tmp_path / "run"
    assert main([*TRAIN, "--max-steps", "2", "--out", str(run)]) == 0
    data = TRAIN.index("--data") + 1
    other = [*TRAIN[:data], "shapes", *TRAIN[data + 1:]]
    one_line_error(capsys, [*other, "--max-steps", "3", "--out", str(run), "--resume"],
                   "trained on digits, not shapes", "--data digits")
    assert read_checkpoint(run / "checkpoint.safetensors")[1]["step"] == 2


def test_resume_keeps_the_trained_optimiser_settings_and_refuses_others(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--lr", "5e-4", "--weight-decay", "0.1", "--warmup-steps", "1", "--max-steps", "2",
                 "--out", str(run)]) == 0
    # Without the settings again: the run goes on with its own, not the task's defaults (lr 2e-3), and logs them.
    assert main([*TRAIN, "--max-steps", "3", "--out", str(run), "--resume"]) == 0
    _, meta = read_checkpoint(run / "checkpoint.safetensors")
    assert meta["step"] == 3
    assert (meta["config"]["lr"], meta["config"]["weight_decay"], meta["config"]["warmup_steps"]) == (5e-4, 0.1, 1)
    groups = meta["optimizers"]["model"]["param_groups"]
    assert {group["base_lr"] for group in groups} == {5e-4} and max(group["weight_decay"] for group in groups) == 0.1
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"split"' not in line]
    assert abs(logged[-1]["lr"] - groups[0]["lr"]) < 1e-12  # the log shows the rate the optimizer used
    one_line_error(capsys, [*TRAIN, "--lr", "1e-3", "--max-steps", "4", "--out", str(run), "--resume"],
                   "trained with --lr 0.0005", "leave --lr out")
    one_line_error(capsys, [*TRAIN, "--weight-decay", "0.05", "--max-steps", "4", "--out", str(run), "--resume"],
                   "--weight-decay 0.1")
    one_line_error(capsys, [*TRAIN, "--opt-betas", "0.8", "0.99", "--max-steps", "4", "--out", str(run), "--resume"],
                   "trained with --opt-betas 0.9 0.999")


def test_unknown_model_names_the_closest(capsys):
    one_line_error(capsys, ["train", "resnet19", "--data", "digits"], "resnet19", "resnet18")


def test_unknown_dataset_names_the_closest(capsys, tmp_path):
    one_line_error(capsys, ["train", "resnet18", "--data", "digitz", "--out", str(tmp_path / "x")], "digits")


def test_missing_checkpoint_file(capsys, tmp_path):
    one_line_error(capsys, ["eval", "resnet18", "--checkpoint", str(tmp_path / "none.safetensors")],
                   "none.safetensors", "does not exist")


def test_bad_option_value_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "resnet18", "--data", "digits", "--batch-size", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "positive integer" in err


@pytest.mark.parametrize("flag, value, fragment", [
    ("--grad-clip", "-1", "number >= 0"), ("--weight-decay", "-1", "number >= 0"),
    ("--warmup-steps", "-5", "integer >= 0"), ("--ema-decay", "1.5", "[0, 1)"), ("--lr", "inf", "finite positive"),
    ("--label-smoothing", "2", "[0, 1)"), ("--mixup", "-1", "number >= 0"), ("--translate", "-3", "integer >= 0"),
    ("--distillation-alpha", "1.5", "[0, 1]"), ("--distillation-tau", "0", "positive"),
    ("--hflip", "1.5", "[0, 1]"), ("--vflip", "-0.1", "[0, 1]"), ("--rot90", "2", "[0, 1]"),
    ("--seed", str(2**64), "[-2**63, 2**64)"),  # was torch's "Overflow when unpacking long long"
])
def test_training_settings_out_of_range_are_refused_when_parsed(capsys, flag, value, fragment):
    """A negative --grad-clip, for one, flipped every gradient: the run trained uphill and finished with rc 0."""
    with pytest.raises(SystemExit) as exit_info:
        main([*TRAIN, "--max-steps", "1", flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err and fragment in err, err


def test_the_library_refuses_the_same_settings_naming_their_flags(tmp_path):
    from visionzoo.train import TrainConfig
    from visionzoo.train.classification import ClassificationTask
    from visionzoo.train.engine import resolve_config

    task = ClassificationTask(["a", "b"])
    with pytest.raises(ValueError, match=r"--grad-clip must lie in \[0.0, inf\), got -1"):
        resolve_config(TrainConfig(out=str(tmp_path), grad_clip=-1.0), task)
    with pytest.raises(ValueError, match="--ema-decay"):
        resolve_config(TrainConfig(out=str(tmp_path), ema_decay=float("nan")), task)
    assert resolve_config(TrainConfig(out=str(tmp_path), grad_clip=0.0, ema_decay=0.999), task).grad_clip == 0.0
    with pytest.raises(ValueError, match=r"--label-smoothing must be in \[0, 1\), got 2"):
        ClassificationTask(["a", "b"], label_smoothing=2)


@pytest.mark.parametrize("text, value", [
    ("small_input=False", False), ("small_input=false", False), ("small_input=True", True), ("small_input=None", None),
    ("global_pool=avg", "avg"), ("drop_rate=0.1", 0.1), ("depths=[2, 2]", [2, 2]),
])
def test_model_arg_values_read_python_literals_as_json_ones(text, value):
    """--model-arg small_input=False was the string 'False', which is true: the ResNet got the small-input stem."""
    assert parse_model_arg(text) == (text.split("=")[0], value)


@pytest.mark.parametrize("text", ["=5", " =5"])
def test_a_model_arg_without_a_key_is_refused_when_parsed(capsys, tmp_path, text):
    """--model-arg =5 failed as 'resnet18 takes no argument "_create() got an unexpected keyword argument ''"'."""
    with pytest.raises(SystemExit):
        main([*TRAIN, "--max-steps", "1", "--out", str(tmp_path / "run"), "--model-arg", text])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"argument --model-arg: expected KEY=VALUE with a KEY, got {text!r}" in err, err


def test_an_image_size_that_does_not_fit_in_memory_is_one_line(capsys, tmp_path):
    """Digits preloads its images at --img-size: 5000 px asked for 126 GB and ended in a 37-line traceback (here 5 PB,
    beyond any address space, so that no overcommitting kernel grants it)."""
    one_line_error(capsys, ["train", "resnet18", "--data", "digits", "--img-size", "1000000", "--max-steps", "1",
                            "--out", str(tmp_path / "run")], "out of memory", "GB failed", "lower --img-size")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model", ["resnet18", "fasterrcnn_shapes"])
def test_a_weights_file_given_as_a_model_argument_is_one_line_naming_the_options_that_take_it(capsys, tmp_path, model):
    """--model-arg checkpoint=FILE ended in a traceback: "TypeError: create_model() got multiple values for keyword
    argument 'checkpoint'"."""
    weights = tmp_path / "resnet18.pth"
    torch.save(create_model("resnet18").state_dict(), weights)
    one_line_error(capsys, ["train", model, "--data", "digits", "--max-steps", "1", "--out", str(tmp_path / "run"),
                            "--model-arg", f"checkpoint={weights}"],
                   f"--model-arg checkpoint={weights}: a weights file to start from is --initial-checkpoint FILE "
                   "(classifiers); a detector's backbone takes --model-arg 'backbone_args={\"checkpoint\": \"FILE\"}'")
    assert not (tmp_path / "run").exists()


def test_model_arguments_unknown_or_set_by_the_data_are_one_line(capsys, tmp_path):
    one_line_error(capsys, [*TRAIN, "--max-steps", "1", "--out", str(tmp_path / "a"), "--model-arg", "bogus=1"],
                   "resnet18 takes no argument 'bogus'")
    one_line_error(capsys, [*TRAIN, "--max-steps", "1", "--out", str(tmp_path / "b"), "--model-arg", "num_classes=5"],
                   "--model-arg num_classes=5", "set from --data")
    with pytest.raises(TypeError, match="bogus"):  # a TypeError for library callers, as timm's
        create_model("resnet18", bogus=1)


@pytest.mark.parametrize("precision, advice", [("fp32", "lower --lr\n"), ("bf16", "lower --lr or use --precision fp32\n")])
def test_a_diverged_run_is_one_line(capsys, tmp_path, precision, advice):
    """A run already in fp32 was told to "use --precision fp32"."""
    # batch 4: where bf16 is emulated a step at batch 32 takes 8 s
    assert main([*TRAIN, "--max-steps", "3", "--lr", "1e30", "--grad-clip", "0", "--precision", precision,
                 "--batch-size", "4", "--out", str(tmp_path / "nan")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionzoo train: error: the model loss is ") and err.endswith(advice), err
    assert len(err.splitlines()) == 1, err


def test_eval_on_data_with_other_classes_or_channels_is_refused(trained, capsys):
    one_line_error(capsys, ["eval", "resnet18", "--checkpoint", str(trained / "checkpoint.safetensors"),
                            "--data", "shapes"], "trained on digits with 10 classes, shapes has 6",
                   "classifier would be untrained")


def test_a_refused_checkpoint_logs_no_adaptation_before_its_error(trained, caplog):
    """eval on data with other classes logged "re-initialising the classifier" and then refused the run."""
    from visionzoo.train.run import load_for_inference

    with caplog.at_level(logging.INFO), pytest.raises(ValueError, match="trained on digits with 10 classes"):
        load_for_inference("resnet18", trained / "checkpoint.safetensors", "shapes")
    assert caplog.records == []


def test_predict_refuses_two_images_drawn_into_one_file_and_numbers_coco_ids_one_way(trained, tmp_path, capsys):
    from visionzoo.train.commands import coco_results

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("L", (16, 16)).save(tmp_path / folder / "d.png")
    one_line_error(capsys, ["predict", "resnet18", str(tmp_path / "a" / "d.png"), str(tmp_path / "b" / "d.png"),
                            "--checkpoint", str(trained / "checkpoint.safetensors"), "--out", str(tmp_path / "out")],
                   "would both be drawn into")
    assert not (tmp_path / "out").exists()
    box = {"boxes": [(0.0, 0.0, 1.0, 1.0)], "label_ids": [1], "scores": [0.5]}
    mixed = coco_results(["s1.png", "x.png", "2.png"], [box] * 3, None)
    assert [r["image_id"] for r in mixed] == [1, 2, 3]  # "2.png" would have taken x.png's position id
    coco = coco_results(["000000139.jpg", "000000285.jpg"], [box] * 2, None)
    assert [r["image_id"] for r in coco] == [139, 285]


def test_coco_ids_come_from_ascii_digit_names_only():
    """A file named ².png (str.isdigit, but not a number int() reads) failed after predicting, with "invalid
    literal for int() with base 10: '²'"."""
    from visionzoo.train.commands import coco_results

    box = {"boxes": [(0.0, 0.0, 1.0, 1.0)], "label_ids": [1], "scores": [0.5]}
    assert [r["image_id"] for r in coco_results(["a/².png", "b/7.png"], [box] * 2, None)] == [1, 2]
    assert [r["image_id"] for r in coco_results(["a/0012.png"], [box], None)] == [12]



def test_predict_image_ids_match_the_annotation_files_entries_by_file_name(tmp_path, capsys):
    """predict --coco-json numbered images not named by numbers by their position, so the results of
    val/cat_a.jpg matched whichever image had id 1 in the user's annotation file: --image-ids takes the file's ids."""
    from visionzoo.train.commands import image_ids_from

    (tmp_path / "val").mkdir()
    for name in ("cat_a.jpg", "cat_b.jpg", "dog.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / name)
    ann = tmp_path / "instances_val.json"
    ann.write_text(json.dumps({"images": [{"id": 12, "file_name": "val/cat_b.jpg"}, {"id": 5, "file_name": "cat_a.jpg"},
                                          {"id": 9, "file_name": "other/dog.jpg"}]}))
    assert image_ids_from(ann, [str(tmp_path / "val" / "cat_a.jpg"), str(tmp_path / "val" / "cat_b.jpg")]) == [5, 12]
    base = ["predict", "fasterrcnn_shapes", "--checkpoint", "missing.safetensors", "--out", str(tmp_path / "out")]
    one_line_error(capsys, [*base, str(tmp_path / "val" / "dog.jpg"), "--coco-json", str(tmp_path / "r.json"),
                            "--image-ids", str(ann)], f"--image-ids {ann}: {tmp_path / 'val' / 'dog.jpg'} matches no entry")
    one_line_error(capsys, [*base, str(tmp_path / "val" / "cat_a.jpg"), "--image-ids", str(ann)],
                   "--image-ids numbers the images of --coco-json")
    one_line_error(capsys, [*base, str(tmp_path / "val" / "cat_a.jpg"), "--coco-json", str(tmp_path / "r.json"),
                            "--image-ids", str(tmp_path / "val" / "dog.jpg")], "is not a COCO annotation file")


@pytest.mark.parametrize("out", ["results.json", "results.json/pictures"])
def test_predict_refuses_a_coco_json_that_is_the_out_folder_before_predicting(tmp_path, capsys, out):
    """--coco-json naming --out (or a folder above it), which predict makes, failed after predicting and drawing with
    "[Errno 21] Is a directory: 'results.json'", naming no option."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    coco_json, out = tmp_path / "results.json", tmp_path / out
    one_line_error(capsys, ["predict", "fasterrcnn_shapes", str(tmp_path / "a.png"), "--checkpoint",
                            "missing.safetensors", "--out", str(out), "--coco-json", str(coco_json)],
                   f"--coco-json {coco_json} is ", "folder", "--out", "which predict makes")
    assert not coco_json.exists()


def test_predict_image_ids_match_an_image_that_is_a_symlink_by_its_own_name(tmp_path):
    """Images that are symlinks to content-named files (git-annex, DVC's and Hugging Face's caches) were matched by
    their target's path, .../blobs/3f2a9c: "matches no entry of its images by file_name"."""
    from visionzoo.train.commands import image_ids_from

    (tmp_path / "blobs").mkdir()
    (tmp_path / "val").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "blobs" / "3f2a9c", format="JPEG")
    (tmp_path / "val" / "000000139.jpg").symlink_to(tmp_path / "blobs" / "3f2a9c")
    ann = tmp_path / "instances_val.json"
    ann.write_text(json.dumps({"images": [{"id": 139, "file_name": "val/000000139.jpg"}]}))
    assert image_ids_from(ann, [str(tmp_path / "val" / "000000139.jpg")]) == [139]
    assert image_ids_from(ann, [str(tmp_path / "blobs" / ".." / "val" / "000000139.jpg")]) == [139]


def test_predict_image_ids_take_the_files_category_ids_by_class_name(tmp_path):
    """predict --coco-json --image-ids FILE wrote the training data's category ids, so against a FILE that numbers
    the same classes otherwise coco-eval scored the model's 'circle' boxes as FILE's category 1, 'square': a wrong
    AP without a word. The ids now come from FILE by name; a class FILE lacks whose id FILE gives another class is
    refused."""
    from visionzoo.train.commands import category_ids_from

    ann = tmp_path / "instances_val.json"
    ann.write_text(json.dumps({"images": [], "categories": [{"id": 1, "name": "square"}, {"id": 7, "name": "circle"}]}))
    assert category_ids_from(ann, ["circle", "square"], None) == {1: 7, 2: 1}
    assert category_ids_from(ann, ["circle", "square"], {1: 7, 2: 1}) == {1: 7, 2: 1}
    with pytest.raises(ValueError, match=r"--image-ids .*instances_val\.json gives category id 1 to 'square'; the "
                                         r"model's class 'star' has that id and no category of the file is named so"):
        category_ids_from(ann, ["star", "circle", "square"], {1: 1, 2: 2, 3: 3})
    assert category_ids_from(ann, ["circle", "square", "star"], None) == {1: 7, 2: 1, 3: 3}  # 3: absent, dropped
    (tmp_path / "no_categories.json").write_text(json.dumps({"images": []}))
    assert category_ids_from(tmp_path / "no_categories.json", ["circle"], {1: 4}) == {1: 4}


def test_predict_image_ids_refuse_an_image_whose_size_is_not_its_entrys(tmp_path):
    """predict reads images as stored, but an annotation file made on the EXIF-turned view gives them turned sizes
    (and boxes): --coco-json --image-ids wrote boxes in the stored pixels and coco-eval scored them against the
    turned ones, a wrong AP without a word. Such an image is now refused, as CocoDetection refuses it."""
    from visionzoo.train.commands import check_annotated_sizes, image_entries_from

    (tmp_path / "val").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "val" / "a.jpg")
    Image.new("RGB", (5, 5)).save(tmp_path / "val" / "b.jpg")
    ann = tmp_path / "instances_val.json"
    ann.write_text(json.dumps({"images": [{"id": 3, "file_name": "a.jpg", "width": 6, "height": 8},
                                          {"id": 4, "file_name": "b.jpg"}]}))
    paths = [str(tmp_path / "val" / "a.jpg"), str(tmp_path / "val" / "b.jpg")]
    entries = image_entries_from(ann, paths)
    assert [entry["id"] for entry in entries] == [3, 4]
    with pytest.raises(ValueError, match=r"a\.jpg is 8x6, its entry in .*instances_val\.json says 6x8 \(turned"):
        check_annotated_sizes(ann, paths, [(8, 6), (5, 5)], entries)
    check_annotated_sizes(ann, paths[1:], [(5, 5)], entries[1:])  # no size given: nothing to check


def test_coco_results_keep_the_data_sets_category_ids_as_written():
    """CocoDetection takes string category ids ("cat", "3"), but predict --coco-json ended with "invalid literal
    for int() with base 10: 'cat'" after predicting, and wrote "3" as 3, which pycocotools and coco-eval match to
    no category of the file."""
    from visionzoo.metrics import coco_evaluate
    from visionzoo.train.commands import coco_results

    prediction = {"boxes": [(0.0, 0.0, 4.0, 4.0), (4.0, 4.0, 8.0, 8.0)], "label_ids": [1, 2], "scores": [0.9, 0.8]}
    records = coco_results(["7.png"], [prediction], {1: "3", 2: "cat"})
    assert [r["category_id"] for r in records] == ["3", "cat"]
    gt = {"images": [{"id": 7, "width": 8, "height": 8}],
          "categories": [{"id": "3", "name": "three"}, {"id": "cat", "name": "cat"}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": "3", "bbox": [0, 0, 4, 4], "area": 16},
                          {"id": 2, "image_id": 7, "category_id": "cat", "bbox": [4, 4, 4, 4], "area": 16}]}
    scored = coco_evaluate(gt, records)
    assert scored["AP"] == pytest.approx(1.0) and scored["num_dropped_detections"] == 0
    numeric = coco_results(["7.png"], [prediction], {1: 3, 2: 90})
    assert [r["category_id"] for r in numeric] == [3, 90]

def test_coco_results_scored_by_pycocotools_give_evals_map_for_scores_apart_in_the_sixth_decimal():
    """predict --coco-json rounded scores to 5 decimals and boxes to 3: a false detection scoring 0.3000004 in one
    image and a true one scoring 0.3000046 in the next tied at 0.3, and pycocotools, taking tied detections in image
    order, ranked the false one first, so the written results scored an mAP of 0.67 where eval gave 0.83."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from visionzoo.train.commands import coco_results
    from visionzoo.train.detection import coco_mean_ap

    detections = [{"boxes": torch.tensor([[30.0, 30.0, 40.0, 40.0], [0.0, 0.0, 10.0, 10.0]]),
                   "scores": torch.tensor([0.3000004, 0.1]), "labels": torch.tensor([1, 1])},
                  {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.3000046]),
                   "labels": torch.tensor([1])}]
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}] * 2
    metric = coco_mean_ap()
    metric.update(detections, targets)
    expected = float(metric.compute()["map"])
    predictions = [{"boxes": d["boxes"].tolist(), "label_ids": d["labels"].tolist(), "scores": d["scores"].tolist()}
                   for d in detections]
    records = coco_results(["1.png", "2.png"], predictions, None)
    ground_truth = COCO()
    ground_truth.dataset = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}],
                            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 10, 10],
                                             "area": 100, "iscrowd": 0} for i in (1, 2)]}
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
        scored = COCOeval(ground_truth, ground_truth.loadRes(records), "bbox")
        scored.evaluate()
        scored.accumulate()
        scored.summarize()
    assert expected == pytest.approx(0.83, abs=0.01)
    assert scored.stats[0] == pytest.approx(expected, abs=1e-6)
    assert [r["score"] for r in records] == [p for prediction in predictions for p in prediction["scores"]]


def test_existing_run_folder_is_refused_and_kept(capsys, tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    one_line_error(capsys, [*TRAIN, "--max-steps", "2", "--out", str(run)], "--resume", "--overwrite")
    assert (run / "notes.txt").read_text() == "keep me"


def test_module_entry_point_lists_models_without_importing_torchvision():
    """torchvision's ops import torch._dynamo, which made every command, --help too, start 2 s later."""
    code = ("import runpy, sys; sys.argv = ['visionzoo', 'list-models', 'resnet*']\n"
            "try:\n    runpy.run_module('visionzoo', run_name='__main__')\n"
            "finally:\n    print('torchvision imported:', 'torchvision' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["resnet101", "resnet18", "resnet34", "resnet50"]
    assert lines[-1] == "torchvision imported: False"


@pytest.mark.parametrize("model, option, fragments", [
    ("dcgan", ["--class-conditional"], ["--class-conditional is for autoregressive models", "vqgan_transformer",
                                        "dcgan, a model of the gan task, would ignore it"]),
    ("image_gpt_small", ["--disc-start", "10"], ["--disc-start is for vqgan models", "vqgan"]),
    ("resnet18", ["--scale-jitter", "96-160"], ["--scale-jitter is for detection models", "fasterrcnn_"]),
    ("fasterrcnn_shapes", ["--mixup", "0.5"], ["--mixup is for classification models"]),
    ("dcgan", ["--mixup", "0"], ["--mixup is for classification models"]),  # typed at its default: still refused
    ("fasterrcnn_shapes", ["--rot90", "0.5"], ["--rot90 is for classification models"]),
    ("resnet18", ["--no-class-conditional"], ["--class-conditional is for autoregressive models"]),
    # it listed "(image_gpt, image_gpt_small, vqgan_transformer)": every autoregressive model, though Image GPT
    # refuses a tokenizer too (it quantises pixels with its own palette)
    ("resnet18", ["--tokenizer", "x.safetensors"], ["--tokenizer is for autoregressive models (vqgan_transformer, "
                                                     "vqgan_transformer_imagenet_cin); resnet18, a model of the "
                                                     "classification task, would ignore it"]),
    ("vqvae_small", ["--disc-weight", "0.1"], ["--disc-weight is for vqgan models", "reconstruction task"]),
])
def test_an_option_of_another_task_is_refused_naming_the_models_that_take_it(capsys, tmp_path, model, option,
                                                                             fragments):
    """They used to be ignored silently: a dcgan trained with --class-conditional was unconditional."""
    one_line_error(capsys, ["train", model, "--data", "digits", "--max-steps", "1", "--out", str(tmp_path / "r"),
                            *option], *fragments)
    assert not (tmp_path / "r").exists()


def test_task_options_left_out_are_not_refused_and_typed_ones_are_at_any_value():
    from visionzoo.cli import build_parser
    from visionzoo.train.commands import _task_options

    parser = build_parser()
    assert _task_options(parser.parse_args(["train", "dcgan", "--data", "digits"])) == {}
    assert _task_options(parser.parse_args(["train", "dcgan", "--data", "digits", "--mixup", "0"])) == {"mixup": 0.0}
    classifier = _task_options(parser.parse_args(["train", "resnet18", "--data", "digits"]))
    assert classifier["label_smoothing"] == 0.0 and "disc_start" not in classifier and "scale_jitter" not in classifier
    given = _task_options(parser.parse_args(["train", "dcgan", "--data", "digits", "--no-class-conditional"]))
    assert given == {"class_conditional": False}  # off its default (None): refused by run_training


def test_the_library_refuses_another_tasks_option_and_an_unknown_one(tmp_path):
    from visionzoo.train import TrainConfig
    from visionzoo.train.run import run_training

    config = TrainConfig(out=str(tmp_path / "r"), max_steps=1)
    with pytest.raises(ValueError, match="--tokenizer is for autoregressive models"):
        run_training("resnet18", "digits", config, options={"tokenizer": "x.safetensors"})
    with pytest.raises(ValueError, match="unknown task option 'disc_strat'; vqgan \\(vqgan\\) takes disc_start"):
        run_training("vqgan", "digits", config, options={"disc_strat": 0.3})
    assert not (tmp_path / "r").exists()


def test_eval_of_a_foreign_state_dict_says_what_it_is_and_how_to_load_it(capsys, tmp_path):
    plain = tmp_path / "resnet18-f37072fd.pth"
    torch.save(create_model("resnet18", num_classes=10).state_dict(), plain)
    one_line_error(capsys, ["eval", "resnet18", "--checkpoint", str(plain)],
                   f"{plain} is a state dict without visionzoo's metadata", f"create_model(MODEL, checkpoint='{plain}')",
                   f"--initial-checkpoint {plain}")
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(plain.read_bytes()[:1000])
    one_line_error(capsys, ["eval", "resnet18", "--checkpoint", str(damaged)], "damaged.pth is truncated or corrupt")


def test_eval_of_an_official_dino_file_says_it_is_foreign_weights_not_a_damaged_file(capsys, tmp_path):
    """`eval hipt_vit256_small --checkpoint vit256_small_dino.pth` (HIPT's official file, which create_model and
    --initial-checkpoint read) said "is not a state dict of tensors: it has non-tensor entries ['teacher', 'student',
    'args']", as if the file were broken, where a plain foreign state dict is told how to load and train from it."""
    import argparse

    official = tmp_path / "vit256_small_dino.pth"
    backbone = {"backbone.cls_token": torch.zeros(1, 1, 384), "head.mlp.0.weight": torch.zeros(8, 384)}
    torch.save({"teacher": backbone, "student": {f"module.{k}": v for k, v in backbone.items()},
                "args": argparse.Namespace(arch="vit_small")}, official)
    one_line_error(capsys, ["eval", "hipt_vit256_small", "--checkpoint", str(official)],
                   f"{official} is a state dict without visionzoo's metadata",
                   f"--initial-checkpoint {official}")
    # another family has no reader of DINO's training states: the file stays refused as before, as does a damaged one
    one_line_error(capsys, ["eval", "resnet18", "--checkpoint", str(official)],
                   "not a state dict of tensors: it has non-tensor entries ['teacher', 'student'")
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(official.read_bytes()[:300])
    one_line_error(capsys, ["eval", "hipt_vit256_small", "--checkpoint", str(damaged)],
                   "damaged.pth is truncated or corrupt")


def test_list_models_names_the_task_when_no_model_of_it_matches(capsys):
    """`list-models 'vit*' --task detection` said "no model matches 'vit*'", while 15 models match it"""
    assert main(["list-models", "vit*", "--task", "detection"]) == 1
    assert capsys.readouterr().err.strip() == "no detection model matches 'vit*'"
    assert main(["list-models", "nothing*"]) == 1
    assert capsys.readouterr().err.strip() == "no model matches 'nothing*'"


def test_list_models_suggests_the_closest_names_when_nothing_matches(capsys):
    """`list-models 'resnt*'`, `list-models resnet` (no glob) and `list-models RESNET18` said only "no model matches
    ...", where an unknown name everywhere else is answered with the closest registered ones."""
    assert main(["list-models", "resnt*"]) == 1
    assert capsys.readouterr().err.strip() == "no model matches 'resnt*'; closest: resnet50, resnet34, resnet18"
    assert main(["list-models", "resnet"]) == 1
    assert "closest: resnet50, resnet34, resnet18" in capsys.readouterr().err
    assert main(["list-models", "RESNET18"]) == 1
    assert capsys.readouterr().err.strip().endswith("closest: fasterrcnn_resnet18_fpn, resnet18")
    assert main(["list-models", "resnt*", "--task", "detection"]) == 1  # only names the filters leave
    assert capsys.readouterr().err.strip() == "no detection model matches 'resnt*'; closest: rcnn_resnet50, fastrcnn_resnet50"


def test_list_models_pretrained_lists_the_names_with_official_weights(capsys):
    """timm.list_models(pretrained=True) has a command-line twin here: `list-models --pretrained` was refused as an
    unrecognised argument."""
    from visionzoo.models import list_models

    assert main(["list-models", "convnext*", "--pretrained"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list_models("convnext*", pretrained=True) and "convnext_tiny" in listed
    assert "convnext_atto_32" not in listed
    assert main(["list-models", "*_32", "--pretrained"]) == 1
    assert capsys.readouterr().err.strip() == "no pretrained model matches '*_32'"


def test_list_models_refuses_an_unknown_task_listing_the_tasks(capsys):
    """It exited 1 with "no model matches '*'", as if the pattern were wrong."""
    with pytest.raises(SystemExit) as exit_info:
        main(["list-models", "--task", "foo"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--task" in err and "'foo'" in err, err
    for task in ("classification", "detection", "gan", "autoregressive", "vqgan", "reconstruction"):
        assert task in err
    assert main(["list-models", "--task", "gan"]) == 0
    assert capsys.readouterr().out.split() == ["dcgan", "gan"]


@pytest.mark.parametrize("command", [
    [*TRAIN, "--max-steps", "1"],
    ["predict", "resnet18", "x.png", "--checkpoint", "missing.safetensors"],
    ["tour", "--only", "convnext-digits", "--max-steps", "1"],
    ["export-data", "shapes", "--num", "1"],
])
def test_an_out_that_is_a_file_is_refused_in_one_line_naming_the_option_and_left_untouched(command, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    one_line_error(capsys, [*command, "--out", str(out)], f"--out {out} is a file, not a folder")
    assert out.read_text() == "mine"
    capsys.readouterr()
    one_line_error(capsys, [*command, "--out", str(out), "--overwrite"], f"--out {out} is a file, not a folder")
    assert out.read_text() == "mine"
    capsys.readouterr()
    # a folder below a file: predict failed after predicting, export-data with "[Errno 20] Not a directory"
    one_line_error(capsys, [*command, "--out", str(out / "run")], f"--out {out / 'run'}: {out} is a file, not a folder")


def test_sample_refuses_an_images_dir_that_is_a_file_before_sampling(tmp_path, capsys):
    images_dir = tmp_path / "notes.txt"
    images_dir.write_text("mine")
    one_line_error(capsys, ["sample", "dcgan", "--checkpoint", "missing.safetensors", "--out", str(tmp_path / "s.png"),
                            "--images-dir", str(images_dir)], f"--images-dir {images_dir} is a file, not a folder")
    assert images_dir.read_text() == "mine"


def test_sample_refuses_an_out_below_a_file_before_sampling(tmp_path, capsys):
    # before: it sampled, then failed with "[Errno 17] File exists: '.../notes.txt'", naming no option
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    out = notes / "grid.png"
    one_line_error(capsys, ["sample", "dcgan", "--checkpoint", "missing.safetensors", "--out", str(out)],
                   f"--out {out}: {notes} is a file, not a folder")
    assert notes.read_text() == "mine"


@pytest.mark.parametrize("command", [
    [*TRAIN, "--max-steps", "1"],
    ["tour", "--only", "convnext-digits", "--max-steps", "1"],
])
def test_overwrite_keeps_a_folder_that_no_run_wrote(command, tmp_path, capsys):
    """A mistyped --out with --overwrite removed the user's folder, whatever it held."""
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("mine")
    one_line_error(capsys, [*command, "--out", str(out), "--overwrite"], f"--overwrite: {out} is not a visionzoo run folder")
    assert (out / "chapter1.tex").read_text() == "mine"


@pytest.mark.parametrize("generic_name", ["report.json", "summary.json"])
def test_overwrite_keeps_a_users_folder_that_holds_a_file_with_a_name_runs_also_write(generic_name, tmp_path, capsys):
    """A folder holding report.json or summary.json counted as a run's, and --overwrite deleted it with all else in it."""
    out = tmp_path / "paper"
    out.mkdir()
    (out / generic_name).write_text("{}")
    (out / "figure1.png").write_bytes(b"mine")
    one_line_error(capsys, ["tour", "--only", "convnext-digits", "--max-steps", "1", "--out", str(out), "--overwrite"],
                   f"--overwrite: {out} is not a visionzoo run folder")
    assert (out / "figure1.png").read_bytes() == b"mine"


def test_eval_takes_the_trained_weights_and_use_ema_the_ema_ones_as_timms_validate(trained, tmp_path, capsys):
    tensors, meta = read_checkpoint(trained / "checkpoint.safetensors")
    ema = {k.replace("model.", "ema.", 1): v for k, v in tensors.items() if k.startswith("model.")}
    ema["ema.fc.weight"] = ema["ema.fc.weight"].roll(1, dims=0)  # predicts the next class: accuracy ~0
    ema["ema.fc.bias"] = ema["ema.fc.bias"].roll(1, dims=0)
    path = tmp_path / "with_ema.safetensors"
    save_checkpoint(path, {**tensors, **ema}, meta)
    summary = json.loads((trained / "summary.json").read_text())
    capsys.readouterr()
    accuracy = {}
    for flag in ([], ["--use-ema"]):
        assert main(["eval", "resnet18", "--checkpoint", str(path), "--split", "val", "--json", *flag]) == 0
        accuracy[bool(flag)] = json.loads(capsys.readouterr().out)["accuracy"]
    assert accuracy[False] == pytest.approx(summary["metrics"]["accuracy"])
    assert accuracy[True] < 0.3 < summary["metrics"]["accuracy"]


def test_train_size_draws_shapes_scenes_keeps_the_first_of_fixed_data_and_is_kept_on_resume(tmp_path, capsys):
    shapes = ["train", "resnet18", "--data", "shapes", "--img-size", "16", "--model-arg", "small_input=true",
              "--batch-size", "25", "--precision", "fp32", "--no-progress"]
    run = tmp_path / "small"
    assert main([*shapes, "--train-size", "100", "--epochs", "1", "--out", str(run)]) == 0
    meta = read_checkpoint(run / "checkpoint.safetensors")[1]
    assert (meta["step"], meta["run"]["train_images"]) == (4, 100)  # one epoch of 100 images, not of 4,000
    # Resumed without --train-size: the same 100 images (2 epochs = 8 steps); another size is refused.
    assert main([*shapes, "--epochs", "2", "--out", str(run), "--resume"]) == 0
    assert read_checkpoint(run / "checkpoint.safetensors")[1]["step"] == 8
    one_line_error(capsys, [*shapes, "--train-size", "200", "--epochs", "3", "--out", str(run), "--resume"],
                   "trained on 100 images", "--train-size 100")
    large = tmp_path / "large"
    assert main([*shapes, "--train-size", "6000", "--max-steps", "1", "--out", str(large)]) == 0
    assert read_checkpoint(large / "checkpoint.safetensors")[1]["run"]["train_images"] == 6000
    one_line_error(capsys, [*TRAIN, "--train-size", "5000", "--max-steps", "1", "--out", str(tmp_path / "digits")],
                   "--train-size 5000", "digits", "1257")
    assert main([*TRAIN, "--train-size", "64", "--epochs", "1", "--out", str(tmp_path / "digits")]) == 0
    assert read_checkpoint(tmp_path / "digits" / "checkpoint.safetensors")[1]["step"] == 2


def test_under_torchrun_only_rank_0_reports_the_run(tmp_path, monkeypatch, capsys, caplog):
    """Every rank printed the closing summary ("resnet18 on digits: 4 steps ...", "run folder: ...") and logged
    "resumed ... at step 4" and the time budget's plan, and warned of the data each read alike (one COCO file serving
    every split), so torchrun's output showed each twice; rank 1 is silent."""
    from visionzoo.train import commands
    from visionzoo.train.engine import TrainResult

    def fake_run_training(model_name, data, config, *args, **kwargs):
        logging.getLogger("visionzoo.train.engine").info("resumed %s at step 4 of 4", config.out)
        # as each rank reads one COCO file: a warning of the data every rank reads alike, shown twice
        logging.getLogger("visionzoo.train.run").warning("one.json is one annotation file: ...")
        return None, TrainResult(tmp_path, 4, 1.0, 16.0, {})

    monkeypatch.setattr(commands, "run_training", fake_run_training)
    caplog.set_level(logging.INFO)
    package_logger = logging.getLogger("visionzoo")
    level = package_logger.level
    try:
        for rank, expected_lines in (("0", 2), ("1", 0)):
            monkeypatch.setenv("RANK", rank)
            assert main([*TRAIN, "--max-steps", "4", "--out", str(tmp_path / "run")]) == 0
            assert len(capsys.readouterr().out.splitlines()) == expected_lines, rank
            assert len([r for r in caplog.records if r.getMessage().startswith("resumed")]) == (expected_lines > 0)
            assert len([r for r in caplog.records if r.getMessage().startswith("one.json")]) == (expected_lines > 0)
            caplog.clear()
    finally:
        package_logger.setLevel(level)


def test_a_resumed_runs_closing_line_gives_the_throughput_of_its_session_as_such(tmp_path, capsys):
    """A resumed run closed with "4 steps in 3.1 s (41.5 samples/s)": the steps and seconds of the whole run beside
    the throughput of this session's steps alone, which disagreed (4 steps of 32 in 3.1 s are 41 samples/s only by
    chance); one resumed at its end read "(0.0 samples/s)". The session's share is named."""
    run = ["--out", str(tmp_path / "run")]
    assert main([*TRAIN, "--max-steps", "2", *run]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert re.fullmatch(r"resnet18 on digits: 2 steps in \d+\.\d s \(\d+\.\d samples/s\)", first), first
    assert main([*TRAIN, "--max-steps", "4", "--resume", *run]) == 0
    resumed = capsys.readouterr().out.splitlines()[0]
    assert re.fullmatch(r"resnet18 on digits: 4 steps in \d+\.\d s, 2 of them in this session "
                        r"\(\d+\.\d samples/s\)", resumed), resumed
    assert main([*TRAIN, "--resume", *run]) == 0
    finished = capsys.readouterr().out.splitlines()[0]
    assert re.fullmatch(r"resnet18 on digits: 4 steps in \d+\.\d s, none of them in this session", finished), finished


def test_a_run_resumed_in_a_later_epoch_counts_its_sessions_steps_from_the_resume(tmp_path, capsys):
    """The session's start was read from the epoch's batch position, which is 0 when a resumed run starts an epoch:
    a run resumed at step 2 of 2-step epochs counted all 4 steps as this session's."""
    run = [*TRAIN, "--train-size", "64", "--out", str(tmp_path / "run")]
    assert main([*run, "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main([*run, "--max-steps", "4", "--resume"]) == 0
    resumed = capsys.readouterr().out.splitlines()[0]
    assert ", 2 of them in this session" in resumed, resumed


@pytest.mark.parametrize("local_rank", ["0", "1"])
def test_under_torchrun_a_command_other_than_train_is_refused_once(monkeypatch, capsys, local_rank):
    """`torchrun ... -m visionzoo eval` evaluated the whole split in every process and printed its table once per
    process; predict's processes wrote the same files into --out at once, and all but the first failed on them.
    Only train divides its work among torchrun's processes: the others are refused, in one line from the first."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert main(["list-models"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    expected = ("visionzoo list-models: error: list-models does not run under torchrun (only train shares its work "
                "among the processes); run it in one process\n")
    assert captured.err == (expected if local_rank == "0" else "")


@pytest.mark.parametrize("model_arg, message", [
    ("drop_rate=abc", "ResNet: drop_rate must be a number, got 'abc'"),
    ("small_input=no", "ResNet: small_input must be a bool, got 'no'"),
    ('layers=[2,"a",2,2]', "ResNet: layers must be a sequence of integers, got (2, 'a', 2, 2)"),
])
def test_model_arguments_of_the_wrong_type_are_one_line(capsys, tmp_path, model_arg, message):
    """drop_rate=abc ended in a TypeError traceback from torch's Dropout; small_input=no, a string, was taken as
    true and trained the small-input stem."""
    one_line_error(capsys, [*TRAIN, "--max-steps", "1", "--out", str(tmp_path / "a"), "--model-arg", model_arg],
                   message)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("command", [
    ["coco-eval", "{long}.json", "{tmp}/dets.json"],
    ["predict", "fasterrcnn_shapes", "{tmp}/a.png", "--checkpoint", "missing.safetensors", "--out", "{long}"],
    ["train", "fasterrcnn_shapes", "--data", "{long}.json", "--out", "{tmp}/run"],
])
def test_a_file_name_too_long_for_the_file_system_is_a_one_line_error(command, tmp_path, capsys):
    """A path with a name over the file system's 255 bytes (a file_name pasted twice, a generated name) ended in a
    traceback, OSError "[Errno 36] File name too long", from the first is_file() of coco-eval, predict or --data."""
    long = str(tmp_path / ("x" * 300))
    one_line_error(capsys, [part.format(long=long, tmp=tmp_path) for part in command], "File name too long")


def test_a_reader_that_goes_away_still_ends_the_output_quietly(monkeypatch, capfd):
    """BrokenPipeError is an OSError, which is now a user error: it must still stop quietly (`coco-eval ... | head`),
    its later output sent to the null device. The redirection is recorded rather than done: done, it pointed pytest's
    own capture file at the null device, and the next test in the process failed reading its output."""
    import os

    def run(args):
        raise BrokenPipeError(32, "Broken pipe")

    import importlib

    from visionzoo.cli import COMMAND_MODULES

    for module in COMMAND_MODULES:  # registered now: imported first under the patch below, they would register there
        importlib.import_module(module)
    redirected = []
    monkeypatch.setattr(os, "dup2", lambda source, target: redirected.append((os.readlink(f"/proc/self/fd/{source}"),
                                                                              target)))
    monkeypatch.setattr("visionzoo.cli._COMMANDS", {})
    from visionzoo.cli import register_command

    register_command("pipe", "test")(run)
    assert main(["pipe"]) == 0 and capfd.readouterr().err == ""
    assert redirected == [(os.devnull, sys.stdout.fileno())]


@pytest.mark.parametrize("argv, named", [
    (["predict", "resnet18", "--checkpoint", "x.safetensors", "a.png", "--out", "o", "--coco-json", ""], "--coco-json"),
    (["train", "resnet18", "--data", "digits", "--out="], "--out"),
    (["coco-eval", "", "dets.json"], "an argument"),
])
def test_an_empty_string_for_an_argument_is_one_error_naming_it(capsys, argv, named):
    """predict --coco-json '' wrote no COCO results without a word (taken as not given), and --out '' is the current
    folder to pathlib."""
    assert main(argv) == 2
    assert f"error: {named} is an empty string; give a value" in capsys.readouterr().err


@pytest.mark.parametrize("bad_id", [None, [1], 1.5, True, {"id": 1}])
def test_predict_image_ids_refuse_an_entry_whose_id_is_no_coco_id(tmp_path, bad_id):
    """An --image-ids entry whose id was null, a list or a float was copied into --coco-json's results, a file that
    coco-eval then refused (or matched to nothing)."""
    from visionzoo.train.commands import image_ids_from

    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    ann = tmp_path / "instances_val.json"
    ann.write_text(json.dumps({"images": [{"id": bad_id, "file_name": "a.jpg"}]}))
    with pytest.raises(ValueError, match=r"--image-ids .*: the entry of .*a\.jpg has id .*; an image id is a whole "
                                         r"number or a string"):
        image_ids_from(ann, [str(tmp_path / "a.jpg")])
    ann.write_text(json.dumps({"images": [{"id": "img-7", "file_name": "a.jpg"}]}))
    assert image_ids_from(ann, [str(tmp_path / "a.jpg")]) == ["img-7"]


def test_an_interrupted_run_says_whether_and_where_resume_goes_on(tmp_path, capsys, monkeypatch):
    """Ctrl-C in a run printed 'visionzoo train: interrupted', not saying whether the run folder can be resumed."""
    from visionzoo.train.engine import Trainer

    def interrupt(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "evaluate", interrupt)  # after the checkpoint of its last step
    run = tmp_path / "run"
    assert main([*TRAIN, "--max-steps", "2", "--out", str(run)]) == 130
    assert capsys.readouterr().err.strip().endswith(
        f"visionzoo train: interrupted; --resume goes on from the checkpoint of step 2 in {run}")
    monkeypatch.setattr(Trainer, "_plan_total_steps", interrupt)  # before the run wrote anything: its folder is gone
    assert main([*TRAIN, "--max-steps", "2", "--out", str(tmp_path / "new")]) == 130
    assert capsys.readouterr().err.strip().endswith(
        f"visionzoo train: interrupted before the run wrote anything; no run folder {tmp_path / 'new'} is left")
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    monkeypatch.setattr(Trainer, "_save", interrupt)  # its steps logged, its first checkpoint not written
    assert main([*TRAIN, "--max-steps", "2", "--out", str(tmp_path / "started")]) == 130
    assert capsys.readouterr().err.strip().endswith(
        f"visionzoo train: interrupted before the first checkpoint in {tmp_path / 'started'}; nothing to resume")


@pytest.mark.parametrize("error, message", [(KeyboardInterrupt, "visionzoo train: interrupted; --resume goes on"),
                                            (ValueError("bad batch"), "visionzoo train: error: bad batch")])
def test_a_run_stopped_mid_step_clears_its_progress_bar_before_its_last_line(tmp_path, capsys, monkeypatch, error,
                                                                             message):
    """Ctrl-C during a step left the progress bar open: the interrupted line was written after the bar's text on its
    line ('...loss=0.0510]visionzoo train: interrupted; ...'), and the bar was cleared only after it."""
    from visionzoo.train.engine import Trainer

    step = Trainer._train_step

    def stopping_step(self, batch, index):
        if index == 2:
            raise error
        return step(self, batch, index)

    monkeypatch.setattr(Trainer, "_train_step", stopping_step)
    argv = [token for token in TRAIN if token != "--no-progress"]
    assert main([*argv, "--max-steps", "4", "--checkpoint-every", "1", "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    before, _, after = err.partition(message)
    assert after, err
    assert before.endswith(("\r", "\n")) and "\r" not in after, repr(err[-300:])


def test_train_given_checkpoint_says_which_option_starts_from_one(tmp_path, capsys):
    """eval, predict and sample read --checkpoint FILE; train has none, and argparse took `train --checkpoint FILE`
    for its only option of that prefix: "argument --checkpoint-every: expected a positive integer, got 'FILE'". Taken
    only in full, it would be refused as the start of --checkpoint-every, an option of another use."""
    with pytest.raises(SystemExit) as exit_info:
        main([*TRAIN, "--checkpoint", "runs/r18/checkpoint.safetensors", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--checkpoint-every" not in err, err
    assert "train takes no --checkpoint" in err and "--initial-checkpoint FILE" in err and "--resume" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, expected", [
    (["trian", "resnet18"], "argument COMMAND: invalid choice: 'trian'"),
    (["eval", "resnet18", "--checkpoint", "c.safetensors", "--split", "tset"], "argument --split: invalid choice: 'tset'"),
    (["fid", "a", "b", "--features", "domian"], "argument --features: invalid choice: 'domian'"),
])
def test_a_misspelled_choice_is_answered_with_the_closest_one(capsys, argv, expected):
    """A misspelled command or choice listed every choice and suggested none, where a misspelled model, data set or
    option names the closest (argparse suggests only from Python 3.14)."""
    closest = {"trian": "train", "tset": "test", "domian": "domain"}[argv[0] if argv[0] == "trian" else argv[-1]]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and err.endswith(f"; closest: {closest}"), err


def test_version_prints_the_installed_packages_version(capsys):
    # before: "visionzoo: error: the following arguments are required: COMMAND"
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"visionzoo {version('visionzoo')}\n"


@pytest.mark.parametrize("argv, expected", [
    (["list-models", "--pretraind"],
     "visionzoo list-models: error: unrecognized arguments: --pretraind; closest to --pretraind: --pretrained"),
    (["tour", "--onyl", "vit-digits", "--list"],
     "visionzoo tour: error: unrecognized arguments: --onyl vit-digits; closest to --onyl: --only"),
    (["export-data", "shapes", "--out", "x", "--nmu=3"],
     "visionzoo export-data: error: unrecognized arguments: --nmu=3; closest to --nmu: --num"),
    (["list-models", "--zzzzzz"], "visionzoo list-models: error: unrecognized arguments: --zzzzzz"),
    # an option of visionzoo itself, given after the command: where it goes, not the command's --help
    (["list-models", "--debug"],
     "visionzoo list-models: error: unrecognized arguments: --debug; --debug goes before the command: "
     "visionzoo --debug list-models ..."),
    (["tour", "--list", "--version"],
     "visionzoo tour: error: unrecognized arguments: --version; --version goes before the command: "
     "visionzoo --version tour ..."),
])
def test_a_misspelled_option_is_answered_with_the_closest_option_of_its_command(capsys, argv, expected):
    """`list-models --pretraind` said "visionzoo: error: unrecognized arguments: --pretraind", naming neither the
    command nor the option meant, where an unknown model or tour job is answered with the closest names."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == expected


@pytest.mark.parametrize("argv, expected", [
    ([*TRAIN, "--max", "2"], "visionzoo train: error: unrecognized arguments: --max 2; options are taken only in "
     "full: --max is the start of --max-steps"),
    ([*TRAIN, "--max=2"], "visionzoo train: error: unrecognized arguments: --max=2; options are taken only in full: "
     "--max is the start of --max-steps"),
    # train's hidden --checkpoint (a refusal naming the options meant) is not offered
    ([*TRAIN, "--check", "2"], "--check is the start of --checkpoint-every"),
    (["predict", "resnet18", "a.png", "--out", "o", "--check", "c.safetensors"],
     "visionzoo predict: error: unrecognized arguments: --check c.safetensors; options are taken only in full: --check "
     "is the start of --checkpoint"),
    (["--deb", "list-models"], "unrecognized arguments: --deb; options are taken only in full: --deb is the start "
     "of --debug"),
])
def test_an_abbreviated_option_is_refused_naming_it(tmp_path, capsys, argv, expected):
    """argparse took a unique prefix for its option: `train ... --max 2` ran 2 steps as --max-steps 2, and an option
    added later with the same prefix would have silently changed what the command meant (or made it ambiguous)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "run")] if argv[0] == "train" else argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "run").exists()


def test_the_parsers_record_their_commands_and_options_for_the_closest_option():
    """_parse found the command's parser through argparse._SubParsersAction and its options through
    ArgumentParser._actions, private names that Python 3.11's argparse gives no public route to (a release that
    changed them would end a misspelled option in an AttributeError traceback). The parsers now record their
    commands and long options as they are built, groups' options included: every one argparse holds."""
    parser = build_parser()
    assert parser.long_options == ["--help", "--debug", "--version"]
    assert sorted(parser.command_parsers) == sorted(_COMMANDS)
    for name, command_parser in parser.command_parsers.items():
        held = [option for action in command_parser._actions for option in action.option_strings
                if option.startswith("--")]
        assert sorted(command_parser.long_options) == sorted(held), name
    assert {"--lr", "--max-steps", "--class-conditional"} <= set(parser.command_parsers["train"].long_options)


@pytest.mark.parametrize("command, option, words", [
    ("eval", "--split", "(default test)"),
    ("eval", "--img-size", "(default: the run's)"),
    ("sample", "--seed", "(default 0)"),
    ("fid", "--batch-size", "(default 50, as pytorch-fid's)"),
    ("tour", "--precision", "auto (default)"),
    ("tour", "--no-progress", "no progress bar"),
])
def test_every_option_with_a_default_says_it_in_its_help(command, option, words):
    """eval --split showed "{train,val,test}" with no word that the test split is evaluated unless told (and no help
    at all), as sample --seed, fid --batch-size and eval --img-size; tour --precision listed auto without saying it
    is the default, and tour --no-progress had no help where every other command's says "no progress bar"."""
    parser = build_parser().command_parsers[command]
    help_text = " ".join(parser.format_help().split())  # argparse wraps at the terminal's width
    start = help_text.index(f" {option} ", help_text.index("options:"))
    assert words in help_text[start:start + 200]


def test_each_tasks_own_options_are_read_without_argparses_private_actions(monkeypatch):
    """Task.own_options (which refuses another task's option, e.g. train dcgan --mixup 0.2) read argparse's private
    ArgumentParser._actions; it now reads the actions a RecordingParser kept as they were added, groups' included."""
    import argparse

    from visionzoo.train.task import _TASKS

    build_parser()  # imports every task's module
    for name, task in _TASKS.items():
        plain = argparse.ArgumentParser(add_help=False)
        task.add_arguments(plain)
        assert {dest: action.option_strings for dest, action in task.own_options().items()} == {
            action.dest: action.option_strings for action in plain._actions}, name
    assert list(_TASKS["autoregressive"].own_options()) == ["tokenizer", "class_conditional"]
    from visionzoo.cli import RecordingParser

    parser = RecordingParser(add_help=False)
    parser.add_argument_group("group").add_argument("--in-group", type=int)
    parser.add_argument("--plain", "-p")
    parser.add_argument("path")
    assert [action.dest for action in parser.recorded_actions] == ["in_group", "plain", "path"]
    assert parser.long_options == ["--in-group", "--plain"]


def _roboflow_folder(tmp_path, *splits):
    """A Shapes export (2 images a split) rearranged as Roboflow exports COCO: DIR/{train,valid,test}/ each holding
    its images and _annotations.coco.json."""
    folder = tmp_path / "roboflow"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--image-size", "64", "--split",
                 *splits]) == 0
    for split in splits:
        target = folder / ("valid" if split == "val" else split)
        (folder / split).rename(target)
        (folder / "annotations" / f"instances_{split}.json").rename(target / "_annotations.coco.json")
    (folder / "annotations").rmdir()
    return folder


def test_a_roboflow_coco_export_trains_and_evaluates_by_split(tmp_path, capsys):
    """Roboflow's COCO export (train/, valid/ and test/, each with its images and _annotations.coco.json) was refused:
    "has no COCO annotations for any split". Each split is now read from its own folder."""
    folder = _roboflow_folder(tmp_path, "train", "val")
    run = tmp_path / "run"
    assert main(["train", "fasterrcnn_shapes", "--data", str(folder), "--max-steps", "1", "--batch-size", "2",
                 "--precision", "fp32", "--no-progress", "--model-arg", "rpn_pre_nms_top_n_test=50",
                 "--out", str(run)]) == 0, capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    assert "note" not in summary  # validation is on valid/, not on the training images
    capsys.readouterr()
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", str(run / "checkpoint.safetensors"), "--data",
                 str(folder), "--split", "val", "--json", "--no-progress"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["split_images"] == 2
    (folder / "valid").rename(folder / "val")  # "val" names the split too
    assert main(["eval", "fasterrcnn_shapes", "--checkpoint", str(run / "checkpoint.safetensors"), "--data",
                 str(folder), "--split", "val", "--json", "--no-progress"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    one_line_error(capsys, ["eval", "fasterrcnn_shapes", "--checkpoint", str(run / "checkpoint.safetensors"),
                            "--data", str(folder), "--split", "test"], "no annotations for split 'test'",
                   str(folder / "test" / "_annotations.coco.json"), "; it has train and val: give --split val")


def test_a_folder_without_annotations_names_the_roboflow_layout_among_those_looked_for(trained, tmp_path, capsys):
    (tmp_path / "train").mkdir()
    one_line_error(capsys, ["eval", "resnet18", "--checkpoint", str(trained / "checkpoint.safetensors"),
                            "--data", str(tmp_path)], f"{tmp_path} has no COCO annotations for any split",
                   "instances_{train,val,test}.json", "{train,valid,val,test}/_annotations.coco.json")


@pytest.mark.parametrize("layout", ["roboflow", "coco"])
def test_training_on_one_split_file_of_a_coco_folder_names_the_folder_to_give(tmp_path, capsys, caplog, layout):
    """train --data DIR/train/_annotations.coco.json (or DIR/annotations/instances_train.json) warned that validation
    is on training images and told of a COCO folder's layout, of a folder that is one: it now names it to give."""
    if layout == "roboflow":
        folder = _roboflow_folder(tmp_path, "train", "val")
        ann_file = folder / "train" / "_annotations.coco.json"
    else:
        folder = tmp_path / "coco"
        assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--image-size", "64", "--split",
                     "train", "val"]) == 0
        ann_file = folder / "annotations" / "instances_train.json"
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        assert main(["train", "fasterrcnn_shapes", "--data", str(ann_file), "--max-steps", "1", "--batch-size", "2",
                     "--precision", "fp32", "--no-progress", "--model-arg", "rpn_pre_nms_top_n_test=50",
                     "--out", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    err = caplog.text
    assert f"{ann_file} is one annotation file: its images serve as the train, val and test splits" in err
    assert f"it is the train split of COCO folder {folder}, which has val too: give --data {folder}" in err


@pytest.mark.parametrize("argv, message", [
    (["train", "resnet18", "--data", "digits", "--max-steps", "x"], "--max-steps: expected a positive integer, got 'x'"),
    (["train", "resnet18", "--data", "digits", "--workers", "two"], "--workers: expected an integer >= 0, got 'two'"),
    (["train", "resnet18", "--data", "digits", "--batch-size", "2.5"],
     "--batch-size: expected a positive integer, got '2.5'"),
    (["train", "resnet18", "--data", "digits", "--lr", "fast"], "--lr: expected a finite positive number, got 'fast'"),
    (["train", "resnet18", "--data", "digits", "--seed", "one"], "--seed: expected an integer in [-2**63, 2**64), got 'one'"),
    (["train", "resnet18", "--data", "digits", "--label-smoothing", "a"], "expected a number in [0, 1), got 'a'"),
    (["train", "resnet18", "--data", "digits", "--mixup", "b"], "--mixup: expected a finite number >= 0, got 'b'"),
    (["train", "resnet18", "--data", "digits", "--opt-betas", "0.9", "c"], "--opt-betas: expected an Adam beta in "
                                                                           "[0, 1), got 'c'"),
    (["train", "resnet18", "--data", "digits", "--opt-betas", "0.9", "1"], "--opt-betas: expected an Adam beta in "
                                                                           "[0, 1), got 1"),
    (["export-data", "shapes", "--out", "x", "--seed", "s"], "--seed: expected an integer in [0, 2**32), got 's'"),
    (["export-data", "shapes", "--out", "x", "--image-size", "big"], "--image-size: expected an integer in [")
])
def test_an_option_that_is_no_number_is_told_what_it_takes(capsys, argv, message):
    """--max-steps x said argparse's "argument --max-steps: invalid positive_int value: 'x'", naming a function of
    ours, where --max-steps 0 said "expected a positive integer, got 0"; so did every option typed with them."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_a_command_keeps_freed_memory_for_its_process(glibc_frees_as_by_default, capsys):
    """A CPU training mapped its large activations afresh at every step (glibc unmaps freed blocks above its mmap
    threshold), faulting in every page again: a command now makes its process keep them (the suite's fixture
    records the call rather than changing the suite's process); a command refused before it runs does not."""
    before = len(glibc_frees_as_by_default)  # the session's record: earlier tests' commands are in it
    assert main(["list-models", "resnet18"]) == 0
    assert len(glibc_frees_as_by_default) == before + 1
    assert main(["list-models", "vit*", "--task", "detection"]) == 1  # ran, found nothing
    assert len(glibc_frees_as_by_default) == before + 2
    with pytest.raises(SystemExit):
        main(["list-models", "--no-such-option"])
    assert len(glibc_frees_as_by_default) == before + 2
    import visionzoo.utils

    assert not visionzoo.utils.freed_memory_kept()
    capsys.readouterr()
