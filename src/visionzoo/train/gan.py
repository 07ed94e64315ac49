"""A GAN as a training task: DCGAN's alternating updates through the engine's multi-optimizer step.

Each training step runs two updates, in order. ``"discriminator"``: the non-saturating GAN loss
(binary cross-entropy on logits) of real images labelled real and of generated images, detached,
labelled fake. ``"generator"``: ``-log D(G(z))`` (cross-entropy against "real") on the same step's
generated images, scored by the just-updated discriminator. The latents come from the task's
generator, which the engine re-seeds every step, so a resumed run repeats the uninterrupted one.

The discriminator sees real and generated images in separate forward passes, as in DCGAN: each of
its BatchNorm batches is all real or all generated, so the generator's update scores its images
under the same batch statistics as the discriminator's update did.

Evaluation: the domain FID (:mod:`visionzoo.metrics.domain` features, lower is better) between
``min(len(split), 500)`` generated images and as many images of the split, and the discriminator's
accuracy on those real and generated images. The model is a :class:`~visionzoo.generative.dcgan.DCGAN`
(``model(z)``, ``model.discriminate(images)``, ``model.generate(count, generator)``, ``latent_dim``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from visionzoo.data.factory import SPLITS
from visionzoo.generative.dcgan import MIN_SIZE, is_drawable_size
from visionzoo.train.task import (
    SettingError,
    Setup,
    Task,
    check_finite_outputs,
    check_trained_images,
    register_task,
)

OPTIMIZERS = ("discriminator", "generator")
EVAL_SAMPLES = 500
EVAL_SEED = 0
GRID = 64


@register_task("gan")
class GANTask(Task):
    """Non-saturating GAN training of a DCGAN on ``data`` at ``img_size`` × ``img_size``, ``in_chans`` channels.

    Args:
        data: the data set name, for the domain feature network of FID (``"digits"`` or ``"shapes"``).
        img_size, in_chans: the images' side and channels.
        eval_samples: at most this many generated and real images in the FID.
    """

    metric = "fid"
    higher_is_better = False
    report_names = ("samples.png",)
    single_process = "its generator and discriminator are called past DDP's wrapper"
    defaults = {"lr": 2e-4, "batch_size": 64, "weight_decay": 0.0, "grad_clip": 0.0, "ema_decay": 0.0}

    def __init__(self, data: str, img_size: int, in_chans: int, eval_samples: int = EVAL_SAMPLES):
        super().__init__()
        self.data = data
        self.img_size = img_size
        self.in_chans = in_chans
        self.eval_samples = eval_samples
        # (step, generated images with their graph): made in the discriminator's update, scored in the generator's.
        self._fakes: tuple[int, torch.Tensor] | None = None

    def optimizer_names(self) -> Sequence[str]:
        return OPTIMIZERS

    def optimizer_options(self, optimizer: str) -> dict[str, Any]:
        return {"betas": (0.5, 0.999)}

    def parameter_groups(self, model: nn.Module, optimizer: str, weight_decay: float) -> list[dict[str, Any]]:
        """All of the generator's or the discriminator's parameters, without weight decay (as DCGAN)."""
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"the gan task's optimizers are {OPTIMIZERS}, not {optimizer!r}")
        part = getattr(model, optimizer)
        return [{"params": [p for p in part.parameters() if p.requires_grad], "weight_decay": 0.0}]

    def collate(self, samples: list[Any]) -> torch.Tensor:
        return torch.stack([image for image, _ in samples])

    def training_step(self, model: nn.Module, batch: torch.Tensor, optimizer: str) -> dict[str, torch.Tensor]:
        """``batch``: real images Tensor[B, C, H, W] in [0, 1]. ``optimizer``: ``"discriminator"`` or ``"generator"``."""
        if optimizer == "discriminator":
            fakes = model(model.sample_latents(batch.shape[0], self.generator))
            self._fakes = (self.step, fakes)
            real_logits = model.discriminate(batch).float()
            fake_logits = model.discriminate(fakes.detach()).float()
            loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                    + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
            return {"loss": loss, "d_loss": loss.detach(), "d_real": real_logits.detach().sigmoid().mean(),
                    "d_fake": fake_logits.detach().sigmoid().mean()}
        if optimizer == "generator":
            if self._fakes is not None and self._fakes[0] == self.step:
                fakes = self._fakes[1]
            else:  # a generator update without this step's discriminator update
                fakes = model(model.sample_latents(batch.shape[0], self.generator))
            self._fakes = None
            logits = model.discriminate(fakes).float()
            loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            return {"loss": loss, "g_loss": loss.detach()}
        raise ValueError(f"the gan task's optimizers are {OPTIMIZERS}, not {optimizer!r}")

    def evaluated_images(self, dataset: Dataset) -> int:
        """The first ``eval_samples`` images of ``dataset`` (all of a smaller one), which the FID compares with as
        many generated ones."""
        return min(len(dataset), self.eval_samples)

    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int,
                 autocast: Callable[[], Any]) -> dict[str, float]:
        """``fid`` (domain features), and the discriminator's accuracy on real (``d_accuracy_real``), generated
        (``d_accuracy_fake``) and both (``d_accuracy``) images."""
        from visionzoo.metrics.domain import domain_features
        from visionzoo.metrics.fid import FID

        count = self.evaluated_images(dataset)
        features = domain_features(self.data, self.img_size, self.in_chans)
        feature_device = next(features.parameters()).device
        fid = FID(features, batch_size, sync_on_compute=False)  # rank 0 alone evaluates: no rank to sync with
        device = next(model.parameters()).device
        correct = {True: 0, False: 0}
        generator = torch.Generator().manual_seed(EVAL_SEED)
        for start in range(0, count, batch_size):
            real = self.collate([dataset[i] for i in range(start, min(start + batch_size, count))]).to(device)
            with autocast():
                fake = model.generate(real.shape[0], generator)
                logits = {True: model.discriminate(real), False: model.discriminate(fake)}
            check_finite_outputs(fake)  # the clamp below would score infinite pixels as white
            for is_real, images in ((True, real), (False, fake)):
                fid.update(images.float().clamp(0, 1).to(feature_device), real=is_real)
                correct[is_real] += int(((logits[is_real] > 0) == is_real).sum())
        return {"fid": fid.compute(), "d_accuracy": (correct[True] + correct[False]) / (2 * count),
                "d_accuracy_real": correct[True] / count, "d_accuracy_fake": correct[False] / count}

    def sample(self, model: nn.Module, count: int, generator: torch.Generator, autocast: Callable[[], Any],
               **settings: Any) -> torch.Tensor:
        """``count`` images Tensor[count, C, H, W] in [0, 1]; a GAN takes no sampler settings (all must be None)."""
        given = sorted(name for name, value in settings.items() if value is not None)
        if given:
            raise SettingError(given, f"{'does' if len(given) == 1 else 'do'} not apply to a GAN, which samples from "
                               "its latent alone")
        with torch.no_grad(), autocast():
            images = model.generate(count, generator)
        return images.float().clamp(0, 1).cpu()

    def report(self, model: nn.Module, dataset: Dataset, out: Path, batch_size: int,
               autocast: Callable[[], Any]) -> list[Path]:
        """``samples.png``: an 8×8 grid of generated images (seed 0)."""
        from torchvision.utils import save_image

        images = self.sample(model, GRID, torch.Generator().manual_seed(EVAL_SEED), autocast)
        path = Path(out) / "samples.png"
        save_image(images, path, nrow=8, padding=2, pad_value=1.0)
        return [path]

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"data": self.data, "img_size": self.img_size, "in_chans": self.in_chans}

    @classmethod
    def setup(cls, model_name: str, data: str, img_size: int | None, model_args: Mapping[str, Any],
              checkpoint: str | Path | None = None, options: Mapping[str, Any] | None = None,
              splits: tuple[str, ...] = SPLITS) -> Setup:
        """The data's channels and side become the model's ``in_chans`` and ``img_size``; ``img_size`` defaults to
        32 on Digits and 64 on Shapes. Other data (a COCO folder) are refused: the FID has no features for them."""
        from visionzoo.data import open_splits
        from visionzoo.metrics.domain import DEFAULT_SIZES, DOMAIN_DATA
        from visionzoo.models import create_model

        if str(data).lower() not in DOMAIN_DATA:  # else the FID at the end of training fails, the run wasted
            raise ValueError(f"{model_name} trains on {', '.join(DOMAIN_DATA)}, not {data}: the gan task's FID needs "
                             "their domain features, which other data have none of")
        img_size = img_size or DEFAULT_SIZES.get(str(data).lower())  # Digits' own 8 px is below DCGAN's 16
        splits = open_splits(data, splits, image_size=img_size)
        image, _ = splits.first()[0]
        in_chans, size = int(image.shape[0]), int(image.shape[-1])
        if not is_drawable_size(size):  # else DCGAN's own error, naming its img_size rather than the option
            sides = sorted({max(MIN_SIZE, 1 << (size.bit_length() - 1)), max(MIN_SIZE, 1 << size.bit_length())})
            raise ValueError(f"{model_name} draws images whose side is a power of two of at least {MIN_SIZE} px, "
                             f"{data} has {size} px ones here: give --img-size {' or '.join(map(str, sides))}")
        model_args = dict(model_args)
        check_trained_images(model_name, checkpoint, data, in_chans=in_chans, img_size=size)
        for name, value in (("in_chans", in_chans), ("img_size", size)):
            if model_args.setdefault(name, value) != value:
                raise ValueError(f"{model_name} {name}={model_args[name]} does not fit the {data} images' {value}")
        model = create_model(model_name, checkpoint=checkpoint, **model_args)
        run_meta = {"data": data, "img_size": size, "in_chans": in_chans}
        return Setup(cls(str(data).lower(), size, in_chans), model, splits, run_meta)

