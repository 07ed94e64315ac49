"""DeiT's distillation objective and the teacher plumbing of `visionzoo train --teacher`."""

import pytest
import torch
import torch.nn.functional as F

from visionzoo.cli import main
from visionzoo.train.distillation import distillation_loss
from visionzoo.train.run import build_setup

SMALL = ["--img-size", "16", "--model-arg", "small_input=true", "--batch-size", "32", "--precision", "fp32",
         "--no-progress"]


def test_hard_distillation_is_half_label_half_teacher_argmax():
    g = torch.Generator().manual_seed(0)
    cls, dist, teacher = (torch.randn(6, 4, generator=g) for _ in range(3))
    labels = torch.randint(0, 4, (6,), generator=g)
    targets = F.one_hot(labels, 4).float()
    expected = 0.5 * F.cross_entropy(cls, labels) + 0.5 * F.cross_entropy(dist, teacher.argmax(-1))
    torch.testing.assert_close(distillation_loss(cls, dist, targets, teacher, "hard"), expected)


def test_soft_distillation_is_tau_squared_kl_to_the_tempered_teacher():
    g = torch.Generator().manual_seed(1)
    cls, dist, teacher = (torch.randn(5, 3, generator=g) for _ in range(3))
    targets = F.softmax(torch.randn(5, 3, generator=g), -1)
    tau, alpha = 3.0, 0.1
    p_teacher = F.softmax(teacher / tau, -1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(dist / tau, -1))).sum(-1).mean() * tau ** 2
    ce = (-targets * F.log_softmax(cls, -1)).sum(-1).mean()
    got = distillation_loss(cls, dist, targets, teacher, "soft", alpha=alpha, tau=tau)
    torch.testing.assert_close(got, (1 - alpha) * ce + alpha * kl)


def test_distillation_refuses_bad_settings():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="distillation must be one of"):
        distillation_loss(x, x, x, x, "medium")
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(x, x, x, x, "hard", alpha=2.0)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher") / "r18"
    assert main(["train", "resnet18", "--data", "digits", *SMALL, "--max-steps", "30", "--out", str(run)]) == 0
    return run / "checkpoint.safetensors"


def test_training_step_uses_the_teachers_predictions(teacher_run):
    options = {"teacher": "resnet18", "teacher_checkpoint": str(teacher_run), "distillation": "hard",
               "distillation_alpha": 1.0, "translate": 0}
    setup = build_setup("resnet18", "digits", 16, {"small_input": True}, options=options)
    task, model = setup.task, setup.model
    images, labels = task.collate([setup.splits["train"][i] for i in range(32)])
    teacher_logits = task.teacher(images)
    agreement = (teacher_logits.argmax(-1) == labels).float().mean()
    assert agreement > 0.5  # a trained teacher, loaded with its own normalisation
    torch.manual_seed(0)
    loss = task.training_step(model.train(), (images, labels), "model")["loss"]
    torch.manual_seed(0)
    expected = F.cross_entropy(model(task.normalize(images)), teacher_logits.argmax(-1))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_cli_distillation_errors_are_one_line(capsys, teacher_run, tmp_path):
    base = ["train", "resnet18", "--data", "digits", *SMALL, "--max-steps", "1", "--out", str(tmp_path / "r")]
    assert main([*base, "--teacher", "resnet18"]) == 2
    assert "--teacher-checkpoint" in capsys.readouterr().err
    assert main([*base, "--teacher", "resnet18", "--teacher-checkpoint", str(tmp_path / "none.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "--teacher", "resnet81", "--teacher-checkpoint", str(teacher_run)]) == 2
    assert "resnet18" in capsys.readouterr().err
    assert main([*base, "--teacher", "vqvae_small", "--teacher-checkpoint", str(teacher_run)]) == 2
    assert "--teacher vqvae_small is a reconstruction model; the teacher is a classifier" in capsys.readouterr().err
    assert main([*base, "--teacher", "image_gpt_small", "--teacher-checkpoint", str(teacher_run)]) == 2
    assert "--teacher image_gpt_small is an autoregressive model; the teacher is a classifier" in capsys.readouterr().err
    # the run folder itself was said not to exist
    assert main([*base, "--teacher", "resnet18", "--teacher-checkpoint", str(teacher_run.parent)]) == 2
    assert f"is a folder, not a checkpoint file; did you mean {teacher_run}?" in capsys.readouterr().err


@pytest.mark.parametrize("option, message", [
    # --distillation-tau 4 with the default --distillation hard trained on the teacher's arg-max, which no
    # temperature changes: the run took the option and ignored it
    (["--distillation-tau", "4"], "--distillation-tau 4.0 applies to --distillation soft"),
    # --distillation-alpha 0 ran the teacher on every batch and gave its term a weight of 0: the run trained on the
    # labels alone, at a teacher's cost
    (["--distillation-alpha", "0"], "--distillation-alpha 0.0 gives the teacher no weight"),
], ids=["tau-with-hard", "alpha-0"])
def test_a_distillation_setting_that_would_do_nothing_is_refused_before_the_run(capsys, teacher_run, tmp_path,
                                                                                 option, message):
    """A teacher's setting that the run would ignore, or that leaves the teacher no part in the loss, is refused in
    one line before the run folder is made."""
    out = tmp_path / "r"
    base = ["train", "resnet18", "--data", "digits", *SMALL, "--max-steps", "1", "--out", str(out),
            "--teacher", "resnet18", "--teacher-checkpoint", str(teacher_run)]
    assert main([*base, *option]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error, error
    assert not out.exists()


def test_a_teacher_for_other_classes_or_another_model_is_refused_before_the_run(capsys, teacher_run, tmp_path):
    """A timm/torchvision file with a 1000-class head was loaded with its head re-initialised, so the student
    distilled from a random classifier without a word; a checkpoint of another model failed only at the first
    step, after the run folder was made."""
    from visionzoo.models import create_model
    from visionzoo.train.distillation import Teacher

    imagenet = tmp_path / "resnet18_imagenet.pth"
    torch.save(create_model("resnet18", num_classes=1000).state_dict(), imagenet)
    with pytest.raises(ValueError, match=r"teacher checkpoint .*resnet18_imagenet.pth predicts 1000 classes"):
        Teacher("resnet18", imagenet, [str(i) for i in range(10)], 1)
    out = tmp_path / "r"
    base = ["train", "resnet18", "--data", "digits", *SMALL, "--max-steps", "1", "--out", str(out)]
    for teacher, checkpoint, message in (("resnet18", imagenet, "predicts 1000 classes (fc), the data set has 10"),
                                         ("resnet34", teacher_run, f"--teacher resnet34: teacher checkpoint "
                                                                   f"{teacher_run} is of model 'resnet18'; give "
                                                                   "--teacher resnet18")):
        assert main([*base, "--teacher", teacher, "--teacher-checkpoint", str(checkpoint)]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error, error
        assert not out.exists()
    teacher = Teacher("resnet18", teacher_run, [str(i) for i in range(10)], 1)
    assert not any(p.requires_grad for p in teacher.model.parameters()) and not teacher.model.training
    Teacher("resnet18.tv_in1k", teacher_run, [str(i) for i in range(10)], 1)  # timm's tagged name: that model


def test_a_teacher_trained_at_another_image_size_is_refused(capsys, teacher_run, tmp_path):
    """The 16-px teacher (val accuracy 0.956 there) taught a 32-px student at 0.215 accuracy, without a word."""
    out = tmp_path / "r"
    assert main(["train", "resnet18", "--data", "digits", *SMALL[2:], "--img-size", "32", "--max-steps", "1",
                 "--out", str(out), "--teacher", "resnet18", "--teacher-checkpoint", str(teacher_run)]) == 2
    error = capsys.readouterr().err.strip()
    assert "was trained at 16 px, this run is at 32 px" in error and "\n" not in error, error
    assert not out.exists()


def test_a_teacher_that_does_not_take_the_runs_images_is_refused_before_the_run(capsys, teacher_run, tmp_path):
    """A timm-style file of a ViT built for 32 px, teaching at 16 px, and a checkpoint of ours trained on 3-channel
    images, teaching on 1-channel Digits, were both accepted and failed at the first step, after the run folder was
    written, with an error about "the model" ("is built for 32×32 images, got 16×16"; "takes 1-channel images, got
    3 channels ... build it with in_chans=3") that read as the student's."""
    from visionzoo.checkpoint import read_checkpoint, save_checkpoint
    from visionzoo.models import create_model

    vit = tmp_path / "vit32.pth"
    torch.save(create_model("vit_tiny_patch8_32", num_classes=10, in_chans=1).state_dict(), vit)
    tensors, meta = read_checkpoint(teacher_run)
    rgb = create_model("resnet18", num_classes=10, in_chans=3, small_input=True).state_dict()
    tensors = {**{k: v for k, v in tensors.items() if not k.startswith(("model.", "ema."))},
               **{"model." + k: v for k, v in rgb.items()}}
    meta["model"]["args"]["in_chans"] = meta["run"]["in_chans"] = 3
    meta["task"]["mean"], meta["task"]["std"] = [0.5] * 3, [0.25] * 3
    save_checkpoint(tmp_path / "rgb.safetensors", tensors, meta)
    out = tmp_path / "r"
    base = ["train", "resnet18", "--data", "digits", *SMALL, "--max-steps", "1", "--out", str(out)]
    for teacher, checkpoint, message in (
            ("vit_tiny_patch8_32", vit, "teacher vit_tiny_patch8_32 (" + str(vit) + ") does not take this run's "
                                        "16×16 images: the model is built for 32×32 images"),
            ("resnet18", tmp_path / "rgb.safetensors", "was trained on 3-channel images, this run's have 1")):
        assert main([*base, "--teacher", teacher, "--teacher-checkpoint", str(checkpoint)]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error, error
        assert not out.exists()


def test_a_masked_patch_prediction_pretraining_is_refused_as_a_teacher(tmp_path):
    """Its classes are the data set's, so it passed the checks and failed to load with a list of 80 missing and 81
    unexpected keys ("encoder.blocks.0...")."""
    from visionzoo.train.distillation import Teacher

    run = tmp_path / "mpp"
    assert main(["train", "vit_tiny_patch8_32", "--data", "digits", "--img-size", "32", "--precision", "fp32",
                 "--no-progress", "--batch-size", "8", "--objective", "mpp", "--max-steps", "1", "--out", str(run)]) == 0
    with pytest.raises(ValueError, match="is a masked patch prediction pretraining, not a classifier; fine-tune it"):
        Teacher("vit_tiny_patch8_32", run / "checkpoint.safetensors", [str(i) for i in range(10)], 1)


@pytest.mark.parametrize("distilled", [False, True])
def test_runs_recorded_with_every_distillation_default_still_resume(teacher_run, tmp_path, distilled):
    """Runs recorded before the distillation options lost their argparse defaults hold all three at their defaults
    (with or without a teacher); refusing those as typed would leave such runs unable to --resume."""
    from visionzoo.checkpoint import read_checkpoint, save_checkpoint

    out = tmp_path / "r"
    teacher = ["--teacher", "resnet18", "--teacher-checkpoint", str(teacher_run)] if distilled else []
    base = ["train", "resnet18", "--data", "digits", *SMALL, "--out", str(out), *teacher]
    assert main([*base, "--max-steps", "1"]) == 0
    path = out / "checkpoint.safetensors"
    tensors, meta = read_checkpoint(path)
    meta["run"]["options"].update(distillation="hard", distillation_alpha=0.5, distillation_tau=1.0)
    save_checkpoint(path, tensors, meta)
    assert main([*base, "--max-steps", "2", "--resume"]) == 0
    assert read_checkpoint(path)[1]["step"] == 2


def test_resuming_with_a_teacher_file_that_now_holds_other_weights_is_refused(teacher_run, tmp_path, capsys):
    """A teacher retrained into the same file between the start and the --resume of a distillation run was taken
    without a word, so the run's second half distilled from another teacher than its first."""
    import shutil

    from visionzoo.checkpoint import read_checkpoint, save_checkpoint

    teacher = tmp_path / "teacher.safetensors"
    shutil.copy(teacher_run, teacher)
    out = tmp_path / "r"
    base = ["train", "resnet18", "--data", "digits", *SMALL, "--out", str(out), "--teacher", "resnet18",
            "--teacher-checkpoint", str(teacher)]
    assert main([*base, "--max-steps", "1"]) == 0
    shutil.copy(teacher, tmp_path / "copy.safetensors")  # the same weights under another name resume
    assert main([*base[:-1], str(tmp_path / "copy.safetensors"), "--max-steps", "2", "--resume"]) == 0
    tensors, meta = read_checkpoint(teacher)
    save_checkpoint(teacher, {key: value + 1 if value.is_floating_point() else value for key, value in tensors.items()},
                    meta)
    capsys.readouterr()
    assert main([*base, "--max-steps", "3", "--resume"]) == 2
    assert f"the teacher file {teacher} has changed" in capsys.readouterr().err
    assert read_checkpoint(out / "checkpoint.safetensors")[1]["step"] == 2


def test_a_soft_distillation_resumed_as_hard_drops_its_temperature(teacher_run, tmp_path, capsys):
    """A soft run (--distillation-tau 3) resumed with --distillation hard was refused as '--distillation-tau 3.0
    applies to --distillation soft', a flag the user had not typed: the run's own temperature was kept."""
    from visionzoo.checkpoint import read_checkpoint

    out = tmp_path / "r"
    base = ["train", "resnet18", "--data", "digits", *SMALL, "--out", str(out), "--teacher", "resnet18",
            "--teacher-checkpoint", str(teacher_run)]
    assert main([*base, "--max-steps", "1", "--distillation", "soft", "--distillation-tau", "3"]) == 0
    capsys.readouterr()
    assert main([*base, "--max-steps", "2", "--resume", "--distillation", "hard"]) == 0, capsys.readouterr().err
    options = read_checkpoint(out / "checkpoint.safetensors")[1]["run"]["options"]
    assert options["distillation"] == "hard" and options["distillation_tau"] in (None, 1.0), options
    # a temperature typed with hard is still refused, resumed or not
    assert main([*base, "--max-steps", "3", "--resume", "--distillation-tau", "3"]) == 2
    assert "--distillation-tau 3.0 applies to --distillation soft" in capsys.readouterr().err


def test_resuming_with_another_teacher_file_names_the_one_the_run_distilled_from(teacher_run, tmp_path, capsys):
    """A distillation resumed with --teacher-checkpoint OTHER (a file of other weights) was refused as 'the teacher
    file OTHER has changed since the run ... started distilling from it': the run had never read that file."""
    from visionzoo.checkpoint import read_checkpoint, save_checkpoint

    other = tmp_path / "other.safetensors"
    tensors, meta = read_checkpoint(teacher_run)
    save_checkpoint(other, {key: value + 1 if value.is_floating_point() else value for key, value in tensors.items()},
                    meta)
    out = tmp_path / "r"
    base = ["train", "resnet18", "--data", "digits", *SMALL, "--out", str(out), "--teacher", "resnet18"]
    assert main([*base, "--teacher-checkpoint", str(teacher_run), "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main([*base, "--teacher-checkpoint", str(other), "--max-steps", "2", "--resume"]) == 2
    error = capsys.readouterr().err.strip()
    assert (f"--teacher-checkpoint {other} holds other weights than {teacher_run}, the teacher the run in {out} "
            "started distilling from" in error and "has changed" not in error and "\n" not in error), error


def test_a_checkpoint_of_a_model_that_is_no_classifier_is_refused_as_a_teacher_without_naming_it(tmp_path, capsys):
    """--teacher resnet18 with a VQ-VAE's checkpoint said "give --teacher vqvae_small", a command that fails in turn
    ("--teacher vqvae_small is a reconstruction model; the teacher is a classifier")."""
    from visionzoo.checkpoint import read_checkpoint, save_checkpoint
    from visionzoo.models import create_model

    vqvae = tmp_path / "vqvae.safetensors"
    model = create_model("vqvae_small")
    save_checkpoint(vqvae, model.state_dict(), {"model": {"name": "vqvae_small", "args": {}},
                                                 "task": {"name": "reconstruction"}})
    assert read_checkpoint(vqvae)[1]["model"]["name"] == "vqvae_small"
    out = tmp_path / "r"
    assert main(["train", "resnet18", "--data", "digits", *SMALL, "--max-steps", "1", "--out", str(out), "--teacher",
                 "resnet18", "--teacher-checkpoint", str(vqvae)]) == 2
    error = capsys.readouterr().err.strip()
    assert (f"teacher checkpoint {vqvae} is of model 'vqvae_small', a reconstruction model; the teacher is a classifier"
            in error and "give --teacher" not in error and "\n" not in error), error
    assert not out.exists()


def test_a_vit_teacher_built_for_another_size_is_refused_with_what_the_cli_can_do(capsys, tmp_path):
    """A timm-style file of a 32-px ViT teaching at 16 px was refused ending "build it with img_size=... or
    dynamic_img_size=True", create_model's arguments, which `visionzoo train` cannot pass to the teacher."""
    from visionzoo.models import create_model

    vit = tmp_path / "vit32.pth"
    torch.save(create_model("vit_tiny_patch8_32", num_classes=10, in_chans=1).state_dict(), vit)
    out = tmp_path / "r"
    assert main(["train", "resnet18", "--data", "digits", *SMALL, "--max-steps", "1", "--out", str(out), "--teacher",
                 "vit_tiny_patch8_32", "--teacher-checkpoint", str(vit)]) == 2
    error = capsys.readouterr().err.strip()
    assert (f"teacher vit_tiny_patch8_32 ({vit}) does not take this run's 16×16 images: the model is built for 32×32 "
            "images; train the student at --img-size 32, or give a teacher trained at 16 px" in error
            and "build it with" not in error and "\n" not in error), error
    assert not out.exists()
