"""What a model family supplies to the training engine: its step, its optimizers, its evaluation.

A :class:`Task` knows the maths of one kind of training (classification, detection, a GAN, ...);
the engine (:mod:`visionzoo.train.engine`) owns the loop, precision, devices, checkpoints,
logging and budgets. A family registers its task with :func:`register_task` under the name its
models give in the registry (``@register_model(task=...)``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from visionzoo.data.factory import SPLITS
from visionzoo.utils import NonFiniteOutputError, check_finite_outputs, closest  # noqa: F401


class SettingError(ValueError):
    """Sampler settings its model cannot take. The message is ``names`` (the Python keywords, comma-separated) and
    ``predicate``; `visionzoo sample` says the same of its options (:meth:`naming`), each named once."""

    def __init__(self, names: Sequence[str], predicate: str) -> None:
        self.names, self.predicate = tuple(names), predicate
        super().__init__(f"{', '.join(self.names)} {predicate}")

    def naming(self, options: Mapping[str, str]) -> str:
        """The message with each setting named as ``options`` maps it (``{"top_k": "--top-k"}``)."""
        return f"{', '.join(options.get(name, name) for name in self.names)} {self.predicate}"


class LabelError(SettingError):
    """A sampler's ``label`` its model cannot take (no such class, or a model without classes): "label
    ``predicate``"."""

    def __init__(self, predicate: str) -> None:
        super().__init__(("label",), predicate)


@dataclass
class Setup:
    """What a task builds for a run: itself, the model, the data splits and what the checkpoint records."""

    task: Task
    model: nn.Module
    splits: dict[str, Dataset]
    run_meta: dict[str, Any]


class Task:
    """Base class of training tasks.

    Attributes:
        name: the task's registry name.
        metric: the name of the headline evaluation metric (a key of :meth:`evaluate`'s result).
        higher_is_better: whether a larger ``metric`` is better.
        defaults: engine settings this task prefers (``lr``, ``batch_size``, ``ema_decay``, ...);
            the user's explicit settings override them.
        generator: a ``torch.Generator`` the engine re-seeds before every step (from the seed, the
            rank and the step); draw the step's randomness (augmentation, mixup) from it so that a
            resumed run repeats the uninterrupted one exactly.
        step: the index of the training step being run (set by the engine before each step; a GAN's
            discriminator, for one, starts at a given step).
        total_steps: the run's planned length in steps, set with ``step`` (with only a time budget, the
            engine's current estimate, re-sized as the run goes; None outside the engine).
        single_process: why the task cannot train under ``torchrun`` (None: it can); the engine refuses
            such a run before it starts.
        report_names: the names of the files :meth:`report` may write into the run folder (``--overwrite``
            replaces them with the engine's own files, and keeps any other).
        scores: what :meth:`evaluate`'s metrics score where their names do not say it (`visionzoo eval` shows it
            beside them); None where they do.
    """

    name = "task"
    metric = "loss"
    higher_is_better = False
    defaults: Mapping[str, Any] = {}
    find_unused_parameters = False
    single_process: str | None = None
    report_names: tuple[str, ...] = ()
    scores: str | None = None

    def __init__(self) -> None:
        self.generator = torch.Generator()
        self.step = 0
        self.total_steps: int | None = None

    def optimizer_names(self) -> Sequence[str]:
        """The optimizers of one training step, in the order they step (e.g. a GAN's D then G)."""
        return ("model",)

    def optimizer_options(self, optimizer: str) -> dict[str, Any]:
        """Extra AdamW arguments of ``optimizer`` (e.g. a GAN's ``{"betas": (0.5, 0.999)}``); none by default."""
        return {}

    def parameter_groups(self, model: nn.Module, optimizer: str, weight_decay: float) -> list[dict[str, Any]]:
        """Parameter groups of ``optimizer``: by default, as timm, no weight decay on biases and norms (1-D)
        nor on the parameters a model names in ``no_weight_decay()`` (position tables, class tokens)."""
        return weight_decay_groups(model, weight_decay)

    def collate(self, samples: list[Any]) -> Any:
        return default_collate(samples)

    def prepare(self, device: torch.device) -> None:
        """Build, before the first step and off the run's clock, what the steps need and build at first use (a
        perceptual network trained once and cached); nothing by default."""

    def fit_training_images(self, model: nn.Module, train: Dataset, whole: bool) -> None:
        """Fit what ``model`` takes from its training images before the first step (Image GPT: its palette) to
        ``train``, the images the run trains on; ``whole``: the train split the set-up fitted to, not fewer of its
        images (``--train-size``). Nothing by default."""

    def training_step(self, model: nn.Module, batch: Any, optimizer: str) -> dict[str, torch.Tensor]:
        """Losses for ``optimizer``'s update on ``batch``: ``"loss"`` is back-propagated, the rest logged."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int, autocast: Callable[[], Any]) -> dict[str, float]:
        """Metrics of ``model`` (in eval mode) on ``dataset``; must contain :attr:`metric`."""
        raise NotImplementedError

    def evaluated_images(self, dataset: Dataset) -> int:
        """How many images of ``dataset`` :meth:`evaluate` scores (all of them by default; a GAN's FID fewer)."""
        return len(dataset)

    def report(self, model: nn.Module, dataset: Dataset, out: Path, batch_size: int,
               autocast: Callable[[], Any]) -> list[Path]:
        """Write pictures of ``model`` (in eval mode) on ``dataset`` into the run folder ``out`` at the end of
        training (e.g. a detector's precision–recall curves); the paths written. By default none."""
        return []

    def checkpoint_meta(self) -> dict[str, Any]:
        """What :meth:`from_checkpoint_meta` needs to rebuild this task (class names, sizes, ...)."""
        return {}

    def run_state(self) -> dict[str, Any]:
        """What this task learnt while training that a resumed run needs back (JSON-serialisable), beyond the
        weights and the step: e.g. the step at which a GAN's discriminator came on. None by default."""
        return {}

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        """Take back the :meth:`run_state` of the checkpoint a run resumes from (``{}`` for older checkpoints)."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this task's own options to ``visionzoo train``/``eval`` (an argument group)."""

    @classmethod
    def own_options(cls) -> dict[str, argparse.Action]:
        """The options :meth:`add_arguments` declares, by name (``"disc_start"``): the ones this task takes."""
        from visionzoo.cli import RecordingParser

        parser = RecordingParser(add_help=False)
        cls.add_arguments(parser)
        return {action.dest: action for action in parser.recorded_actions}

    @classmethod
    def models_taking(cls, option: str) -> list[str]:
        """The registered models that take this task's ``option`` (``"tokenizer"``): by default every model of the
        task."""
        from visionzoo.models import list_models

        return list_models(task=cls.name)

    @classmethod
    def setup(cls, model_name: str, data: str, img_size: int | None, model_args: Mapping[str, Any],
              checkpoint: str | Path | None = None, options: Mapping[str, Any] | None = None,
              splits: tuple[str, ...] = SPLITS) -> Setup:
        """Build the task, the model (from ``checkpoint`` if given) and the data's ``splits`` (those it has).

        ``options`` are the values of the task's own CLI options (see :meth:`add_arguments`); ``splits`` are all
        three for training, the one scored for ``visionzoo eval``, or for predict and sample the stand-in a
        checkpoint recorded of its data (a :class:`~visionzoo.data.Splits`, which ``open_splits`` passes through).
        """
        raise NotImplementedError

    def predict(self, model: nn.Module, images: torch.Tensor, autocast: Callable[[], Any]) -> list[dict[str, Any]]:
        """Predictions for ``images`` (Tensor[B, C, H, W] in [0, 1]), one dict per image."""
        raise ValueError(f"{self.name} models draw new images rather than predict on given ones; "
                         "use `visionzoo sample`")

    def sample(self, model: nn.Module, count: int, generator: torch.Generator, autocast: Callable[[], Any],
               **settings: Any) -> torch.Tensor:
        """``count`` new images from a generative ``model`` (in eval mode, on any device): Tensor[count, C, H, W] in
        [0, 1], on the CPU.

        ``settings`` are the sampler's (``temperature``, ``top_k``, ``top_p``, ``label``, ...); the
        randomness comes from ``generator`` alone, so a seed gives the same images.
        """
        raise ValueError(f"{self.name} models do not generate images; `visionzoo sample` needs a generative model")

    def describe(self, prediction: Mapping[str, Any]) -> str:
        """One line about a prediction for the terminal (default: its three best labels and scores)."""
        best = list(zip(prediction["labels"], prediction["scores"]))[:3]
        return ", ".join(f"{label} {score:.3f}" for label, score in best) if best else "nothing found"

    def draw(self, image: torch.Tensor, prediction: Mapping[str, Any], target: Any = None):
        """A ``PIL.Image`` showing ``prediction`` (and the ground truth ``target`` if given) on ``image``."""
        raise NotImplementedError

    def batches(self, dataset: Dataset, batch_size: int) -> Iterator[Any]:
        """The batches of ``dataset`` in order (for evaluation)."""
        for start in range(0, len(dataset), batch_size):
            yield self.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


def weight_decay_groups(model: nn.Module, weight_decay: float,
                        include: Callable[[nn.Parameter], bool] | None = None) -> list[dict[str, Any]]:
    """``model``'s trainable parameters (those ``include`` accepts) in two AdamW groups: ``weight_decay`` on
    the rest, none on biases and norms (1-D) or on what the model lists in ``no_weight_decay()``."""
    exempt = no_weight_decay_names(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad and (include is None or include(param)):
            (no_decay if param.ndim <= 1 or name in exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """The full names of the parameters that ``model`` or any submodule lists in its ``no_weight_decay()``
    (timm's hook), so they are found also inside a wrapper (DDP's ``module.``, a pretraining head)."""
    names = set()
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names |= {f"{prefix}.{name}" if prefix else name for name in listed()}
    return names


_TASKS: dict[str, Callable[..., Task]] = {}

# What each trained parameter costs at the least: its float32 weight and gradient and AdamW's two moments.
TRAINING_BYTES_PER_PARAMETER = 16
FROZEN_BYTES_PER_PARAMETER = 4


def available_memory() -> int | None:
    """The bytes of memory this machine can still give (Linux's MemAvailable, else the free pages), None where
    neither is known."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_memory(device: torch.device) -> tuple[int | None, str]:
    """The bytes a training on ``device`` can still take, and where they are, as a refusal names it: a CUDA device's
    free memory (``torch.cuda.mem_get_info``, "this GPU"), else :func:`available_memory` ("this machine")."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], "this GPU"
    return available_memory(), "this machine"


def check_training_memory(model_name: str, model_args: Mapping[str, Any], available: int | None = None) -> None:
    """Refuse, before it is built, a model whose weights, gradients and AdamW state alone outgrow this machine's memory
    ``available`` (default: :func:`available_memory`): counted on the meta device, which allocates nothing, so the
    run fails here rather than exhausting the machine (vqgan_transformer_imagenet_cin's 1.4 B parameters need 20 GiB
    before the first activation). The engine checks every run again against its device (:func:`check_model_fits`)."""
    from visionzoo.models import create_model, get_model_entry

    with torch.device("meta"):
        model = create_model(model_name, **model_args)
    available = available_memory() if available is None else available
    _refuse_unfit(model, model_name, get_model_entry(model_name).task, available, "this machine")


def check_model_fits(model: nn.Module, device: torch.device, task_name: str) -> None:
    """Refuse to train the built ``model`` (a model of the ``task_name`` task) on ``device`` where its weights,
    gradients and AdamW state alone outgrow the memory there (:func:`device_memory`), before the run's folder is
    made. The weights it already holds on that device (a model built on the CPU trained there) count as available
    to it."""
    available, where = device_memory(device)
    if available is not None:
        held = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type == device.type)
        _refuse_unfit(model, getattr(model, "model_name", type(model).__name__), task_name, available + held, where)


def _refuse_unfit(model: nn.Module, model_name: str, task_name: str, available: int | None, where: str) -> None:
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    needed = trained * TRAINING_BYTES_PER_PARAMETER + frozen * FROZEN_BYTES_PER_PARAMETER
    if available is not None and needed > available:
        raise ValueError(f"{model_name} has {trained + frozen:,} parameters: training it needs at least "
                         f"{_gibibytes(needed)} for its weights, gradients and AdamW state, and {where} has "
                         f"{_gibibytes(available)} available: train a smaller model (see `visionzoo list-models "
                         f"--task {task_name}`)")


def _gibibytes(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**29 else f"{count / 2**20:.1f} MiB"


def check_trained_images(model_name: str, checkpoint: str | Path | None, data: str, **values: int) -> None:
    """Raise a ValueError naming both unless the model arguments recorded in our ``checkpoint`` (None, or a foreign
    file: nothing to check) equal ``values`` (``in_chans``, ``img_size``) of ``data``'s images; built for those
    instead, the model would fail to load as a list of missing and misshapen weights."""
    if checkpoint is None:
        return
    from visionzoo.checkpoint import read_metadata

    trained = ((read_metadata(checkpoint) or {}).get("model") or {}).get("args") or {}
    for name, value in values.items():
        if trained.get(name, value) != value:
            raise ValueError(f"{model_name} from {checkpoint} was trained with {name} {trained[name]}, the {data} "
                             f"images here have {value}: give the data and --img-size it was trained on")


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make ``get_task(name)`` build this task."""

    def decorator(cls: type[Task]) -> type[Task]:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return decorator


def check_task_options(task: type[Task], model_name: str, options: Mapping[str, Any]) -> None:
    """Refuse an option given in ``options`` (not None) that ``task``, the task of ``model_name``, does not take:
    its run would ignore it silently. The ValueError names the option and the models that take it."""
    own = task.own_options()
    for name, value in options.items():
        if value is None or name in own:
            continue
        takers = {other: other_task.own_options()[name] for other, other_task in _TASKS.items()
                  if name in other_task.own_options()}
        if not takers:
            raise ValueError(f"unknown task option {name!r}; {model_name} ({task.name}) takes "
                             f"{', '.join(own) if own else 'none'}")
        flag = next(iter(takers.values())).option_strings[0]
        models = [model for other in takers for model in _TASKS[other].models_taking(name)]
        shown = ", ".join(models[:3]) + (", ..." if len(models) > 3 else "")
        raise ValueError(f"{flag} is for {' and '.join(takers)} models ({shown}); {model_name}, a model of the "
                         f"{task.name} task, would ignore it")


def get_task(name: str) -> Callable[..., Task]:
    if name not in _TASKS:
        near = closest(name, _TASKS)
        hint = f"closest registered: {', '.join(near)}" if near else f"registered: {', '.join(sorted(_TASKS))}"
        raise ValueError(f"unknown task {name!r}; {hint}")
    return _TASKS[name]
