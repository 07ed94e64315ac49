"""Image reconstruction through a discrete bottleneck as a training task (VQ-VAE and its kin).

The model maps images in [0, 1] to ``(reconstruction, indices, vq_loss, stats)``; the step minimises
the mean squared reconstruction error plus the quantizer's loss. Evaluation reports PSNR (per image,
then averaged, with a peak of 1) and the mean squared error of the reconstruction clamped to [0, 1], the
picture that ``predict`` scores and draws, and the codebook's use over the whole split:
``codebook_usage`` (the fraction of codes chosen at least once) and ``perplexity`` (``exp`` of the
entropy of the code histogram), with a logged warning when the codebook has collapsed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from visionzoo.data.factory import SPLITS
from visionzoo.train.task import Setup, Task, check_finite_outputs, check_trained_images, register_task
from visionzoo.utils import eval_mode

log = logging.getLogger(__name__)
# Below this perplexity nearly every token takes one code: the decoder can only draw the mean image.
COLLAPSED_PERPLEXITY = 2.0


def psnr(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio (peak 1) of each image: Tensor[B, C, H, W] pairs → Tensor[B] in dB."""
    mse = (reconstruction.float() - images.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


@register_task("reconstruction")
class ReconstructionTask(Task):
    metric = "psnr"
    higher_is_better = True
    defaults = {"lr": 1e-3, "weight_decay": 0.0, "batch_size": 64, "ema_decay": 0.0}

    def collate(self, samples: list[Any]) -> torch.Tensor:
        return torch.stack([image for image, _ in samples])

    def training_step(self, model: nn.Module, batch: torch.Tensor, optimizer: str) -> dict[str, torch.Tensor]:
        reconstruction, _, vq_loss, stats = model(batch)
        error = F.mse_loss(reconstruction.float(), batch.float())
        return {"loss": error + vq_loss, "reconstruction": error.detach(), "vq": vq_loss.detach(),
                "perplexity": stats["perplexity"].detach(), "codes_used": stats["usage"].detach()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int,
                 autocast: Callable[[], Any]) -> dict[str, float]:
        device = next(model.parameters()).device
        scores, errors, histogram = [], [], None
        for images in self.batches(dataset, batch_size):
            images = images.to(device)
            reconstruction, indices = self.reconstruct(model, images, autocast)
            scores.append(psnr(reconstruction, images).cpu())
            errors.append((reconstruction - images.float()).pow(2).flatten(1).mean(1).cpu())
            counts = torch.bincount(indices.flatten().cpu(), minlength=model.quantizer.num_codes)
            histogram = counts if histogram is None else histogram + counts
        probabilities = histogram.float() / histogram.sum()
        entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum()
        perplexity = float(entropy.exp())
        if perplexity < COLLAPSED_PERPLEXITY:
            log.warning("the codebook has collapsed: %d of %d codes in use, perplexity %.2f; every token takes "
                        "nearly the same code, so reconstructions are close to the mean image (try a lower --lr, "
                        "or check that the encoder's features vary with the image content)",
                        int((histogram > 0).sum()), len(histogram), perplexity)
        return {"psnr": float(torch.cat(scores).mean()), "mse": float(torch.cat(errors).mean()),
                "codebook_usage": float((histogram > 0).float().mean()), "perplexity": perplexity}

    @staticmethod
    def reconstruct(model: nn.Module, images: torch.Tensor,
                    autocast: Callable[[], Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction of ``images`` (Tensor[B, C, H, W] on the model's device) as an image, float32 clamped to
        [0, 1], and its code indices (Tensor[B, h, w]): what evaluation and prediction both score, so that one image
        has one PSNR."""
        with torch.no_grad(), autocast():
            reconstruction, indices, _, _ = model(images)
        check_finite_outputs(reconstruction)  # the clamp would turn infinity into white, NaN stays: a PSNR of NaN
        return reconstruction.float().clamp(0, 1), indices

    def predict(self, model: nn.Module, images: torch.Tensor, autocast: Callable[[], Any]) -> list[dict[str, Any]]:
        """Each image's reconstruction (Tensor[C, H, W] in [0, 1]), its code indices and its PSNR."""
        device = next(model.parameters()).device
        reconstruction, indices = self.reconstruct(model, images.to(device), autocast)
        reconstruction = reconstruction.cpu()
        return [{"reconstruction": r, "indices": i.cpu().tolist(), "psnr": float(p)}
                for r, i, p in zip(reconstruction, indices, psnr(reconstruction, images.cpu()))]

    def describe(self, prediction: Mapping[str, Any]) -> str:
        return f"PSNR {prediction['psnr']:.2f} dB through {len(set(sum(prediction['indices'], [])))} distinct codes"

    def draw(self, image: torch.Tensor, prediction: Mapping[str, Any], target: Any = None):
        """The image and its reconstruction side by side, enlarged to at least 128 px."""
        from torchvision.transforms.functional import to_pil_image

        pair = torch.cat([image.float().cpu(), prediction["reconstruction"]], dim=-1)
        picture = to_pil_image(pair.expand(3, -1, -1) if pair.shape[0] == 1 else pair)
        scale = max(1, -(-128 // picture.height))
        return picture.resize((picture.width * scale, picture.height * scale), 0)

    @classmethod
    def setup(cls, model_name: str, data: str, img_size: int | None, model_args: Mapping[str, Any],
              checkpoint: str | Path | None = None, options: Mapping[str, Any] | None = None,
              splits: tuple[str, ...] = SPLITS) -> Setup:
        from visionzoo.data import images_only, open_splits
        from visionzoo.models import create_model, get_model_entry

        # The registered size sets the code grid the model was designed for (vqgan_f8: 8×8 at 64 px), so it is
        # the default rather than the data set's own (Shapes: 128 px, a 16×16 grid at four times the cost).
        registered = get_model_entry(model_name).default_cfg["input_size"][-1]
        img_size = img_size or registered
        splits = open_splits(data, splits, image_size=img_size, **images_only(data))
        image, _ = splits.first()[0]
        check_trained_images(model_name, checkpoint, data, in_chans=int(image.shape[0]))
        model_args = dict(model_args)
        model_args.setdefault("in_chans", int(image.shape[0]))
        model = create_model(model_name, checkpoint=checkpoint, **model_args)
        try:  # a side the model cannot cut into codes would fail at the first step, after the run has started
            with torch.no_grad(), eval_mode(model):  # eval: no codebook update
                model(image[None])
        except ValueError as error:
            such = f", such as its registered {registered}" if registered != image.shape[-1] else ""
            raise ValueError(f"{model_name} takes no {image.shape[-1]} px images ({error}): give another "
                             f"--img-size{such}") from None
        run_meta = {"data": data, "img_size": int(image.shape[-1]), "in_chans": int(image.shape[0])}
        return Setup(cls(), model, splits, run_meta)
