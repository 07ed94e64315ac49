"""The "vqgan" task: two optimizers, the discriminator switching on at --disc-start, training through the engine."""

import contextlib
import copy
import json
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from visionzoo.checkpoint import read_checkpoint
from visionzoo.cli import main
from visionzoo.generative.patchgan import adaptive_weight, adaptive_weight_from_output_grads
from visionzoo.generative.perceptual import PerceptualLoss, VGG16Features
from visionzoo.generative.vqgan import VQGAN
from visionzoo.metrics import domain
from visionzoo.metrics.domain import DomainFeatures
from visionzoo.train import TrainConfig, engine
from visionzoo.train.engine import Trainer, resolve_config
from visionzoo.train.run import build_setup, load_for_inference, run_training
from visionzoo.train.vqgan import VQGANTask, parse_disc_start

TINY = dict(ch=8, ch_mult=(1, 2, 2), z_channels=8, embed_dim=8, num_codes=32, disc_width=8)


@pytest.fixture
def untrained_domain_features(monkeypatch):
    """An untrained classifier stands in for the cached domain one (training it is not this test's business)."""
    monkeypatch.setattr(domain, "domain_features", lambda data, image_size, in_chans: DomainFeatures(in_chans))


def test_parameter_groups_split_the_discriminator_from_the_rest():
    model = VQGAN(in_chans=1, **TINY)
    task = VQGANTask()
    assert task.optimizer_names() == ("autoencoder", "discriminator")
    assert task.optimizer_options("discriminator") == {"betas": (0.5, 0.9)}
    groups = {name: [p for g in task.parameter_groups(model, name, 0.1) for p in g["params"]]
              for name in task.optimizer_names()}
    assert {id(p) for p in groups["discriminator"]} == {id(p) for p in model.discriminator.parameters()}
    assert len(groups["autoencoder"]) + len(groups["discriminator"]) == len(list(model.parameters()))
    assert not {id(p) for p in groups["autoencoder"]} & {id(p) for p in groups["discriminator"]}


def test_the_discriminator_step_reuses_the_reconstruction_and_starts_at_disc_start():
    torch.manual_seed(0)
    model = VQGAN(in_chans=1, **TINY)
    task = VQGANTask(disc_start=1, perceptual=PerceptualLoss(DomainFeatures(1).feature_maps))
    batch = torch.rand(4, 1, 16, 16)
    losses = task.training_step(model, batch, "autoencoder")
    assert losses["disc_active"] == 0 and losses["g_loss"] == 0 and losses["perceptual"] > 0
    idle = task.training_step(model, batch, "discriminator")
    assert idle["loss"] == 0 and idle["loss"].requires_grad
    idle["loss"].backward()
    assert all(p.grad is None for p in model.discriminator.parameters())

    task.step = 1
    with pytest.raises(ValueError, match="autoencoder"):  # the reconstruction of step 0 is not reused
        task.training_step(model, batch, "discriminator")
    state = {k: v.clone() for k, v in model.state_dict().items()}  # the EMA codebook moves at each forward
    losses = task.training_step(model, batch, "autoencoder")
    assert losses["disc_active"] == 1 and losses["adaptive_weight"] > 0
    losses["loss"].backward()
    assert model.last_layer_weight().grad is not None
    critic = task.training_step(model, batch, "discriminator")
    model.load_state_dict(state)
    with torch.no_grad():
        reconstruction = model(batch)[0]
    real, fake = model.discriminator(batch * 2 - 1), model.discriminator(reconstruction * 2 - 1)
    expected = 0.5 * (torch.relu(1 - real).mean() + torch.relu(1 + fake).mean())
    assert critic["d_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="disc-start"):
        VQGANTask(disc_start=-1)
    with pytest.raises(ValueError, match="perceptual-weight"):
        VQGANTask(perceptual_weight=-1.0)
    for weight in (float("nan"), float("inf")):  # NaN passed a `< 0` check and trained with a NaN GAN term
        with pytest.raises(ValueError, match="finite"):
            VQGANTask(disc_weight=weight)
        with pytest.raises(ValueError, match="finite"):
            VQGANTask(perceptual_weight=weight)


def test_visionzoo_train_vqgan_refuses_a_nan_disc_weight_in_one_line(tmp_path, capsys):
    code = main(["train", "vqgan", "--data", "digits", "--disc-weight", "nan", "--perceptual-weight", "0",
                 "--max-steps", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "--disc-weight nan" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, value", [("1100", 1100), ("0", 0), ("40%", 0.4), (" 0% ", 0.0), (0.25, 0.25), (7, 7)])
def test_disc_start_is_a_step_or_a_share_of_the_run(text, value):
    parsed = parse_disc_start(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("text, message", [("abc", "such as 40%"), ("40.5", "such as 40%"), ("100%", r"\[0%, 100%\)"),
                                           ("-5%", r"\[0%, 100%\)"), ("-1", ">= 0"), (1.5, r"\[0%, 100%\)"),
                                           (True, "such as 40%")])
def test_bad_disc_starts_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_disc_start(text)


def test_a_share_of_the_run_starts_the_discriminator_at_that_point_of_the_plan_and_keeps_it_on():
    task = VQGANTask(disc_start=0.4)
    task.step = 8
    assert not task.disc_active()  # no planned length yet (the engine timing its first steps)
    task.total_steps = 10
    flags = []
    for step in range(6):
        task.step = step
        flags.append(task.disc_active())
    assert flags == [False, False, False, False, True, True]
    task.step, task.total_steps = 6, 100  # a timed run re-planned longer: the discriminator stays on
    assert task.disc_active()
    other = VQGANTask(disc_start=0.4)
    other.step, other.total_steps = 6, 100
    assert not other.disc_active()


def test_a_run_that_ends_before_disc_start_warns_once_that_the_discriminator_will_not_train(caplog):
    """`train vqgan --max-steps 200` (default --disc-start 250) trained without its GAN, silently."""
    task = VQGANTask(disc_start=250)
    task.step = 0
    assert not task.disc_active()  # no plan yet: nothing to say
    task.total_steps = 200
    for step in range(3):
        task.step = step
        assert not task.disc_active()
    warnings = [r.getMessage() for r in caplog.records if "--disc-start" in r.getMessage()]
    assert warnings == ["--disc-start 250 lies beyond this run's 200 planned steps: the discriminator will not train "
                        "nor the GAN loss count; give a smaller --disc-start, or a share of the run such as 40%"]
    caplog.clear()
    for quiet in (VQGANTask(disc_start=250, disc_weight=0.0), VQGANTask(disc_start=100), VQGANTask(disc_start=0.4)):
        quiet.step, quiet.total_steps = 0, 200
        quiet.disc_active()
    assert not caplog.records


def test_a_short_run_switches_the_discriminator_on_at_disc_start(tmp_path, untrained_domain_features):
    out = tmp_path / "run"
    options = {"disc_start": 3, "disc_weight": 0.8, "perceptual_weight": 1.0, "perceptual_checkpoint": None}

    def config(steps, resume=False):
        return TrainConfig(out=str(out), max_steps=steps, batch_size=8, overwrite=not resume, resume=resume,
                           progress=False, checkpoint_every=10**9, precision="fp32")

    run_training("vqgan", "digits", config(3), 16, TINY, options)
    before, _ = read_checkpoint(out / "checkpoint.safetensors")
    setup, result = run_training("vqgan", "digits", config(6, resume=True), 16, TINY, options)
    after, _ = read_checkpoint(out / "checkpoint.safetensors")
    assert isinstance(setup.task, VQGANTask) and setup.task.disc_start == 3 and result.steps == 6
    assert {"psnr", "codebook_usage", "perplexity"} <= set(result.metrics)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "split" not in r]
    assert [r["autoencoder/disc_active"] for r in steps] == [0, 0, 0, 1, 1, 1]
    assert [r["discriminator/disc_active"] for r in steps] == [0, 0, 0, 1, 1, 1]
    assert all(r["discriminator/d_loss"] == 0 and r["autoencoder/g_loss"] == 0 for r in steps[:3])
    assert all(r["discriminator/d_loss"] > 0 and r["autoencoder/adaptive_weight"] > 0 for r in steps[3:])
    assert all(r["autoencoder/perceptual"] > 0 and r["autoencoder/rec"] > 0 for r in steps)

    # No discriminator update before disc_start: its optimizer holds no state yet; after it, the weights moved.
    assert not any(k.startswith("optimizer.discriminator.") for k in before)
    assert any(k.startswith("optimizer.discriminator.") for k in after)
    critic = [k for k in before if k.startswith("model.discriminator.") and k.endswith("weight")]
    assert critic and all(not torch.equal(before[k], after[k]) for k in critic)
    assert not torch.equal(before["model.decoder.conv_out.weight"], after["model.decoder.conv_out.weight"])
    assert (out / "reconstructions.png").is_file()


def test_a_run_with_a_share_as_disc_start(tmp_path, untrained_domain_features, monkeypatch):
    from engine_script import StepClock

    out = tmp_path / "run"
    options = {"disc_start": 0.5, "perceptual_weight": 0.0}
    config = TrainConfig(out=str(out), max_steps=6, batch_size=8, progress=False, checkpoint_every=10**9,
                         precision="fp32")
    setup, _ = run_training("vqgan", "digits", config, 16, TINY, options)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "split" not in line]
    assert [r["autoencoder/disc_active"] for r in records] == [0, 0, 0, 1, 1, 1]
    assert load_for_inference("vqgan", out / "checkpoint.safetensors").task.disc_start == 0.5

    # With only a time budget the engine first times a few steps, before any length is planned: a step reads
    # the clock twice, so each takes 0.25 s and the 3 s budget plans 12 steps.
    monkeypatch.setattr(engine, "time", StepClock(0.25))
    timed = TrainConfig(out=str(tmp_path / "timed"), minutes=0.05, batch_size=8, progress=False,
                        checkpoint_every=10**9, precision="fp32")
    _, result = run_training("vqgan", "digits", timed, 16, TINY, {"disc_start": 0.5, "perceptual_weight": 0.0})
    records = [json.loads(line) for line in (tmp_path / "timed" / "metrics.jsonl").read_text().splitlines()
               if "split" not in line]
    flags = [r["autoencoder/disc_active"] for r in records]
    assert result.steps == 12 and flags == [0] * 6 + [1] * 6


def test_a_resumed_run_with_a_longer_plan_keeps_the_discriminator_on(tmp_path, untrained_domain_features):
    """--disc-start 50%: a run of 4 steps switched its discriminator on at step 2. Resumed with --max-steps 10, the
    new task took 50% of the new plan and switched it off again for step 4 (4 < 5), as if it had never trained,
    where a run re-planned longer within one session keeps it on."""
    out = tmp_path / "run"
    options = {"disc_start": 0.5, "perceptual_weight": 0.0}

    def config(steps, resume=False):
        return TrainConfig(out=str(out), max_steps=steps, batch_size=8, resume=resume, progress=False,
                           checkpoint_every=10**9, precision="fp32")

    run_training("vqgan", "digits", config(4), 16, TINY, options)
    run_training("vqgan", "digits", config(10, resume=True), 16, TINY, options)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "split" not in line]
    assert [r["autoencoder/disc_active"] for r in records] == [0, 0] + [1] * 8


def optimizer_betas(tmp_path, config: TrainConfig, model_name="vqgan", model_args=TINY) -> set[tuple[float, float]]:
    setup = build_setup(model_name, "digits", 16, model_args)
    config.out, config.max_steps, config.batch_size, config.progress = str(tmp_path / "betas"), 1, 8, False
    config.overwrite = True
    trainer = Trainer(setup.task, setup.model, setup.splits["train"], None, config)
    assert set(trainer.optimizers) == {"autoencoder", "discriminator"}
    return {tuple(group["betas"]) for optimizer in trainer.optimizers.values() for group in optimizer.param_groups}


def test_opt_betas_replace_the_tasks_betas_in_every_optimizer(tmp_path):
    assert optimizer_betas(tmp_path, TrainConfig()) == {(0.5, 0.9)}  # taming's
    assert optimizer_betas(tmp_path, TrainConfig(betas=(0.9, 0.99))) == {(0.9, 0.99)}
    # A model's train_defaults may carry betas (build_setup puts them in the task's defaults); the user's still win.
    task = VQGANTask()
    task.defaults = {**task.defaults, "betas": (0.8, 0.95)}
    assert resolve_config(TrainConfig(), task).betas == (0.8, 0.95)
    assert resolve_config(TrainConfig(betas=(0.9, 0.99)), task).betas == (0.9, 0.99)
    assert resolve_config(TrainConfig(), VQGANTask()).betas is None


def test_visionzoo_train_refuses_a_bad_adam_beta(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "vqgan", "--data", "digits", "--opt-betas", "0.9", "1.5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--opt-betas" in err and "[0, 1)" in err


def test_visionzoo_train_vqgan_refuses_a_bad_disc_start(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "vqgan", "--data", "digits", "--disc-start", "120%"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--disc-start" in err and "[0%, 100%)" in err


def test_visionzoo_train_vqgan(tmp_path, untrained_domain_features, capsys):
    out = tmp_path / "cli"
    args = ["train", "vqgan", "--data", "digits", "--img-size", "16", "--max-steps", "2", "--batch-size", "8",
            "--disc-start", "50%", "--perceptual-weight", "0.5", "--out", str(out), "--no-progress",
            "--precision", "fp32", "--model-arg", "ch=8", "--model-arg", "ch_mult=[1,2]", "--model-arg",
            "num_codes=32", "--model-arg", "embed_dim=8", "--model-arg", "z_channels=8", "--model-arg", "disc_width=8"]
    assert main(args) == 0
    assert "val psnr" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "split" not in line]
    assert [r["autoencoder/disc_active"] for r in records] == [0, 1]
    assert (out / "reconstructions.png").is_file() and (out / "checkpoint.safetensors").is_file()


def test_a_coco_folder_without_a_perceptual_network_is_refused_naming_the_options(tmp_path, capsys):
    # before: the first training step failed with "domain features exist for digits, shapes, not '...'"
    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "8", "--image-size", "16"]) == 0
    argv = ["train", "vqgan", "--data", str(folder), "--img-size", "16", "--max-steps", "1", "--batch-size", "4",
            "--no-progress", "--precision", "fp32", "--model-arg", "ch=8", "--model-arg", "ch_mult=[1,2]",
            "--model-arg", "num_codes=32", "--model-arg", "embed_dim=8", "--model-arg", "z_channels=8",
            "--model-arg", "disc_width=8"]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
    assert capsys.readouterr().err == (
        f"visionzoo train: error: vqgan's perceptual loss is by default the classifier trained on digits, shapes, "
        f"which {folder} is not: give --perceptual-checkpoint (torchvision vgg16 weights) or --perceptual-weight 0\n")
    assert not (tmp_path / "refused").exists()
    assert main([*argv, "--out", str(tmp_path / "run"), "--perceptual-weight", "0"]) == 0
    assert "val psnr" in capsys.readouterr().out


def test_a_missing_perceptual_checkpoint_is_refused_before_the_run(tmp_path, capsys):
    """It used to be read at the first step: "training vqgan for 1 steps ...", then "checkpoint ... does not exist"."""
    missing = tmp_path / "vgg16.pth"
    argv = ["train", "vqgan", "--data", "digits", "--img-size", "16", "--max-steps", "1", "--batch-size", "4",
            "--no-progress", "--perceptual-checkpoint", str(missing), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"visionzoo train: error: --perceptual-checkpoint {missing} is not a file "
                                       "(torchvision vgg16 weights)\n")
    assert not (tmp_path / "run").exists()


def test_a_perceptual_checkpoint_that_is_no_vgg16_is_refused_before_the_run(tmp_path, capsys):
    """A file that is there but holds no VGG16 (a torchvision resnet18's) was read at the first step: "training
    vqgan for 1 steps ...", then "checkpoint ... does not fit model VGG16Features", naming no option, with the run
    folder made."""
    import torchvision

    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), resnet)
    argv = ["train", "vqgan", "--data", "digits", "--img-size", "16", "--max-steps", "1", "--batch-size", "4",
            "--no-progress", "--perceptual-checkpoint", str(resnet), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"visionzoo train: error: --perceptual-checkpoint: checkpoint {resnet} does not "
                                   "fit model VGG16Features: ") and captured.err.count("\n") == 1
    assert "training vqgan" not in captured.out + captured.err
    assert not (tmp_path / "run").exists()


def test_images_too_small_for_the_discriminator_are_refused_before_the_run(tmp_path, capsys):
    """8 px images (a 2-layer PatchGAN needs 12) used to train until --disc-start, then fail there."""
    run = tmp_path / "run"
    argv = ["train", "vqgan", "--data", "digits", "--img-size", "8", "--max-steps", "3", "--disc-start", "2",
            "--perceptual-weight", "0", "--no-progress", "--out", str(run),
            *[a for k, v in TINY.items() if k != "ch_mult" for a in ("--model-arg", f"{k}={v}")]]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "visionzoo train: error: --img-size 8 is too small for vqgan's discriminator (PatchGAN with 2 layers takes "
        "Tensor[B, 1, H, W] with sides >= 12, got (1, 1, 8, 8)): give a larger --img-size or fewer --model-arg "
        "disc_layers\n")
    assert not run.exists()


def test_vit_vqgan_and_vqgan_f8_take_the_papers_lighter_loss_weights_unless_told_otherwise():
    setup = VQGANTask.setup("vit_vqgan", "digits", 16, {"embed_dim": 16, "depth": 1, "num_codes": 16, "disc_width": 8})
    assert (setup.task.perceptual_weight, setup.task.disc_weight) == (0.1, 0.1)
    setup = VQGANTask.setup("vit_vqgan", "digits", 16, {"embed_dim": 16, "depth": 1, "num_codes": 16, "disc_width": 8},
                            options={"perceptual_weight": 0.5, "disc_weight": None})
    assert (setup.task.perceptual_weight, setup.task.disc_weight) == (0.5, 0.1)
    setup = VQGANTask.setup("vqgan_f8", "digits", 32, {"ch": 8, "num_codes": 16, "disc_width": 8})
    assert (setup.task.perceptual_weight, setup.task.disc_weight) == (0.1, 0.1)
    setup = VQGANTask.setup("vqgan", "digits", 16, {"ch": 8, "num_codes": 16, "disc_width": 8})
    assert (setup.task.perceptual_weight, setup.task.disc_weight) == (1.0, 0.8)


def test_vqgan_f8_trains_at_its_registered_learning_rate_unless_told_otherwise():
    setup = build_setup("vqgan_f8", "digits", 32, {"ch": 8, "num_codes": 16, "disc_width": 8})
    assert resolve_config(TrainConfig(), setup.task).lr == 2e-3
    assert resolve_config(TrainConfig(lr=1e-4), setup.task).lr == 1e-4
    assert resolve_config(TrainConfig(), setup.task).batch_size == VQGANTask.defaults["batch_size"]
    other = build_setup("vqgan", "digits", 16, {"ch": 8, "num_codes": 16, "disc_width": 8})
    assert resolve_config(TrainConfig(), other.task).lr == VQGANTask.defaults["lr"] == 4e-4


def test_the_autoencoder_update_equals_backpropagating_the_full_loss():
    """The stand-in loss (each loss backpropagated to the reconstruction once) gives taming's value and gradients."""
    torch.manual_seed(0)
    model = VQGAN(in_chans=1, **TINY)
    perceptual = PerceptualLoss(DomainFeatures(1).feature_maps)
    task = VQGANTask(disc_start=0, disc_weight=0.8, perceptual=perceptual)
    batch = torch.rand(4, 1, 16, 16)
    task.step = 0
    state = {k: v.clone() for k, v in model.state_dict().items()}  # the EMA codebook moves at each forward
    losses = task.training_step(model, batch, "autoencoder")
    losses["loss"].backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert not any(n.startswith("discriminator.") for n in ours)  # the critic's gradients are not computed

    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    reconstruction, _, vq_loss, _ = model(batch)
    nll = (reconstruction - batch).abs().mean() + torch.nn.functional.mse_loss(reconstruction, batch)
    nll = nll + perceptual(reconstruction, batch).mean()
    g_loss = -model.discriminator(reconstruction * 2 - 1).mean()
    weight = adaptive_weight(nll, g_loss, model.last_layer_weight()) * 0.8
    expected = nll + vq_loss + weight * g_loss
    expected.backward()
    assert losses["adaptive_weight"].item() == pytest.approx(weight.item(), rel=1e-4)
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    theirs = {name: model.get_parameter(name).grad for name in ours}
    assert set(theirs) == {n for n, p in model.named_parameters() if p.grad is not None and "discriminator" not in n}
    scale = max(g.abs().max().item() for g in theirs.values())
    for name, grad in ours.items():  # summation order differs: float32 noise, relative to the largest gradient
        torch.testing.assert_close(grad, theirs[name], rtol=0, atol=1e-5 * scale, msg=name)



def adamw(task: VQGANTask, model: VQGAN) -> dict[str, torch.optim.Optimizer]:
    return {name: torch.optim.AdamW(task.parameter_groups(model, name, 0.01), lr=1e-3, betas=(0.5, 0.9))
            for name in task.optimizer_names()}


@pytest.mark.parametrize("disc_start", [0, 1])
def test_a_training_step_judges_the_reconstruction_once_and_updates_both_optimizers_as_two_passes_would(disc_start):
    """The discriminator's logits on the reconstruction, taken in the autoencoder update, serve its own update too:
    two forwards a step, not three, and the weights of both optimizers move as with a pass of each update's own."""
    torch.manual_seed(0)
    model = VQGAN(in_chans=1, **TINY)
    initial, reference = copy.deepcopy(model), copy.deepcopy(model)
    features = DomainFeatures(1).feature_maps
    task = VQGANTask(disc_start=disc_start, disc_weight=0.8, perceptual=PerceptualLoss(features))
    batch = torch.rand(4, 1, 16, 16)
    calls = []
    model.discriminator.register_forward_hook(lambda *_: calls.append(1))
    task.step = 0
    for name, optimizer in adamw(task, model).items():  # as the engine's step
        optimizer.zero_grad(set_to_none=True)
        task.training_step(model, batch, name)["loss"].backward()
        if name == "autoencoder":
            assert all(p.grad is None for p in model.discriminator.parameters())
        optimizer.step()
    active = disc_start == 0
    assert len(calls) == (2 if active else 0)

    # The same step with a pass each: taming's full loss, then the discriminator on the detached reconstruction.
    expected, critic = adamw(task, reference), reference.discriminator
    reconstruction, _, vq_loss, _ = reference(batch)
    nll = (reconstruction - batch).abs().mean() + F.mse_loss(reconstruction, batch)
    nll = nll + PerceptualLoss(features)(reconstruction, batch).mean()
    if active:
        g_loss = -critic(reconstruction * 2 - 1).mean()
        (rec_grad,), (gan_grad,) = torch.autograd.grad(nll, reconstruction), torch.autograd.grad(g_loss, reconstruction)
        weight = adaptive_weight_from_output_grads(reconstruction, rec_grad, gan_grad, reference.last_layer_weight())
        torch.autograd.backward([reconstruction, vq_loss], [rec_grad + 0.8 * weight * gan_grad, torch.ones(())])
    else:
        (nll + vq_loss).backward()
    expected["autoencoder"].step()
    if active:
        real, fake = critic(batch * 2 - 1), critic(reconstruction.detach() * 2 - 1)
        (0.5 * (torch.relu(1 - real).mean() + torch.relu(1 + fake).mean())).backward()
        expected["discriminator"].step()

    ours, theirs, before = (dict(m.named_parameters()) for m in (model, reference, initial))
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-7, msg=name)
    assert not torch.equal(ours["decoder.conv_out.weight"], before["decoder.conv_out.weight"])
    # (The last bias has no gradient at the start, where every logit lies within the hinge's margins.)
    critic_moved = [not torch.equal(ours[n], before[n]) for n in ours if n.startswith("discriminator.") and "weight" in n]
    assert all(critic_moved) if active else not any(critic_moved)

def test_the_kept_logits_of_the_reconstruction_live_one_step_at_most():
    """The graph kept from the autoencoder update to the discriminator's is freed by that update, by the next
    autoencoder update when the discriminator's did not run, and never serves another step."""
    torch.manual_seed(0)
    model = VQGAN(in_chans=1, **TINY)
    task = VQGANTask(disc_start=0, perceptual_weight=0.0)
    batch = torch.rand(4, 1, 16, 16)
    task.step = 0
    task.training_step(model, batch, "autoencoder")
    kept = weakref.ref(task._fake_logits[2])
    task.step = 1  # a discriminator update of another step than the autoencoder's is refused
    with pytest.raises(ValueError, match="run training_step\\(model, batch, 'autoencoder'\\) first"):
        task.training_step(model, batch, "discriminator")
    assert kept() is None

    task.training_step(model, batch, "autoencoder")
    kept = weakref.ref(task._fake_logits[2])
    task.training_step(model, batch, "autoencoder")  # no discriminator update in between
    assert kept() is None
    kept = weakref.ref(task._fake_logits[2])
    task.training_step(model, batch, "discriminator")["loss"].backward()
    assert kept() is None and task._fake_logits is None

    task.disc_start = 5  # before disc_start nothing is kept
    task.training_step(model, batch, "autoencoder")
    assert task._fake_logits is None

@pytest.mark.parametrize("model_name, data, size", [("vqgan_f8", "shapes", 64), ("vit_vqgan", "digits", 32),
                                                    ("vqvae_small", "digits", 64)])
def test_a_tokenizer_trains_at_its_registered_size_unless_told(model_name, data, size):
    setup = build_setup(model_name, data)
    assert setup.run_meta["img_size"] == size and setup.splits["train"][0][0].shape[-1] == size
    assert build_setup(model_name, data, 48).run_meta["img_size"] == 48


def test_training_the_domain_classifier_once_is_not_charged_to_the_time_budget(tmp_path, monkeypatch):
    """On a fresh cache `train vqgan --max-steps 5 --minutes 0.3` (the tour's step budget) stopped after 1 step,
    the minute of training its perceptual network at the first step counted as the run's training time."""
    from engine_script import StepClock

    clock = StepClock(0.25)
    monkeypatch.setattr(engine, "time", clock)

    def slow_domain_features(data, image_size, in_chans):
        clock.now += 1000.0  # trained once, then read from the cache
        return DomainFeatures(in_chans)

    monkeypatch.setattr(domain, "domain_features", slow_domain_features)
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=4, minutes=0.05, batch_size=8, progress=False,
                         checkpoint_every=10**9, precision="fp32")
    _, result = run_training("vqgan", "digits", config, 16, TINY, {"disc_start": 2})
    assert result.steps == 4 and result.train_seconds < 60


def test_a_reconstruction_that_is_not_finite_is_refused_not_scored():
    """A tokenizer whose reconstruction overflowed (bf16's range) gave a PSNR of NaN (eval --json printed it as no
    JSON reader takes it), or, infinite, was clamped to white and scored; the reconstruction is now checked before
    the clamp, so that eval and predict refuse in one line as they do for a classifier's logits."""
    from visionzoo.train.task import NonFiniteOutputError

    class Overflowing(torch.nn.Module):
        def forward(self, images):
            return images * float("inf"), torch.zeros(len(images), 2, 2, dtype=torch.long), None, None

    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NonFiniteOutputError):
        VQGANTask.reconstruct(Overflowing(), images, contextlib.nullcontext)


def test_a_tokenizer_trains_on_a_coco_folder_of_image_info_files(tmp_path, capsys):
    """COCO files without 'annotations' (image-info files, as COCO's image_info_test2017.json, which pycocotools and
    torchvision load) were refused with "the top level is missing 'annotations'", though a tokenizer reads no box."""
    folder = tmp_path / "coco"
    assert main(["export-data", "shapes", "--out", str(folder), "--num", "4", "--image-size", "16", "--split",
                 "train", "val"]) == 0
    for split in ("train", "val"):
        ann_file = folder / "annotations" / f"instances_{split}.json"
        content = json.loads(ann_file.read_text())
        del content["annotations"]
        ann_file.write_text(json.dumps(content))
    capsys.readouterr()
    assert main(["train", "vqgan", "--data", str(folder), "--img-size", "16", "--max-steps", "1", "--batch-size", "4",
                 "--no-progress", "--precision", "fp32", "--model-arg", "ch=8", "--model-arg", "ch_mult=[1,2]",
                 "--model-arg", "num_codes=32", "--model-arg", "embed_dim=8", "--model-arg", "z_channels=8",
                 "--model-arg", "disc_width=8", "--perceptual-weight", "0", "--out", str(tmp_path / "run")]) == 0, \
        capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()


@pytest.fixture
def lpips_files(tmp_path):
    """``(a seeded VGG16's features.* in torchvision's layout, the lpips package's learnt weights for it)``."""
    lpips = pytest.importorskip("lpips")
    torch.manual_seed(0)
    vgg16 = tmp_path / "vgg16_features.pth"
    torch.save(VGG16Features().state_dict(), vgg16)
    return vgg16, Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"


def test_visionzoo_train_vqgan_with_lpips_weights_trains_with_lpips_and_records_the_file(tmp_path, lpips_files):
    vgg16, weights = lpips_files
    out = tmp_path / "run"
    argv = ["train", "vqgan", "--data", "digits", "--img-size", "16", "--max-steps", "1", "--batch-size", "4",
            "--no-progress", "--precision", "fp32", "--perceptual-checkpoint", str(vgg16), "--lpips-weights",
            str(weights), "--out", str(out), "--model-arg", "ch=8", "--model-arg", "ch_mult=[1,2]", "--model-arg",
            "num_codes=32", "--model-arg", "embed_dim=8", "--model-arg", "z_channels=8", "--model-arg", "disc_width=8"]
    assert main(argv) == 0
    _, meta = read_checkpoint(out / "checkpoint.safetensors")
    assert meta["run"]["options"]["lpips_weights"] == str(weights)
    assert meta["run"]["options"]["perceptual_checkpoint"] == str(vgg16)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "split" not in line]
    assert records[0]["autoencoder/perceptual"] > 0
    setup = VQGANTask.setup("vqgan", "digits", 16, meta["run"]["model_args"], options=meta["run"]["options"])
    learnt = setup.task.perceptual(torch.device("cpu")).layer_weights()
    assert [len(w) for w in learnt] == [64, 128, 256, 512, 512]
    assert torch.equal(learnt[0], torch.load(weights, map_location="cpu")["lin0.model.1.weight"].flatten())


def test_lpips_weights_without_a_vgg16_are_refused_before_the_run(tmp_path, lpips_files, capsys):
    _, weights = lpips_files
    argv = ["train", "vqgan", "--data", "digits", "--img-size", "16", "--max-steps", "1", "--no-progress",
            "--lpips-weights", str(weights), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"visionzoo train: error: --lpips-weights {weights} weighs the channels of VGG16: "
                                       "give its torchvision vgg16 weights with --perceptual-checkpoint too\n")
    assert not (tmp_path / "run").exists()


def test_a_missing_or_foreign_lpips_weights_file_is_refused_before_the_run_naming_the_option(tmp_path, lpips_files,
                                                                                            capsys):
    vgg16, weights = lpips_files
    argv = ["train", "vqgan", "--data", "digits", "--img-size", "16", "--max-steps", "1", "--no-progress",
            "--perceptual-checkpoint", str(vgg16), "--out", str(tmp_path / "run")]
    missing = tmp_path / "vgg.pth"
    assert main([*argv, "--lpips-weights", str(missing)]) == 2
    assert capsys.readouterr().err == (f"visionzoo train: error: --lpips-weights {missing} is not a file "
                                       "(LPIPS's vgg.pth)\n")
    alexnet = weights.with_name("alex.pth")
    assert main([*argv, "--lpips-weights", str(alexnet)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"visionzoo train: error: --lpips-weights: checkpoint {alexnet} holds no LPIPS "
                                   "weights for VGG16 (lin1.model.1.weight has shape [1, 192, 1, 1], expected "
                                   "[1, 128, 1, 1];") and captured.err.count("\n") == 1
    assert main([*argv, "--lpips-weights", str(vgg16)]) == 2  # the VGG16 file given in its place
    assert "--lpips-weights: checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_a_run_stopped_while_its_domain_classifier_trains_leaves_no_run_folder(tmp_path, monkeypatch, capsys, stop):
    """`train vqgan --data digits` made its run folder, then trained the domain classifier of its perceptual loss (a
    minute); stopped there (Ctrl-C, an error), it left an empty run folder behind. The engine now takes back the
    folders it made and its marker when a run stops before writing anything; the user's own are left as they were."""
    def stopped(*args, **kwargs):
        raise stop("stopped while the domain classifier trains")

    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))  # no cached classifier: it is trained first
    monkeypatch.setattr(domain, "train_domain_classifier", stopped)
    mine, empty = tmp_path / "mine", tmp_path / "empty"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    empty.mkdir()
    argv = ["train", "vqgan", "--data", "digits", "--img-size", "16", "--max-steps", "1", "--batch-size", "4",
            "--no-progress", "--precision", "fp32", "--model-arg", "ch=8", "--model-arg", "ch_mult=[1,2]",
            "--model-arg", "num_codes=32", "--model-arg", "embed_dim=8", "--model-arg", "z_channels=8",
            "--model-arg", "disc_width=8"]
    said = {mine / "runs" / "vqgan": "before the run wrote anything; no run folder {} is left",
            empty: "before the first checkpoint in {}; nothing to resume"}
    for out, words in said.items():
        capsys.readouterr()
        with contextlib.nullcontext() if stop is KeyboardInterrupt else pytest.raises(RuntimeError, match="stopped"):
            assert main([*argv, "--out", str(out)]) == 130
            assert capsys.readouterr().err == f"visionzoo train: interrupted {words.format(out)}\n"
    assert [path.name for path in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "the user's"
    assert list(empty.iterdir()) == []
