"""Knowledge distillation from a trained teacher (DeiT, Touvron et al. 2021, section 5)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from visionzoo.layers import PatchEmbed
from visionzoo.utils import with_article

DISTILLATION_KINDS = ("hard", "soft")


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits`` Tensor[B, K] against probability ``targets`` Tensor[B, K]."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def distillation_loss(
    class_logits: Tensor,
    distill_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor,
    kind: str = "hard",
    alpha: float = 0.5,
    tau: float = 1.0,
) -> Tensor:
    """DeiT's objective: the class head learns the labels, the distillation head the teacher.

    Args:
        class_logits, distill_logits: Tensor[B, K], the student's two heads (the same tensor for a
            student without a distillation token).
        targets: Tensor[B, K] label probabilities (one-hot, smoothed or mixed).
        teacher_logits: Tensor[B, K] on the same (augmented) images.
        kind: "hard": cross-entropy with the teacher's arg-max, ``(1-α)·CE(cls, y) + α·CE(dist, y_t)``
            (DeiT uses α = 1/2); "soft": ``(1-α)·CE(cls, y) + α·τ²·KL(softmax(t/τ) ‖ softmax(s/τ))``, the KL
            summed over the classes and averaged over the images, as the paper's formula (per image) and
            Hinton et al.'s. facebookresearch/deit's ``DistillationLoss`` divides the batch's sum by B·K
            instead: at the same α its teacher term is K times smaller than this one.
    Returns the scalar loss (float32).
    """
    if kind not in DISTILLATION_KINDS:
        raise ValueError(f"distillation must be one of {DISTILLATION_KINDS}, got {kind!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distillation alpha must be in [0, 1], got {alpha}")
    base = soft_cross_entropy(class_logits, targets)
    teacher_logits = teacher_logits.detach().float()
    if kind == "hard":
        distill = F.cross_entropy(distill_logits.float(), teacher_logits.argmax(dim=-1))
    else:
        if tau <= 0:
            raise ValueError(f"distillation tau must be positive, got {tau}")
        distill = F.kl_div(
            F.log_softmax(distill_logits.float() / tau, dim=-1),
            F.log_softmax(teacher_logits / tau, dim=-1),
            reduction="batchmean", log_target=True,
        ) * (tau * tau)
    return (1.0 - alpha) * base + alpha * distill


def _registered_task(model_name: str) -> str | None:
    """The task of registered model ``model_name``, or None for a name not registered (here)."""
    from visionzoo.models import get_model_entry

    try:
        return get_model_entry(model_name).task
    except ValueError:  # an unknown name
        return None


class Teacher:
    """A frozen classifier with its own input normalisation, loaded when built so that a file that does not
    fit fails before the run starts.

    Args:
        model_name: a registered model name.
        checkpoint: a training checkpoint of ours (its model, classes and normalisation are checked and used;
            its EMA weights where it kept them) or a timm/torchvision weights file of that model.
        classes: the student's class names; the teacher must predict the same classes (a head for another
            number is refused, not re-initialised: an untrained teacher would be distilled from).
        in_chans: channels of the images; a checkpoint of ours trained on another number is refused (a
            timm/torchvision file has its stem adapted, as when fine-tuning).
        image_size: their (H, W); a checkpoint of ours trained at another size is refused (the objects would
            be at another scale than it learned), and so is a teacher that does not take images of this size
            (a ViT built for another).
    """

    def __init__(self, model_name: str, checkpoint: str | Path, classes: Sequence[str], in_chans: int,
                 image_size: tuple[int, int] | None = None) -> None:
        from visionzoo.checkpoint import model_state, read_checkpoint
        from visionzoo.models import create_model, get_model_entry
        from visionzoo.models._registry import adapt_state_dict, filter_foreign_state, load_state_dict_strict
        from visionzoo.train.classification import normalization, saved_model_args

        entry = get_model_entry(model_name)  # an unknown name fails before the file is read
        if entry.task != "classification":
            raise ValueError(f"--teacher {model_name} is {with_article(entry.task)} model; the teacher is a classifier "
                             "(`visionzoo list-models` shows each model's task)")
        path = Path(checkpoint)
        if not path.exists():  # a folder is refused by read_checkpoint, naming the file in it
            raise FileNotFoundError(f"teacher checkpoint {path} does not exist")
        tensors, meta = read_checkpoint(path, use_ema=True)
        trained_model = ((meta or {}).get("model") or {}).get("name")
        if trained_model not in (None, entry.name):  # named as the teacher's: "is for model" read as the student's
            trained_task = _registered_task(trained_model)
            if trained_task not in (None, "classification"):  # "give --teacher" it would be refused in turn
                raise ValueError(f"--teacher {model_name}: teacher checkpoint {path} is of model {trained_model!r}, "
                                 f"{with_article(trained_task)} model; the teacher is a classifier")
            raise ValueError(f"--teacher {model_name}: teacher checkpoint {path} is of model {trained_model!r}; give "
                             f"--teacher {trained_model}")
        task_meta = (meta or {}).get("task") or {}
        run_meta = (meta or {}).get("run") or {}
        if task_meta.get("objective") == "mpp":
            raise ValueError(f"teacher checkpoint {path} is a masked patch prediction pretraining, not a classifier; "
                             f"fine-tune it first (`visionzoo train {model_name} --initial-checkpoint {path}`)")
        teacher_classes = task_meta.get("classes")
        if teacher_classes is not None and list(teacher_classes) != list(classes):
            raise ValueError(
                f"teacher checkpoint {path} predicts classes {list(teacher_classes)}, the data set has {list(classes)}"
            )
        trained_chans = run_meta.get("in_chans")
        if trained_chans is not None and trained_chans != in_chans:
            raise ValueError(f"teacher checkpoint {path} was trained on {trained_chans}-channel images, this run's "
                             f"have {in_chans}")
        trained_size = run_meta.get("img_size")
        img_size = None if image_size is None else image_size[-1]  # the width, as a run records it
        if img_size is not None and trained_size is not None and trained_size != img_size:
            raise ValueError(f"teacher checkpoint {path} was trained at {trained_size} px, this run is at {img_size} px: "
                             f"it would see objects at {img_size / trained_size:.2g}x the scale it learned; train the "
                             f"student at --img-size {trained_size}, or a teacher at {img_size}")
        model = create_model(model_name, num_classes=len(classes), in_chans=in_chans,
                             **saved_model_args(meta, path, entry.name))
        state = model_state(tensors, meta, ema=True)
        if meta is None:
            state = filter_foreign_state(entry, state, model, str(path))
        own = model.state_dict()
        for head in entry.classifier:
            weight = state.get(head + ".weight")
            if weight is not None and head + ".weight" in own and weight.shape[0] != own[head + ".weight"].shape[0]:
                raise ValueError(f"teacher checkpoint {path} predicts {weight.shape[0]} classes ({head}), the data "
                                 f"set has {len(classes)}")
        load_state_dict_strict(model, adapt_state_dict(state, model, entry, str(path), reinit_head=False), str(path))
        model.requires_grad_(False)
        self.model = model.eval()
        self.mean, self.std = task_meta.get("mean"), task_meta.get("std")
        if self.mean is None:
            self.mean, self.std = normalization(model, in_chans)
        if image_size is not None:
            for module in model.modules():  # a ViT built for one size: create_model's img_size is not the CLI's to give
                if isinstance(module, PatchEmbed) and module.strict_img_size and tuple(module.img_size) != image_size:
                    raise ValueError(f"teacher {model_name} ({path}) does not take this run's {image_size[0]}×"
                                     f"{image_size[1]} images: the model is built for {module.img_size[0]}×"
                                     f"{module.img_size[1]} images; train the student at --img-size "
                                     f"{module.img_size[1]}, or give a teacher trained at {image_size[1]} px")
            try:  # here, rather than at the first step once the run folder is written, naming the teacher
                self(torch.zeros(1, in_chans, *image_size))
            except (ValueError, RuntimeError) as error:
                raise ValueError(f"teacher {model_name} ({path}) does not take this run's {image_size[0]}×"
                                 f"{image_size[1]} images: {error}") from error

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """Logits Tensor[B, K] float32 of ``images`` Tensor[B, C, H, W] in [0, 1]."""
        self.model.to(images.device)
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        logits = self.model((images - mean) / std)
        if isinstance(logits, tuple | list):
            logits = (logits[0] + logits[1]) / 2
        return logits.float()
