"""The gan task: each update moves only its own network, a short run on Digits writes a checkpoint, samples and
a finite FID, resume is exact, sampling is seeded."""

import contextlib
import json

import pytest
import torch
from PIL import Image

from visionzoo.checkpoint import read_checkpoint
from visionzoo.generative.dcgan import DCGAN
from visionzoo.metrics import domain
from visionzoo.train import TrainConfig
from visionzoo.train.gan import GANTask
from visionzoo.train.run import build_setup, load_for_inference, run_training

TINY = dict(latent_dim=8, generator_width=4, discriminator_width=4)


@pytest.fixture
def tiny_domain_features(monkeypatch):
    """An untrained, seeded stand-in for the cached domain classifier (training it takes a minute)."""
    calls = []

    def features(data, image_size, in_chans=None):
        calls.append((data, image_size, in_chans))
        torch.manual_seed(0)
        return domain.DomainFeatures(in_chans, widths=(4, 8, 8)).eval()

    monkeypatch.setattr(domain, "domain_features", features)
    return calls


def optimizers(task, model):
    return {name: torch.optim.AdamW(task.parameter_groups(model, name, 0.05), lr=1e-2, **task.optimizer_options(name))
            for name in task.optimizer_names()}


def snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(module, before):
    return {name for name, p in module.named_parameters() if not torch.equal(p, before[name])}


def test_each_update_moves_only_its_own_network_and_the_generator_reuses_the_step_fakes():
    torch.manual_seed(0)
    model = DCGAN(in_chans=1, img_size=16, **TINY).train()
    task = GANTask("digits", 16, 1)
    assert task.optimizer_names() == ("discriminator", "generator")
    assert task.optimizer_options("generator") == {"betas": (0.5, 0.999)}
    steps = optimizers(task, model)
    groups = [p for opt in steps.values() for group in opt.param_groups for p in group["params"]]
    assert len(groups) == len(set(map(id, groups))) == len(list(model.parameters()))
    assert all(group["weight_decay"] == 0 for opt in steps.values() for group in opt.param_groups)

    generator_calls = []
    model.generator.register_forward_hook(lambda *_: generator_calls.append(1))
    batch = torch.rand(8, 1, 16, 16)
    task.step = 0
    for name, optimizer in steps.items():
        before_g, before_d = snapshot(model.generator), snapshot(model.discriminator)
        optimizer.zero_grad(set_to_none=True)
        losses = task.training_step(model, batch, name)
        losses["loss"].backward()
        optimizer.step()
        moved, still = (model.discriminator, model.generator) if name == "discriminator" else \
            (model.generator, model.discriminator)
        before_moved, before_still = (before_d, before_g) if name == "discriminator" else (before_g, before_d)
        assert changed(still, before_still) == set(), f"the {name} update moved the other network"
        assert changed(moved, before_moved) == set(before_moved), f"the {name} update left parameters unchanged"
        assert torch.isfinite(losses["loss"])
    assert len(generator_calls) == 1, "the generator update should score the discriminator update's fakes"
    assert set(losses) == {"loss", "g_loss"}
    with pytest.raises(ValueError, match="'model'"):
        task.training_step(model, batch, "model")


def test_discriminator_loss_is_the_non_saturating_bce():
    torch.manual_seed(0)
    model = DCGAN(in_chans=1, img_size=16, **TINY)
    task = GANTask("digits", 16, 1)
    task.generator.manual_seed(5)
    batch = torch.rand(4, 1, 16, 16)
    losses = task.training_step(model, batch, "discriminator")
    fakes = model(model.sample_latents(4, torch.Generator().manual_seed(5)))
    real, fake = model.discriminate(batch), model.discriminate(fakes)
    expected = -(real.sigmoid().log().mean() + (1 - fake.sigmoid()).log().mean())
    torch.testing.assert_close(losses["loss"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["d_real"], real.sigmoid().mean())
    torch.testing.assert_close(losses["d_fake"], fake.sigmoid().mean())


def config(out, steps, **kwargs):
    return TrainConfig(out=str(out), max_steps=steps, batch_size=16, checkpoint_every=2, eval_every=0,
                       progress=False, precision="fp32", warmup_steps=0, min_lr_ratio=1.0, **kwargs)


def test_a_short_run_on_digits_writes_a_checkpoint_samples_and_a_finite_fid(tmp_path, tiny_domain_features):
    setup, result = run_training("dcgan", "digits", config(tmp_path / "run", 3, overwrite=True), 16, TINY)
    assert isinstance(setup.task, GANTask) and result.steps == 3
    assert tiny_domain_features[-1] == ("digits", 16, 1)
    metrics = result.metrics
    assert set(metrics) == {"fid", "d_accuracy", "d_accuracy_real", "d_accuracy_fake"}
    assert torch.isfinite(torch.tensor(metrics["fid"])) and metrics["fid"] > 0
    assert 0 <= metrics["d_accuracy"] <= 1
    with Image.open(tmp_path / "run" / "samples.png") as grid:
        assert grid.size == (2 + 8 * (16 + 2), 2 + 8 * (16 + 2))
    _, meta = read_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["task"] == {"name": "gan", "data": "digits", "img_size": 16, "in_chans": 1}
    assert meta["run"]["img_size"] == 16 and meta["model"]["args"]["img_size"] == 16
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"discriminator/d_loss", "discriminator/d_real", "discriminator/d_fake",
            "generator/g_loss"} <= set(logged[0])

    reloaded = load_for_inference("dcgan", tmp_path / "run" / "checkpoint.safetensors")
    assert isinstance(reloaded.task, GANTask) and reloaded.task.img_size == 16
    model = reloaded.model.eval()
    first = reloaded.task.sample(model, 5, torch.Generator().manual_seed(1), contextlib.nullcontext)
    second = reloaded.task.sample(model, 5, torch.Generator().manual_seed(1), contextlib.nullcontext,
                                  temperature=None, top_k=None, top_p=None, label=None)
    assert first.shape == (5, 1, 16, 16) and torch.equal(first, second)
    assert 0 <= first.min() and first.max() <= 1
    with pytest.raises(ValueError, match="label, top_k do not apply to a GAN"):
        reloaded.task.sample(model, 5, torch.Generator(), contextlib.nullcontext, top_k=5, label=3)


def test_resume_with_a_step_budget_below_the_steps_done_is_refused_not_a_silent_no_op(tmp_path, tiny_domain_features):
    """`train ... --max-steps 400 --resume` after a run of 600 steps trained nothing and said 'training for 400
    steps'; the budget counts from the run's start, so it is refused naming the steps done."""
    torch.manual_seed(0)
    run_training("dcgan", "digits", config(tmp_path / "run", 4), 16, TINY)
    with pytest.raises(ValueError, match=r"has trained 4 steps already and --max-steps 2 counts from the run's start"):
        run_training("dcgan", "digits", config(tmp_path / "run", 2, resume=True), 16, TINY)
    _, meta = read_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["step"] == 4
    _, result = run_training("dcgan", "digits", config(tmp_path / "run", 4, resume=True), 16, TINY)  # at its end: fine
    assert result.steps == 4


def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path, tiny_domain_features):
    torch.manual_seed(0)  # the same initial weights
    run_training("dcgan", "digits", config(tmp_path / "straight", 4), 16, TINY)
    torch.manual_seed(0)
    run_training("dcgan", "digits", config(tmp_path / "resumed", 2), 16, TINY)
    run_training("dcgan", "digits", config(tmp_path / "resumed", 4, resume=True), 16, TINY)
    straight, _ = read_checkpoint(tmp_path / "straight" / "checkpoint.safetensors")
    resumed, meta = read_checkpoint(tmp_path / "resumed" / "checkpoint.safetensors")
    assert meta["step"] == 4 and straight.keys() == resumed.keys()
    assert any(key.startswith("optimizer.generator.") for key in straight)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_a_coco_folder_is_refused_before_training_not_at_the_final_fid(tmp_path, capsys):
    # before: the run trained to its budget, then failed at the final evaluation: "domain features exist for
    # digits, shapes, not '...'"
    from visionzoo.cli import main

    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "2", "--image-size", "32"]) == 0
    capsys.readouterr()
    with pytest.raises(ValueError, match=r"dcgan trains on digits, shapes, not .*coco: the gan task's FID needs"):
        build_setup("dcgan", str(folder), model_args=TINY)
    run = tmp_path / "run"
    assert main(["train", "dcgan", "--data", str(folder), "--out", str(run), "--max-steps", "1", "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(f"visionzoo train: error: dcgan trains on digits, shapes, not {folder}")
    assert not run.exists()


def test_setup_takes_the_data_channels_and_size():
    setup = build_setup("dcgan", "digits", None, TINY)
    assert (setup.model.in_chans, setup.model.img_size) == (1, 32)
    assert setup.run_meta == {"data": "digits", "img_size": 32, "in_chans": 1}
    with pytest.raises(ValueError, match="img_size=64 does not fit the digits images' 32"):
        build_setup("dcgan", "digits", 32, {**TINY, "img_size": 64})
    with pytest.raises(ValueError, match="power of two of at least 16 px, digits has 24 px ones here: give --img-size 16 or 32"):
        build_setup("dcgan", "digits", 24, TINY)


@pytest.mark.parametrize("model_name, model_args", [("dcgan", TINY), ("vqgan", dict(ch=8, z_channels=8, embed_dim=8,
                                                                                       num_codes=16, disc_width=8))])
def test_torchrun_is_refused_before_the_run_starts(tmp_path, monkeypatch, model_name, model_args):
    """The GAN and VQGAN tasks call their parts past DDP's wrapper: under torchrun they stop before writing."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "run"
    config = TrainConfig(out=str(out), max_steps=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"task does not run under torchrun \(.*DDP's wrapper\); train it in one process"):
        run_training(model_name, "digits", config, 16, model_args)
    assert not out.exists()


def test_a_checkpoint_loaded_for_other_data_or_another_size_is_refused_naming_both(tmp_path):
    """It used to fail as "does not fit model dcgan: 12 missing keys ...; 12 shape mismatches ..." (--img-size 32
    for a 16 px model) or as 3 shape mismatches (Shapes' 3 channels for a Digits model)."""
    from visionzoo.checkpoint import save_checkpoint

    model = DCGAN(img_size=16, **TINY)
    path = tmp_path / "dcgan.safetensors"
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()},
                    {"model": {"name": "dcgan", "args": {"in_chans": 1, "img_size": 16, **TINY}},
                     "run": {"data": "digits", "img_size": 16, "in_chans": 1}})
    with pytest.raises(ValueError, match=f"dcgan from {path} was trained with img_size 16, the digits images here have "
                                         "32: give the data and --img-size it was trained on"):
        load_for_inference("dcgan", path, img_size=32)
    with pytest.raises(ValueError, match="trained with in_chans 1, the shapes images here have 3"):
        load_for_inference("dcgan", path, data="shapes")
    assert load_for_inference("dcgan", path).model.img_size == 16


def test_eval_says_how_many_images_of_the_split_its_fid_used(tmp_path, tiny_domain_features, capsys):
    # before: "dcgan on train split (1257 images):" though the FID took the first 500 of them
    from visionzoo.cli import main

    run_training("dcgan", "digits", TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=16, progress=False,
                                                precision="fp32"), 16, TINY)
    checkpoint = str(tmp_path / "run" / "checkpoint.safetensors")
    capsys.readouterr()
    assert main(["eval", "dcgan", "--checkpoint", checkpoint, "--split", "train", "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "dcgan on train split (500 of its 1257 images):"
    assert main(["eval", "dcgan", "--checkpoint", checkpoint, "--split", "test", "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "dcgan on test split (270 images):"


def test_eval_json_gives_how_many_images_of_the_split_it_scored(tmp_path, tiny_domain_features, capsys):
    # before: eval --json gave the metrics alone, without the image count the text header prints
    from visionzoo.cli import main

    run_training("dcgan", "digits", TrainConfig(out=str(tmp_path / "run"), max_steps=1, batch_size=16, progress=False,
                                                precision="fp32"), 16, TINY)
    checkpoint = str(tmp_path / "run" / "checkpoint.safetensors")
    capsys.readouterr()
    assert main(["eval", "dcgan", "--checkpoint", checkpoint, "--split", "train", "--json", "--no-progress"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert (scored["images_scored"], scored["split_images"]) == (500, 1257) and "fid" in scored
    assert main(["eval", "dcgan", "--checkpoint", checkpoint, "--split", "test", "--json", "--no-progress"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert (scored["images_scored"], scored["split_images"]) == (270, 270)


def test_train_and_eval_line_up_the_values_of_every_metric(tmp_path, tiny_domain_features, capsys):
    # before: names were padded to 12 characters, so d_accuracy_real's value stood 3 columns right of fid's
    from visionzoo.cli import main

    tiny = [arg for key, value in TINY.items() for arg in ("--model-arg", f"{key}={value}")]
    capsys.readouterr()
    assert main(["train", "dcgan", "--data", "digits", "--img-size", "16", "--max-steps", "1", "--batch-size", "16",
                 "--precision", "fp32", "--no-progress", "--out", str(tmp_path / "run"), *tiny]) == 0
    trained = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  val ")]
    assert main(["eval", "dcgan", "--checkpoint", str(tmp_path / "run" / "checkpoint.safetensors"), "--split", "val",
                 "--no-progress"]) == 0
    evaluated = capsys.readouterr().out.splitlines()[1:]
    for lines in (trained, evaluated):
        assert [line.split()[-2] for line in lines] == ["fid", "d_accuracy", "d_accuracy_real", "d_accuracy_fake"]
        assert len({line.rindex(" ") for line in lines}) == 1, lines


def test_evaluation_of_a_generator_drawing_non_finite_images_names_the_outputs(tiny_domain_features, monkeypatch):
    """A generator whose images overflowed (bf16's range; its weights finite) was scored: NaN pixels stopped FID with
    "FID takes images in [0, 1]; these hold N NaN values", which spoke of FID's input, not of the model, and
    infinite ones were clamped to white and scored. Its images are now checked first, so that eval refuses as it
    does for a classifier's logits, and training stops naming the step."""
    from visionzoo.train.task import NonFiniteOutputError

    torch.manual_seed(0)
    model = DCGAN(in_chans=1, img_size=16, **TINY).eval()
    task = GANTask("digits", 16, 1)
    generate = DCGAN.generate
    monkeypatch.setattr(DCGAN, "generate", lambda self, *a, **k: generate(self, *a, **k) + float("inf"))
    dataset = [(torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(i)), 0) for i in range(4)]
    with pytest.raises(NonFiniteOutputError):
        task.evaluate(model, dataset, 4, contextlib.nullcontext)


@pytest.mark.parametrize(("size", "sides"), [(12, "16"), (20, "16 or 32"), (48, "32 or 64")])
def test_a_side_that_is_no_power_of_two_is_refused_before_the_run_naming_img_size(tmp_path, capsys, size, sides):
    """It said "DCGAN img_size must be a power of two of at least 16, got 12", naming no option."""
    from visionzoo.cli import main

    run = tmp_path / "run"
    assert main(["train", "dcgan", "--data", "digits", "--img-size", str(size), "--out", str(run), "--max-steps", "1",
                 "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        f"visionzoo train: error: dcgan draws images whose side is a power of two of at least 16 px, digits has {size} "
        f"px ones here: give --img-size {sides}\n")
    assert not run.exists()
