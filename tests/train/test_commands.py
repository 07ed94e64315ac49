"""The help of the commands that run a model: `visionzoo train`, `eval`, `predict`, `sample` and `fid`."""

import json
import shutil

import pytest

from visionzoo.cli import build_parser, main
from visionzoo.data import same_images_note


@pytest.mark.parametrize("command", ["eval", "predict", "sample"])
def test_the_help_says_that_inference_runs_in_fp32_unless_told(command):
    """`visionzoo eval --help` showed `--precision {auto,bf16,fp32}` without a word, so a user who read that auto is
    the default (as for train) took eval's fp32 numbers for bf16 ones and could not match a bf16 run's val metrics."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    action = next(a for a in subparsers.choices[command]._actions if a.dest == "precision")
    assert action.default == "fp32" and "fp32 (default)" in (action.help or "")


@pytest.mark.parametrize("command", ["train", "eval", "predict", "sample", "fid"])
def test_device_is_one_option_with_trains_choices_and_default(command):
    """eval, predict, sample and fid took no --device and ran on the CPU, even on a GPU the run was trained on. They
    take train's option: cpu or cuda, by default cuda where available as train."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    action = next(a for a in subparsers.choices[command]._actions if a.dest == "device")
    assert action.option_strings == ["--device"] and action.choices == ("cpu", "cuda") and action.default is None
    assert "default: cuda where available, else cpu" in action.help


def test_a_run_on_one_coco_file_says_where_its_val_and_test_figures_are_scored(tmp_path, capsys):
    """A run trained on one COCO .json file, which serves every split, printed and wrote its val figures (train's
    summary, summary.json, metrics.jsonl), eval --split test its test figures and sample --complete test its grid,
    all on the training images, with no word at that time. Each now says so in one line, and the run's files record
    it; another run's data (a COCO folder's run evaluated on the file) are not its training images."""
    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "8", "--image-size", "16", "--split",
                 "train"]) == 0
    ann_file = folder / "train" / "annotations.json"  # the images beside their JSON
    shutil.move(folder / "annotations" / "instances_train.json", ann_file)
    note = f"note: {ann_file} serves every split: the {{}} figures are on the training images\n"
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "image_gpt_small", "--data", str(ann_file), "--img-size", "8", "--max-steps", "1",
                 "--batch-size", "8", "--no-progress", "--out", str(run), "--model-arg", "embed_dim=16",
                 "--model-arg", "depth=1", "--model-arg", "num_heads=2"]) == 0
    assert capsys.readouterr().err.endswith(note.format("val"))
    recorded = note.format("val")[len("note: "):-1]
    assert json.loads((run / "summary.json").read_text())["note"] == recorded
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["note"] for record in val if record.get("split") == "val"] == [recorded]
    checkpoint = str(run / "checkpoint.safetensors")
    assert main(["eval", "image_gpt_small", "--checkpoint", checkpoint, "--split", "test", "--no-progress"]) == 0
    assert capsys.readouterr().err == note.format("test")
    assert main(["eval", "image_gpt_small", "--checkpoint", checkpoint, "--split", "test", "--no-progress",
                 "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["note"] == note.format("test")[len("note: "):-1] and err == note.format("test")
    assert main(["eval", "image_gpt_small", "--checkpoint", checkpoint, "--split", "train", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""  # the train split's figures are on the training images by name
    assert main(["sample", "image_gpt_small", "--checkpoint", checkpoint, "--complete", "test", "-n", "2",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert capsys.readouterr().err == note.format("test")
    assert same_images_note(ann_file, "test", trained_on=folder) is None  # another run's data: not its training images
    assert same_images_note(folder, "test") is None and same_images_note("shapes", "val") is None


def test_eval_json_help_names_the_note_it_may_carry():
    """eval --json's help named images_scored and split_images but not the note it carries where one COCO .json file
    serves every split, so a reader of the JSON met a key its help did not explain."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    action = next(a for a in subparsers.choices["eval"]._actions if a.dest == "json")
    assert "note where the split's images are the run's training images" in " ".join(action.help.split())


def test_train_tells_a_task_option_typed_at_its_default_from_one_left_out():
    """train keeps every task option's default aside (``_task_option_defaults``) and marks one left out, so that
    ``--mixup 0`` typed at its default is told apart from no --mixup; the common options keep their defaults."""
    from visionzoo.cli import _parse
    from visionzoo.train.commands import _NOT_GIVEN

    args = _parse(build_parser(), ["train", "resnet18", "--data", "digits", "--mixup", "0", "--lr", "0.1"])
    defaults = args._task_option_defaults
    assert args.mixup == 0.0 and defaults["mixup"] == 0.0
    assert args.label_smoothing is _NOT_GIVEN and defaults["label_smoothing"] == 0.0
    assert {"teacher", "distillation_alpha", "disc_start", "tokenizer", "scale_jitter"} <= set(defaults)
    assert args.lr == 0.1 and not {"lr", "data", "out", "model", "help"} & set(defaults)


@pytest.mark.parametrize("arguments, message", [
    (["resnet18"], "give the weights to predict with: --checkpoint FILE (a run of `visionzoo train`) or --pretrained "
                   "(the model's official weights), one of them"),
    (["resnet18", "--pretrained", "--checkpoint", "run.safetensors"], "or --pretrained (the model's official weights), "
                                                                      "one of them"),
    (["resnet18", "--pretrained", "--use-ema"], "--pretrained takes the official weights as they are: --use-ema is for "
                                                "a --checkpoint of `visionzoo train`"),
    (["vit_tiny_patch4_32", "--pretrained"], "vit_tiny_patch4_32 has no official weights to predict with (`visionzoo "
                                             "list-models --pretrained` lists those that do)"),
    (["vqgan_transformer_imagenet_cin", "--pretrained"], "vqgan_transformer_imagenet_cin is an autoregressive model; "
                                                         "`visionzoo predict --pretrained` runs the official weights of "
                                                         "classifiers, detectors and VQGANs"),
    (["hipt_vit256_small", "--pretrained"], "hipt_vit256_small's official weights have no classifier (self-supervised "
                                            "features), so `visionzoo predict` has no classes to name"),
    (["vit4k_xs", "--pretrained"], "vit4k_xs's official weights have no classifier"),
])
def test_predict_asks_for_one_source_of_weights_that_it_can_run(tmp_path, capsys, monkeypatch, arguments, message):
    """`visionzoo predict` took only --checkpoint; with --pretrained (the official weights) beside it, a request
    without weights, with both, with EMA weights the official files do not have, for a model without official
    weights or for official weights predict cannot run is one line, before anything is downloaded or written."""
    from PIL import Image

    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VISIONZOO_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # a download would fail, not hang
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    Image.new("RGB", (32, 32)).save(tmp_path / "cat.png")
    assert main(["predict", *arguments, str(tmp_path / "cat.png"), "--out", str(tmp_path / "preds")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not (tmp_path / "preds").exists() and not (tmp_path / "cache").exists()


def test_predict_pretrained_refuses_a_missing_image_before_downloading_the_weights(tmp_path, capsys, monkeypatch):
    """A mistyped image path was refused only once the official weights (330 MB for a ViT-B) were downloaded."""
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VISIONZOO_WEIGHTS_MIRROR", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert main(["predict", "resnet18", "--pretrained", str(tmp_path / "cat.jgp"), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith(f"image {tmp_path / 'cat.jgp'} does not exist"), error
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("make", [lambda path: None, lambda path: path.mkdir()])
def test_predict_checkpoint_refuses_a_missing_image_before_reading_the_checkpoint(tmp_path, capsys, monkeypatch, make):
    """predict --checkpoint read the run (the weights, and with older checkpoints its data) and only then found a
    mistyped image path; the files are checked first, with the same messages as before."""
    from PIL import Image

    from visionzoo.train import commands

    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise ValueError("the checkpoint was read")

    monkeypatch.setattr(commands, "load_for_inference", spy)
    Image.new("RGB", (16, 16)).save(tmp_path / "cat.png")
    checkpoint = tmp_path / "run.safetensors"
    checkpoint.write_bytes(b"weights")
    missing = tmp_path / "dog.png"
    make(missing)
    assert main(["predict", "resnet18", "--checkpoint", str(checkpoint), str(tmp_path / "cat.png"), str(missing),
                 "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err.strip()
    expected = f"image {missing} does not exist" if not missing.exists() else f"image {missing} is a folder"
    assert len(error.splitlines()) == 1 and expected in error, error
    assert calls == [] and not (tmp_path / "o").exists()


# a one-block ViT: each run on Digits takes well under a second
DIGITS = ["train", "vit_tiny_patch4_32", "--data", "digits", "--img-size", "16", "--model-arg", "img_size=16",
          "--model-arg", "embed_dim=16", "--model-arg", "depth=1", "--model-arg", "num_heads=2",
          "--batch-size", "8", "--precision", "fp32", "--no-progress"]


def _val_records(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record.get("split") == "val"]


def test_val_size_scores_the_val_splits_first_images_and_a_resumed_run_keeps_it(tmp_path, capsys):
    """A run's evaluations scored the whole val split (an R-CNN's 500 Shapes scenes took over 15 minutes after one
    step), with no way to score fewer. --val-size N scores the first N (all of a smaller split), the run's files
    say how many, eval --max-images N gives the same figures, and --resume keeps N unless given another."""
    from visionzoo.checkpoint import read_checkpoint

    run = tmp_path / "run"
    assert main([*DIGITS, "--max-steps", "1", "--val-size", "3", "--out", str(run)]) == 0
    assert "val on the first 3 of the split's 270 images:" in capsys.readouterr().out.splitlines()
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["val_images_scored"], summary["val_split_images"]) == (3, 270)
    assert [(r["images_scored"], r["split_images"]) for r in _val_records(run)] == [(3, 270)]
    checkpoint = run / "checkpoint.safetensors"
    assert read_checkpoint(checkpoint)[1]["run"]["val_images"] == 3
    assert main(["eval", "vit_tiny_patch4_32", "--checkpoint", str(checkpoint), "--split", "val", "--max-images", "3",
                 "--json", "--no-progress"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert (scored["images_scored"], scored["split_images"]) == (3, 270)
    assert scored["loss"] == pytest.approx(summary["metrics"]["loss"], rel=1e-5)
    assert main([*DIGITS, "--max-steps", "2", "--out", str(run), "--resume"]) == 0
    assert [r["images_scored"] for r in _val_records(run)] == [3, 3]
    assert "val on the first 3 of the split's 270 images:" in capsys.readouterr().out.splitlines()
    assert main([*DIGITS, "--max-steps", "3", "--val-size", "1000", "--out", str(run), "--resume"]) == 0
    assert [r["images_scored"] for r in _val_records(run)] == [3, 3, 270]
    assert read_checkpoint(checkpoint)[1]["run"]["val_images"] == 270
    assert "val on the first" not in capsys.readouterr().out  # the whole split: no line


def test_eval_max_images_says_it_scored_n_of_the_splits_images(tmp_path, capsys):
    """eval scored the whole split, however long it took. --max-images N scores its first N, and says so."""
    run = tmp_path / "run"
    assert main([*DIGITS, "--max-steps", "1", "--val-size", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    eval_ = ["eval", "vit_tiny_patch4_32", "--checkpoint", str(run / "checkpoint.safetensors"), "--no-progress"]
    assert main([*eval_, "--max-images", "5"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "vit_tiny_patch4_32 on test split (5 of its 270 images):"
    assert main([*eval_, "--max-images", "5000"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "vit_tiny_patch4_32 on test split (270 images):"


def test_predict_reconstructs_as_many_images_at_once_as_half_the_memory_holds(tmp_path, monkeypatch):
    """`predict vqgan_imagenet_f16_16384 --pretrained` read 64 images a forward, as a classifier does: 10 GiB at its
    256 px (164 to 188 MiB an image, measured). A reconstruction now reads as many as half the free memory holds, at
    RECONSTRUCTION_BYTES_PER_PIXEL, from 1 to PREDICT_BATCH; --batch-size is still taken as given."""
    import numpy as np
    from PIL import Image

    import visionzoo.train.task as task_module
    from visionzoo.checkpoint import save_checkpoint
    from visionzoo.models import create_model
    from visionzoo.train.commands import PREDICT_BATCH, RECONSTRUCTION_BYTES_PER_PIXEL, reconstruction_batch
    from visionzoo.train.reconstruction import ReconstructionTask

    image_bytes = RECONSTRUCTION_BYTES_PER_PIXEL * 256 * 256
    assert reconstruction_batch(256, 2 * 10 * image_bytes + image_bytes) == 10
    assert reconstruction_batch(256, 2**20) == 1
    assert reconstruction_batch(256, 2**50) == reconstruction_batch(16, None) == PREDICT_BATCH

    args = dict(channels=16, res_channels=8, embed_dim=8, num_codes=32)
    model = create_model("vqvae_small", in_chans=1, **args)
    checkpoint = tmp_path / "vqvae.safetensors"
    save_checkpoint(checkpoint, {f"model.{k}": v for k, v in model.state_dict().items()},
                    {"model": {"name": "vqvae_small", "args": {"in_chans": 1, **args}},
                     "run": {"data": "digits", "img_size": 16, "in_chans": 1}})
    images = []
    for index in range(3):
        images.append(str(tmp_path / f"{index}.png"))
        Image.fromarray(np.full((16, 16), 40 * index, dtype=np.uint8)).save(images[-1])
    batches = []
    predict = ReconstructionTask.predict
    monkeypatch.setattr(ReconstructionTask, "predict",
                        lambda self, model, images, autocast: batches.append(len(images)) or predict(self, model, images,
                                                                                                        autocast))
    monkeypatch.setattr(task_module, "available_memory", lambda: 4 * RECONSTRUCTION_BYTES_PER_PIXEL * 16 * 16)
    command = ["predict", "vqvae_small", "--checkpoint", str(checkpoint), *images, "--device", "cpu"]
    assert main([*command, "--out", str(tmp_path / "default")]) == 0
    assert batches == [2, 1]
    batches.clear()
    assert main([*command, "--batch-size", "3", "--out", str(tmp_path / "given")]) == 0
    assert batches == [3]
