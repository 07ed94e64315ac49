"""VQGAN's first-stage training (Esser et al. 2021) as a task: reconstruction + perceptual + adaptive-weight GAN.

Each engine step runs two optimizers in order, both AdamW with taming's betas (0.5, 0.9):

- ``autoencoder`` (every parameter but the discriminator's): ``L1 + L2`` reconstruction error (L1 as
  taming; the L2 term serves PSNR, the metric we are judged on) ``+ perceptual_weight · perceptual
  + vq loss``, and from ``disc_start`` on ``+ λ · disc_weight · (-mean D(x̂))``. The adaptive
  weight ``λ = ‖∇ nll‖ / (‖∇ gan‖ + 1e-4)`` is taken at the decoder's last layer (``nll`` = reconstruction
  + perceptual), so the GAN term never outweighs the reconstruction in gradient.
- ``discriminator`` (the model's ``discriminator`` submodule): the hinge loss on D(x) and D(x̂), reusing
  the autoencoder update's D(x̂) of the same step: that forward ran on a detached copy of x̂ with the same
  discriminator weights (the autoencoder optimizer does not move them), so the discriminator runs twice a
  step, not three times, and its backward here reaches its own weights only. Before ``disc_start`` its
  loss is a constant zero and no discriminator weight moves.

``disc_start`` is a step (taming's ``disc_start``) or a share of the planned run (``--disc-start 40%``):
the share starts the discriminator at the same point of any machine's run, where a step count leaves it
on for more or less of the run with the machine's speed. With only a time budget the planned length is
the engine's estimate at the pace so far, and the steps after the start are slower (the discriminator's
own forward and backward), so its share of the steps ends a little under ``1 - share``.

The perceptual network belongs to the task (frozen, never in the model's state dict), built at the
first training step: VGG16 from ``--perceptual-checkpoint`` (a torchvision file), with ``--lpips-weights``
(LPIPS's learnt linear layers) LPIPS proper as taming's, or else the classifier trained on the built-in
data (see :mod:`visionzoo.generative.perceptual`). Evaluation, prediction and
drawing are :class:`~visionzoo.train.reconstruction.ReconstructionTask`'s (PSNR, mse, codebook usage,
perplexity). The model must be a tokenizer (``model(images) -> (reconstruction, indices, vq_loss,
stats)``) with a ``discriminator`` submodule and ``last_layer_weight()``, as VQGAN is.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from visionzoo.checkpoint import CheckpointError
from visionzoo.data.factory import SPLITS
from visionzoo.generative.patchgan import adaptive_weight_from_output_grads, hinge_d_loss, hinge_g_loss
from visionzoo.generative.perceptual import (
    PerceptualLoss,
    VGG16Features,
    build_perceptual_loss,
    read_lpips_weights,
)
from visionzoo.train.reconstruction import ReconstructionTask
from visionzoo.train.task import Setup, register_task, weight_decay_groups

log = logging.getLogger(__name__)

DISC_START = 250
DISC_WEIGHT = 0.8
PERCEPTUAL_WEIGHT = 1.0


def parse_disc_start(value: str | int | float) -> int | float:
    """``--disc-start``: a step (``"1100"``, an int >= 0) or a share of the planned run (``"40%"``, or a
    float in [0, 1)), as the task takes it."""
    unreadable = f"--disc-start takes a step or a share of the run such as 40%, got {value!r}"
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else int(text)
        except ValueError:
            raise ValueError(unreadable) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(unreadable)
    if isinstance(value, float) and not 0 <= value < 1:
        raise ValueError(f"--disc-start as a share of the run must lie in [0%, 100%), got {value:.0%}")
    if value < 0:
        raise ValueError(f"--disc-start must be a step >= 0, got {value}")
    return value


def disc_start_argument(text: str) -> int | float:
    """:func:`parse_disc_start` as an argparse ``type``."""
    try:
        return parse_disc_start(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--disc-start ")) from None


@register_task("vqgan")
class VQGANTask(ReconstructionTask):
    """The "vqgan" task.

    Args:
        disc_start: the step from which the discriminator trains and the GAN loss counts (an int), or
            that point as a share of the planned run (a float in [0, 1), e.g. 0.4).
        disc_weight: the GAN loss's weight on top of the adaptive weight (taming: 0.8).
        perceptual_weight: the perceptual distance's weight (0 drops it).
        perceptual: the :class:`PerceptualLoss`, or a function building it at first use; None drops it.
    """

    defaults = {"lr": 4e-4, "weight_decay": 0.0, "batch_size": 32, "ema_decay": 0.0}
    single_process = "the discriminator and the decoder's last layer are reached past DDP's wrapper"
    report_names = ("reconstructions.png",)

    def __init__(self, disc_start: int | float = DISC_START, disc_weight: float = DISC_WEIGHT,
                 perceptual_weight: float = PERCEPTUAL_WEIGHT,
                 perceptual: PerceptualLoss | Callable[[], PerceptualLoss] | None = None):
        super().__init__()
        if not all(0 <= weight < math.inf for weight in (disc_weight, perceptual_weight)):  # NaN fails too
            raise ValueError(f"loss weights must be finite and >= 0, got --disc-weight {disc_weight}, "
                             f"--perceptual-weight {perceptual_weight}")
        self.disc_start = parse_disc_start(disc_start)
        self._disc_on_from: int | None = None
        self._warned_late_start = False
        self.disc_weight = disc_weight
        self.perceptual_weight = perceptual_weight
        self._perceptual = perceptual if perceptual_weight > 0 else None
        # (step, batch, D(x̂) with its graph from the detached x̂): made by an active autoencoder step, taken by the
        # discriminator step of the same step.
        self._fake_logits: tuple[int, torch.Tensor, torch.Tensor] | None = None

    # ----------------------------------------------------------------------------- optimizers
    def optimizer_names(self) -> tuple[str, str]:
        return ("autoencoder", "discriminator")

    def optimizer_options(self, optimizer: str) -> dict[str, Any]:
        return {"betas": (0.5, 0.9)}

    def parameter_groups(self, model: nn.Module, optimizer: str, weight_decay: float) -> list[dict[str, Any]]:
        """The discriminator's parameters for ``discriminator``, all the others for ``autoencoder``;
        no weight decay on biases and norms (1-D) nor on what the model lists in ``no_weight_decay()``."""
        if optimizer not in self.optimizer_names():
            raise ValueError(f"the vqgan task has optimizers {self.optimizer_names()}, got {optimizer!r}")
        critic = {id(p) for p in model.discriminator.parameters()}
        return weight_decay_groups(model, weight_decay,
                                   include=lambda param: (id(param) in critic) == (optimizer == "discriminator"))

    def disc_active(self) -> bool:
        """Whether the discriminator is on at ``self.step``. Started from a share of the run, it stays on
        once on, though the planned length of a timed run may be re-estimated afterwards; while the length
        is not planned yet (``total_steps`` None: the engine timing its first steps) it is off."""
        if isinstance(self.disc_start, int):
            if (not self._warned_late_start and self.total_steps is not None and self.total_steps <= self.disc_start
                    and self.disc_weight > 0):
                self._warned_late_start = True
                log.warning(f"--disc-start {self.disc_start} lies beyond this run's {self.total_steps} planned steps: "
                            "the discriminator will not train nor the GAN loss count; give a smaller --disc-start, "
                            "or a share of the run such as 40%")
            return self.step >= self.disc_start
        if self._disc_on_from is None or self.step < self._disc_on_from:
            if self.total_steps is None or self.step < self.disc_start * self.total_steps:
                return False
            self._disc_on_from = self.step
        return True

    def run_state(self) -> dict[str, Any]:
        """The step at which a share of the run switched the discriminator on: a resumed run with a longer plan
        keeps it on, as a re-planned one does."""
        return {"disc_on_from": self._disc_on_from}

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        self._disc_on_from = state.get("disc_on_from")

    # -------------------------------------------------------------------------------- losses
    def perceptual(self, device: torch.device) -> PerceptualLoss | None:
        """The perceptual distance on ``device`` (built at the first call), or None without one."""
        if self._perceptual is not None and not isinstance(self._perceptual, nn.Module):
            self._perceptual = self._perceptual()
        return None if self._perceptual is None else self._perceptual.to(device)

    def prepare(self, device: torch.device) -> None:
        self.perceptual(device)

    def training_step(self, model: nn.Module, batch: torch.Tensor, optimizer: str) -> dict[str, torch.Tensor]:
        active = self.disc_active()
        if optimizer == "discriminator":
            return self._discriminator_step(model, batch, active)
        self._fake_logits = None
        reconstruction, _, vq_loss, stats = model(batch)
        reconstruction, images = reconstruction.float(), batch.float()
        rec = (reconstruction - images).abs().mean() + F.mse_loss(reconstruction, images)
        perceptual_loss = self.perceptual(batch.device)
        perceptual = (perceptual_loss(reconstruction, images).mean() if perceptual_loss is not None
                      else rec.new_zeros(()))
        nll = rec + self.perceptual_weight * perceptual
        loss = nll + vq_loss
        g_loss, weight = rec.new_zeros(()), rec.new_zeros(())
        if active:
            # The discriminator judges a detached copy of the reconstruction, so that the graph of its logits, kept
            # for this step's discriminator update, holds nothing of the autoencoder's; the discriminator's weights
            # do not move in between (the autoencoder optimizer holds none of them).
            fake = reconstruction.detach().requires_grad_()
            fake_logits = model.discriminator(fake * 2 - 1)
            g_loss = hinge_g_loss(fake_logits)
            # Each loss is backpropagated to the reconstruction once; the update then flows back from there
            # through a stand-in with the same value and gradient as nll + weight * g_loss.
            rec_grad, = torch.autograd.grad(nll, reconstruction)
            gan_grad, = torch.autograd.grad(g_loss, fake, retain_graph=True)
            self._fake_logits = (self.step, batch, fake_logits)
            weight = adaptive_weight_from_output_grads(reconstruction, rec_grad, gan_grad,
                                                       model.last_layer_weight()) * self.disc_weight
            stand_in = (reconstruction * (rec_grad + weight * gan_grad)).sum()
            loss = stand_in - stand_in.detach() + (nll + weight * g_loss).detach() + vq_loss
        return {"loss": loss, "rec": rec.detach(), "perceptual": perceptual.detach(), "vq": vq_loss.detach(),
                "g_loss": g_loss.detach(), "adaptive_weight": weight, "disc_active": rec.new_tensor(float(active)),
                "perplexity": stats["perplexity"].detach(), "codes_used": stats["usage"].detach()}

    def _discriminator_step(self, model: nn.Module, batch: torch.Tensor, active: bool) -> dict[str, torch.Tensor]:
        cache, self._fake_logits = self._fake_logits, None
        if not active:
            # A leaf, so backward runs and the discriminator's gradients stay None: AdamW leaves it untouched.
            zero = torch.zeros((), device=batch.device, requires_grad=True)
            return {"loss": zero, "d_loss": zero.detach(), "disc_active": zero.detach()}
        if cache is None or cache[0] != self.step or cache[1] is not batch:
            raise ValueError("the vqgan discriminator step reuses the reconstruction of the same step's autoencoder "
                             "step; run training_step(model, batch, 'autoencoder') first")
        real_logits, fake_logits = model.discriminator(batch * 2 - 1), cache[2]
        d_loss = hinge_d_loss(real_logits, fake_logits)
        return {"loss": d_loss, "d_loss": d_loss.detach(), "disc_active": d_loss.new_ones(()),
                "logits_real": real_logits.detach().float().mean(), "logits_fake": fake_logits.detach().float().mean()}

    # ------------------------------------------------------------------------------- pictures
    def report(self, model: nn.Module, dataset: Dataset, out: Path, batch_size: int,
               autocast: Callable[[], Any]) -> list[Path]:
        """``reconstructions.png``: the first 8 images of ``dataset`` above their reconstructions."""
        from torchvision.utils import make_grid

        from visionzoo.train.drawing import to_pil

        device = next(model.parameters()).device
        images = self.collate([dataset[i] for i in range(min(8, len(dataset)))]).to(device)
        with autocast():
            reconstruction = model(images)[0]
        pairs = torch.cat([images.float(), reconstruction.float().clamp(0, 1)]).cpu()
        path = out / "reconstructions.png"
        to_pil(make_grid(pairs, nrow=len(images), padding=2, pad_value=1.0), min_side=256).save(path)
        return [path]

    # ------------------------------------------------------------------------------ CLI, setup
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("VQGAN")
        group.add_argument("--disc-start", type=disc_start_argument, metavar="STEP|SHARE%",
                           help="step from which the discriminator trains and the GAN loss counts, or that point as "
                                f"a share of the planned run, e.g. 40%% (default: the model's, else step {DISC_START})")
        group.add_argument("--disc-weight", type=float,
                           help=f"GAN loss weight on top of the adaptive weight (default {DISC_WEIGHT}; "
                                "ViT-VQGAN: its paper's 0.1)")
        group.add_argument("--perceptual-weight", type=float,
                           help=f"LPIPS-style perceptual loss weight (default {PERCEPTUAL_WEIGHT}, 0 drops it; "
                                "ViT-VQGAN: its paper's 0.1)")
        group.add_argument("--perceptual-checkpoint", metavar="FILE",
                           help="torchvision vgg16 weights for the perceptual loss "
                                "(default: the classifier trained on the built-in data)")
        group.add_argument("--lpips-weights", metavar="FILE",
                           help="LPIPS's learnt channel weights for the VGG16 of --perceptual-checkpoint (the lpips "
                                "package's weights/v0.1/vgg.pth, or taming-transformers' vgg.pth): the perceptual loss "
                                "is then LPIPS, as taming's (default: every channel weighs 1)")

    @classmethod
    def setup(cls, model_name: str, data: str, img_size: int | None, model_args: Mapping[str, Any],
              checkpoint: str | Path | None = None, options: Mapping[str, Any] | None = None,
              splits: tuple[str, ...] = SPLITS) -> Setup:
        from visionzoo.metrics.domain import DOMAIN_DATA
        from visionzoo.models import get_model_entry

        # The user's options, else the model's registered ones (e.g. ViT-VQGAN's paper's loss weights), else taming's.
        chosen = {**get_model_entry(model_name).default_cfg.get("task_options", {}),
                  **{k: v for k, v in (options or {}).items() if v is not None}}
        perceptual_file, lpips_file = chosen.get("perceptual_checkpoint"), chosen.get("lpips_weights")
        if lpips_file is not None and perceptual_file is None:
            raise ValueError(f"--lpips-weights {lpips_file} weighs the channels of VGG16: give its torchvision vgg16 "
                             "weights with --perceptual-checkpoint too")
        # Each would fail only at the first training step, after the run has started, naming no option.
        if checkpoint is None and chosen.get("perceptual_weight", PERCEPTUAL_WEIGHT) > 0:
            if perceptual_file is None and str(data).lower() not in DOMAIN_DATA:
                raise ValueError(f"{model_name}'s perceptual loss is by default the classifier trained on "
                                 f"{', '.join(DOMAIN_DATA)}, which {data} is not: give --perceptual-checkpoint "
                                 "(torchvision vgg16 weights) or --perceptual-weight 0")
            if perceptual_file is not None and not Path(perceptual_file).is_file():
                raise FileNotFoundError(f"--perceptual-checkpoint {perceptual_file} is not a file "
                                        "(torchvision vgg16 weights)")
            if lpips_file is not None and not Path(lpips_file).is_file():
                raise FileNotFoundError(f"--lpips-weights {lpips_file} is not a file (LPIPS's vgg.pth)")
        setup = super().setup(model_name, data, img_size, model_args, checkpoint, options, splits)
        meta = setup.run_meta
        if checkpoint is None:
            try:  # else the run fails when the discriminator starts, which may be far into it
                with torch.no_grad():
                    setup.model.discriminator(torch.zeros(1, meta["in_chans"], meta["img_size"], meta["img_size"]))
            except ValueError as error:
                raise ValueError(f"--img-size {meta['img_size']} is too small for {model_name}'s discriminator ({error}): "
                                 "give a larger --img-size or fewer --model-arg disc_layers") from None
        build: Callable[[], PerceptualLoss] | PerceptualLoss = functools.partial(
            build_perceptual_loss, perceptual_file, data, meta["img_size"], meta["in_chans"], lpips_file)
        if checkpoint is None and perceptual_file is not None and chosen.get("perceptual_weight", PERCEPTUAL_WEIGHT) > 0:
            build = _vgg16_perceptual_loss(perceptual_file, lpips_file)
        setup.task = cls(disc_start=chosen.get("disc_start", DISC_START),
                         disc_weight=chosen.get("disc_weight", DISC_WEIGHT),
                         perceptual_weight=chosen.get("perceptual_weight", PERCEPTUAL_WEIGHT), perceptual=build)
        return setup


def _vgg16_perceptual_loss(vgg16_file: str | Path, lpips_file: str | Path | None) -> PerceptualLoss:
    """The perceptual loss over VGG16, read before the run: a file that holds no VGG16 or no LPIPS weights would
    otherwise fail at the first step, naming no option. Its error names the option of the file at fault."""
    try:
        weights = None if lpips_file is None else read_lpips_weights(lpips_file)
    except CheckpointError as error:
        raise CheckpointError(f"--lpips-weights: {error}") from None
    try:
        network = VGG16Features.from_torchvision(vgg16_file)
    except CheckpointError as error:
        raise CheckpointError(f"--perceptual-checkpoint: {error}") from None
    return PerceptualLoss(network, weights)
