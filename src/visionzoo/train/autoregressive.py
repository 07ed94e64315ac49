"""Autoregressive image models as a training task: Image GPT and VQGAN's transformer over codes.

The model turns images into token sequences (``model.tokens(images) -> Tensor[B, N]``: palette indices
or a frozen tokenizer's codes), predicts each token from the ones before it (``model(tokens, labels)
-> logits Tensor[B, N, V]``) and turns tokens back into images (``model.images_from_tokens``); its
``gpt`` samples (:meth:`~visionzoo.generative.gpt.GPT.generate`).

The step minimises the next-token cross-entropy. A class-conditional model sees the label with one
exception in ten (``label_drop``): that label is replaced by the "no class" start token, so the same
model also samples unconditionally. Evaluation: the mean negative log-likelihood per token over the
split, in nats (``nll``, the headline, lower is better) and in bits (``bits``), conditional on the
class for a class-conditional model.

A code prior's codes are remembered per image (keyed by a digest of its pixels) for the task's
lifetime: its tokenizer is frozen, so an image always gets the same codes, and encoding every batch
again (in float32, see :meth:`CodeTransformer.tokens`) cost the Shapes VQGAN prior of benchmarks/generative.py
44% of its steps (410 in 4 minutes instead of 736).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from visionzoo.data.factory import SPLITS
from visionzoo.train.classification import class_label
from visionzoo.train.task import (
    LabelError,
    SettingError,
    Setup,
    Task,
    check_finite_outputs,
    check_training_memory,
    register_task,
)
from visionzoo.utils import eval_mode, first_non_finite, is_integer, with_article

log = logging.getLogger(__name__)

GRID = 64
COLUMNS = 8
# samples.png of a class-conditional model: a row per class, for at most this many classes.
MAX_CLASS_ROWS = 16
REPORT_SEED = 0
# Training images the palette's k-means sees (a random subset: Shapes renders each image on demand).
PALETTE_IMAGES = 1000
# Completions of each image in completions.png and in `visionzoo sample --complete`.
COMPLETIONS = 3
# The run report's probes: fit on half of the validation split (up to this many images), scored on the other half.
PROBE_IMAGES = 500
PROBE_MIN_IMAGES = 20
NO_LABEL = -1  # a sample's label where its data set has no image-level classes
# Image sides of a picture's cells in the reports: tiny images are enlarged (nearest) to at least this.
MIN_CELL = 32
# Images whose codes a code prior's task remembers at most (64 codes of an image take 0.5 kB).
REMEMBERED_IMAGES = 200_000


class RememberedTokens:
    """``model.tokens(images)`` remembered per image, for a model whose tokens cannot change: a code prior, whose
    tokenizer is frozen. Images are told apart by a digest of their shape and pixels; only images on the CPU are
    remembered (elsewhere the digest would cost a copy), and at most ``capacity`` of them. A model with another
    tokenizer object starts afresh."""

    def __init__(self, capacity: int = REMEMBERED_IMAGES):
        self.capacity = capacity
        self._tokens: dict[bytes, torch.Tensor] = {}
        self._tokenizer: weakref.ref[nn.Module] | None = None

    def __len__(self) -> int:
        return len(self._tokens)

    @torch.no_grad()
    def __call__(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if images.device.type != "cpu":
            return model.tokens(images)
        if self._tokenizer is None or self._tokenizer() is not model.tokenizer:
            self._tokens, self._tokenizer = {}, weakref.ref(model.tokenizer)
        keys = [_digest(image) for image in images]
        tokens = [self._tokens.get(key) for key in keys]
        missing = [i for i, row in enumerate(tokens) if row is None]
        if missing:
            for i, row in zip(missing, model.tokens(images[missing])):
                tokens[i] = row
                if len(self._tokens) < self.capacity:
                    self._tokens[keys[i]] = row
        return torch.stack(tokens)


def _digest(image: torch.Tensor) -> bytes:
    pixels = image.detach().contiguous().numpy()
    digest = hashlib.blake2b(str(pixels.shape).encode(), digest_size=16)
    digest.update(pixels)  # the array's buffer, without a copy
    return digest.digest()


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel (its own methods, ``tokens`` and ``gpt``, are not forwarded)."""
    return getattr(model, "module", model)


@register_task("autoregressive")
class AutoregressiveTask(Task):
    """Next-token training of a model over image tokens.

    Args:
        classes: the data set's class names (for the conditioning labels and the pictures).
    """

    metric = "nll"
    higher_is_better = False
    report_names = ("samples.png", "completions.png", "probes.png")
    defaults = {"lr": 1e-3, "weight_decay": 0.01, "batch_size": 64, "ema_decay": 0.0, "grad_clip": 1.0}
    label_drop = 0.1

    def __init__(self, classes: Sequence[str] = ()):
        super().__init__()
        self.classes = list(classes)
        self.remembered = RememberedTokens()

    def tokens(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``model.tokens(images)``; a code prior's (a model with a frozen ``tokenizer``) remembered per image."""
        return self.remembered(model, images) if hasattr(model, "tokenizer") else model.tokens(images)

    def collate(self, samples: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples → (images Tensor[B, C, H, W], labels int64 Tensor[B]); ``NO_LABEL`` for a target without an
        image-level class (a COCO folder's), which only an unconditional model takes."""
        return torch.stack([image for image, _ in samples]), torch.tensor([_label(t) for _, t in samples])

    def _conditioning(self, model: nn.Module, labels: torch.Tensor, drop: bool) -> torch.Tensor | None:
        """The labels a class-conditional model is given (some replaced by "no class" when ``drop``), else None."""
        num_classes = model.gpt.num_classes
        if num_classes == 0:
            return None
        if drop and self.label_drop > 0:
            dropped = torch.rand(labels.shape[0], generator=self.generator) < self.label_drop
            labels = labels.masked_fill(dropped.to(labels.device), num_classes)
        return labels

    def fit_training_images(self, model: nn.Module, train: Dataset, whole: bool) -> None:
        """Image GPT's palette, fitted by the set-up on the train split, fitted again on ``train`` where it holds
        fewer of the split's images (``--train-size``): the palette is learnt from the images the run trains on. A
        palette with more colours than those images have is warned of once."""
        if not hasattr(model, "fit_palette"):
            return
        if not whole:
            _fit_palette(model, train)
        # k-means places a centre on every distinct colour before it repeats one, so the palette's distinct colours
        # are the fitted pixels' where it has more entries than they have colours
        size, distinct = model.palette.shape[0], len(torch.unique(model.palette, dim=0))
        if distinct < size:
            log.warning("--model-arg palette_size=%d is more than the %d distinct colours of the training pixels the "
                        "palette is fitted to: %d of its colours repeat others, tokens no pixel is ever given; give "
                        "--model-arg palette_size=%d or fewer", size, distinct, size - distinct, distinct)

    def training_step(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                      optimizer: str) -> dict[str, torch.Tensor]:
        images, labels = batch
        inner = _unwrap(model)
        with torch.no_grad():
            tokens = self.tokens(inner, images)
        logits = model(tokens, self._conditioning(inner, labels, drop=True))
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())
        return {"loss": loss, "bits": loss.detach() / math.log(2)}

    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int,
                 autocast: Callable[[], Any]) -> dict[str, float]:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for images, labels in self.batches(dataset, batch_size):
            images, labels = images.to(device), labels.to(device)
            with autocast():
                tokens = self.tokens(model, images)
                logits = model(tokens, self._conditioning(model, labels, drop=False))
            check_finite_outputs(logits)  # else an nll of NaN, which eval --json would print as no JSON reads it
            total += float(F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), reduction="sum"))
            count += tokens.numel()
        nll = total / max(count, 1)
        return {"nll": nll, "bits": nll / math.log(2)}

    def _labels_of(self, model: nn.Module, label: int | str | None, count: int) -> torch.Tensor | None:
        """``count`` copies of ``label``'s class index: a class name of the data, or an index (an int or its digits,
        as typed after ``--label``); None for None."""
        if label is None:
            return None
        num_classes = model.gpt.num_classes
        if num_classes == 0:
            raise LabelError(f"{label} given, but this model is unconditional (trained without classes)")
        if isinstance(label, str) and label in self.classes:
            label = self.classes.index(label)
        elif isinstance(label, str) and label.isascii() and label.isdigit():  # not "²", which int() refuses
            label = int(label)
        if not is_integer(label) or not 0 <= label < num_classes:
            # Digits' ten in full; ImageNet's thousand would make a line of 11,000 characters
            shown = self.classes if len(self.classes) <= 10 else [*self.classes[:3], "...", self.classes[-1]]
            names = f" ({', '.join(shown)})" if self.classes else ""
            raise LabelError(f"must be a class in 0..{num_classes - 1}{names}, got {label!r}")
        return torch.full((count,), int(label), dtype=torch.long)

    def _generate(self, model: nn.Module, labels: torch.Tensor | None, count: int, generator: torch.Generator,
                  autocast: Callable[[], Any], temperature: float | None, top_k: int | None,
                  top_p: float | None) -> torch.Tensor:
        device = next(model.parameters()).device
        with torch.no_grad(), autocast():
            images = model.generate(count, generator, None if labels is None else labels.to(device),
                                    1.0 if temperature is None else temperature, top_k, top_p)
        return images.float().clamp(0, 1).cpu()

    def sample(self, model: nn.Module, count: int, generator: torch.Generator, autocast: Callable[[], Any],
               temperature: float | None = 1.0, top_k: int | None = None, top_p: float | None = None,
               label: int | str | None = None) -> torch.Tensor:
        """``count`` images Tensor[count, C, H, W] in [0, 1], token by token: the logits divided by
        ``temperature``, cut to the ``top_k`` best and to the ``top_p`` nucleus, drawn from ``generator``;
        of class ``label`` (a class-conditional model: an index or a class name) or unconditional (None). A ``top_k`` beyond the model's
        vocabulary is refused: it would keep every token, as if not given.
        """
        _check_top_k(model, top_k)
        labels = self._labels_of(model, label, count)
        return self._generate(model, labels, count, generator, autocast, temperature, top_k, top_p)

    def complete(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
                 generator: torch.Generator, autocast: Callable[[], Any], columns: int = COLUMNS,
                 temperature: float | None = 1.0, top_k: int | None = None, top_p: float | None = None,
                 label: int | str | None = None, batch_size: int | None = None) -> torch.Tensor:
        """The cells of a grid of completions, Tensor[R · columns, C, S, S] in [0, 1], of ``images`` Tensor[B, C, S, S]
        in [0, 1] by a model that completes images (Image GPT): for each group of ``columns`` images a row of them, a
        row of their top halves (the bottom grey) and ``COMPLETIONS`` rows of completions of those halves, sampled as
        :meth:`sample` samples; a last group of fewer images is filled with white cells. The images are completed
        ``batch_size`` at a time (default ``columns``), each batch ``COMPLETIONS`` times in turn, so that the draws of
        a seeded ``generator`` depend on it. A class-conditional model is given ``label`` (as in :meth:`sample`), else
        ``labels`` int64 Tensor[B] (the images' classes), else nothing (its "no class" start token); an unconditional
        model ignores both."""
        _check_top_k(model, top_k)
        device = next(model.parameters()).device
        if label is not None:  # refused for an unconditional model, as sample refuses it
            labels = self._labels_of(model, label, images.shape[0])
        elif not model.gpt.num_classes:
            labels = None
        settings = {"temperature": 1.0 if temperature is None else temperature, "top_k": top_k, "top_p": top_p}
        batch_size = batch_size or columns
        completions: list[list[torch.Tensor]] = [[] for _ in range(COMPLETIONS)]
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(device)
            condition = None if labels is None else labels[start:start + batch_size].to(device)
            with torch.no_grad(), autocast():
                for drawn in completions:
                    drawn.append(model.complete(batch, generator, condition, **settings).float().clamp(0, 1).cpu())
        half = images.clone()
        half[..., images.shape[-2] // 2:, :] = 0.5
        rows = (images, half, *(torch.cat(drawn) for drawn in completions))
        cells = []
        for start in range(0, images.shape[0], columns):
            for row in rows:
                row = row[start:start + columns].float().clamp(0, 1).cpu()
                blank = row.new_ones(columns - row.shape[0], *row.shape[1:])
                cells.append(torch.cat([row, blank]))
        return torch.cat(cells)

    def report(self, model: nn.Module, dataset: Dataset, out: Path, batch_size: int,
               autocast: Callable[[], Any]) -> list[Path]:
        """``samples.png``: 64 samples, 8 per row, or for a class-conditional model a row of 8 per class (of its
        first ``MAX_CLASS_ROWS``); for a model that completes images (Image GPT), ``completions.png``: 8
        validation images, their top halves, and three completions of each, and ``probes.png``: the
        linear-probe accuracy of every layer."""
        from torchvision.utils import save_image

        generator = torch.Generator().manual_seed(REPORT_SEED)
        num_classes = model.gpt.num_classes
        labels = report_labels(num_classes)
        samples = self._generate(model, labels, GRID if labels is None else len(labels), generator, autocast,
                                 None, None, None)
        paths = [Path(out) / "samples.png"]
        save_image(_enlarge(samples), paths[0], nrow=COLUMNS, padding=2, pad_value=1.0)
        if hasattr(model, "complete") and len(dataset) >= COLUMNS:
            images, targets = self.collate([dataset[i] for i in range(COLUMNS)])
            paths.append(Path(out) / "completions.png")
            save_completions(self.complete(model, images, targets, generator, autocast), paths[1], COLUMNS)
        if hasattr(model, "complete") and len(dataset) >= 2 * PROBE_MIN_IMAGES:
            probes = self._probe_report(model, dataset, Path(out) / "probes.png")
            paths += [probes] if probes is not None else []
        return paths

    def _probe_report(self, model: nn.Module, dataset: Dataset, path: Path) -> Path | None:
        """Image GPT's linear probe on every layer and on the raw pixels, fit on the first half of ``dataset``
        (at most ``PROBE_IMAGES``) and scored on the second: the notes' evaluation, at run-folder scale.
        None for data without image-level classes, which a probe predicts."""
        from visionzoo.generative.image_gpt import plot_probe_curve, probe_accuracies, raw_pixel_probe

        count = min(len(dataset), 2 * PROBE_IMAGES) // 2 * 2
        images, labels = self.collate([dataset[i] for i in range(count)])
        if bool((labels == NO_LABEL).any()):
            return None
        fit, score = slice(0, count // 2), slice(count // 2, count)
        accuracies = probe_accuracies(model, images[fit], labels[fit], images[score], labels[score])
        raw = raw_pixel_probe(images[fit], labels[fit], images[score], labels[score])
        return plot_probe_curve(accuracies, raw, path, title=f"Image GPT linear probes ({count // 2} fit, "
                                                              f"{count - count // 2} scored)")

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"classes": self.classes}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("autoregressive (image_gpt, vqgan_transformer)")
        group.add_argument("--tokenizer", metavar="FILE",
                           help="vqgan_transformer: the checkpoint of a trained tokenizer (a `visionzoo train` run "
                                "of vqgan, vit_vqgan or vqvae); needed to train, not to load the prior")
        group.add_argument("--class-conditional", action=argparse.BooleanOptionalAction, default=None,
                           help="condition on the class (default: yes for vqgan_transformer, no for image_gpt)")

    @classmethod
    def models_taking(cls, option: str) -> list[str]:
        """``--tokenizer``: the code priors alone (Image GPT quantises pixels with its own palette)."""
        return _code_priors() if option == "tokenizer" else super().models_taking(option)

    @classmethod
    def setup(cls, model_name: str, data: str, img_size: int | None, model_args: Mapping[str, Any],
              checkpoint: str | Path | None = None, options: Mapping[str, Any] | None = None,
              splits: tuple[str, ...] = SPLITS) -> Setup:
        """Build the model and the splits. Image GPT: ``img_size`` defaults to its registered 16 and the palette
        is fitted on the training split (again on fewer of its images by :meth:`fit_training_images`). The code prior: ``--tokenizer`` gives the tokenizer's architecture,
        weights and image size. With a ``checkpoint`` both come from it instead."""
        from visionzoo.data import Splits, images_only, open_splits
        from visionzoo.models import create_model, get_model_entry
        from visionzoo.models._registry import load_checkpoint

        names = splits  # "splits" is rebound below to the splits opened

        def splits_at(size: int | None) -> Splits:
            return open_splits(data, names, image_size=size, **images_only(data))

        options = dict(options or {})
        model_args = dict(model_args)
        entry = get_model_entry(model_name)
        code_prior = entry.family == "code_prior"
        if not code_prior and options.get("tokenizer") is not None:
            raise ValueError(f"--tokenizer is for code priors ({', '.join(_code_priors())}); {model_name} quantises "
                             "pixels with its own colour palette and would ignore it")
        if checkpoint is not None:
            model = create_model(model_name, checkpoint=checkpoint, **model_args)
            if img_size is not None and img_size != model.img_size:  # else its first batch fails, naming no option
                raise ValueError(f"{model_name} from {checkpoint} models {model.img_size} px images (a sequence of "
                                 f"{model.gpt.seq_len} tokens) and reads no other size: drop --img-size {img_size}")
            splits = splits_at(model.img_size)
            if model.gpt.num_classes:
                _check_labelled(splits.first(), data, model_name)
        else:
            # A resumed prior brings its tokenizer's record in model_args and no file: its checkpoint holds the
            # tokenizer's weights, which the engine loads, so the file it was trained with may be gone.
            tokenizer_file = options.get("tokenizer") if code_prior else None
            tokenizer_size = None
            if code_prior and (tokenizer_file is not None or not isinstance(model_args.get("tokenizer"), Mapping)):
                tokenizer, tokenizer_size = _tokenizer_record(tokenizer_file, model_name)
                model_args.setdefault("tokenizer", tokenizer)
                img_size = img_size or tokenizer_size
            else:
                img_size = img_size or entry.default_cfg["input_size"][-1]
            splits = splits_at(img_size)
            image = splits["train"][0][0]
            side = int(image.shape[-1])
            if model_args.setdefault("img_size", side) != side:  # else the first batch fails, naming no option
                raise ValueError(f"--model-arg img_size={model_args['img_size']} does not fit the {data} images' {side}: "
                                 f"give --img-size {model_args['img_size']} instead")
            if code_prior:
                _check_tokenizer_size(model_args["tokenizer"], side, tokenizer_file, tokenizer_size)
            else:
                model_args.setdefault("in_chans", int(image.shape[0]))
            conditional = options.get("class_conditional")
            if conditional is None:
                conditional = entry.default_cfg.get("class_conditional", False)
            if conditional:
                _check_labelled(splits["train"], data, model_name)
                model_args.setdefault("num_classes", len(splits["train"].classes))
            if not torch.cuda.is_available():
                # the run trains in this machine's memory: refused before the build; with a GPU, where the engine
                # checks the built model against the GPU's, the build costs this machine its weights alone
                check_training_memory(model_name, model_args)
            model = create_model(model_name, **model_args)
            if code_prior:
                if tokenizer_file is not None:
                    load_checkpoint(model.tokenizer, tokenizer_file, use_ema=True)
                    broken = first_non_finite(model.tokenizer)
                    if broken is not None:  # else NaN distances give every patch one code, and samples decode to NaN
                        raise ValueError(f"--tokenizer {tokenizer_file}: {model_args['tokenizer']['name']}'s weights "
                                         f"hold non-finite values (NaN or infinity), first in {broken}: its codes "
                                         "would not tell images apart (did its run diverge?)")
                if model.in_chans != image.shape[0]:
                    raise ValueError(f"--tokenizer {tokenizer_file or model_args['tokenizer']['name']} takes "
                                     f"{model.in_chans}-channel images, but {data} has {image.shape[0]} channels")
            else:
                _fit_palette(model, splits["train"])
        image = splits.first()[0][0]
        classes = list(getattr(splits.first(), "classes", []))
        if model.gpt.num_classes not in (0, len(classes)):
            raise ValueError(f"the model is conditioned on {model.gpt.num_classes} classes, {data} has {len(classes)}")
        run_meta = {"data": data, "img_size": int(image.shape[-1]), "in_chans": int(image.shape[0])}
        return Setup(cls(classes), model, splits, run_meta)


def _check_labelled(dataset: Dataset, data: str, model_name: str) -> None:
    """Refuse, before the first batch fails naming no option, data without image-level classes for a
    class-conditional model."""
    if _label(dataset[0][1]) == NO_LABEL:
        raise ValueError(f"{data} has no image-level class labels (a detection data set), which a class-conditional "
                         f"{model_name} needs: train it with --no-class-conditional")


def _label(target: Any) -> int:
    """:func:`class_label` of ``target``, or ``NO_LABEL`` for a target dict without ``label``."""
    return NO_LABEL if isinstance(target, Mapping) and "label" not in target else class_label(target)


def report_labels(num_classes: int) -> torch.Tensor | None:
    """The classes of ``samples.png``'s cells, int64 Tensor[rows * COLUMNS]: a row of ``COLUMNS`` per class (the
    first ``MAX_CLASS_ROWS``) for a class-conditional model (``num_classes`` > 0), else None: unconditional."""
    if not num_classes:
        return None
    return torch.arange(min(num_classes, MAX_CLASS_ROWS)).repeat_interleave(COLUMNS)


# The tasks of the models a code prior can sit on: they encode images to code grids and decode them.
TOKENIZER_TASKS = ("vqgan", "reconstruction")


def _code_priors() -> list[str]:
    from visionzoo.models import get_model_entry, list_models

    return [name for name in list_models(task="autoregressive") if get_model_entry(name).family == "code_prior"]


def image_gpts() -> list[str]:
    """The registered models that complete images: the autoregressive ones that are not code priors."""
    from visionzoo.models import list_models

    return [name for name in list_models(task="autoregressive") if name not in _code_priors()]


def _tokenizer_record(path: str | None, model_name: str) -> tuple[dict[str, Any], int | None]:
    """The tokenizer's registry record and training image side, from its training checkpoint."""
    from visionzoo.checkpoint import read_metadata

    if not path:
        raise ValueError(f"{model_name} needs --tokenizer FILE: the checkpoint of a trained tokenizer "
                         "(e.g. runs/vqgan-digits/checkpoint.safetensors from `visionzoo train vqgan`)")
    meta = read_metadata(path)
    record = (meta or {}).get("model")
    if not isinstance(record, Mapping) or not isinstance(record.get("name"), str):
        raise ValueError(f"--tokenizer {path} is not a checkpoint written by `visionzoo train` (no model record)")
    from visionzoo.models import get_model_entry, list_models

    if record["name"] in list_models() and get_model_entry(record["name"]).task not in TOKENIZER_TASKS:
        raise ValueError(f"--tokenizer {path} is {with_article(record['name'])} checkpoint, not a tokenizer's "
                         "(vqvae_small, vqgan, vqgan_f8, vit_vqgan, vit_vqgan_64, ...)")
    return {"name": record["name"], "args": dict(record.get("args") or {})}, (meta.get("run") or {}).get("img_size")


def _check_tokenizer_size(tokenizer: Mapping[str, Any], side: int, path: str | None, trained_size: int | None) -> None:
    """Refuse a ``side`` the ``tokenizer`` record's architecture cannot cut into codes, naming --img-size (else the
    prior's constructor fails naming no option); say once, at info, that another side than the ``trained_size``
    gives another code grid. Both tokenizer kinds read any side they can cut: a convolutional one by its
    convolutions, a ViT-VQGAN by sin-cos positions computed for the grid (it has no table of its training grid)."""
    from visionzoo.models import create_model

    name = tokenizer["name"]
    model = create_model(name, **dict(tokenizer.get("args") or {}))
    where = f" of {path}" if path else ""

    def grid(size: int) -> str:
        with torch.no_grad(), eval_mode(model):
            rows, columns = model.encode(torch.zeros(1, int(model.in_chans), size, size)).shape[1:]
        return f"{rows}x{columns}"

    try:
        codes = grid(side)
    except ValueError as error:
        own = f", such as its own {trained_size}" if trained_size else ""
        raise ValueError(f"--img-size {side}: the tokenizer {name}{where} takes no {side} px images ({error}): give "
                         f"another --img-size{own}") from None
    if trained_size and side != trained_size:
        trained_codes = grid(trained_size)
        how = ("its convolutions read any size" if getattr(model, "patch_size", None) is None else
               f"its fixed sin-cos positions are computed for the grid of {codes}, not resampled from a table of "
               f"its {trained_codes}")
        log.info("--img-size %d: the tokenizer %s%s was trained at %d px, where its codes are a grid of %s; at %d px "
                 "they are a grid of %s, of images at a scale it never encoded in training (%s)", side, name, where,
                 trained_size, trained_codes, side, codes, how)


def _palette_images(dataset: Dataset) -> torch.Tensor:
    """Up to ``PALETTE_IMAGES`` training images drawn at random (seeded): Tensor[M, C, H, W]."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:PALETTE_IMAGES]
    return torch.stack([dataset[int(i)][0] for i in order])


def _fit_palette(model: nn.Module, dataset: Dataset) -> None:
    """Fit Image GPT's palette on up to ``PALETTE_IMAGES`` of ``dataset``'s images (seeded)."""
    model.fit_palette(_palette_images(dataset), generator=torch.Generator().manual_seed(0))


def _check_top_k(model: nn.Module, top_k: int | None) -> None:
    """Refuse a ``top_k`` beyond the model's vocabulary: it would keep every token, as if not given."""
    vocabulary = model.gpt.vocab_size
    if top_k is not None and top_k > vocabulary:
        raise SettingError(("top_k",), f"{top_k} is more than the {vocabulary} tokens of this model's vocabulary, so "
                           f"it would keep them all and change nothing; give at most {vocabulary}")


def save_completions(cells: torch.Tensor, path: str | Path, columns: int = COLUMNS) -> None:
    """Write :meth:`AutoregressiveTask.complete`'s cells Tensor[R · columns, C, S, S] as a PNG or JPEG grid,
    ``columns`` a row, tiny images enlarged (as completions.png)."""
    from torchvision.utils import save_image

    save_image(_enlarge(cells), path, nrow=columns, padding=2, pad_value=1.0)


def _enlarge(images: torch.Tensor) -> torch.Tensor:
    """Tensor[B, C, S, S] → the same enlarged (nearest) to at least ``MIN_CELL`` px, grey made RGB."""
    factor = -(-MIN_CELL // images.shape[-1])
    if factor > 1:
        images = F.interpolate(images, scale_factor=factor, mode="nearest")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
