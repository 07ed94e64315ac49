"""Classification task pieces: label smoothing, mixup, CutMix, translation, flips; against hand computations."""

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

import visionzoo.data
from visionzoo.train.classification import ClassificationTask, class_label, random_flips, random_translate
from visionzoo.train.mixup import cutmix_box, mix_batch, smooth_one_hot


def test_smooth_one_hot_matches_the_definition_and_torch_cross_entropy():
    labels = torch.tensor([0, 2, 1])
    targets = smooth_one_hot(labels, 4, smoothing=0.2)
    assert torch.allclose(targets.sum(1), torch.ones(3))
    assert targets[1, 2] == pytest.approx(0.8 + 0.05) and targets[1, 0] == pytest.approx(0.05)
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    ours = torch.sum(-targets * logits.log_softmax(-1), -1).mean()
    reference = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.2)
    torch.testing.assert_close(ours, reference)


def test_mixup_mixes_images_and_targets_with_the_same_lambda():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    targets = smooth_one_hot(torch.tensor([0, 1, 2, 3]), 4)
    mixed, soft = mix_batch(images, targets, mixup_alpha=0.8, cutmix_alpha=0.0, generator=generator)
    lam = soft[0, 0].item()
    assert 0 < lam < 1 and soft[0, 3].item() == pytest.approx(1 - lam)
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))


@pytest.mark.parametrize("mixup_alpha, cutmix_alpha", [(0.8, 0.0), (0.0, 1.0)])
def test_a_batch_of_one_is_refused_by_mixup_and_cutmix(mixup_alpha, cutmix_alpha):
    """--batch-size 1 --mixup 0.8 (or --cutmix) trained without a word on unmixed images: each image was mixed with
    itself, the batch's only other, so the run had no mixup at all (timm's Mixup refuses a batch it cannot pair)."""
    images, targets = torch.rand(1, 3, 8, 8), smooth_one_hot(torch.tensor([2]), 4)
    with pytest.raises(ValueError, match="a batch of 1 image has no other to mix it with; give --batch-size 2 or more"):
        mix_batch(images, targets, mixup_alpha, cutmix_alpha, torch.Generator().manual_seed(0))
    assert mix_batch(images, targets, 0.0, 0.0, torch.Generator())[0] is images  # no mixing asked: nothing to refuse


@pytest.mark.parametrize("mixup_alpha, cutmix_alpha", [(0.8, 0.0), (0.0, 1.0)])
def test_in_an_odd_batch_only_the_middle_image_stays_unmixed(mixup_alpha, cutmix_alpha):
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    targets = smooth_one_hot(torch.arange(5), 5)
    mixed, soft = mix_batch(images, targets, mixup_alpha, cutmix_alpha, torch.Generator().manual_seed(4))
    torch.testing.assert_close(mixed[2], images[2], rtol=0, atol=1e-6)
    assert torch.equal(soft[2], targets[2])
    assert all(soft[i, 4 - i] > 0 for i in (0, 1, 3, 4))


@pytest.mark.parametrize("alpha", [1e9, 1e308])
@pytest.mark.parametrize("which", ["mixup", "cutmix"])
def test_a_huge_alpha_mixes_half_and_half_as_its_beta_says(alpha, which):
    """--mixup 1e308 (or --cutmix) drew lambda 0.0 from numpy's Beta (its gamma draws overflow past ~9e307): every
    image was replaced by its partner, without a word, where Beta(alpha, alpha) is 0.5 within 1e-150 (1e9: 1e-5)."""
    images = torch.zeros(2, 1, 16, 16)
    images[1] = 1.0
    targets = smooth_one_hot(torch.tensor([0, 1]), 2)
    alphas = {"mixup_alpha": alpha, "cutmix_alpha": 0.0} if which == "mixup" else {"mixup_alpha": 0.0, "cutmix_alpha": alpha}
    for seed in range(5):
        mixed, soft = mix_batch(images, targets, generator=torch.Generator().manual_seed(seed), **alphas)
        kept = 1 - mixed[0].mean().item()  # the share of image 0 left in it
        assert soft[0, 0].item() == pytest.approx(kept)
        if which == "mixup":
            assert kept == pytest.approx(0.5, abs=1e-3)
        else:  # a box of side int(16 * sqrt(1 - 0.5)) = 11 at most, clipped where it runs out of the image
            assert kept >= 1 - 11 * 11 / 256


@pytest.mark.parametrize("flag, option", [("--mixup", "mixup_alpha"), ("--cutmix", "cutmix_alpha")])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_non_finite_alpha_is_refused_by_the_task_as_by_the_command_line(flag, option, value):
    """ClassificationTask(mixup_alpha=inf) was taken, and its Beta drew NaN: every mixed image and target NaN."""
    with pytest.raises(ValueError, match=f"{flag} must be a finite number >= 0, got {value}"):
        ClassificationTask(["a", "b"], **{option: value})


def test_cutmix_pastes_a_box_and_sets_lambda_to_the_kept_area():
    images = torch.zeros(2, 1, 16, 16)
    images[1] = 1.0
    targets = smooth_one_hot(torch.tensor([0, 1]), 2)
    mixed, soft = mix_batch(images, targets, mixup_alpha=0.0, cutmix_alpha=1.0,
                            generator=torch.Generator().manual_seed(5))
    pasted = mixed[0].mean().item()  # fraction of image 0 now taken from image 1
    assert 0 < pasted < 1
    assert soft[0, 0].item() == pytest.approx(1 - pasted)
    assert soft[1, 1].item() == pytest.approx(1 - pasted)


def test_cutmix_box_area_follows_lambda_when_unclipped():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y1, y2, x1, x2 = cutmix_box(100, 100, 0.75, rng)
        assert 0 <= y1 <= y2 <= 100 and 0 <= x1 <= x2 <= 100
        assert (y2 - y1) * (x2 - x1) <= 50 * 50 + 1


def test_cutmix_box_is_timms_for_odd_cut_sizes(monkeypatch):
    """The box spanned cut // 2 on both sides of its centre, one pixel short of timm's for an odd cut: at 16 px
    and lam 0.88 a 5 × 5 cut pasted 4 × 4, and the mixing ratios came out nearer 1 than Beta(alpha) draws them."""
    from timm.data.mixup import rand_bbox

    for height, width, lam in ((16, 16, 1 - (5.5 / 16) ** 2), (17, 13, 0.3), (32, 32, 0.57), (9, 31, 0.05)):
        for cy, cx in ((0, 0), (height // 2, width // 2), (height - 1, width - 1), (3, 7)):
            timm_centre = FixedCentre(cy, cx)
            monkeypatch.setattr(np.random, "randint", lambda low, high, size=None, centre=timm_centre:
                                centre.integers(low, high))
            reference = tuple(int(v) for v in rand_bbox((height, width), lam))
            assert cutmix_box(height, width, lam, FixedCentre(cy, cx)) == reference, (height, width, lam, cy, cx)
    assert cutmix_box(16, 16, 1 - (5.5 / 16) ** 2, FixedCentre(8, 8)) == (6, 11, 6, 11)  # 5 × 5


class RecordingRng:
    """``np.random.default_rng(seed)`` that appends every value it draws to ``draws``."""

    def __init__(self, seed: int, draws: list, make=np.random.default_rng) -> None:
        self.rng, self.draws = make(seed), draws

    def __getattr__(self, name: str):
        def draw(*args):
            self.draws.append(getattr(self.rng, name)(*args))
            return self.draws[-1]
        return draw


@pytest.mark.parametrize("mixup_alpha, cutmix_alpha, smoothing", [(0.8, 0.0, 0.1), (0.0, 1.0, 0.0), (0.8, 1.0, 0.1)])
@pytest.mark.parametrize("seed", range(8))
def test_mix_batch_equals_timms_mixup_in_batch_mode_on_the_same_draws(monkeypatch, mixup_alpha, cutmix_alpha,
                                                                       smoothing, seed):
    """timm.data.Mixup(mode="batch") fed the draws mix_batch made (after its own draw against mix_prob 1.0): the
    same images and targets, for mixup, CutMix and the switch between them, on images of odd sides."""
    from timm.data.mixup import Mixup

    g = torch.Generator().manual_seed(seed)
    images, labels = torch.rand(6, 3, 17, 13, generator=g), torch.randint(0, 5, (6,), generator=g)
    draws = []
    with monkeypatch.context() as patch:
        patch.setattr(np.random, "default_rng", lambda seed: RecordingRng(seed, draws))
        mixed, targets = mix_batch(images, smooth_one_hot(labels, 5, smoothing), mixup_alpha, cutmix_alpha,
                                   torch.Generator().manual_seed(seed))
    replay = iter([0.0, *draws])
    for name in ("rand", "beta", "randint"):
        monkeypatch.setattr(np.random, name, lambda *args, size=None: next(replay))
    mixer = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=smoothing, num_classes=5)
    reference, reference_targets = mixer(images.clone(), labels)
    assert next(replay, None) is None
    torch.testing.assert_close(mixed, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(targets, reference_targets, rtol=0, atol=1e-6)


class FixedCentre:
    """A stand-in for ``np.random.Generator`` whose ``integers`` give the box centre ``(cy, cx)``."""

    def __init__(self, cy: int, cx: int) -> None:
        self.values = iter((cy, cx))

    def integers(self, low: int, high: int) -> int:
        return next(self.values)


def test_random_translate_shifts_content_within_bounds():
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 3:5, 3:5] = 1.0
    shifted = random_translate(image.repeat(16, 1, 1, 1), 2, torch.Generator().manual_seed(0))
    assert shifted.shape == (16, 1, 8, 8)
    assert torch.all(shifted.sum((1, 2, 3)) == 4)  # the square moved, never cut
    assert len({tuple(s.nonzero()[0].tolist()) for s in shifted}) > 1
    assert torch.equal(random_translate(image, 0, torch.Generator()), image)


def test_evaluate_counts_top1_and_top5_and_loss():
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):  # logits fall with the distance between the class index and 5 × first pixel
            first = (x[:, 0, 0, 0] * 0.5 + 0.5) * 5
            return -(torch.arange(6.0) - first[:, None]).abs() * self.scale

    dataset = [(torch.full((1, 2, 2), v / 5), lab) for v, lab in [(0, 0), (1, 1), (2, 3), (3, 3), (4, 5)]]
    task = ClassificationTask([str(i) for i in range(6)])
    metrics = task.evaluate(Fixed(), dataset, batch_size=2, autocast=contextlib.nullcontext)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["top5"] == pytest.approx(1.0)
    expected_loss = torch.nn.functional.cross_entropy(
        Fixed()(torch.stack([img for img, _ in dataset]) * 2 - 1), torch.tensor([0, 1, 3, 3, 5]))
    assert metrics["loss"] == pytest.approx(expected_loss.item(), rel=1e-5)


def test_class_label_refuses_targets_without_an_image_label():
    assert class_label(3) == 3 and class_label({"label": 2, "boxes": None}) == 2
    with pytest.raises(ValueError, match="no image-level class labels"):
        class_label({"boxes": torch.zeros(0, 4)})


@pytest.mark.parametrize("name, exempt", [("vit_tiny_patch8_32", {"pos_embed", "cls_token"}),
                                          ("deit_tiny_distilled_patch8_32", {"pos_embed", "cls_token", "dist_token"}),
                                          ("swin_tiny_patch2_window4_32", {"layers.0.blocks.0.attn.relative_position_bias_table"})])
def test_no_weight_decay_on_the_parameters_a_model_names_as_timm(name, exempt):
    from visionzoo.models import create_model

    model = create_model(name, num_classes=10)
    wrapped = torch.nn.ModuleDict({"backbone": model})  # as in a pretraining wrapper or DDP's module.
    task = ClassificationTask([str(i) for i in range(10)])
    for net, prefix in ((model, ""), (wrapped, "backbone.")):
        decay, no_decay = task.parameter_groups(net, "main", 0.05)
        assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
        names = {id(p): n for n, p in net.named_parameters()}
        undecayed = {names[id(p)] for p in no_decay["params"]}
        assert {prefix + n for n in exempt} <= undecayed
        assert prefix + "patch_embed.proj.weight" in {names[id(p)] for p in decay["params"]}
        assert all(p.ndim > 1 for p in decay["params"])
        assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_initial_checkpoint_takes_a_torchvision_style_pth(tmp_path):
    """saved_model_args read a foreign .pth's metadata as "truncated or corrupt" and refused it."""
    from visionzoo.models import create_model
    from visionzoo.train.classification import load_initial_weights, saved_model_args

    source = create_model("resnet18", num_classes=10)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    assert saved_model_args(None, path, "resnet18") == {}
    model = create_model("resnet18", num_classes=3)
    load_initial_weights(model, path)
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_an_initial_checkpoint_pth_is_read_once(tmp_path, monkeypatch):
    """A .pth given as --initial-checkpoint was unpickled twice: whole by read_metadata, only to tell a foreign
    state dict from a damaged file, then again for its weights."""
    import visionzoo.checkpoint
    from visionzoo.models import create_model
    from visionzoo.train.classification import build_classifier

    source = create_model("resnet18", num_classes=10)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    loads = []
    real_load = torch.load

    def counted(*args, **kwargs):
        loads.append(Path(getattr(args[0], "name", args[0])))  # a path, or the file opened from it
        return real_load(*args, **kwargs)

    monkeypatch.setattr(visionzoo.checkpoint.torch, "load", counted)
    model = build_classifier("resnet18", 3, 3, {}, initial_checkpoint=path)
    assert loads == [path]
    assert torch.equal(model.conv1.weight, source.conv1.weight) and model.fc.out_features == 3


def test_an_initial_checkpoint_with_ema_weights_starts_from_them_as_timm_does(tmp_path):
    """timm's train.py --initial-checkpoint goes through create_model(checkpoint_path=), which takes the EMA
    weights; ours took the trained ones."""
    from visionzoo.checkpoint import save_checkpoint
    from visionzoo.models import create_model
    from visionzoo.train.classification import build_classifier

    torch.manual_seed(0)
    trained, ema = create_model("resnet18", num_classes=10), create_model("resnet18", num_classes=10)
    own = tmp_path / "own.safetensors"
    save_checkpoint(own, {**{f"model.{k}": v for k, v in trained.state_dict().items()},
                          **{f"ema.{k}": v for k, v in ema.state_dict().items()}},
                    {"model": {"name": "resnet18", "args": {"num_classes": 10}}, "step": 3})
    timm_style = tmp_path / "timm.pth"
    torch.save({"state_dict": trained.state_dict(), "state_dict_ema": ema.state_dict(), "epoch": 3}, timm_style)
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": trained.state_dict()}, plain)
    for path, source in ((own, ema), (timm_style, ema), (plain, trained)):
        model = build_classifier("resnet18", 3, 3, {}, initial_checkpoint=path)
        assert torch.equal(model.conv1.weight, source.conv1.weight), path.name
        assert torch.equal(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var), path.name
        assert model.fc.out_features == 3


def test_an_initial_checkpoint_in_a_familys_official_layout_loads_as_create_model_reads_it(tmp_path):
    """HIPT's official file (a DINO training state: teacher, student, arguments) loads with create_model(checkpoint=),
    which falls back on the family's reader, but --initial-checkpoint read it with the generic reader alone and
    refused it ('is not a state dict of tensors: it has non-tensor entries ['teacher', 'student', ...]')."""
    import argparse

    from visionzoo.models import create_model
    from visionzoo.train.classification import build_classifier

    torch.manual_seed(0)
    teacher = create_model("hipt_vit256_small").state_dict()
    student = {f"module.backbone.{k}": v + 1 for k, v in teacher.items()}
    path = tmp_path / "vit256_small_dino.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in teacher.items()}, "student": student, "epoch": 100,
                "args": argparse.Namespace(arch="vit_small", patch_size=16)}, path)
    model = build_classifier("hipt_vit256_small", 3, 3, {}, initial_checkpoint=path)
    assert torch.equal(model.pos_embed, teacher["pos_embed"]) and torch.equal(model.norm.weight, teacher["norm.weight"])
    assert model.head.out_features == 3


def test_a_file_the_familys_filter_refuses_is_named_when_it_starts_a_fine_tuning(tmp_path):
    """create_model(checkpoint=) names the file when the family's filter refuses its weights; --initial-checkpoint
    said only 'the checkpoint holds one of HIPT's two ViTs ...', naming no file."""
    from visionzoo.checkpoint import CheckpointError
    from visionzoo.models import create_model
    from visionzoo.train.classification import build_classifier

    path = tmp_path / "tiles.pth"
    torch.save(create_model("hipt_vit256_small").state_dict(), path)
    with pytest.raises(CheckpointError, match=rf"^checkpoint {path}: the checkpoint holds one of HIPT's two ViTs"):
        build_classifier("hipt_4k", 3, 3, {}, initial_checkpoint=path)


def test_random_flips_draw_each_symmetry_of_the_square_equally_often():
    image = torch.arange(16.0).view(1, 1, 4, 4)  # no symmetry of its own: the 8 images below differ
    symmetries = [image, image.flip(-1), image.flip(-2), image.flip(-1).flip(-2)]
    symmetries += [x.rot90(1, (-2, -1)) for x in symmetries]
    out = random_flips(image.repeat(4000, 1, 1, 1), 0.5, 0.5, 0.5, torch.Generator().manual_seed(0))
    kinds = [next(k for k, s in enumerate(symmetries) if torch.equal(x[None], s)) for x in out]
    counts = np.bincount(kinds, minlength=8)
    assert counts.min() > 400 and counts.max() < 600, counts  # 500 each expected


def test_random_flips_at_probability_0_or_1():
    images = torch.rand(3, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    assert torch.equal(random_flips(images, 0.0, 0.0, 0.0, generator), images)
    assert torch.equal(torch.rand(1, generator=generator), torch.rand(1, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(random_flips(images, 1.0, 0.0, 0.0, generator), images.flip(-1))
    assert torch.equal(random_flips(images, 0.0, 1.0, 1.0, generator), images.flip(-2).rot90(1, (-2, -1)))
    task = ClassificationTask(["a", "b"], hflip=1.0)
    assert torch.equal(task.augment(images), images.flip(-1))  # translate 0: the flip alone
    with pytest.raises(ValueError, match=r"--vflip must be in \[0, 1\], got 1.5"):
        ClassificationTask(["a", "b"], vflip=1.5)


def test_random_flips_of_images_on_another_device_than_the_generator():
    """The flips were chosen on the generator's CPU and applied to the batch where the engine put it, so a batch
    on another device failed torch.where's device check (on the meta device, which stands in for CUDA here:
    "Tensor on device meta is not on the expected device cpu!")."""
    images = torch.zeros(5, 1, 4, 4, device="meta")
    flipped = random_flips(images, 0.5, 0.5, 0.5, torch.Generator().manual_seed(0))
    assert flipped.device == images.device and flipped.shape == images.shape


def test_rot90_refuses_images_that_are_not_square(monkeypatch):
    class Wide(torch.utils.data.Dataset):
        classes = ["a", "b"]

        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.zeros(3, 8, 12), index % 2

    monkeypatch.setattr(visionzoo.data.factory, "create_dataset", lambda *args, **kwargs: Wide())
    with pytest.raises(ValueError, match="--rot90 needs square images; wide's are 8×12"):
        ClassificationTask.setup("resnet18", "wide", None, {}, options={"rot90": 0.5})
    setup = ClassificationTask.setup("resnet18", "wide", None, {}, options={"hflip": 0.5, "vflip": 0.5})
    assert setup.task.flips == (0.5, 0.5, 0.0)


@pytest.mark.parametrize("argv, message", [
    (["--objective", "mpp", "--mixup", "0.8"], "--mixup applies to classification, not to --objective mpp"),
    (["--objective", "mpp", "--cutmix", "1"], "--cutmix applies to classification, not to --objective mpp"),
    (["--objective", "mpp", "--label-smoothing", "0.1"], "--label-smoothing applies to classification"),
    (["--objective", "mpp", "--teacher-checkpoint", "t.pth"], "--teacher-checkpoint applies to classification"),
    (["--distillation", "soft"], "--distillation soft needs a teacher"),
    (["--distillation-alpha", "0.9"], "--distillation-alpha 0.9 needs a teacher"),
    (["--distillation-tau", "3"], "--distillation-tau 3.0 needs a teacher"),
    # typed at their defaults these were taken for left out, and the run trained without distilling
    (["--distillation", "hard"], "--distillation hard needs a teacher"),
    (["--distillation-alpha", "0.5"], "--distillation-alpha 0.5 needs a teacher"),
    (["--distillation-tau", "1"], "--distillation-tau 1.0 needs a teacher"),
    # at --translate 40, 36% of 32-px digit training images came out blank and 47% kept under a tenth of their ink
    (["--translate", "32"], "--translate 32 can shift digits's 32×32 images wholly off themselves"),
])
def test_train_refuses_options_the_run_would_ignore(capsys, tmp_path, argv, message):
    """Masked patch prediction trained on patch colours whatever --mixup, --cutmix or --label-smoothing said, a
    run without --teacher took --distillation soft --distillation-tau 3 and trained as if neither was given, and
    --translate took shifts as large as the image."""
    from visionzoo.cli import main

    out = tmp_path / "run"
    assert main(["train", "vit_tiny_patch8_32", "--data", "digits", "--img-size", "32", "--max-steps", "1",
                 "--no-progress", "--out", str(out), *argv]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error, error
    assert not out.exists()


def test_resume_keeps_the_classification_options_the_run_was_trained_with(tmp_path):
    """`visionzoo train --resume` passed every classification option left out at its default, over the run's
    own: a run trained with --mixup 0.8 --label-smoothing 0.1 --hflip 0.5 went on without them (its checkpoint
    then recorded 0.0, 0.0 and 0.0), and an --objective mpp run could not resume at all (built as a classifier,
    its checkpoint did 'not fit': 80 missing keys)."""
    import json

    from visionzoo.cli import main

    small = ["--data", "digits", "--img-size", "32", "--batch-size", "16", "--precision", "fp32", "--no-progress"]
    options = {"mixup": 0.8, "label_smoothing": 0.1, "hflip": 0.5}
    run = tmp_path / "classifier"
    assert main(["train", "resnet18", *small, "--out", str(run), "--max-steps", "1", "--mixup", "0.8",
                 "--label-smoothing", "0.1", "--hflip", "0.5"]) == 0
    assert main(["train", "resnet18", *small, "--out", str(run), "--max-steps", "2", "--resume"]) == 0
    recorded = json.loads((run / "checkpoint.json").read_text())["run"]["options"]
    assert {name: recorded[name] for name in options} == options
    assert main(["train", "resnet18", *small, "--out", str(run), "--max-steps", "3", "--resume", "--mixup", "0"]) == 0
    assert json.loads((run / "checkpoint.json").read_text())["run"]["options"]["mixup"] == 0.0  # typed: taken
    pretraining = tmp_path / "mpp"
    assert main(["train", "vit_tiny_patch8_32", *small, "--out", str(pretraining), "--max-steps", "1",
                 "--objective", "mpp"]) == 0
    assert main(["train", "vit_tiny_patch8_32", *small, "--out", str(pretraining), "--max-steps", "2", "--resume"]) == 0
    meta = json.loads((pretraining / "checkpoint.json").read_text())
    assert meta["step"] == 2 and meta["task"]["objective"] == "mpp"


def _refused_before_the_run(tmp_path, model: str, pattern: str, **kwargs) -> None:
    """``run_training`` of ``model`` on Digits raises a ValueError matching ``pattern`` before writing its run folder."""
    from visionzoo.train.engine import TrainConfig
    from visionzoo.train.run import run_training

    out = tmp_path / "run"
    config = TrainConfig(out=str(out), max_steps=1, batch_size=4, precision="fp32", progress=False)
    with pytest.raises(ValueError, match=pattern):
        run_training(model, "digits", config, **kwargs)
    assert not out.exists()


@pytest.mark.parametrize("objective", ["classify", "mpp"])
def test_a_fixed_size_vit_on_data_of_another_size_is_refused_before_the_run_naming_img_size(tmp_path, objective):
    """vit_tiny_patch8_32 on Digits without --img-size (8 px images) prepared its run folder, timed and began
    training, then failed at the first step with the library's advice ("build it with img_size=..."); the set-up
    now refuses it naming --img-size, and at --img-size 32 builds it."""
    from visionzoo.train.run import build_setup

    _refused_before_the_run(tmp_path, "vit_tiny_patch8_32", r"vit_tiny_patch8_32 is built for 32×32 images, digits "
                            r"has 8×8 ones: give --img-size 32 \(or --model-arg dynamic_img_size=true\)",
                            options={"objective": objective})
    assert build_setup("vit_tiny_patch8_32", "digits", 32, options={"objective": objective}).run_meta["img_size"] == 32
    dynamic = build_setup("vit_tiny_patch8_32", "digits", None, {"dynamic_img_size": True}, options={"objective": objective})
    assert dynamic.run_meta["img_size"] == 8


def test_hipt_4k_cropping_images_smaller_than_a_tile_is_refused_before_the_run(tmp_path):
    """`train hipt_4k --model-arg remainder=crop` on Digits (8 px images, 256 px tiles) prepared its run folder and
    began training, then failed at the first step with "image 8×8 is smaller than one 256×256 tile"; the set-up now
    refuses it naming what fits, and the default remainder="pad" still builds it."""
    from visionzoo.train.run import build_setup

    _refused_before_the_run(tmp_path, "hipt_4k", r"hipt_4k crops digits's 8×8 images to whole 256×256 tiles, of which "
                            r"they hold none: give --img-size 256 or more, or --model-arg remainder=pad",
                            model_args={"remainder": "crop"})
    with pytest.raises(ValueError, match=r"hipt_4k crops digits's 40×40 images to whole 64×64 tiles, of which they "
                                         r"hold none: give --img-size 64 or more, --model-arg tile_size=32 or less, "):
        build_setup("hipt_4k", "digits", 40, {"remainder": "crop", "tile_size": 64})
    assert build_setup("hipt_4k", "digits", None, {"tile_size": 16}).run_meta["img_size"] == 8


def test_a_convnext_on_images_under_its_output_stride_is_refused_before_the_run_naming_img_size(tmp_path):
    """`train convnext_atto_32 --data digits` without --img-size (8 px images, a 16-fold reduction) prepared its run,
    drew the progress bar and failed at the first step with the model's own "image 8×8 is too small"; the set-up
    now refuses it naming --img-size and the model's registered size, and at 16 px it builds."""
    from visionzoo.train.run import build_setup

    _refused_before_the_run(tmp_path, "convnext_atto_32", r"^convnext_atto_32 reduces its images 16-fold and needs at "
                            r"least 16×16 ones, digits has 8×8 ones: give --img-size 32$")
    assert build_setup("convnext_atto_32", "digits", 16).run_meta["img_size"] == 16


def test_a_vit_of_any_size_on_images_of_no_whole_patches_is_refused_before_the_run_naming_img_size(tmp_path):
    """`train hipt_vit256_small --data digits` (a ViT of any image size, 16 px patches, on 8 px images) wrote its run
    folder, started training and failed at the first step with the layer's own "image 8×8 is smaller than one 16×16
    patch", naming neither the model nor a flag; so did images that are no multiple of the patch ("image 20×20 is not
    a multiple of the 16×16 patch size") and a ViT given --model-arg dynamic_img_size=true. The set-up now refuses
    them before the run, naming --img-size (the registered size, or the nearest smaller multiple of the patch)."""
    from visionzoo.train.run import build_setup

    _refused_before_the_run(tmp_path, "hipt_vit256_small", r"^hipt_vit256_small cuts its images into whole 16×16 "
                            r"patches, digits has 8×8 ones: give --img-size 256 \(or --model-arg dynamic_img_pad=true\)$")
    with pytest.raises(ValueError, match=r"^hipt_vit256_small cuts its images into whole 16×16 patches, digits has "
                                         r"20×20 ones: give --img-size 16 \(or"):
        build_setup("hipt_vit256_small", "digits", 20)
    with pytest.raises(ValueError, match=r"^vit_tiny_patch16_224 cuts its images into whole 16×16 patches, digits "
                                         r"has 8×8 ones: give --img-size 224 \(or"):
        build_setup("vit_tiny_patch16_224", "digits", None, {"dynamic_img_size": True})
    assert build_setup("vit_tiny_patch16_224", "digits", 16, {"dynamic_img_size": True}).run_meta["img_size"] == 16
    padded = {"dynamic_img_size": True, "dynamic_img_pad": True}
    assert build_setup("vit_tiny_patch16_224", "digits", None, padded).run_meta["img_size"] == 8


def test_eval_of_a_fixed_size_vit_at_another_img_size_names_only_what_eval_takes(tmp_path, capsys):
    """`visionzoo eval vit_tiny_patch8_32 --img-size 16` of a run trained at 32 px advised "give --img-size 32 (or
    --model-arg dynamic_img_size=true)", an option eval does not take ("unrecognized arguments"), and a model whose
    weights were trained at 32 px; it now names --img-size 32 alone."""
    from visionzoo.cli import main

    run = tmp_path / "vit"
    assert main(["train", "vit_tiny_patch8_32", "--data", "digits", "--img-size", "32", "--max-steps", "1",
                 "--batch-size", "4", "--precision", "fp32", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", "vit_tiny_patch8_32", "--checkpoint", str(run / "checkpoint.safetensors"), "--img-size", "16",
                 "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert ("vit_tiny_patch8_32 is built for 32×32 images, digits has 16×16 ones: give --img-size 32" in error
            and "--model-arg" not in error and "\n" not in error), error


def test_classifying_a_coco_folder_is_refused_naming_the_folder_and_what_works(tmp_path, capsys):
    """`visionzoo train resnet18 --data FOLDER` on a COCO folder stopped with "this data set has no image-level class
    labels (its targets have no 'label')", naming neither the folder nor what a classifier or the folder can train on."""
    from visionzoo.cli import main
    from visionzoo.data.export import export_shapes

    folder = tmp_path / "coco"
    export_shapes(folder, splits=["train", "val"], num=2, image_size=32, progress=False)
    assert main(["train", "resnet18", "--data", str(folder), "--max-steps", "1", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert (f"{folder} has no image-level class labels (a detection data set: boxes, not one class per image), which "
            "classification needs: train a classifier on shapes or digits, or pretrain a ViT on these images with "
            "--objective mpp" in error and "\n" not in error), error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("trained, asked", [("mpp", "classify"), ("classify", "mpp")])
def test_resuming_with_another_objective_is_refused_naming_both(tmp_path, capsys, trained, asked):
    """A masked patch prediction run resumed with --objective classify failed as 'does not fit model': 80 missing
    keys, 81 unexpected; a classifier resumed with --objective mpp as '--label-smoothing applies to classification'
    (a flag of its first invocation) or with the same key lists."""
    from visionzoo.cli import main

    small = ["--data", "digits", "--img-size", "32", "--batch-size", "8", "--precision", "fp32", "--no-progress"]
    run = tmp_path / "run"
    assert main(["train", "vit_tiny_patch8_32", *small, "--out", str(run), "--max-steps", "1", "--objective",
                 trained]) == 0
    capsys.readouterr()
    assert main(["train", "vit_tiny_patch8_32", *small, "--out", str(run), "--max-steps", "2", "--resume",
                 "--objective", asked]) == 2
    error = capsys.readouterr().err.strip()
    assert f"--objective {asked}: the run in {run} was trained with --objective {trained}" in error, error
    assert "\n" not in error, error


def test_predict_takes_the_images_to_the_models_device(monkeypatch):
    """`visionzoo predict --device cuda` puts the model on the GPU; the images, read on the CPU, follow it there as
    in evaluate (the meta device stands in for CUDA here)."""
    task = ClassificationTask(["a", "b"])
    seen = []
    monkeypatch.setattr(task, "logits", lambda model, images: seen.append(images.device) or torch.zeros(len(images), 2))
    predictions = task.predict(torch.nn.Linear(1, 1, device="meta"), torch.zeros(3, 1, 4, 4), contextlib.nullcontext)
    assert seen == [torch.device("meta")] and len(predictions) == 3


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory):
    """A resnet18 run on digits (one step) and a copy of its checkpoint whose fc.weight is NaN, as a diverged run's."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from visionzoo.cli import main

    folder = tmp_path_factory.mktemp("nan_run")
    assert main(["train", "resnet18", "--data", "digits", "--max-steps", "1", "--batch-size", "4", "--precision", "fp32",
                 "--no-progress", "--out", str(folder / "run")]) == 0
    with safe_open(folder / "run" / "checkpoint.safetensors", "pt") as source:
        tensors = {key: source.get_tensor(key) for key in source.keys()}
        metadata = source.metadata()
    tensors["model.fc.weight"][0, 0] = float("nan")
    broken = folder / "run" / "nan.safetensors"
    save_file(tensors, broken, metadata=metadata)
    return broken


def test_eval_of_weights_holding_nan_is_refused_in_one_line_not_scored(nan_checkpoint, capsys):
    """`visionzoo eval --json` of a diverged model printed "loss": NaN (not JSON) beside an accuracy and a top-5 drawn
    from the arbitrary order of NaN logits; it now refuses, naming the checkpoint and the tensor that holds NaN."""
    from visionzoo.cli import main

    capsys.readouterr()
    assert main(["eval", "resnet18", "--checkpoint", str(nan_checkpoint), "--split", "val", "--json",
                 "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"visionzoo eval: error: {nan_checkpoint}: resnet18's weights hold non-finite values (NaN "
                            "or infinity), first in fc.weight: its outputs would not be finite (did the run diverge?)\n")


def test_predict_of_weights_holding_nan_writes_no_nan_scores(nan_checkpoint, tmp_path, capsys):
    """`visionzoo predict` of a diverged model wrote NaN scores into predictions.json (not JSON) and printed "8 nan";
    it now refuses before writing anything, as eval does; a non-finite output of finite weights (bf16's range)
    suggests fp32."""
    from PIL import Image

    from visionzoo.cli import main

    image = tmp_path / "0.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["predict", "resnet18", str(image), "--checkpoint", str(nan_checkpoint), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"visionzoo predict: error: {nan_checkpoint}: resnet18's weights hold non-finite "
                                       "values (NaN or infinity), first in fc.weight: its outputs would not be finite "
                                       "(did the run diverge?)\n")
    assert not out.exists()
    finite = nan_checkpoint.parent / "checkpoint.safetensors"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ClassificationTask, "logits", lambda self, model, images: torch.full((len(images), 10), np.inf))
        assert main(["predict", "resnet18", str(image), "--checkpoint", str(finite), "--out", str(out),
                     "--precision", "bf16"]) == 2
    assert capsys.readouterr().err == (f"visionzoo predict: error: resnet18's outputs are not finite (NaN or infinity) "
                                       f"with {finite}; try --precision fp32\n")
    assert not out.exists()


def test_training_whose_validation_outputs_are_not_finite_stops_naming_the_step(tmp_path, capsys, monkeypatch):
    """A run whose validation logits overflow (bf16's range; the training loss finite) ended with "the model's outputs
    are not finite (NaN or infinity)", naming neither the evaluation nor the step; it now says both, with the
    divergence's advice, as a non-finite training loss does."""
    from visionzoo.cli import main

    monkeypatch.setattr(ClassificationTask, "logits", lambda self, model, images: torch.full((len(images), 10), np.nan))
    assert main(["train", "resnet18", "--data", "digits", "--max-steps", "1", "--batch-size", "4", "--precision", "bf16",
                 "--no-progress", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.endswith(
        "visionzoo train: error: the model's outputs on the validation set are not finite (NaN or infinity) at step 1; "
        "lower --lr or use --precision fp32\n")


def _serve_as_official_weights(name: str, model: torch.nn.Module, tmp_path: Path, monkeypatch):
    """``model``'s weights saved as a torch file and made ``name``'s official weights (their URL and sha256), for
    :func:`served_file` to serve."""
    import dataclasses
    import hashlib

    from visionzoo.models import _registry as registry
    from visionzoo.models import get_model_entry

    payload = tmp_path / f"{name}-random.pth"
    torch.save(model.state_dict(), payload)
    entry = get_model_entry(name)
    weights = dataclasses.replace(entry.pretrained, url=f"https://download.example/models/{payload.name}",
                                  hf_hub_id=None, sha256=hashlib.sha256(payload.read_bytes()).hexdigest())
    monkeypatch.setitem(registry._MODELS, name, dataclasses.replace(entry, pretrained=weights))
    return payload


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])  # bilinear at crop 0.875, bicubic at 0.9
def test_predict_pretrained_gives_the_top5_imagenet_classes_of_timms_evaluation_transform(name, tmp_path, monkeypatch,
                                                                                           capsys):
    """`visionzoo predict` took only a --checkpoint of `visionzoo train`; --pretrained fetches the official weights
    (here random ones served over loopback) and gives the top-5 ImageNet-1k classes, named as torchvision names
    them, with the probabilities of the model on timm's evaluation transform of the image."""
    import json

    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    from torchvision.models import ResNet50_Weights

    from served_file import served_file
    from visionzoo.cli import main
    from visionzoo.models import create_model

    torch.manual_seed(0)
    payload = _serve_as_official_weights(name, create_model(name), tmp_path, monkeypatch)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (180, 260, 3), dtype=np.uint8)).resize((520, 360), Image.BICUBIC)
    photo.save(tmp_path / "cat.png")
    with served_file(payload, monkeypatch, tmp_path) as requests:
        assert main(["predict", name, "--pretrained", str(tmp_path / "cat.png"), "--out",
                     str(tmp_path / "preds")]) == 0
        model = create_model(name, pretrained=True).eval()
    assert len(requests) == 1  # the second load read the cache
    (record,) = json.loads((tmp_path / "preds" / "predictions.json").read_text())
    transform = create_transform(**resolve_data_config(model=model), is_training=False)
    with torch.no_grad():
        expected = model(transform(photo)[None]).softmax(-1)[0].topk(5)
    names = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    assert record["labels"] == [names[i] for i in expected.indices.tolist()]
    torch.testing.assert_close(torch.tensor(record["scores"]), expected.values, atol=1e-6, rtol=0)
    assert Image.open(tmp_path / "preds" / "cat.png").size[0] > 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'cat.png'}: {names[expected.indices[0]]} " in out


def test_official_class_names_are_torchvisions_or_indices_for_another_head():
    from visionzoo.train.run import official_class_names

    imagenet = official_class_names("imagenet", 1000)
    assert len(imagenet) == 1000 and imagenet[0] == "tench" and imagenet[999] == "toilet tissue"
    assert official_class_names("imagenet", 21843)[:2] == ["0", "1"]  # an in21k head: the class indices
    coco = official_class_names("coco", 90)
    assert coco[0] == "person" and coco[11] == "N/A" and len(coco) == 90


def test_a_classifier_too_large_for_the_memory_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    """The memory check ran in the autoregressive task's set-up alone: `train resnet18` on a machine without the
    memory for its weights, gradients and AdamW state made its run folder and started; the engine now refuses every
    task's model in one line before the folder is made (here the machine has 64 KiB beside the model's weights)."""
    import visionzoo.train.task as task_module
    from visionzoo.cli import main

    monkeypatch.setattr(task_module, "available_memory", lambda: 2**16)
    run = tmp_path / "run"
    assert main(["train", "resnet18", "--data", "digits", "--img-size", "32", "--max-steps", "1", "--precision", "fp32",
                 "--no-progress", "--out", str(run)]) == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and not run.exists()
    assert error.startswith("visionzoo train: error: resnet18 has 11,175,370 parameters: training it needs at least "
                            "170.5 MiB for its weights, gradients and AdamW state, and this machine has 42.7 MiB "
                            "available: train a smaller model (see `visionzoo list-models --task classification`)")
