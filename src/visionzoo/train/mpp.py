"""Masked patch prediction, the ViT paper's self-supervised objective (Dosovitskiy et al. 2021, B.1.2).

Half of the patch embeddings are corrupted (of those, 80% replaced by a learned [mask] embedding,
10% by another random patch's embedding, 10% kept as they are), and the transformer predicts the
3-bit mean colour of every corrupted patch (8 levels per channel: 512 classes for RGB, 8 for grey)
from that patch's output token. The encoder is then fine-tuned as a classifier
(``visionzoo train NAME --initial-checkpoint PRETRAINED``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.train.classification import ClassificationTask
from visionzoo.train.task import check_finite_outputs

COLOUR_BITS = 3
# The parts of a ViT's classifier between its tokens and its head, which patch prediction does not reach: it applies
# the head to each patch token.
UNUSED_CLASSIFIER_PARTS = ("fc_norm", "attn_pool", "head_dist")


def mean_colour_classes(images: Tensor, patch_size: tuple[int, int], bits: int = COLOUR_BITS) -> Tensor:
    """The quantised mean colour of every patch, as one class index.

    Args:
        images: Tensor[B, C, H, W] in [0, 1], H and W multiples of the patch size.
        patch_size: (ph, pw).
    Returns Tensor[B, N] int64 in ``[0, (2**bits)**C)``, patches in raster order; channel c's level
    ``floor(mean · 2**bits)`` (clamped) is digit c of the index in base ``2**bits``.
    """
    levels = 2 ** bits
    means = F.avg_pool2d(images.float(), patch_size, patch_size)  # [B, C, H/ph, W/pw]
    digits = (means * levels).floor().clamp_(0, levels - 1).long().flatten(2)  # [B, C, N]
    weights = levels ** torch.arange(images.shape[1], device=images.device)
    return (digits * weights[None, :, None]).sum(dim=1)


def check_whole_patches(image_size: tuple[int, int], patch_size: tuple[int, int], data: str) -> None:
    """Refuse ``data``'s images of ``image_size`` (H, W) unless they cut into whole ``patch_size`` patches: each
    patch's colour is predicted (a model padding the images, ``dynamic_img_pad``, would have more tokens than
    colours)."""
    if image_size[0] % patch_size[0] or image_size[1] % patch_size[1]:
        side = max(patch_size[0], image_size[0] // patch_size[0] * patch_size[0])
        raise ValueError(f"masked patch prediction predicts the colour of whole patches: {data}'s {image_size[0]}×"
                         f"{image_size[1]} images are not a multiple of the {patch_size[0]}×{patch_size[1]} patch "
                         f"size; give e.g. --img-size {side}")


@dataclass
class Corruption:
    """Which patches of a batch are corrupted and how. All Tensor[B, N].

    ``corrupted``: bool, the patches predicted (and scored); ``masked``: bool, replaced by the
    [mask] embedding; ``swapped``: bool, replaced by the embedding at ``source`` (int64, a flat index
    into the batch's B·N patches). Corrupted patches that are neither keep their embedding.
    """

    corrupted: Tensor
    masked: Tensor
    swapped: Tensor
    source: Tensor


def sample_corruption(batch: int, tokens: int, generator: torch.Generator, ratio: float = 0.5,
                      mask_prob: float = 0.8, swap_prob: float = 0.1) -> Corruption:
    """Draw a :class:`Corruption`: exactly ``round(ratio·N)`` patches per image, then each of them is
    masked with ``mask_prob``, swapped with ``swap_prob`` (for another of the batch's patches, uniformly), else
    kept."""
    count = max(1, round(ratio * tokens))
    order = torch.rand(batch, tokens, generator=generator).argsort(dim=1)
    corrupted = torch.zeros(batch, tokens, dtype=torch.bool)
    corrupted.scatter_(1, order[:, :count], True)
    draw = torch.rand(batch, tokens, generator=generator)
    masked = corrupted & (draw < mask_prob)
    swapped = corrupted & (draw >= mask_prob) & (draw < mask_prob + swap_prob)
    own = torch.arange(batch * tokens).view(batch, tokens)
    source = torch.randint(0, max(batch * tokens - 1, 1), (batch, tokens), generator=generator)
    source += (source >= own) & (batch * tokens > 1)  # skip the patch itself: a swap onto itself would keep it
    return Corruption(corrupted, masked, swapped, source)


def evaluation_corruption(first_index: int, batch: int, tokens: int) -> Corruption:
    """The fixed corruption of images ``first_index`` to ``first_index + batch - 1`` of a validation set: each
    image's own draw, seeded by its index (swapped patches come from the same image), so that the score does not
    depend on how the images are batched."""
    draws = [sample_corruption(1, tokens, torch.Generator().manual_seed(first_index + i)) for i in range(batch)]
    return Corruption(
        corrupted=torch.cat([draw.corrupted for draw in draws]),
        masked=torch.cat([draw.masked for draw in draws]),
        swapped=torch.cat([draw.swapped for draw in draws]),
        source=torch.cat([draw.source + i * tokens for i, draw in enumerate(draws)]),
    )


class MaskedPatchPredictor(nn.Module):
    """A ViT with a learned [mask] embedding whose head predicts each patch's colour class.

    ``forward(images, corruption) -> Tensor[B, N, K]`` logits for all N patches (only corrupted ones
    are scored). ``encoder`` is a ViT-family model built with ``num_classes = K`` (its head is applied
    to every patch token); its weights are saved under ``encoder.`` and fine-tuning keeps all of them
    but the head.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        for needed in ("embed_patches", "forward_tokens", "num_prefix_tokens", "patch_embed"):
            if not hasattr(encoder, needed):
                name = getattr(encoder, "model_name", type(encoder).__name__)
                raise ValueError(f"masked patch prediction needs a ViT-family model; {name} has no {needed}")
        self.encoder = encoder
        dim = encoder.num_features
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def unused_parts(self) -> list[str]:
        """The encoder's trainable classifier parts that patch prediction leaves out: a DeiT's ``head_dist``, a
        patch pool's ``fc_norm``, an attention pool's ``attn_pool``."""
        parts = {name: getattr(self.encoder, name, None) for name in UNUSED_CLASSIFIER_PARTS}
        return [name for name, part in parts.items()
                if part is not None and any(p.requires_grad for p in part.parameters())]

    def forward(self, images: Tensor, corruption: Corruption) -> Tensor:
        """``images``: Tensor[B, C, H, W] normalised. Returns Tensor[B, N, K]."""
        tokens = self.encoder.embed_patches(images)  # [B, N, D]
        batch, count, dim = tokens.shape
        flat = tokens.reshape(batch * count, dim)
        swapped_in = flat[corruption.source.to(tokens.device).flatten()].view(batch, count, dim)
        tokens = torch.where(corruption.swapped.to(tokens.device)[..., None], swapped_in, tokens)
        tokens = torch.where(corruption.masked.to(tokens.device)[..., None], self.mask_token.to(tokens.dtype), tokens)
        grid = (images.shape[-2] // self.encoder.patch_embed.patch_size[0],
                images.shape[-1] // self.encoder.patch_embed.patch_size[1])
        out = self.encoder.forward_tokens(tokens, grid)[:, self.encoder.num_prefix_tokens:]
        return self.encoder.head(out)


def pretrained_encoder_state(state: Mapping[str, Tensor], head: str = "head") -> dict[str, Tensor]:
    """The encoder weights of a :class:`MaskedPatchPredictor` state dict, without its colour head
    and [mask] embedding (what a classifier fine-tunes from)."""
    from visionzoo.models._registry import encoder_section

    return {k: v for k, v in encoder_section(state).items() if not k.startswith(head + ".")}


def mpp_metrics(logits: Tensor, classes: Tensor, corruption: Corruption) -> dict[str, Any]:
    """Sum of cross-entropy and correct predictions over the corrupted patches, and their count."""
    picked = corruption.corrupted.to(logits.device)
    chosen, truth = logits[picked].float(), classes[picked]
    return {
        "loss_sum": F.cross_entropy(chosen, truth, reduction="sum"),
        "correct": int((chosen.argmax(-1) == truth).sum()),
        "count": int(picked.sum()),
    }


class MaskedPatchTask(ClassificationTask):
    """Masked patch prediction on a data set's images (labels unused); the metric is the accuracy of
    the predicted colour class over the corrupted patches of the val split (a fixed corruption of each image,
    :func:`evaluation_corruption`)."""

    defaults = {"lr": 1e-3, "weight_decay": 0.05, "batch_size": 64, "epochs": 10, "ema_decay": 0.0}
    # its accuracy, under a classifier's metric names, is not that of the data's labels
    scores = (f"masked patch prediction: the {COLOUR_BITS}-bit mean colour of its images' corrupted patches, not "
              "their labels")
    pretraining = ("MODEL", "FILE")  # the model and checkpoint that predict names, set by build

    def __init__(self, classes, mean, std, patch_size: tuple[int, int], **options: Any) -> None:
        super().__init__(classes, mean, std, **options)
        self.patch_size = tuple(patch_size)

    @classmethod
    def build(cls, model_name: str, classes, in_chans: int, model_args: Mapping[str, Any], checkpoint,
              initial_checkpoint, options: Mapping[str, Any]) -> tuple[MaskedPatchTask, MaskedPatchPredictor]:
        """The task and a :class:`MaskedPatchPredictor` around ``model_name`` (from ``checkpoint``, one of
        this objective's training checkpoints, when given)."""
        from visionzoo.checkpoint import model_state, read_checkpoint
        from visionzoo.models import create_model
        from visionzoo.models._registry import load_state_dict_strict
        from visionzoo.train.classification import normalization

        if initial_checkpoint is not None and checkpoint is None:
            raise ValueError("--initial-checkpoint is for fine-tuning; masked patch prediction starts from scratch")
        encoder = create_model(model_name, num_classes=(2 ** COLOUR_BITS) ** in_chans, in_chans=in_chans,
                               **model_args)
        model = MaskedPatchPredictor(encoder)
        model.model_name, model.model_args = encoder.model_name, encoder.model_args
        if checkpoint is not None:
            tensors, meta = read_checkpoint(checkpoint)
            if meta is None or (meta.get("task") or {}).get("objective") != "mpp":
                raise ValueError(f"checkpoint {checkpoint} is not a masked patch prediction run")
            trained = ((meta.get("model") or {}).get("args") or {}).get("in_chans")
            if trained is not None and trained != in_chans:
                raise ValueError(f"{checkpoint} was pretrained on {trained}-channel images, these have {in_chans}: it "
                                 f"predicts {(2 ** COLOUR_BITS) ** trained} patch colours, not their "
                                 f"{(2 ** COLOUR_BITS) ** in_chans}")
            # its EMA weights where it kept them, as create_model(checkpoint=) takes a classifier's; `visionzoo eval`
            # without --use-ema then loads the trained ones over them
            load_state_dict_strict(model, model_state(tensors, meta, ema=True), str(checkpoint))
        mean, std = normalization(encoder, in_chans)
        task = cls(classes, mean, std, encoder.patch_embed.patch_size, **options)
        task.pretraining = (encoder.model_name, str(checkpoint or "FILE"))
        # The parts patch prediction leaves out get no gradient, which DistributedDataParallel refuses unless told;
        # told without need, it warns on every rank and searches the autograd graph for them at each step.
        task.find_unused_parameters = bool(model.unused_parts())
        return task, model

    def collate(self, samples: list[Any]) -> tuple[Tensor, None]:
        """(images Tensor[B, C, H, W], None): the targets are the images' own patches, so data without class labels
        (a COCO folder) pretrain too."""
        return torch.stack([image for image, _ in samples]), None

    def training_step(self, model: nn.Module, batch: Any, optimizer: str) -> dict[str, Tensor]:
        images, _ = batch
        images = self.augment(images)
        classes = mean_colour_classes(images, self.patch_size)
        corruption = sample_corruption(classes.shape[0], classes.shape[1], self.generator)
        logits = model(self.normalize(images), corruption)
        scores = mpp_metrics(logits, classes, corruption)
        loss = scores["loss_sum"] / max(scores["count"], 1)
        return {"loss": loss, "accuracy": torch.tensor(scores["correct"] / max(scores["count"], 1))}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset, batch_size: int, autocast) -> dict[str, float]:
        device = next(model.parameters()).device
        loss_sum, correct, count = 0.0, 0, 0
        for start, (images, _) in zip(range(0, len(dataset), batch_size), self.batches(dataset, batch_size)):
            images = images.to(device)
            classes = mean_colour_classes(images, self.patch_size)
            corruption = evaluation_corruption(start, *classes.shape)
            with autocast():
                logits = model(self.normalize(images), corruption)
            check_finite_outputs(logits)  # else a NaN loss beside an accuracy of an arbitrary ranking
            scores = mpp_metrics(logits, classes, corruption)
            loss_sum += float(scores["loss_sum"])
            correct += scores["correct"]
            count += scores["count"]
        return {"accuracy": correct / count, "loss": loss_sum / count}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**super().checkpoint_meta(), "objective": "mpp", "patch_size": list(self.patch_size)}

    def predict(self, model, images, autocast):
        model_name, checkpoint = self.pretraining
        raise ValueError(f"{checkpoint} is a masked patch prediction pretraining, not a classifier; fine-tune it first "
                         f"(`visionzoo train {model_name} --initial-checkpoint {checkpoint}`)")
