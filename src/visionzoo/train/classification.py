"""Image classification as a training task: cross-entropy with label smoothing, mixup and CutMix."""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from visionzoo.cli import fraction, nonnegative_float, nonnegative_int, positive_float, unit_interval
from visionzoo.data.factory import SPLITS
from visionzoo.layers import PatchEmbed
from visionzoo.train.distillation import DISTILLATION_KINDS, Teacher, distillation_loss, soft_cross_entropy
from visionzoo.train.mixup import mix_batch, smooth_one_hot
from visionzoo.train.task import Setup, Task, check_finite_outputs, register_task

OBJECTIVES = ("classify", "mpp")

log = logging.getLogger(__name__)

DEFAULT_MEAN = (0.5,)
DEFAULT_STD = (0.5,)
DISTILLATION_DEFAULTS = {"distillation": "hard", "distillation_alpha": 0.5, "distillation_tau": 1.0}


def normalization(model: nn.Module, in_chans: int) -> tuple[list[float], list[float]]:
    """The input mean/std of ``model`` (its ``default_cfg``), fitted to ``in_chans`` channels."""
    cfg = getattr(model, "default_cfg", {}) or {}
    mean, std = list(cfg.get("mean", DEFAULT_MEAN)), list(cfg.get("std", DEFAULT_STD))
    if len(mean) != in_chans:
        mean = [sum(mean) / len(mean)] * in_chans
        std = [sum(std) / len(std)] * in_chans
    return mean, std


def class_label(target: Any) -> int:
    """The class index of a sample's target: an int, or the ``label`` of a target dict (Shapes)."""
    if isinstance(target, Mapping):
        if "label" not in target:
            raise ValueError("this data set has no image-level class labels (its targets have no 'label')")
        return int(target["label"])
    return int(target)


def random_translate(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with edge pixels.

    Args:
        images: Tensor[B, C, H, W]. Returns the same shape.
    """
    if max_shift <= 0:
        return images
    height, width = images.shape[-2:]
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (images.shape[0], 2), generator=generator)
    return torch.stack([
        padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets.tolist())
    ])


def random_flips(images: torch.Tensor, hflip: float, vflip: float, rot90: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with probability ``hflip``, upside down with ``vflip``, then turn it a
    quarter (counter-clockwise) with ``rot90``: with all three at 0.5 each of the square's eight
    symmetries is equally likely. A probability of 0 draws nothing from ``generator``.

    Args:
        images: Tensor[B, C, H, W] (square when ``rot90`` > 0). Returns the same shape.
    """
    for probability, transform in ((hflip, lambda x: x.flip(-1)), (vflip, lambda x: x.flip(-2)),
                                   (rot90, lambda x: x.rot90(1, (-2, -1)))):
        if probability > 0:
            chosen = torch.rand(images.shape[0], generator=generator) < probability  # drawn on the generator's CPU
            images = torch.where(chosen.to(images.device).view(-1, 1, 1, 1), transform(images), images)
    return images


@register_task("classification")
class ClassificationTask(Task):
    """Softmax classification over ``classes``; top-1 accuracy is the headline metric.

    Args:
        classes: the class names; labels index them.
        mean, std: per-channel input normalisation of images in [0, 1] (one value: all channels).
        label_smoothing, mixup_alpha, cutmix_alpha: DeiT's regularisers (0 disables each).
        translate: random shift in pixels as a light augmentation (0 disables it).
        hflip, vflip, rot90: probabilities of a left-right flip, an upside-down flip and a quarter turn
            of a training image (:func:`random_flips`; 0 disables each). Only for labels that these
            keep: Shapes' (all three), not digits'.
        teacher: distil from this frozen classifier (DeiT): ``distillation`` "hard" or "soft", with
            weight ``distillation_alpha`` and temperature ``distillation_tau`` (see
            :func:`~visionzoo.train.distillation.distillation_loss`). A model with a distillation token
            (``deit_*_distilled_*``) trains its second head on the teacher; any other model its one head.
    """

    metric = "accuracy"
    higher_is_better = True
    defaults = {"lr": 2e-3, "weight_decay": 0.05, "batch_size": 64, "epochs": 10, "ema_decay": 0.0}

    def __init__(self, classes: Sequence[str], mean: Sequence[float] = DEFAULT_MEAN,
                 std: Sequence[float] = DEFAULT_STD, label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, translate: int = 0, hflip: float = 0.0, vflip: float = 0.0,
                 rot90: float = 0.0, teacher: Teacher | None = None,
                 distillation: str = "hard", distillation_alpha: float = 0.5, distillation_tau: float = 1.0) -> None:
        super().__init__()
        for flag, value, holds, bound in (
                ("--label-smoothing", label_smoothing, 0 <= label_smoothing < 1, "in [0, 1)"),
                ("--mixup", mixup_alpha, 0 <= mixup_alpha < math.inf, "a finite number >= 0"),
                ("--cutmix", cutmix_alpha, 0 <= cutmix_alpha < math.inf, "a finite number >= 0"),
                ("--translate", translate, translate >= 0, ">= 0"),
                ("--hflip", hflip, 0 <= hflip <= 1, "in [0, 1]"), ("--vflip", vflip, 0 <= vflip <= 1, "in [0, 1]"),
                ("--rot90", rot90, 0 <= rot90 <= 1, "in [0, 1]"),
                ("--distillation-alpha", distillation_alpha, 0 <= distillation_alpha <= 1, "in [0, 1]"),
                ("--distillation-tau", distillation_tau, distillation_tau > 0, "> 0")):
            if not holds:
                raise ValueError(f"{flag} must be {bound}, got {value}")
        self.classes = list(classes)
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.label_smoothing = label_smoothing
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.translate = translate
        self.flips = (hflip, vflip, rot90)
        self.teacher = teacher
        self.distillation = distillation
        self.distillation_alpha = distillation_alpha
        self.distillation_tau = distillation_tau

    # ------------------------------------------------------------------------------ the maths
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.device)) / self.std.to(images.device)

    def collate(self, samples: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([image for image, _ in samples])
        labels = torch.tensor([class_label(target) for _, target in samples], dtype=torch.int64)
        return images, labels

    def training_step(self, model: nn.Module, batch: Any, optimizer: str) -> dict[str, torch.Tensor]:
        images, labels = batch
        images = self.augment(images)
        targets = smooth_one_hot(labels, len(self.classes), self.label_smoothing)
        images, targets = mix_batch(images, targets, self.mixup_alpha, self.cutmix_alpha, self.generator)
        output = model(self.normalize(images))
        if self.teacher is None:
            return {"loss": soft_cross_entropy(output, targets)}
        class_logits, distill_logits = output if isinstance(output, tuple | list) else (output, output)
        loss = distillation_loss(class_logits, distill_logits, targets, self.teacher(images), self.distillation,
                                 self.distillation_alpha, self.distillation_tau)
        return {"loss": loss}

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """A training batch's random shift, then its flips and quarter turns: Tensor[B, C, H, W], same shape."""
        images = random_translate(images, self.translate, self.generator)
        return random_flips(images, *self.flips, self.generator)

    @torch.no_grad()
    def logits(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model(self.normalize(images)).float()

    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int,
                 autocast: Callable[[], Any]) -> dict[str, float]:
        device = next(model.parameters()).device
        correct1 = correct5 = total = 0
        loss_sum = 0.0
        top = min(5, len(self.classes))
        for images, labels in self.batches(dataset, batch_size):
            images, labels = images.to(device), labels.to(device)
            with autocast():
                logits = self.logits(model, images)
            check_finite_outputs(logits)  # top-k of NaN logits is an arbitrary order, the loss NaN
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            ranked = logits.topk(top, dim=-1).indices
            correct1 += int((ranked[:, 0] == labels).sum())
            correct5 += int((ranked == labels[:, None]).any(dim=-1).sum())
            total += labels.numel()
        metrics = {"accuracy": correct1 / total, "loss": loss_sum / total}
        if top == 5:
            metrics["top5"] = correct5 / total
        return metrics

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"classes": self.classes, "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    # -------------------------------------------------------------------------- CLI and tour
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("classification")
        group.add_argument("--label-smoothing", type=fraction, default=0.0, help="label smoothing (default 0)")
        group.add_argument("--mixup", type=nonnegative_float, default=0.0, help="mixup alpha (0 disables)")
        group.add_argument("--cutmix", type=nonnegative_float, default=0.0, help="CutMix alpha (0 disables)")
        group.add_argument("--translate", type=nonnegative_int, default=None,
                           help="random shift augmentation in pixels (default: 1/16 of the image size)")
        group.add_argument("--hflip", type=unit_interval, default=0.0,
                           help="probability of a left-right flip of a training image (default 0)")
        group.add_argument("--vflip", type=unit_interval, default=0.0,
                           help="probability of an upside-down flip (default 0)")
        group.add_argument("--rot90", type=unit_interval, default=0.0,
                           help="probability of a quarter turn, for square images (default 0); with --hflip 0.5 "
                                "--vflip 0.5 --rot90 0.5 each of the square's 8 symmetries is equally likely "
                                "(labels they keep: shapes', not digits')")
        group.add_argument("--objective", choices=OBJECTIVES, default="classify",
                           help="classify (default), or mpp: the ViT paper's masked patch prediction pretraining")
        group.add_argument("--initial-checkpoint", metavar="FILE",
                           help="start from these weights (e.g. an --objective mpp run; its EMA weights where it kept "
                                "them, as timm's); the head is re-initialised")
        group.add_argument("--teacher", metavar="MODEL", help="distil from this model (DeiT); needs --teacher-checkpoint")
        group.add_argument("--teacher-checkpoint", metavar="FILE", help="the teacher's weights")
        # No argparse defaults (DISTILLATION_DEFAULTS fill them in with a teacher): one typed without a teacher,
        # even at its default, is refused rather than ignored.
        group.add_argument("--distillation", choices=DISTILLATION_KINDS,
                           help="hard (default): the teacher's arg-max; soft: its temperature-scaled distribution")
        group.add_argument("--distillation-alpha", type=unit_interval,
                           help="weight of the teacher's term (default 0.5)")
        group.add_argument("--distillation-tau", type=positive_float, help="soft distillation temperature (default 1)")

    @classmethod
    def setup(cls, model_name: str, data: str, img_size: int | None, model_args: Mapping[str, Any],
              checkpoint: str | Path | None = None, options: Mapping[str, Any] | None = None,
              splits: tuple[str, ...] = SPLITS) -> Setup:
        from visionzoo.data import images_only, open_splits, require_one_image_size

        options = dict(options or {})
        objective = options.get("objective") or "classify"
        if objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {OBJECTIVES}, got {objective!r}")
        splits = open_splits(data, splits, image_size=img_size, **images_only(data))
        image, target = splits.first()[0]
        if objective == "classify" and isinstance(target, Mapping) and "label" not in target:
            raise ValueError(f"{data} has no image-level class labels (a detection data set: boxes, not one class per "
                             "image), which classification needs: train a classifier on shapes or digits, or pretrain "
                             "a ViT on these images with --objective mpp")
        require_one_image_size(splits)  # else torch's "stack expects each tensor to be equal size" at a batch
        in_chans, size = image.shape[0], image.shape[-1]
        classes = splits.first().classes
        translate = options.get("translate")
        flips = {name: options.get(name, 0.0) for name in ("hflip", "vflip", "rot90")}
        if flips["rot90"] and image.shape[-2] != size:
            raise ValueError(f"--rot90 needs square images; {data}'s are {image.shape[-2]}×{size}")
        if checkpoint is None and translate is not None and translate >= min(image.shape[-2:]):
            raise ValueError(f"--translate {translate} can shift {data}'s {image.shape[-2]}×{size} images wholly off "
                             f"themselves (leaving edge pixels and no object); give less than {min(image.shape[-2:])}")
        common = dict(label_smoothing=options.get("label_smoothing", 0.0), mixup_alpha=options.get("mixup", 0.0),
                      cutmix_alpha=options.get("cutmix", 0.0), translate=size // 16 if translate is None else translate,
                      **flips)
        run_meta = {"data": data, "img_size": size, "in_chans": in_chans}
        if checkpoint is None:
            refuse_unused_options(options, objective)
        if objective == "mpp":
            from visionzoo.train.mpp import MaskedPatchTask, check_whole_patches

            task, model = MaskedPatchTask.build(model_name, classes, in_chans, model_args, checkpoint,
                                                options.get("initial_checkpoint"), common)
            check_image_size(model, model_name, data, tuple(image.shape[-2:]), checkpoint, objective)
            check_whole_patches(tuple(image.shape[-2:]), task.patch_size, data)
            return Setup(task, model, splits, run_meta)

        model = build_classifier(model_name, len(classes), in_chans, model_args, checkpoint,
                                 options.get("initial_checkpoint"))
        check_image_size(model, model_name, data, tuple(image.shape[-2:]), checkpoint)
        mean, std = normalization(model, in_chans)
        teacher = None
        if options.get("teacher") or options.get("teacher_checkpoint"):
            if not (options.get("teacher") and options.get("teacher_checkpoint")):
                raise ValueError("distillation needs both --teacher MODEL and --teacher-checkpoint FILE")
            if checkpoint is None:  # training; evaluating a distilled model needs no teacher
                teacher = Teacher(options["teacher"], options["teacher_checkpoint"], classes, in_chans,
                                  tuple(image.shape[-2:]))
                if hasattr(model, "set_distilled_training"):
                    model.set_distilled_training(True)
        distillation = {**DISTILLATION_DEFAULTS, **{k: options[k] for k in DISTILLATION_DEFAULTS if options.get(k) is not None}}
        task = cls(classes, mean, std, teacher=teacher, **distillation, **common)
        return Setup(task, model, splits, run_meta)

    def predict(self, model: nn.Module, images: torch.Tensor, autocast: Callable[[], Any]) -> list[dict[str, Any]]:
        """Top-5 classes and probabilities of each image of ``images`` (Tensor[B, C, H, W] in [0, 1])."""
        images = images.to(next(model.parameters()).device)
        with autocast():
            logits = self.logits(model, images)
        check_finite_outputs(logits)
        probs = logits.softmax(-1)
        top = probs.topk(min(5, len(self.classes)), dim=-1)
        return [
            {"labels": [self.classes[i] for i in idx.tolist()], "scores": vals.tolist()}
            for vals, idx in zip(top.values, top.indices)
        ]

    def draw(self, image: torch.Tensor, prediction: Mapping[str, Any], target: Any = None):
        """A PIL image: the input, enlarged, with its top-3 predictions written under it."""
        from visionzoo.train.drawing import draw_classification

        truth = None if target is None else self.classes[class_label(target)]
        return draw_classification(image, prediction["labels"][:3], prediction["scores"][:3], truth)


def check_image_size(model: nn.Module, model_name: str, data: str, size: tuple[int, int],
                     checkpoint: str | Path | None = None, objective: str = "classify") -> None:
    """Refuse ``data``'s images of ``size`` (H, W) for a model built for one input size (a ViT without
    ``dynamic_img_size``), naming the flag that fits them, before a run starts rather than at its first step. A model
    rebuilt from its ``checkpoint`` (eval) takes only the size it was trained at: eval has no --model-arg. HIPT-4K
    cropping its images to whole tiles (``remainder="crop"``) needs images of at least one tile, a ConvNeXt images
    of at least its output stride, and a ViT of any image size (``dynamic_img_size``) whole patches."""
    from visionzoo.models.convnext import ConvNeXt
    from visionzoo.models.hipt import HIPT4K

    registered = getattr(model, "default_cfg", {}).get("input_size", (0, 0, 0))[-1]  # 0: none recorded
    if isinstance(model, HIPT4K) and model.remainder == "crop" and min(size) < model.tile_size:
        patch = model.model256.patch_embed.patch_size[0]
        fits = min(size) // patch * patch  # the largest tile the images hold
        tile = f", --model-arg tile_size={fits} or less" if fits else ""
        other = "" if checkpoint is not None else f"{tile}, or --model-arg remainder=pad"
        raise ValueError(f"{model_name} crops {data}'s {size[0]}×{size[1]} images to whole {model.tile_size}×"
                         f"{model.tile_size} tiles, of which they hold none: give --img-size {model.tile_size} or "
                         f"more{other}")
    if isinstance(model, ConvNeXt):  # else the model's own refusal at the first step, once the run has started
        reduction = model.feature_info.reduction()[-1]
        if min(size) < reduction:
            raise ValueError(f"{model_name} reduces its images {reduction}-fold and needs at least {reduction}×"
                             f"{reduction} ones, {data} has {size[0]}×{size[1]} ones: give --img-size "
                             f"{max(registered, reduction)}")
    embed = getattr(model, "patch_embed", None)
    # a ViT of any image size (dynamic_img_size) takes whole patches only, as timm's: else the layer's own refusal
    # at the first step, naming no flag. Under mpp, check_whole_patches says so, padding being no way out there.
    if (objective != "mpp" and isinstance(embed, PatchEmbed) and not embed.strict_img_size
            and not embed.dynamic_img_pad):
        ph, pw = embed.patch_size
        if size[0] % ph or size[1] % pw:
            step = math.lcm(ph, pw)
            fits = min(size) // step * step or max(registered, step)  # the nearest smaller size, or the registered one
            other = "" if checkpoint is not None else " (or --model-arg dynamic_img_pad=true)"
            raise ValueError(f"{model_name} cuts its images into whole {ph}×{pw} patches, {data} has {size[0]}×"
                             f"{size[1]} ones: give --img-size {fits}{other}")
    for module in model.modules():
        if isinstance(module, PatchEmbed) and module.strict_img_size and tuple(module.img_size) != size:
            side = module.img_size[0]
            other = "" if checkpoint is not None else " (or --model-arg dynamic_img_size=true)"
            raise ValueError(f"{model_name} is built for {side}×{module.img_size[1]} images, {data} has "
                             f"{size[0]}×{size[1]} ones: give --img-size {side}{other}")


def refuse_unused_options(options: Mapping[str, Any], objective: str) -> None:
    """Refuse the options a training run of ``objective`` would ignore: label smoothing, mixup, CutMix and a
    teacher under ``mpp`` (its targets are patch colours, not labels), distillation settings without a teacher, a
    temperature for hard distillation, and a teacher given no weight (``distillation_alpha`` 0)."""
    if objective == "mpp":
        for flag in ("--label-smoothing", "--mixup", "--cutmix", "--teacher", "--teacher-checkpoint"):
            if options.get(flag[2:].replace("-", "_")):
                raise ValueError(f"{flag} applies to classification, not to --objective mpp")
    if options.get("teacher") or options.get("teacher_checkpoint"):
        kind = options.get("distillation") or DISTILLATION_DEFAULTS["distillation"]
        # τ = 1 passes: runs recorded before these options lost their argparse defaults hold it, and it tempers nothing
        if kind == "hard" and options.get("distillation_tau") not in (None, DISTILLATION_DEFAULTS["distillation_tau"]):
            raise ValueError(f"--distillation-tau {options['distillation_tau']} applies to --distillation soft; hard "
                             "distillation learns the teacher's arg-max, which a temperature does not change")
        if options.get("distillation_alpha") == 0:
            raise ValueError(f"--distillation-alpha {options['distillation_alpha']} gives the teacher no weight: the "
                             "run would not distil; leave out --teacher to train on the labels alone")
        return
    given = {name: options[name] for name in DISTILLATION_DEFAULTS if options.get(name) is not None}
    # all three at their defaults pass: what every run recorded before they lost their argparse defaults (resumed)
    if given and given != DISTILLATION_DEFAULTS:
        name = next(iter(given))
        raise ValueError(f"--{name.replace('_', '-')} {options[name]} needs a teacher (--teacher MODEL "
                         "--teacher-checkpoint FILE); without one the run would not distil")


def build_classifier(model_name: str, num_classes: int, in_chans: int, model_args: Mapping[str, Any],
                     checkpoint: str | Path | None = None, initial_checkpoint: str | Path | None = None) -> nn.Module:
    """The registered model for ``num_classes`` classes: from a checkpoint of this run (``checkpoint``),
    else built fresh and, with ``initial_checkpoint``, starting from those weights (fine-tuning)."""
    from visionzoo.models import create_model

    if checkpoint is not None or initial_checkpoint is None:
        return create_model(model_name, checkpoint=checkpoint, num_classes=num_classes, in_chans=in_chans,
                            **model_args)
    from visionzoo.models import get_model_entry
    from visionzoo.models._registry import read_weights

    # Read once for both the model's arguments and its weights: a .pth has no header to read apart.
    loaded = read_weights(get_model_entry(model_name), initial_checkpoint, use_ema=True)
    model = create_model(model_name, num_classes=num_classes, in_chans=in_chans,
                         **{**saved_model_args(loaded[1], initial_checkpoint, model_name), **model_args})
    load_initial_weights(model, initial_checkpoint, loaded)
    return model


def saved_model_args(meta: Mapping[str, Any] | None, path: str | Path, model_name: str) -> dict[str, Any]:
    """The model arguments recorded in ``meta``, the metadata of our checkpoint ``path`` (as
    :func:`~visionzoo.checkpoint.read_checkpoint` returns it), without its class and channel counts; ``{}`` for
    a foreign file (``meta`` None). A checkpoint of another model raises ``ValueError``."""
    saved = (meta or {}).get("model") or {}
    if saved.get("name") not in (None, model_name):
        raise ValueError(f"checkpoint {path} is for model {saved['name']!r}, not {model_name!r}")
    args = dict(saved.get("args") or {})
    args.pop("num_classes", None)
    args.pop("in_chans", None)
    return args


def load_initial_weights(model: nn.Module, path: str | Path,
                         loaded: tuple[dict[str, torch.Tensor], dict[str, Any] | None] | None = None) -> None:
    """Start ``model`` (a registered classifier) from the weights in ``path``, except its head.

    ``path`` is one of our checkpoints (a classifier's, or a masked-patch pretraining's encoder) or a
    timm/torchvision file of the same model, or one in the family's official layout that only its own reader takes
    (HIPT's DINO training states), as :func:`~visionzoo.models.create_model` reads them; ``loaded`` is what
    ``read_weights(entry, path, use_ema=True)`` returned, if the caller has read it already. A file with EMA weights (our ``ema.`` section, timm's
    ``state_dict_ema``/``model_ema``) starts the model from those, as timm's ``train.py
    --initial-checkpoint`` (``create_model(checkpoint_path=)``) does. The head keeps its fresh initialisation.
    Logs the file's tensors left out (its head; a pretraining's [mask] embedding and colour head).
    """
    from visionzoo.checkpoint import model_state
    from visionzoo.models import get_model_entry
    from visionzoo.models._registry import (
        adapt_state_dict,
        filter_foreign_state,
        load_state_dict_strict,
        read_weights,
    )
    from visionzoo.train.mpp import pretrained_encoder_state

    entry = get_model_entry(model.model_name)
    tensors, meta = read_weights(entry, path, use_ema=True) if loaded is None else loaded
    state = model_state(tensors, meta, ema=True)
    if meta is None:
        state = filter_foreign_state(entry, state, model, str(path))
    given = list(state)
    prefix = ""
    if meta is not None and (meta.get("task") or {}).get("objective") == "mpp":
        state, prefix = pretrained_encoder_state(state), "encoder."
    if meta is not None:  # ours, fitted to another size as a timm file of the same weights is (position tables)
        state = filter_foreign_state(entry, state, model, str(path))
    own = model.state_dict()
    heads = tuple(head + "." for head in entry.classifier)
    state = {k: v for k, v in state.items() if not k.startswith(heads)}
    taken = {prefix + k for k in state}
    state.update({k: v for k, v in own.items() if k.startswith(heads)})
    load_state_dict_strict(model, adapt_state_dict(state, model, entry, str(path)), str(path))
    left = sorted(k for k in given if k not in taken)
    log.info("%s: starting from %d of its %d tensors; left out: %s; the model's %s freshly initialised", path,
             len(given) - len(left), len(given), ", ".join(left) or "none", " and ".join(entry.classifier))
