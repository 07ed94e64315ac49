"""The autoregressive task: batches, label dropping, NLL, sampling, the code prior over a trained tokenizer, the CLI."""

import contextlib
import dataclasses
import functools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from visionzoo.checkpoint import read_checkpoint
from visionzoo.cli import main
from visionzoo.models import create_model
from visionzoo.train import TrainConfig
from visionzoo.train.autoregressive import AutoregressiveTask
from visionzoo.train.run import load_for_inference, run_training

TINY = dict(embed_dim=32, depth=2, num_heads=2)
VQVAE = dict(channels=16, res_channels=8, embed_dim=8, num_codes=32)


def config(out, steps):
    return TrainConfig(out=str(out), max_steps=steps, batch_size=32, lr=2e-3, overwrite=True, progress=False,
                       checkpoint_every=10**9, precision="fp32")


def tiny_image_gpt(num_classes=0):
    torch.manual_seed(0)
    return create_model("image_gpt_small", in_chans=1, img_size=4, num_classes=num_classes, **TINY)


def test_collate_reads_digits_and_shapes_targets():
    task = AutoregressiveTask()
    images, labels = task.collate([(torch.zeros(1, 4, 4), 3), (torch.ones(1, 4, 4), 7)])
    assert images.shape == (2, 1, 4, 4) and labels.tolist() == [3, 7]
    _, labels = task.collate([(torch.zeros(3, 4, 4), {"label": 2, "boxes": None})])
    assert labels.tolist() == [2]


def test_a_tenth_of_the_labels_is_dropped_in_training_only():
    task = AutoregressiveTask()
    task.generator.manual_seed(0)
    labels = torch.arange(4000) % 10
    dropped = task._conditioning(tiny_image_gpt(num_classes=10), labels, drop=True)
    share = float((dropped == 10).float().mean())
    assert share == pytest.approx(0.1, abs=0.02)
    assert torch.equal(dropped[dropped != 10], labels[dropped != 10])
    assert torch.equal(task._conditioning(tiny_image_gpt(num_classes=10), labels, drop=False), labels)
    assert task._conditioning(tiny_image_gpt(), labels, drop=True) is None


def test_evaluate_is_the_mean_token_nll_in_nats_and_bits():
    task = AutoregressiveTask()
    model = tiny_image_gpt(num_classes=3).eval()
    generator = torch.Generator().manual_seed(0)
    dataset = [(torch.rand(1, 4, 4, generator=generator), i % 3) for i in range(10)]
    with torch.no_grad():
        metrics = task.evaluate(model, dataset, 4, contextlib.nullcontext)
        images, labels = task.collate(dataset)
        tokens = model.tokens(images)
        expected = F.cross_entropy(model(tokens, labels).flatten(0, 1), tokens.flatten())
    assert metrics["nll"] == pytest.approx(float(expected), rel=1e-5)
    assert metrics["bits"] == pytest.approx(float(expected) / math.log(2), rel=1e-5)


def test_sample_gives_images_from_the_seed_and_checks_the_label():
    task = AutoregressiveTask()
    model = tiny_image_gpt(num_classes=3).eval()
    images = task.sample(model, 5, torch.Generator().manual_seed(1), contextlib.nullcontext, top_k=4, label=2)
    assert images.shape == (5, 1, 4, 4) and 0 <= images.min() and images.max() <= 1
    again = task.sample(model, 5, torch.Generator().manual_seed(1), contextlib.nullcontext, top_k=4, label=2)
    assert torch.equal(images, again)
    with pytest.raises(ValueError, match="0..2"):
        task.sample(model, 2, torch.Generator(), contextlib.nullcontext, label=3)
    with pytest.raises(ValueError, match="unconditional"):
        task.sample(tiny_image_gpt().eval(), 2, torch.Generator(), contextlib.nullcontext, label=0)


def test_a_label_is_a_class_name_or_index_and_an_unconditional_model_refuses_any():
    """A label that was no class name of the data was refused as "not a class of this model; classes: ..." also by an
    unconditional model, which takes no class at all."""
    task = AutoregressiveTask(["zero", "one", "two"])
    sample = functools.partial(task.sample, count=3, autocast=contextlib.nullcontext)
    model = tiny_image_gpt(num_classes=3).eval()
    by_name = sample(model, generator=torch.Generator().manual_seed(0), label="two")
    for index in (2, "2"):
        assert torch.equal(by_name, sample(model, generator=torch.Generator().manual_seed(0), label=index))
    for label in ("three", "3", 3, -1):
        with pytest.raises(ValueError, match=r"label must be a class in 0..2 \(zero, one, two\)"):
            sample(model, generator=torch.Generator(), label=label)
    for label in ("seven", "12", 0):
        with pytest.raises(ValueError, match="unconditional"):
            sample(tiny_image_gpt().eval(), generator=torch.Generator(), label=label)


def test_a_label_out_of_range_of_a_thousand_classes_is_refused_in_a_short_line():
    """--label 1000 on a prior of ImageNet's 1,000 classes (taming-transformers' class-conditional one) printed all
    1,000 class names in its error, some 11,000 characters."""
    classes = [f"n{index:08d}" for index in range(1000)]
    model = tiny_image_gpt(num_classes=1000).eval()
    with pytest.raises(ValueError) as error:
        AutoregressiveTask(classes).sample(model, 2, torch.Generator(), contextlib.nullcontext, label="1000")
    assert str(error.value) == ("label must be a class in 0..999 (n00000000, n00000001, n00000002, ..., n00000999), "
                                "got 1000")


def test_a_top_k_beyond_the_vocabulary_is_refused_rather_than_ignored():
    """--top-k 100000 on a 16-colour Image GPT kept every token without a word: the option did nothing."""
    task = AutoregressiveTask()
    model = tiny_image_gpt().eval()  # a palette of 16 colours: 16 tokens
    with pytest.raises(ValueError, match="top_k 17 .* 16 tokens"):
        task.sample(model, 2, torch.Generator().manual_seed(0), contextlib.nullcontext, top_k=17)
    every = task.sample(model, 2, torch.Generator().manual_seed(0), contextlib.nullcontext, top_k=16)
    assert torch.equal(every, task.sample(model, 2, torch.Generator().manual_seed(0), contextlib.nullcontext))


def test_the_code_prior_trains_over_a_tokenizer_checkpoint_and_samples(tmp_path):
    run_training("vqvae_small", "digits", config(tmp_path / "tokenizer", 5), 16, VQVAE)
    tokenizer = tmp_path / "tokenizer" / "checkpoint.safetensors"
    setup, result = run_training("vqgan_transformer", "digits", config(tmp_path / "prior", 30), None, TINY,
                                 options={"tokenizer": str(tokenizer)})
    model = setup.model.eval()
    assert model.img_size == 16 and model.grid_size == (4, 4) and model.gpt.num_classes == 10  # from the tokenizer
    trained, _ = read_checkpoint(tokenizer)
    state = model.state_dict()
    assert all(torch.equal(state["tokenizer." + k[len("model."):]], v) for k, v in trained.items()
               if k.startswith("model."))  # loaded, then never trained
    assert result.metrics["nll"] < math.log(32) - 0.5
    images = setup.task.sample(model, 6, torch.Generator().manual_seed(0), contextlib.nullcontext, label=4, top_p=0.9)
    assert images.shape == (6, 1, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert (tmp_path / "prior" / "samples.png").is_file() and not (tmp_path / "prior" / "completions.png").exists()
    tokenizer.unlink()  # the prior's checkpoint alone rebuilds both stages
    reloaded = load_for_inference("vqgan_transformer", tmp_path / "prior" / "checkpoint.safetensors")
    assert all(torch.equal(v, state[k]) for k, v in reloaded.model.state_dict().items())
    assert torch.equal(reloaded.task.sample(reloaded.model.eval(), 6, torch.Generator().manual_seed(0),
                                            contextlib.nullcontext, label=4, top_p=0.9), images)


def test_a_code_prior_checkpoint_holding_its_tokenizers_discriminator_resumes_and_samples(tmp_path):
    """Priors were once saved with their VQGAN tokenizer's discriminator; such a checkpoint still resumes (model
    and EMA weights; without --tokenizer given again) and loads for sampling, its discriminator weights dropped."""
    import dataclasses

    from visionzoo.checkpoint import save_checkpoint

    args = {"in_chans": 1, "ch": 8, "ch_mult": [1, 2, 2], "z_channels": 8, "embed_dim": 8, "num_codes": 32,
            "disc_width": 8}
    torch.manual_seed(0)
    tokenizer = create_model("vqgan", **args)
    tokenizer_file = tmp_path / "tokenizer.safetensors"
    save_checkpoint(tokenizer_file, {f"model.{k}": v for k, v in tokenizer.state_dict().items()},
                    {"model": {"name": "vqgan", "args": args}, "run": {"img_size": 16}})
    cfg = dataclasses.replace(config(tmp_path / "prior", 2), ema_decay=0.9)
    run_training("vqgan_transformer", "digits", cfg, None, TINY, options={"tokenizer": str(tokenizer_file)})
    path = tmp_path / "prior" / "checkpoint.safetensors"
    tensors, meta = read_checkpoint(path)
    assert not any(".discriminator." in k for k in tensors)
    discriminator = {f"tokenizer.{k}": v for k, v in tokenizer.state_dict().items() if k.startswith("discriminator.")}
    save_checkpoint(path, {**tensors, **{f"{section}.{k}": v for section in ("model", "ema")
                                         for k, v in discriminator.items()}}, meta)
    resumed = dataclasses.replace(cfg, max_steps=4, resume=True, overwrite=False)
    run_training("vqgan_transformer", "digits", resumed, None, TINY)  # the run's own --tokenizer
    assert json.loads((tmp_path / "prior" / "checkpoint.json").read_text())["step"] == 4
    reloaded = load_for_inference("vqgan_transformer", path)
    assert not hasattr(reloaded.model.tokenizer, "discriminator")


@pytest.mark.parametrize(("name", "args", "article"), [
    ("dcgan", {"in_chans": 1, "img_size": 16}, "a"),
    ("image_gpt_small", {"in_chans": 1, "img_size": 4, **TINY}, "an"),  # it said "is a image_gpt_small checkpoint"
])
def test_a_checkpoint_that_is_not_a_tokenizers_is_refused_naming_it(tmp_path, name, args, article):
    from visionzoo.checkpoint import save_checkpoint

    model = create_model(name, **args)
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()},
                    {"model": {"name": name, "args": model.model_args}, "run": {"img_size": args["img_size"]}})
    with pytest.raises(ValueError, match=f"--tokenizer {path} is {article} {name} checkpoint, not a tokenizer's"):
        run_training("vqgan_transformer", "digits", config(tmp_path / "prior", 1), None, TINY,
                     options={"tokenizer": str(path)})
    with pytest.raises(ValueError, match=f"{name} is not a tokenizer"):
        create_model("vqgan_transformer", tokenizer={"name": name, "args": args})


def test_a_code_priors_codes_are_encoded_once_per_image_and_image_gpts_are_not_remembered():
    torch.manual_seed(0)
    tokenizer = {"name": "vqvae_small", "args": {"in_chans": 1, **VQVAE}}
    model = create_model("vqgan_transformer", tokenizer=tokenizer, img_size=16, **TINY)
    encoded = []
    model.tokenizer.encoder.register_forward_hook(lambda module, inputs, output: encoded.append(len(inputs[0])))
    task = AutoregressiveTask()
    images = torch.rand(4, 1, 16, 16)
    first = task.tokens(model, images)
    assert torch.equal(first, model.tokens(images)) and encoded == [4, 4]
    assert torch.equal(task.tokens(model, images.flip(0)), first.flip(0)) and encoded == [4, 4]  # none encoded
    mixed = torch.cat([images[:2], torch.rand(1, 1, 16, 16)])
    assert torch.equal(task.tokens(model, mixed), model.tokens(mixed)) and encoded[2] == 1  # only the new one
    assert len(task.remembered) == 5
    other = create_model("vqgan_transformer", tokenizer=tokenizer, img_size=16, **TINY)  # another tokenizer
    assert torch.equal(task.tokens(other, images), other.tokens(images)) and len(task.remembered) == 4
    capped = AutoregressiveTask()
    capped.remembered.capacity = 2
    assert torch.equal(capped.tokens(model, images), first) and len(capped.remembered) == 2
    image_gpt = tiny_image_gpt()
    palette_images = torch.rand(3, 1, 4, 4)
    assert torch.equal(task.tokens(image_gpt, palette_images), image_gpt.tokens(palette_images))
    assert len(task.remembered) == 4  # palette indices are cheap: not remembered


def test_the_code_prior_without_tokenizer_is_one_clear_error(tmp_path, capsys):
    run = tmp_path / "prior"
    assert main(["train", "vqgan_transformer", "--data", "digits", "--out", str(run)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--tokenizer FILE" in error and not run.exists()
    assert main(["train", "vqgan_transformer", "--data", "digits", "--out", str(run),
                 "--tokenizer", str(tmp_path / "none.safetensors")]) == 2
    assert "none.safetensors does not exist" in capsys.readouterr().err


def test_eval_at_another_size_than_an_image_gpts_is_one_line_naming_the_option(tmp_path, capsys):
    """It used to print "objects appear at 2x the scale it learned, so its scores can fall far", then fail at the
    first batch: "Image GPT takes Tensor[B, 1, 4, 4] images, got (128, 1, 8, 8)"."""
    from visionzoo.checkpoint import save_checkpoint

    model = tiny_image_gpt()
    path = tmp_path / "igpt.safetensors"
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()},
                    {"model": {"name": "image_gpt_small", "args": {"in_chans": 1, "img_size": 4, **TINY}},
                     "run": {"data": "digits", "img_size": 4, "in_chans": 1}})
    assert main(["eval", "image_gpt_small", "--checkpoint", str(path), "--img-size", "8"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert f"image_gpt_small from {path} models 4 px images (a sequence of 16 tokens) and reads no other size: " \
           "drop --img-size 8" in error
    assert main(["eval", "image_gpt_small", "--checkpoint", str(path), "--img-size", "4", "--json"]) == 0


def test_a_model_arg_img_size_that_does_not_fit_the_images_is_refused_before_the_run(tmp_path, capsys):
    """It used to fail at the first step: "Image GPT takes Tensor[B, 1, 16, 16] images, got (4, 1, 8, 8)"."""
    argv = ["train", "image_gpt_small", "--data", "digits", "--img-size", "8", "--max-steps", "1", "--no-progress",
            "--out", str(tmp_path / "run"), "--model-arg", "embed_dim=16", "--model-arg", "depth=1"]
    assert main([*argv, "--model-arg", "img_size=16"]) == 2
    assert capsys.readouterr().err == ("visionzoo train: error: --model-arg img_size=16 does not fit the digits images' "
                                       "8: give --img-size 16 instead\n")
    assert not (tmp_path / "run").exists()


def test_image_gpt_refuses_a_tokenizer_it_would_ignore(tmp_path, capsys):
    run = tmp_path / "igpt"
    assert main(["train", "image_gpt_small", "--data", "digits", "--img-size", "8", "--max-steps", "1",
                 "--out", str(run), "--tokenizer", str(tmp_path / "vq.safetensors")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--tokenizer is for code priors (vqgan_transformer, " in error
    assert "image_gpt_small" in error and not run.exists()


def test_image_gpt_trains_on_a_coco_folder_unconditionally_and_refuses_to_condition_on_it(tmp_path, capsys):
    # before: every run failed at its first batch with "this data set has no image-level class labels (its
    # targets have no 'label')", also unconditional (image_gpt's default), whose labels go unused
    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "40", "--image-size", "16"]) == 0
    run = tmp_path / "run"
    argv = ["train", "image_gpt_small", "--data", str(folder), "--img-size", "8", "--max-steps", "1", "--batch-size", "8",
            "--no-progress", "--model-arg", "embed_dim=16", "--model-arg", "depth=1"]
    assert main([*argv, "--out", str(run)]) == 0
    assert "val nll" in capsys.readouterr().out
    assert (run / "completions.png").is_file() and not (run / "probes.png").exists()  # a probe needs classes
    assert main([*argv, "--out", str(tmp_path / "conditional"), "--class-conditional"]) == 2
    assert capsys.readouterr().err == (f"visionzoo train: error: {folder} has no image-level class labels (a detection "
                                       "data set), which a class-conditional image_gpt_small needs: train it with "
                                       "--no-class-conditional\n")


def test_class_conditional_image_gpt_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "image_gpt_small", "--data", "digits", "--img-size", "8", "--max-steps", "2", "--out", str(run),
            "--class-conditional", "--no-progress", "--model-arg", "embed_dim=16", "--model-arg", "depth=1"]
    assert main(argv) == 0
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["model"]["args"]["num_classes"] == 10 and meta["model"]["args"]["img_size"] == 8
    assert meta["task"]["classes"] == [str(d) for d in range(10)]
    assert "val nll" in capsys.readouterr().out
    assert (run / "completions.png").is_file() and (run / "probes.png").is_file()


@pytest.mark.parametrize("num_classes, rows", [(0, 8), (3, 3), (10, 10), (40, 16)])
def test_samples_png_shows_a_row_per_class(tmp_path, monkeypatch, num_classes, rows):
    """With 64 cells in rows of 8, a Digits prior's grid showed classes 0-7 only."""
    from PIL import Image

    from visionzoo.train import autoregressive

    task = AutoregressiveTask([str(i) for i in range(num_classes)])
    drawn = []
    generate = task._generate

    def recording(model, labels, count, *rest):
        drawn.append((labels, count))
        return generate(model, labels, count, *rest)

    monkeypatch.setattr(task, "_generate", recording)
    task.report(tiny_image_gpt(num_classes).eval(), [(torch.zeros(1, 4, 4), 0)], tmp_path, 4, contextlib.nullcontext)
    labels, count = drawn[0]
    assert count == rows * autoregressive.COLUMNS
    if num_classes:
        assert torch.equal(labels, torch.arange(rows).repeat_interleave(8))
    else:
        assert labels is None
    with Image.open(tmp_path / "samples.png") as picture:  # 4 px cells enlarged to 32, 2 px padding
        assert picture.size == (2 + 8 * 34, 2 + rows * 34)


def test_resuming_a_code_prior_with_another_tokenizer_is_refused_not_ignored(tmp_path):
    """`train vqgan_transformer --resume --tokenizer OTHER` went on with the tokenizer weights of the run's checkpoint
    (the engine loads them over OTHER's) while the checkpoint recorded OTHER as the run's --tokenizer."""
    import dataclasses

    from visionzoo.checkpoint import save_checkpoint

    args = {"in_chans": 1, "channels": 16, "res_channels": 8, "embed_dim": 8, "num_codes": 32}
    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        tokenizer = create_model("vqvae_small", **args)
        files.append(tmp_path / f"tokenizer{seed}.safetensors")
        save_checkpoint(files[-1], {f"model.{k}": v for k, v in tokenizer.state_dict().items()},
                        {"model": {"name": "vqvae_small", "args": args}, "run": {"img_size": 16}})
    cfg = config(tmp_path / "prior", 1)
    run_training("vqgan_transformer", "digits", cfg, None, TINY, options={"tokenizer": str(files[0])})
    resumed = dataclasses.replace(cfg, max_steps=2, resume=True, overwrite=False)
    with pytest.raises(ValueError, match=f"--tokenizer {files[1]}: the run in .* learnt the codes of {files[0]}"):
        run_training("vqgan_transformer", "digits", resumed, None, TINY, options={"tokenizer": str(files[1])})
    run_training("vqgan_transformer", "digits", resumed, None, TINY, options={"tokenizer": str(files[0])})
    assert json.loads((tmp_path / "prior" / "checkpoint.json").read_text())["step"] == 2


def test_a_code_prior_resumes_after_its_tokenizer_file_is_gone(tmp_path):
    """`train vqgan_transformer --resume` stopped with "checkpoint TOKENIZER does not exist" once the tokenizer's run
    folder was moved or removed, though the prior's checkpoint holds the tokenizer's weights and goes on with them
    (as eval and sample already did without the file)."""
    import dataclasses

    from visionzoo.checkpoint import save_checkpoint

    args = {"in_chans": 1, "channels": 16, "res_channels": 8, "embed_dim": 8, "num_codes": 32}
    torch.manual_seed(0)
    tokenizer = create_model("vqvae_small", **args)
    tokenizer_file = tmp_path / "tokenizer.safetensors"
    save_checkpoint(tokenizer_file, {f"model.{k}": v for k, v in tokenizer.state_dict().items()},
                    {"model": {"name": "vqvae_small", "args": args}, "run": {"img_size": 16}})
    cfg = config(tmp_path / "prior", 1)
    run_training("vqgan_transformer", "digits", cfg, None, TINY, options={"tokenizer": str(tokenizer_file)})
    before = read_checkpoint(tmp_path / "prior" / "checkpoint.safetensors")[0]
    tokenizer_file.unlink()
    resumed = dataclasses.replace(cfg, max_steps=2, resume=True, overwrite=False)
    setup, _ = run_training("vqgan_transformer", "digits", resumed, None, TINY)
    assert json.loads((tmp_path / "prior" / "checkpoint.json").read_text())["step"] == 2
    for name, value in setup.model.tokenizer.state_dict().items():  # frozen: the run's own tokenizer weights
        torch.testing.assert_close(value, before[f"model.tokenizer.{name}"])


def test_sample_of_a_run_on_a_coco_folder_needs_only_its_checkpoint(tmp_path, capsys):
    # before: sample opened every split of the training folder for its classes and image size, and once the folder
    # had moved it stopped with "... was trained on FOLDER, which is not there"
    import shutil

    from PIL import Image

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "16", "--image-size", "16"]) == 0
    run = tmp_path / "run"
    assert main(["train", "image_gpt_small", "--data", str(folder), "--img-size", "8", "--max-steps", "1",
                 "--batch-size", "8", "--no-progress", "--model-arg", "embed_dim=16", "--model-arg", "depth=1",
                 "--out", str(run)]) == 0
    argv = ["sample", "image_gpt_small", "--checkpoint", str(run / "checkpoint.safetensors"), "-n", "4", "--seed", "3"]
    assert main([*argv, "--out", str(tmp_path / "before.png")]) == 0
    shutil.rmtree(folder)
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "after.png")]) == 0, capsys.readouterr().err
    before, after = (Image.open(tmp_path / f"{name}.png") for name in ("before", "after"))
    assert before.size == after.size and before.tobytes() == after.tobytes()


def test_eval_of_an_image_gpt_whose_logits_overflow_is_refused_not_printed_as_nan(tmp_path, capsys, monkeypatch):
    """eval --json of an Image GPT whose logits overflowed (bf16's range; its weights finite) printed "nll": NaN,
    which is not JSON; it now refuses as a classifier's eval does, suggesting fp32."""
    from visionzoo.checkpoint import save_checkpoint

    model = tiny_image_gpt()
    path = tmp_path / "igpt.safetensors"
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()},
                    {"model": {"name": "image_gpt_small", "args": {"in_chans": 1, "img_size": 4, **TINY}},
                     "run": {"data": "digits", "img_size": 4, "in_chans": 1}})
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, *a, **k: forward(self, *a, **k) * float("inf"))
    capsys.readouterr()
    assert main(["eval", "image_gpt_small", "--checkpoint", str(path), "--json", "--precision", "bf16"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (f"visionzoo eval: error: image_gpt_small's outputs are not finite "
                                                   f"(NaN or infinity) with {path}; try --precision fp32\n")


def _tiny_image_gpt_checkpoint(folder: Path, edits: dict) -> Path:
    """A tiny Image GPT's checkpoint ``folder / "igpt.safetensors"``, each tensor named in ``edits`` changed in place
    by its function first."""
    from visionzoo.checkpoint import save_checkpoint

    state = {f"model.{k}": v for k, v in tiny_image_gpt().state_dict().items()}
    for name, edit in edits.items():
        edit(state[f"model.{name}"])
    path = folder / "igpt.safetensors"
    save_checkpoint(path, state, {"model": {"name": "image_gpt_small", "args": {"in_chans": 1, "img_size": 4, **TINY}},
                                  "run": {"data": "digits", "img_size": 4, "in_chans": 1}})
    return path


def test_sample_of_an_image_gpt_with_nan_weights_is_one_line_naming_the_checkpoint(tmp_path, capsys):
    """sample of an Image GPT (or a prior) whose weights held NaN (a diverged run) stopped in a traceback from
    torch.multinomial: "probability tensor contains either `inf`, `nan` or element < 0"; it now refuses before
    drawing, naming the checkpoint and the tensor, as eval and predict do, and writes nothing."""

    path = _tiny_image_gpt_checkpoint(tmp_path, {"gpt.head.weight": lambda weight: weight[0, 0].fill_(float("nan"))})
    out = tmp_path / "samples"
    capsys.readouterr()
    assert main(["sample", "image_gpt_small", "--checkpoint", str(path), "-n", "2", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"visionzoo sample: error: {path}: image_gpt_small's weights hold non-finite "
                                       "values (NaN or infinity), first in gpt.head.weight: its outputs would not be "
                                       "finite (did the run diverge?)\n")
    assert not out.exists()


def test_train_with_a_palette_larger_than_its_pixels_is_one_line_naming_palette_size(tmp_path, capsys):
    """train image_gpt_small --model-arg palette_size=100000 on 8 px Digits stopped with "k-means of 100000 clusters
    needs points Tensor[M, C] with M >= k, got (64000, 1)", naming neither the option nor the images."""
    out = tmp_path / "run"
    assert main(["train", "image_gpt_small", "--data", "digits", "--img-size", "8", "--batch-size", "8",
                 "--max-steps", "1", "--no-progress", "--model-arg", "palette_size=100000", "--model-arg",
                 "embed_dim=8", "--model-arg", "depth=1", "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("visionzoo train: error: Image GPT's palette_size=100000 needs at least 100000 "
                                       "pixels to fit its colours to, got 64000 (1000 images of 8 x 8)\n")
    assert not out.exists()


def test_sample_of_an_image_gpt_whose_logits_overflow_is_one_line_naming_the_checkpoint(tmp_path, capsys):
    """sample of an Image GPT whose finite weights gave infinite logits (bf16's range, or weights this large) stopped
    in a traceback from torch.multinomial; it now says so in one line naming the checkpoint, as eval does."""

    path = _tiny_image_gpt_checkpoint(tmp_path, {"gpt.norm.weight": lambda weight: weight.fill_(1e30),
                                                 "gpt.head.weight": lambda weight: weight.fill_(1e30)})
    out = tmp_path / "samples"
    capsys.readouterr()
    assert main(["sample", "image_gpt_small", "--checkpoint", str(path), "-n", "2", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"visionzoo sample: error: image_gpt_small's outputs are not finite (NaN or "
                                       f"infinity) with {path}\n")
    assert not out.exists()


def test_a_tokenizer_with_nan_weights_is_refused_naming_it(tmp_path, capsys):
    """A prior trained over the checkpoint of a diverged tokenizer (a NaN codebook) trained without a word, on codes
    that said nothing of the images, and its samples decoded to NaN; eval refused that tokenizer. It is now refused
    before the run, naming --tokenizer and the tensor."""
    from visionzoo.checkpoint import save_checkpoint

    torch.manual_seed(0)
    vqvae = create_model("vqvae_small", in_chans=1, **VQVAE)
    state = {f"model.{k}": v for k, v in vqvae.state_dict().items()}
    state["model.quantizer.codebook"][3, 0] = float("nan")
    path = tmp_path / "vqvae.safetensors"
    save_checkpoint(path, state, {"model": {"name": "vqvae_small", "args": {"in_chans": 1, **VQVAE}},
                                  "run": {"data": "digits", "img_size": 16, "in_chans": 1}})
    run = tmp_path / "prior"
    assert main(["train", "vqgan_transformer", "--data", "digits", "--tokenizer", str(path), "--max-steps", "1",
                 "--batch-size", "8", "--no-progress", "--model-arg", "embed_dim=16", "--model-arg", "depth=1",
                 "--model-arg", "num_heads=2", "--out", str(run)]) == 2
    assert capsys.readouterr().err == (f"visionzoo train: error: --tokenizer {path}: vqvae_small's weights hold "
                                       "non-finite values (NaN or infinity), first in quantizer.codebook: its codes "
                                       "would not tell images apart (did its run diverge?)\n")
    assert not run.exists()


def test_resuming_with_the_other_class_conditional_choice_names_the_option(tmp_path, capsys):
    """train image_gpt_small --resume --class-conditional of a run trained without classes said "checkpoint ... does
    not fit model image_gpt_small: 1 shape mismatches: gpt.start_embed.weight (1, 16) vs model (11, 16)", naming
    no option; it now names --class-conditional and the run's own choice. Given as trained, the run goes on."""
    run = tmp_path / "igpt"
    argv = ["train", "image_gpt_small", "--data", "digits", "--img-size", "4", "--batch-size", "8", "--no-progress",
            "--out", str(run)]
    assert main([*argv, "--max-steps", "1", "--model-arg", "embed_dim=16", "--model-arg", "depth=1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--max-steps", "2", "--resume", "--class-conditional"]) == 2
    assert capsys.readouterr().err == (f"visionzoo train: error: --class-conditional: the run in {run} was trained "
                                       "unconditionally (--no-class-conditional); leave --class-conditional out to "
                                       "continue it, or train in a new --out\n")
    assert main([*argv, "--max-steps", "2", "--resume", "--no-class-conditional"]) == 0
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 2


def test_eval_on_shapes_of_a_run_trained_below_its_size_names_the_runs_size(tmp_path, capsys):
    """It said "Shapes image_size must be at least 16, got 8", a size the user never gave."""
    run_training("image_gpt_small", "digits", config(tmp_path / "run", 1), 8, TINY)
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    assert main(["eval", "image_gpt_small", "--checkpoint", str(checkpoint), "--data", "shapes"]) == 2
    assert capsys.readouterr().err == (
        f"visionzoo eval: error: --data shapes: {checkpoint} was trained at 8 px (on digits), the size its images are "
        "read at, and Shapes images are at least 16 px: give --img-size 16 or more for a model that reads other sizes, "
        "or other --data\n")


def saved_tokenizer(path, name, args, size):
    """An untrained tokenizer's checkpoint as `visionzoo train` writes it, trained at ``size`` px on Digits."""
    from visionzoo.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model(name, in_chans=1, **args)
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()},
                    {"model": {"name": name, "args": {"in_chans": 1, **args}},
                     "run": {"data": "digits", "img_size": size, "in_chans": 1}})
    return path


PRIOR_ARGS = ["--max-steps", "1", "--batch-size", "8", "--no-progress", "--model-arg", "embed_dim=16",
              "--model-arg", "depth=1", "--model-arg", "num_heads=2"]


def test_a_prior_img_size_its_tokenizer_cannot_cut_into_codes_names_img_size(tmp_path, capsys):
    """It said "image sides must be multiples of 4 (2**downsample), got (2, 2)", naming no option."""
    path = saved_tokenizer(tmp_path / "vqvae.safetensors", "vqvae_small", VQVAE, 16)
    run = tmp_path / "prior"
    assert main(["train", "vqgan_transformer", "--data", "digits", "--tokenizer", str(path), "--img-size", "2",
                 *PRIOR_ARGS, "--out", str(run)]) == 2
    assert capsys.readouterr().err == (
        f"visionzoo train: error: --img-size 2: the tokenizer vqvae_small of {path} takes no 2 px images (image sides "
        "must be multiples of 4 (2**downsample), got (2, 2)): give another --img-size, such as its own 16\n")
    assert not run.exists()


VIT_VQGAN = dict(patch_size=4, embed_dim=16, depth=1, num_heads=2, num_codes=32, disc_width=8)


@pytest.mark.parametrize(("name", "args", "how"), [
    ("vqvae_small", VQVAE, "its convolutions read any size"),
    ("vit_vqgan", VIT_VQGAN, "its fixed sin-cos positions are computed for the grid of 8x8, not resampled from a "
                             "table of its 4x4"),
])
def test_a_prior_at_another_size_than_its_tokenizers_says_so_once(tmp_path, caplog, name, args, how):
    """A prior at --img-size 32 over a tokenizer trained at 16 px trained without a word."""
    path = saved_tokenizer(tmp_path / "tokenizer.safetensors", name, args, 16)
    with caplog.at_level("INFO", logger="visionzoo"):
        run_training("vqgan_transformer", "digits", config(tmp_path / "prior", 1), 32, TINY,
                     options={"tokenizer": str(path)})
    notes = [r.getMessage() for r in caplog.records if "was trained at 16 px" in r.getMessage()]
    assert notes == [f"--img-size 32: the tokenizer {name} of {path} was trained at 16 px, where its codes are a grid "
                     f"of 4x4; at 32 px they are a grid of 8x8, of images at a scale it never encoded in training ({how})"]
    assert load_for_inference("vqgan_transformer", tmp_path / "prior" / "checkpoint.safetensors").model.grid_size == (8, 8)
    caplog.clear()
    with caplog.at_level("INFO", logger="visionzoo"):
        run_training("vqgan_transformer", "digits", config(tmp_path / "own", 1), None, TINY,
                     options={"tokenizer": str(path)})
    assert not [r for r in caplog.records if "was trained at" in r.getMessage()]


def test_image_gpts_palette_is_fitted_on_the_train_size_images_it_trains_on(tmp_path):
    """--train-size 20 trained on 20 images with a palette fitted on up to 1000 of the whole train split."""
    from visionzoo.data import create_dataset
    from visionzoo.train.autoregressive import _palette_images
    from visionzoo.train.run import first_items

    cfg = dataclasses.replace(config(tmp_path / "run", 1), batch_size=8)
    setup, _ = run_training("image_gpt_small", "digits", cfg, 8, TINY, train_images=20)
    split = create_dataset("digits", "train", image_size=8)
    expected = create_model("image_gpt_small", in_chans=1, img_size=8, **TINY)
    expected.fit_palette(_palette_images(first_items(split, 20)), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(setup.model.palette, expected.palette)
    whole = create_model("image_gpt_small", in_chans=1, img_size=8, **TINY)
    whole.fit_palette(_palette_images(split), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(whole.palette, expected.palette)


def test_a_palette_larger_than_the_training_pixels_colours_is_warned_of_once(tmp_path, caplog):
    """palette_size=64 on 8 px Digits (17 grey levels) filled the palette with 47 duplicates no pixel ever maps to."""
    with caplog.at_level("INFO", logger="visionzoo"):
        setup, _ = run_training("image_gpt_small", "digits", config(tmp_path / "run", 1), 8,
                                {**TINY, "palette_size": 64})
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["--model-arg palette_size=64 is more than the 17 distinct colours of the training pixels the "
                        "palette is fitted to: 47 of its colours repeat others, tokens no pixel is ever given; give "
                        "--model-arg palette_size=17 or fewer"]
    assert len(torch.unique(setup.model.palette, dim=0)) == 17
    caplog.clear()
    with caplog.at_level("INFO", logger="visionzoo"):
        run_training("image_gpt_small", "digits", config(tmp_path / "own", 1), 8, TINY)  # 16 colours
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_prior_too_large_for_the_memory_is_refused_before_it_is_built_or_the_run_starts(tmp_path, capsys,
                                                                                        monkeypatch):
    """It was built (vqgan_transformer_imagenet_cin: 1.4 B parameters, 5 GiB of weights) and trained, its AdamW state
    exhausting the machine; here the machine has 64 KiB."""
    import visionzoo.train.task as task_module

    path = saved_tokenizer(tmp_path / "vqvae.safetensors", "vqvae_small", VQVAE, 16)
    monkeypatch.setattr(task_module, "available_memory", lambda: 2**16)
    run = tmp_path / "prior"
    assert main(["train", "vqgan_transformer", "--data", "digits", "--tokenizer", str(path), *PRIOR_ARGS,
                 "--out", str(run)]) == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and not run.exists()
    assert error.startswith("visionzoo train: error: vqgan_transformer has ")
    assert "parameters: training it needs at least" in error and "this machine has 0.1 MiB available" in error


def test_the_imagenet_prior_is_counted_on_the_meta_device_and_refused_below_its_20_gib():
    from visionzoo.train.task import check_training_memory

    args = {"tokenizer": {"name": "vqvae_small", "args": {"in_chans": 1, **VQVAE}}, "img_size": 16, "num_classes": 10}
    with pytest.raises(ValueError) as refused:
        check_training_memory("vqgan_transformer_imagenet_cin", args, available=16 * 2**30)
    assert str(refused.value).startswith(
        "vqgan_transformer_imagenet_cin has 1,360,069,033 parameters: training it needs at least 20.3 GiB for its weights, "
        "gradients and AdamW state, and this machine has 16.0 GiB available: train a smaller model")
    check_training_memory("vqgan_transformer_imagenet_cin", args, available=21 * 2**30)
