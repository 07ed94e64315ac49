"""The training engine: one loop for every family.

The engine owns what is not the model's maths: AdamW, warmup + cosine learning rate, gradient
clipping, bf16 autocast (CPU and CUDA), an EMA of the weights, budgets (steps, epochs, minutes),
a progress bar, a JSONL metrics log, a loss-curve PNG, atomic ``.safetensors`` checkpoints with
exact resume, and DistributedDataParallel under ``torchrun``. The family supplies a
:class:`~visionzoo.train.task.Task`.

Exact resume rests on three facts: the batch order is a pure function of ``(seed, epoch)``, the
randomness of a step is re-seeded from ``(seed, rank, step)`` before it runs, and the learning
rate is a pure function of the step and the plan (its steps, its warmup and the point a time budget
last re-sized it from); so the checkpoint needs only the weights, the EMA, the optimizer state, the
step and the plan.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import functools
import glob
import json
import logging
import math
import os
import pickle
import shutil
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, get_worker_info
from tqdm import tqdm

from visionzoo.checkpoint import (
    CheckpointError,
    atomic_write,
    model_state,
    read_checkpoint,
    read_metadata,
    save_checkpoint,
)
from visionzoo.models._registry import load_state_dict_strict
from visionzoo.train.distributed import (
    DistInfo,
    EpochBatchSampler,
    close_distributed,
    every_rank,
    init_distributed,
    mean_over_ranks,
    on_main,
    own_share,
    raise_first_failure,
    rank0_value,
    requested_world_size,
    step_seed,
)
from visionzoo.train.task import _TASKS, NonFiniteOutputError, Task, check_model_fits
from visionzoo.utils import is_integer, native_bf16, require_folder_or_absent

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.safetensors"
METRICS_NAME = "metrics.jsonl"
RUN_MARKER = ".visionzoo-run"  # written into every run and report folder: --overwrite removes only such folders
# Evidence that a folder is a run's: older runs lack the marker. Generic names (summary.json, report.json) are not
# evidence, since a user's own folder may hold files so named.
RUN_FILES = (RUN_MARKER, CHECKPOINT_NAME, METRICS_NAME)
# The files the engine writes into a run folder (the task's pictures are its Task.report_names): --overwrite replaces
# only these, and keeps whatever else the user put there.
ENGINE_OUTPUTS = (RUN_MARKER, CHECKPOINT_NAME, Path(CHECKPOINT_NAME).with_suffix(".json").name, METRICS_NAME,
                  "loss.png", "summary.json")
PRECISIONS = ("auto", "bf16", "fp32")


# The start of torch's error for a BatchNorm layer given one value per channel in training (a batch of one image
# whose feature map has come down to 1x1).
BATCHNORM_ONE_VALUE = "Expected more than 1 value per channel when training"
# DistributedDataParallel's warning, in backward, for a gradient whose strides are not its bucket's, which "may
# impair performance". It also compares the stride of a dimension of size 1, which places nothing: a decoder's last
# layer to one channel (a VQ-VAE's on Digits, weight [32, 1, 4, 4]) has a gradient of the bucket's memory layout,
# and every rank printed the five lines (pytorch/pytorch#47163).
SPURIOUS_DDP_WARNING = "Grad strides do not match bucket view strides"
# With only a time budget, the schedule's length is re-estimated this often (steps), and at these steps before the
# first REPLAN_EVERY: the first plan comes from three steps timed before the run, which a busy spell can slow tenfold,
# and a short plan would otherwise end before it is re-sized. Each estimate takes the pace of the last PACE_WINDOW
# steps, not of the whole run, so that a plan follows a machine that gets busy (or free) within a few re-plans.
REPLAN_EVERY = 10
EARLY_REPLANS = (5, 8)
PACE_WINDOW = 20


@dataclass
class TrainConfig:
    """Settings of one run. ``None`` means "the task's default, else the engine's"."""

    out: str = "runs/train"
    batch_size: int | None = None
    max_steps: int | None = None
    epochs: float | None = None
    minutes: float | None = None
    lr: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] | None = None
    warmup_steps: int | None = None
    min_lr_ratio: float | None = None
    grad_clip: float | None = None
    precision: str | None = None  # None: "auto", or on resume the run's
    ema_decay: float | None = None
    seed: int | None = None  # None: 0, or on resume the run's
    num_workers: int | None = None  # None: 0, or on resume the run's
    checkpoint_every: int | None = None  # None: 100, or on resume the run's
    eval_every: int | None = None  # None: only at the end, or on resume the run's
    eval_batch_size: int | None = None
    log_every: int = 1
    device: str | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


ENGINE_DEFAULTS: Mapping[str, Any] = {
    "batch_size": 64,
    "epochs": 10,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "grad_clip": 1.0,
    "ema_decay": 0.0,
    "min_lr_ratio": 0.01,
    "betas": None,  # each optimizer's from the task's optimizer_options, else AdamW's
    "seed": 0,
    "precision": "auto",
    "num_workers": 0,
    "checkpoint_every": 100,
}


@dataclass
class TrainResult:
    out: Path
    steps: int
    train_seconds: float
    samples_per_second: float  # of this session's steps: from ``start_step`` on
    metrics: dict[str, float] = field(default_factory=dict)
    start_step: int = 0  # where this session began: a resumed run's checkpoint step, else 0
    ended_by: str = ""  # the budget that ended the run: "time", "steps" or "epochs"
    planned_steps: int = 0  # the steps its learning-rate schedule was planned for
    val_images_scored: int | None = None  # the val images its metrics score (None: no val set)
    val_split_images: int | None = None  # the val split's, of which they are the first


# The settings a resumed run takes from its checkpoint unless they are given again (its budget is not one). The
# periods too: a run started with --checkpoint-every 50 and resumed without it would otherwise checkpoint only at
# its end, and a second kill lose all it trained since the resume.
RESUMED_SETTINGS = ("batch_size", "lr", "weight_decay", "betas", "warmup_steps", "min_lr_ratio", "grad_clip",
                    "ema_decay", "seed", "precision", "num_workers", "checkpoint_every", "eval_every")


def resumed_config(config: TrainConfig) -> TrainConfig:
    """For a resumed run, ``config`` with its unset settings of ``RESUMED_SETTINGS`` taken from its checkpoint's
    config, so that it goes on as it was trained, not with the task's defaults, and, when it gives no budget, the
    checkpoint's (its planned steps for a time budget); else ``config`` itself."""
    path = Path(config.out) / CHECKPOINT_NAME
    meta = read_metadata(path) if config.resume and path.is_file() else None
    if meta is not None:
        check_training_record(meta, path)
    trained = (meta or {}).get("config", {})
    fill = {key: trained[key] for key in RESUMED_SETTINGS if getattr(config, key) is None and trained.get(key) is not None}
    if "betas" in fill:
        fill["betas"] = tuple(fill["betas"])
    if meta is not None and config.max_steps is None and config.epochs is None and config.minutes is None:
        # No budget given: the run goes on to the end of its plan (a time budget's planned steps, also one fewer
        # than its --max-steps or --epochs), on its schedule.
        budget = {key: trained.get(key) for key in ("max_steps", "epochs") if trained.get(key) is not None}
        fill.update(budget if budget and trained.get("minutes") is None else {"max_steps": meta["total_steps"]})
    return dataclasses.replace(config, **fill)


def check_training_record(meta: Mapping[str, Any] | None, path: str | Path) -> None:
    """Refuse a file that is not one of the engine's checkpoints (foreign, or our metadata without a run's step and
    plan): a run cannot go on from it."""
    if meta is None or "step" not in meta or "total_steps" not in meta:
        raise CheckpointError(f"{path} is not a visionzoo training checkpoint")


def resolve_config(config: TrainConfig, task: Task) -> TrainConfig:
    """Fill the ``None`` settings from the task's defaults, then the engine's."""
    resolved = copy.copy(config)
    for name in ENGINE_DEFAULTS:
        if getattr(resolved, name) is None:
            setattr(resolved, name, task.defaults.get(name, ENGINE_DEFAULTS[name]))
    if config.max_steps is not None or config.minutes is not None:
        if config.epochs is None:
            resolved.epochs = None
    check_config(resolved)
    return resolved


def check_config(config: TrainConfig) -> None:
    """Refuse settings out of range, naming each by its flag: a negative gradient clip, for one, would flip
    every gradient and train uphill without a sign of trouble."""
    bounds = {  # setting: (flag, lowest, lowest included, highest, highest included)
        "lr": ("--lr", 0.0, False, math.inf, False),
        "weight_decay": ("--weight-decay", 0.0, True, math.inf, False),
        "grad_clip": ("--grad-clip", 0.0, True, math.inf, False),
        "ema_decay": ("--ema-decay", 0.0, True, 1.0, False),
        "min_lr_ratio": ("min_lr_ratio", 0.0, True, 1.0, True),
        "warmup_steps": ("--warmup-steps", 0, True, math.inf, False),
        "batch_size": ("--batch-size", 1, True, math.inf, False),
        "num_workers": ("--workers", 0, True, math.inf, False),
        # The budgets and periods: a 0 period was a ZeroDivisionError mid-run, a negative eval_every evaluated
        # every step, and a budget of 0 or less trained nothing (or one step) without a word.
        "max_steps": ("--max-steps", 1, True, math.inf, False),
        "epochs": ("--epochs", 0.0, False, math.inf, False),
        "minutes": ("--minutes", 0.0, False, math.inf, False),
        "checkpoint_every": ("--checkpoint-every", 1, True, math.inf, False),
        "log_every": ("log_every", 1, True, math.inf, False),
        "eval_every": ("--eval-every", 0, True, math.inf, False),  # 0: only at the end
        "eval_batch_size": ("eval_batch_size", 1, True, math.inf, False),
    }
    integers = ("batch_size", "num_workers", "warmup_steps", "max_steps", "checkpoint_every", "log_every",
                "eval_every", "eval_batch_size", "seed")
    for name in integers:
        value = getattr(config, name)
        if value is not None and not is_integer(value):
            raise ValueError(f"{bounds[name][0] if name in bounds else name} must be an integer, got {value!r}")
    for name, (flag, low, low_in, high, high_in) in bounds.items():
        value = getattr(config, name)
        if value is None:
            continue
        above = value >= low if low_in else value > low
        below = value <= high if high_in else value < high
        if not (above and below):  # also refuses NaN
            interval = f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
            raise ValueError(f"{flag} must lie in {interval}, got {value}")


# A plan's start: (step, share of its phase done there); see lr_factor.
FRESH_PLAN = (0, 0.0)


def schedule_share(step: int, total_steps: int, warmup_steps: int,
                   anchor: tuple[int, float] = FRESH_PLAN) -> tuple[bool, float]:
    """Whether ``step`` is in the warmup, and the share of its phase (the warmup, else the cosine decay) done before
    it: from ``anchor``'s share at ``anchor``'s step (the first step of a re-sized plan, in the same phase; else the
    phase's start) linearly to all of it at the phase's end (``warmup_steps``, else ``total_steps``)."""
    start, done = anchor
    if step < warmup_steps:
        start, done = (start, done) if start < warmup_steps else FRESH_PLAN
        return True, done + (1.0 - done) * (step - start) / (warmup_steps - start)
    start, done = (start, done) if start >= warmup_steps else (warmup_steps, 0.0)
    return False, min(1.0, done + (1.0 - done) * (step - start) / max(1, total_steps - start))


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float,
              anchor: tuple[int, float] = FRESH_PLAN) -> float:
    """Linear warmup to 1 over ``warmup_steps``, then cosine decay to ``min_ratio`` at ``total_steps``.

    ``anchor`` (step, share of its phase done there) is where a plan re-sized during the run takes over: it goes on
    from the learning rate the run had reached, not from where a plan of its length would be at that step (see
    :func:`schedule_share`)."""
    warming, share = schedule_share(step, total_steps, warmup_steps, anchor)
    if warming:  # the share done once this step has run
        return share + (1.0 - share) / (warmup_steps - step)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * share))


def check_warmup(warmup_steps: int | None, total_steps: int | None, minutes: float | None = None) -> None:
    """Refuse a warmup longer than the run (``total_steps``; None: not known yet; with ``minutes``, the steps
    planned for that time budget): its learning rate would never reach ``--lr``, nor the cosine decay begin."""
    if warmup_steps is not None and total_steps is not None and warmup_steps > total_steps:
        run = (f"the run's {total_steps} steps" if minutes is None
               else f"the {total_steps} steps that --minutes {minutes:g} buys at this pace")
        raise ValueError(f"--warmup-steps {warmup_steps} is more than {run}: its learning "
                         f"rate would stay below --lr, at {total_steps / warmup_steps:.2g} of it at the last step")


def adamw(groups: list[dict[str, Any]], **options: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW(groups, **options)``, fused where every parameter is a floating-point tensor on a CPU or
    CUDA device: one kernel over all tensors instead of a pass per operation (on this project's CPU, a ResNet-18's
    step 8.6 against 25 ms, and 1.19× the samples/s of its bf16 training at batch 64 and 32 px)."""
    params = [param for group in groups for param in group["params"]]
    fused = bool(params) and all(param.is_floating_point() and param.device.type in ("cpu", "cuda")
                                 for param in params)
    return torch.optim.AdamW(groups, **options, **({"fused": True} if fused else {}))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` becomes ``bf16`` where the device runs it natively, else ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast_context(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts: bf16 autocast on CPU or CUDA, or nothing for fp32 (``auto`` resolved)."""
    if resolve_precision(precision, device) == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


class ModelEma:
    """Exponential moving average of a model's weights and floating-point buffers (BatchNorm's running
    statistics, as timm's ModelEmaV3); integer buffers (``num_batches_tracked``) are copied.

    The decay ramps up as ``min(decay, (1 + step) / (10 + step))`` so the average is not dominated
    by the random initialisation early in short runs.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_value, value in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_value.dtype.is_floating_point:
                ema_value.lerp_(value, 1.0 - decay)
            else:
                ema_value.copy_(value)


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor inside (lists, tuples, dicts) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


class WorkerError:
    """An exception raised in a data loader worker, with the worker's traceback as text."""

    def __init__(self, error: Exception):
        self.error, self.traceback = error, "".join(traceback.format_exception(error))

    def raise_it(self) -> None:
        self.error.add_note(f"raised in a data loader worker:\n{self.traceback}")
        raise self.error


def agreed_batches(info: DistInfo, loader: Iterable[Any]) -> Iterator[Any]:
    """``loader``'s batches (a :class:`WorkerError` raised), each once every rank has loaded its own: a rank that
    cannot load its batch (an unreadable image in its share) reports its error, and the others stop instead of
    waiting for it in the step's all-reduce (see :func:`raise_first_failure`). Every rank's loader has as many."""
    batches = iter(loader)
    while True:
        batch, failure = None, None
        try:
            batch = next(batches)
            if isinstance(batch, WorkerError):
                batch.raise_it()
        except StopIteration:
            return
        except Exception as error:
            failure = error
        raise_first_failure(info, failure)
        yield batch


def _as_is(batch: Any) -> Any:
    return batch


class Batches(Dataset):
    """``collate`` of ``dataset``'s samples at each list of indices (a batch sampler's): one batch per item.

    In a worker process an error is returned as a :class:`WorkerError` for the main process to raise as it was:
    DataLoader would raise it again as "Caught ValueError in DataLoader worker process 0" with the worker's
    traceback in its message, which the CLI prints in place of the error's own one line."""

    def __init__(self, dataset: Dataset, collate: Callable[[list[Any]], Any]):
        self.dataset, self.collate = dataset, collate

    def __getitem__(self, indices: list[int]) -> Any:
        try:
            return self.collate([self.dataset[i] for i in indices])
        except Exception as error:
            if get_worker_info() is None:
                raise
            try:  # one that does not survive the trip back is left to DataLoader's own report
                pickle.loads(pickle.dumps(error))
            except Exception:
                raise error from None
            return WorkerError(error)


def run_outputs() -> tuple[str, ...]:
    """The names of the files a run of any task may write into its folder: the engine's and the tasks' pictures."""
    pictures = sorted({name for task in _TASKS.values() for name in task.report_names})
    return (*ENGINE_OUTPUTS, *pictures)


def remove_outputs(out: Path, outputs: Iterable[str]) -> list[str]:
    """Remove ``outputs`` (paths relative to ``out``, a subfolder's too: ``job/loss.png``) from ``out``, with the
    temporary files of their writes cut short, and the subfolders this leaves empty or holding only a run marker;
    the names of what ``out`` still holds (the user's), sorted."""
    folders = set()
    for name in outputs:
        path = out / name
        if path.is_file() or path.is_symlink():
            path.unlink()
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            stale.unlink()
        if path.parent != out:
            folders.add(path.parent)
    for folder in folders:
        if folder.is_dir() and all(entry.name == RUN_MARKER for entry in folder.iterdir()):
            shutil.rmtree(folder)
    return sorted(entry.name for entry in out.iterdir() if entry.name != RUN_MARKER)


def prepare_run_dir(out: str | Path, resume: bool, overwrite: bool, resumable: bool = True,
                    outputs: Iterable[str] | None = None) -> Path:
    """The run folder, created and marked as ours; an existing non-empty one needs ``resume`` or ``overwrite``,
    and ``overwrite`` replaces only a folder that a run or tour wrote (a mistyped ``--out`` is not touched), and in it
    only the files a run writes (``outputs``, relative to ``out``; default :func:`run_outputs`): the user's own files
    beside them are kept, and logged. ``resumable`` is False for a command without ``--resume`` (the tour), whose
    error does not suggest it."""
    out = require_folder_or_absent(out, "--out")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    # a run's folder without a checkpoint: a run stopped before its first one, with nothing to resume from
    unsaved = not (out / CHECKPOINT_NAME).is_file() and any((out / name).exists() for name in RUN_FILES)
    if resume:
        if not (out / CHECKPOINT_NAME).is_file():
            start_again = ": the run stopped before its first checkpoint; start it again with --overwrite" if unsaved else ""
            raise FileNotFoundError(f"--resume: no {CHECKPOINT_NAME} in {out}{start_again}")
        for stale in out.glob(".*.tmp"):  # left by a process killed while writing
            stale.unlink()
        return out
    # A folder holding only our marker is a run that failed before it wrote anything: nothing there to keep.
    if out.exists() and any(path.name != RUN_MARKER for path in out.iterdir()):
        if not overwrite:
            advice = "use --resume to continue it or --overwrite" if resumable else "use --overwrite to replace it"
            if resumable and unsaved:
                advice = (f"it holds no {CHECKPOINT_NAME} to resume (the run stopped before its first checkpoint); "
                          "use --overwrite to start it again")
            raise FileExistsError(f"run folder {out} exists and is not empty; {advice}")
        if not any((out / name).exists() for name in RUN_FILES):
            raise FileExistsError(
                f"--overwrite: {out} is not a visionzoo run folder (it holds no {RUN_MARKER}, {CHECKPOINT_NAME} or "
                f"{METRICS_NAME}), so it is not removed; choose another --out, or empty it yourself"
            )
        kept = remove_outputs(out, run_outputs() if outputs is None else outputs)
        if kept:
            log.info("--overwrite replaced the run in %s and kept the files no run writes: %s", out, ", ".join(kept))
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_MARKER).touch()
    return out


def lock_folder(out: str | Path) -> int | None:
    """An exclusive lock on the existing folder ``out`` (a descriptor to ``os.close``; the system releases it when the
    process ends), or None where there is no such folder or its system or file system has no locks (Windows, some
    network and FUSE file systems); FileExistsError where another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock, and no descriptor of a folder to hold
        return None
    if not Path(out).is_dir():
        return None
    held = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(held)
        raise FileExistsError(f"run folder {out} is in use by another run (a train still writing into it holds it); "
                              "wait for that run to end, or stop it, first") from None
    except OSError as error:  # no locks there: the run goes on unguarded, as it did before folders were locked
        os.close(held)
        log.debug("run folder %s is not locked: %s", out, error)
        return None
    return held


def _close_lock(held: int | None) -> None:
    if held is not None:
        os.close(held)


def claim_run_dir(out: str | Path, resume: bool, overwrite: bool) -> int | None:
    """:func:`prepare_run_dir`, the folder locked for this run first (the descriptor of :func:`lock_folder`): a run
    started into a folder that another is still writing, a --resume in a second terminal for one, is refused before
    --overwrite removes anything, and does not write its checkpoints and log between the other's."""
    held = lock_folder(out)
    try:
        folder = prepare_run_dir(out, resume, overwrite)
        return held if held is not None else lock_folder(folder)
    except BaseException:
        _close_lock(held)
        raise


def unmade_folders(out: str | Path) -> list[Path]:
    """``out`` and those of the folders above it that do not exist, innermost first: what making ``out`` creates."""
    out = Path(out).absolute()
    made = []
    for folder in (out, *out.parents):
        if folder.exists():
            break
        made.append(folder)
    return made


def remove_unwritten_run_dir(out: str | Path, made: Iterable[Path], marked: bool) -> None:
    """Take back what claiming the run folder ``out`` made, for a run that stopped (failed, or was interrupted in its
    set-up: a VQGAN's domain classifier trains for a minute) before it wrote anything there: the marker it put in
    (``marked``), then the folders it made (``made``, innermost first) that are empty. A folder holding anything
    else, the user's files or the run's, is left as it is."""
    out = Path(out)
    if not out.is_dir() or any(entry.name != RUN_MARKER for entry in out.iterdir()):
        return
    if marked:
        (out / RUN_MARKER).unlink(missing_ok=True)
    for folder in made:
        if any(folder.iterdir()):
            return
        folder.rmdir()


def _optimizer_tensors(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{name}.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(name: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optimizer.{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, entry = key[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[entry] = value
    for key, value in meta["scalars"].items():
        index, entry = key.split(".", 1)
        state.setdefault(int(index), {})[entry] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# What a checkpoint's optimizer state fixes for the rest of a run: loading it would override these silently.
RESUMED_HYPERPARAMETERS = (("base_lr", "--lr"), ("weight_decay", "--weight-decay"), ("betas", "--opt-betas"))


def check_resumed_hyperparameters(path: str | Path, groups: list[dict[str, Any]],
                                  saved_groups: list[dict[str, Any]]) -> None:
    """Refuse to resume with another learning rate, weight decay or betas than the checkpoint's: its optimizer
    state would replace them, and the run would go on with values other than those it was given and logs."""
    def shown(value: Any) -> str:  # as the flag is written: betas as two numbers
        return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    for key, flag in RESUMED_HYPERPARAMETERS:
        for group, saved in zip(groups, saved_groups):
            asked, trained = group.get(key), saved.get(key)
            if asked is not None and trained is not None and shown(asked) != shown(trained):
                raise CheckpointError(f"--resume: {path} was trained with {flag} {shown(trained)}, this run asks "
                                      f"for {shown(asked)}; leave {flag} out or give {shown(trained)} to continue it")


def resumed_epoch_step(meta: Mapping[str, Any], steps_per_epoch: int) -> int:
    """Where a checkpoint's data position falls at ``steps_per_epoch`` batches an epoch, counted in this batch
    size's steps from the run's start: its epoch and batch when the global batch size is unchanged; after a
    change, its epoch and the same fraction of the epoch, so that the run neither sees part of an epoch twice
    nor counts ``--epochs`` in batches of the new size. Checkpoints written before the position was recorded:
    their step."""
    if "epoch_position" not in meta:
        return meta["step"]
    epoch, batch, saved_steps_per_epoch = meta["epoch_position"]
    return epoch * steps_per_epoch + min(steps_per_epoch, round(batch * steps_per_epoch / saved_steps_per_epoch))


def model_record(model: nn.Module) -> dict[str, Any]:
    """The registry name and arguments that rebuild ``model`` (see ``create_model``)."""
    return {"name": getattr(model, "model_name", type(model).__name__), "args": getattr(model, "model_args", {})}


class Trainer:
    """Runs one training of ``model`` on ``train_set`` with ``task``; see :func:`fit`."""

    def __init__(self, task: Task, model: nn.Module, train_set: Dataset, val_set: Dataset | None,
                 config: TrainConfig, run_meta: Mapping[str, Any] | None = None) -> None:
        self.task = task
        self.config = resolve_config(resumed_config(config), task)
        # resumed without a budget: the checkpoint's plan is the budget (--max-steps filled in for the user)
        self.budget_from_checkpoint = config.resume and all(
            getattr(config, name) is None for name in ("max_steps", "epochs", "minutes"))
        if task.single_process and requested_world_size() > 1:
            raise ValueError(f"the {task.name} task does not run under torchrun ({task.single_process}); "
                             "train it in one process")
        self.dist = init_distributed(self.config.device)
        self.config.precision = resolve_precision(self.config.precision, self.dist.device)
        failure = None
        try:  # before the run folder is made; each rank asks its own device, so the refusal may be one rank's alone
            with own_share(self.dist):
                check_model_fits(model, self.dist.device, task.name)
        except ValueError as error:
            failure = error
        raise_first_failure(self.dist, failure)  # the other ranks stop too, rather than wait for it at the folder
        self.train_set = train_set
        self.val_set = val_set
        show_preparation_progress((train_set, val_set), self.dist.is_main and self.config.progress)
        # A data set that computes in processes of its own as it prepares (proposals) takes --workers N >= 1; at the
        # default 0, which keeps the cheap loading in the main process, the costly preparation still uses every CPU.
        for dataset in (train_set, val_set):
            if hasattr(dataset, "workers"):
                dataset.workers = self.config.num_workers or None
        self.run_meta = dict(run_meta or {})
        self.out = Path(self.config.out)
        cfg = self.config
        self.steps_per_epoch = EpochBatchSampler.steps_per_epoch(len(train_set), cfg.batch_size, self.dist.world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training set has {len(train_set)} samples, fewer than one batch of "
                f"{cfg.batch_size} x {self.dist.world_size} process(es); lower --batch-size"
            )
        # Steps whose batches the epoch arithmetic skips: nonzero after resuming with another global batch size,
        # so that step ``step`` is batch ``(step - step_offset) % steps_per_epoch`` of its epoch.
        self.step_offset = 0
        if not cfg.resume:  # a resumed run is checked once its plan is read from the checkpoint
            check_warmup(cfg.warmup_steps, self._fixed_budget_steps())
        # what claiming the folder makes (its folders, its marker), taken back if the run stops before writing
        self._claimed: tuple[list[Path], bool] | None = None

        def claim() -> int | None:
            self._claimed = (unmade_folders(self.out), not (self.out / RUN_MARKER).exists())
            return claim_run_dir(self.out, cfg.resume, cfg.overwrite)

        held = on_main(self.dist, claim)  # rank 0 writes
        # a Trainer dropped without fit lets go of the folder as it is collected
        self._release_at_collection = weakref.finalize(self, _close_lock, held)
        try:
            self._start(model, config)
        except BaseException:
            self._remove_unwritten_run_dir()
            self.release_run_dir()
            raise

    def _start(self, model: nn.Module, config: TrainConfig) -> None:
        """The set-up once the run folder is held: the model, optimizers and EMA, the resumed state, the plan."""
        task, cfg = self.task, self.config
        torch.manual_seed(cfg.seed)
        self.model = model.to(self.dist.device)
        self.autocast = autocast_context(self.dist.device, cfg.precision)
        self.optimizers = {
            name: adamw(task.parameter_groups(self.model, name, cfg.weight_decay), lr=cfg.lr,
                        **{**task.optimizer_options(name), **({"betas": cfg.betas} if cfg.betas else {})})
            for name in task.optimizer_names()
        }
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group.setdefault("base_lr", group["lr"])
        self.ema = ModelEma(self.model, cfg.ema_decay) if cfg.ema_decay else None
        self.step = 0
        self.train_seconds = 0.0
        self.total_steps: int | None = None
        self.train_model: nn.Module = self.model
        self.warmup_steps = 1  # for the timing steps of a time budget
        self.resumed_warmup_steps: int | None = None
        self.lr_anchor = FRESH_PLAN  # where a re-sized plan took over (see lr_factor)
        self.warmup_cut_said = False  # a re-plan that cuts the warmup says so once (see _resize_plan)
        if cfg.resume:
            self._load(config)
        resumed_plan = (self.total_steps, self.resumed_warmup_steps)
        # --minutes is this session's time: on resume it counts from here, not from the run's start.
        self.session_start_seconds = self.train_seconds
        # The schedule's length follows this session's budget: the steps (or epochs) counted from the run's start,
        # or the steps done plus those that --minutes buys.
        self.total_steps = self._plan_total_steps()
        if cfg.warmup_steps is not None:  # a time budget's plan too: re-plans would only shorten it after the fact
            fixed = self._fixed_budget_steps()
            check_warmup(cfg.warmup_steps, self.total_steps,
                         cfg.minutes if fixed is None or self.total_steps < fixed else None)
            self.warmup_steps = cfg.warmup_steps
        elif self.resumed_warmup_steps is not None:  # a run keeps its warmup: a longer plan does not re-enter it
            self.warmup_steps = self.resumed_warmup_steps
        else:
            self.warmup_steps = max(1, self.total_steps // 20)
        self.warmup_share = self.warmup_steps / self.total_steps  # what a re-plan that cuts the warmup keeps
        kept_warmup = self.warmup_steps == resumed_plan[1] and self.lr_anchor[0] < self.warmup_steps
        if (self.total_steps, self.warmup_steps) != resumed_plan and not kept_warmup:
            # a resumed run with another plan: its decay is re-sized to it from the start (a warmup under way and
            # kept goes on as it was)
            self.lr_anchor = FRESH_PLAN
        if self.dist.distributed:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.dist.local_rank] if self.dist.device.type == "cuda" else None,
                find_unused_parameters=task.find_unused_parameters,
            )

    def _check_resumed_budget(self, config: TrainConfig) -> None:
        """Refuse a resumed run's ``--max-steps`` or ``--epochs`` given again (``config``) below the steps done: the
        budget counts from the run's start, and such a run would train nothing, silently; and a ``--warmup-steps``
        longer than that budget."""
        fixed = self._fixed_budget_steps()
        if fixed is None:  # a time budget: its warmup is checked against its plan
            return
        if fixed < self.step and (config.max_steps is not None or config.epochs is not None):
            budget = self._first_fixed_budget()
            raise ValueError(f"--resume: {self.out} has trained {self.step} steps already and {budget} counts "
                             f"from the run's start; give more than {self.step} steps to continue it")
        check_warmup(self.config.warmup_steps, fixed)

    # ----------------------------------------------------------------------------------- budget
    def _fixed_budgets(self) -> dict[str, int]:
        """The steps from the run's start that each of ``--max-steps`` and ``--epochs`` given allows, by flag."""
        cfg = self.config
        budgets = {}
        if cfg.max_steps is not None:
            budgets[f"--max-steps {cfg.max_steps}"] = cfg.max_steps
        if cfg.epochs is not None:
            steps = cfg.epochs * self.steps_per_epoch
            if not math.isfinite(steps):  # a finite --epochs past ~1e306: math.ceil would raise OverflowError
                raise ValueError(f"--epochs {cfg.epochs:g} is more steps than can be counted ({self.steps_per_epoch} "
                                 "an epoch); give fewer epochs, or --max-steps")
            steps = self.step_offset + max(1, math.ceil(steps))
            budgets[f"--epochs {cfg.epochs:g} ({steps} steps)"] = steps
        return budgets

    def _first_fixed_budget(self) -> str:
        """The flag (and value) of the fixed budget reached first: the one whose steps are the fewest."""
        return min(self._fixed_budgets().items(), key=lambda item: item[1])[0]

    def _fixed_budget_steps(self) -> int | None:
        """The steps from the run's start that ``--max-steps`` and ``--epochs`` allow (the first reached ends the
        run); None for a time budget alone."""
        return min(self._fixed_budgets().values(), default=None)

    def _plan_total_steps(self) -> int:
        """The steps of the schedule: those of ``--max-steps``/``--epochs``, or those ``--minutes`` buys at the pace of
        a few steps timed now; with both, the fewer (the budget reached first), so that the learning rate decays
        within the run whichever ends it."""
        cfg = self.config
        fixed = self._fixed_budget_steps()
        if cfg.minutes is None:
            return fixed
        # Time a few steps on a throw-away copy to size the cosine schedule.
        seconds = self._seconds_per_step()
        # Each rank timed its own steps: all follow rank 0's plan, or their learning rates differ.
        planned = cfg.minutes * 60 / seconds
        if not math.isfinite(planned):
            raise ValueError(f"--minutes {cfg.minutes:g} buys more steps than can be counted at {seconds:.3g} s a "
                             "step; give fewer minutes, or --max-steps")
        steps = int(rank0_value(self.dist, max(1, int(planned))))
        after = f" after the {self.step} done" if self.step else ""
        if fixed is not None and fixed <= self.step + steps:
            log.info("time budget %g min at %.3f s/step: %d steps%s, more than %s allows: planning %d steps",
                     cfg.minutes, seconds, steps, after, self._first_fixed_budget(), fixed)
            return fixed
        log.info("time budget %g min at %.3f s/step: planning %d steps%s", cfg.minutes, seconds, steps, after)
        return self.step + steps

    def _seconds_per_step(self, repeats: int = 3) -> float:
        saved_model = copy.deepcopy(self.model.state_dict())
        saved_optim = {n: copy.deepcopy(o.state_dict()) for n, o in self.optimizers.items()}
        self._prepare_train_set()
        sampler = EpochBatchSampler(len(self.train_set), self.config.batch_size, self.config.seed, epoch=0)
        batch = self.task.collate([self.train_set[i] for i in next(iter(sampler))])
        times = []
        for index in range(repeats + 1):
            start = time.perf_counter()
            self._train_step(move_to(batch, self.dist.device), index)
            times.append(time.perf_counter() - start)
        self.model.load_state_dict(saved_model)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(saved_optim[name])
        return min(times[1:])

    def _prepare_train_set(self) -> None:
        """Read a sample, so that a data set which prepares itself at first use (R-CNN's proposal cache) does so now:
        on rank 0 first, so that the other ranks read its cache rather than each compute it again at once."""
        on_main(self.dist, lambda: self.train_set[0])
        self.train_set[0]

    def _replan_for_time(self, steps_timed: int, seconds: float, between_steps: bool = False) -> None:
        """With a time budget, re-size the schedule (at each epoch, at ``EARLY_REPLANS`` and every
        ``REPLAN_EVERY`` steps) from the pace of the last ``steps_timed`` steps (``seconds`` in all), up to the steps
        of ``--max-steps``/``--epochs``.

        The first estimate comes from a few steps and is easily off on a busy machine; the steps run
        since then measure the real pace. Rank 0's plan is broadcast so every process agrees. ``between_steps``:
        called after a step, where a plan with no step left ends the run; else (before an epoch's first step) the
        plan keeps the step about to run.
        """
        cfg = self.config
        if cfg.minutes is None or steps_timed < 5:
            return
        remaining = max(0.0, cfg.minutes * 60 - (self.train_seconds - self.session_start_seconds))
        planned = int(rank0_value(self.dist, self.step + int(remaining / (seconds / steps_timed))))
        fixed = self._fixed_budget_steps()
        self._resize_plan(max(self.step + (0 if between_steps else 1), planned if fixed is None else min(planned, fixed)))

    def _resize_plan(self, total_steps: int) -> None:
        """End the schedule at ``total_steps``, going on from the learning rate of this step: the rest of its phase
        (warmup or decay) is spread over the steps left to the phase's end, so the learning rate does not jump to
        where a plan of the new length would be at this step. The engine's own warmup is cut to its twentieth of the
        new plan for the rise still to come; a warmup under way that the new plan would not outlast (``--warmup-steps``
        was checked against the first plan only) to its share of this session's first plan, at least one step short of
        the new end, so that the learning rate still decays (said once)."""
        if total_steps == self.total_steps:
            return
        warming, done = schedule_share(self.step, self.total_steps, self.warmup_steps, self.lr_anchor)
        warmup = min(self.warmup_steps, total_steps)
        if warming and self.config.warmup_steps is None and self.resumed_warmup_steps is None:
            warmup = min(warmup, self.step + math.ceil((1.0 - done) * max(1, total_steps // 20)))
        elif warming and warmup >= total_steps > self.step + 1:
            warmup = min(total_steps - 1, max(self.step + 1, int(total_steps * self.warmup_share)))
            if not self.warmup_cut_said:
                given = (f"--warmup-steps {self.config.warmup_steps}" if self.config.warmup_steps is not None
                         else f"the run's warmup of {self.warmup_steps} steps")
                log.info("%s would take all of the %d steps --minutes %g now buys at this pace: warming up to step %d "
                         "instead, the share of the plan it had at the start (%.0f%%), so that the learning rate "
                         "decays after it", given, total_steps, self.config.minutes, warmup, 100 * self.warmup_share)
                self.warmup_cut_said = True
        self.total_steps, self.warmup_steps, self.lr_anchor = total_steps, warmup, (self.step, done)

    def _ended_by(self) -> tuple[str, str]:
        """The budget that ended the run, once it has stopped: its kind (``time``, ``steps`` or ``epochs``) and its
        flag as given (resumed without a budget: the checkpoint's plan, which fills in --max-steps). Time ran out, or
        the run reached its plan: a fixed budget's steps, else the time budget's."""
        fixed = self._fixed_budget_steps()
        if self.step >= self.total_steps and fixed is not None and self.total_steps >= fixed:
            flag = self._first_fixed_budget()
            steps = flag.startswith("--max-steps")
            if steps and self.budget_from_checkpoint:  # a flag the user did not give
                flag = f"the {self.config.max_steps} steps its checkpoint planned; --resume without a budget"
            return ("steps" if steps else "epochs"), flag
        return "time", f"--minutes {self.config.minutes:g}"

    def _out_of_time(self) -> bool:
        """Whether the time budget is spent; rank 0's clock decides for every process."""
        if self.config.minutes is None:
            return False
        spent = self.train_seconds - self.session_start_seconds
        return bool(rank0_value(self.dist, spent >= self.config.minutes * 60))

    def _epoch_position(self) -> tuple[int, int]:
        """(epoch, batch within it) of the next step at this run's global batch size."""
        return divmod(self.step - self.step_offset, self.steps_per_epoch)

    # ------------------------------------------------------------------------------------ steps
    def _train_step(self, batch: Any, step: int) -> dict[str, float]:
        seed = step_seed(self.config.seed, self.dist.rank, step)
        torch.manual_seed(seed)
        self.task.generator.manual_seed(seed)
        self.task.step = step
        self.task.total_steps = self.total_steps
        factor = lr_factor(step, self.total_steps or 1, self.warmup_steps, self.config.min_lr_ratio, self.lr_anchor)
        model = self.train_model.train()
        logged: dict[str, float] = {}
        for name, optimizer in self.optimizers.items():
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            optimizer.zero_grad(set_to_none=True)
            try:
                with self.autocast():
                    losses = self.task.training_step(model, batch, name)
            except ValueError as error:  # torch's words name no option: the user's is the batch size (or image size)
                if not str(error).startswith(BATCHNORM_ONE_VALUE):
                    raise
                raise every_rank(ValueError(
                    f"--batch-size {self.config.batch_size}: a BatchNorm layer of the model sees one value per "
                    f"channel ({error}); give --batch-size 2 or more, or a larger --img-size")) from None
            loss = losses["loss"]
            diverged = None
            if not torch.isfinite(loss):
                diverged = FloatingPointError(f"the {name} loss is {loss.item()} at step {step}; "
                                              f"{self._divergence_advice()}")
            # Each rank's losses are of its own batch: the log and the bar show them over the global batch. The ranks
            # agree on them before backward, where the others would wait in DDP's all-reduce for a rank that stopped.
            prefix = "" if len(self.optimizers) == 1 else f"{name}/"
            logged.update(mean_over_ranks(self.dist, {prefix + k: float(v.detach()) for k, v in losses.items()},
                                          diverged))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=SPURIOUS_DDP_WARNING)
                loss.backward()
            if self.config.grad_clip:
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
            optimizer.step()
        logged["lr"] = self.config.lr * factor
        return logged

    def release_run_dir(self) -> None:
        """Let go of the run folder (rank 0's lock on it; see :func:`claim_run_dir`)."""
        self._release_at_collection()

    def _remove_unwritten_run_dir(self) -> None:
        """On rank 0, after a failure or an interrupt: :func:`remove_unwritten_run_dir`."""
        if self._claimed is not None:
            with contextlib.suppress(OSError):  # the failure is the one to report
                remove_unwritten_run_dir(self.out, *self._claimed)

    def fit(self) -> TrainResult:
        try:
            return self._fit()
        except BaseException:
            self._remove_unwritten_run_dir()
            raise
        finally:
            self.release_run_dir()

    def _fit(self) -> TrainResult:
        cfg, dist_info = self.config, self.dist
        main = dist_info.is_main
        on_main(self.dist, self._truncate_log)  # the others wait: they would go on past a rank 0 that failed
        if main:
            log.info("training %s for %d steps (%d per epoch), batch %d x %d process(es), %s on %s",
                     model_record(self.model)["name"], self.total_steps, self.steps_per_epoch,
                     cfg.batch_size, dist_info.world_size, cfg.precision, dist_info.device)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (main and cfg.progress),
                   unit="step", dynamic_ncols=True, leave=False)
        try:  # closed before an error's or Ctrl-C's line, which would follow the bar's text on its line
            global_batch = cfg.batch_size * dist_info.world_size
            session_start, samples_seen, timed_seconds = self.step, 0, 0.0
            recent_seconds: collections.deque[float] = collections.deque(maxlen=PACE_WINDOW)
            stop = self.step >= self.total_steps or self._out_of_time()
            if not stop:  # off the clock
                self._prepare_train_set()
                self.task.prepare(dist_info.device)
            # each rank's own batches: an error in them may be its alone (see own_share)
            with own_share(dist_info):
                while not stop:
                    epoch, start_step = self._epoch_position()
                    self._replan_for_time(len(recent_seconds), sum(recent_seconds))
                    bar.total = self.total_steps
                    sampler = EpochBatchSampler(len(self.train_set), cfg.batch_size, cfg.seed, epoch, start_step,
                                                dist_info.rank, dist_info.world_size)
                    loader = DataLoader(Batches(self.train_set, self.task.collate), sampler=sampler, batch_size=None,
                                        collate_fn=_as_is, num_workers=cfg.num_workers)
                    tick = time.perf_counter()
                    for batch in agreed_batches(dist_info, loader):
                        logged = self._train_step(move_to(batch, dist_info.device), self.step)
                        if self.ema is not None:
                            self.ema.update(self.model, self.step)
                        self.step += 1
                        # Seconds since the previous step ended: data loading included, checkpoints and evaluation not.
                        seconds = time.perf_counter() - tick
                        self.train_seconds += seconds
                        samples_seen += global_batch
                        timed_seconds += seconds
                        recent_seconds.append(seconds)
                        logged["samples_per_s"] = global_batch / seconds
                        if self.step % cfg.log_every == 0:  # rank 0 writes; the others hear if it could not (a full disk)
                            on_main(dist_info, functools.partial(self._log, {"step": self.step, "epoch": epoch, **logged}))
                        bar.update(1)
                        bar.set_postfix(loss=f"{logged.get('loss', next(iter(logged.values()))):.4f}",
                                        img_s=f"{logged['samples_per_s']:.0f}")
                        # the pace drifts (a detector's proposals change as it learns)
                        if self.step % REPLAN_EVERY == 0 or self.step in EARLY_REPLANS:
                            self._replan_for_time(len(recent_seconds), sum(recent_seconds), between_steps=True)
                            bar.total = self.total_steps
                        stop = self.step >= self.total_steps or self._out_of_time()
                        if self.step % cfg.checkpoint_every == 0 or stop:
                            self._save()
                        if cfg.eval_every and self.step % cfg.eval_every == 0 and not stop:
                            self.evaluate()
                        if stop:
                            break
                        tick = time.perf_counter()
        finally:
            bar.close()
        ended_by, flag = self._ended_by()
        if main:
            cut_short = (f", before the {self.total_steps} steps its learning-rate schedule was planned for"
                         if self.step < self.total_steps else "")
            log.info("the %s budget (%s) ended the run at step %d%s", ended_by.rstrip("s"), flag, self.step, cut_short)
        metrics = self.evaluate()
        throughput = samples_seen / timed_seconds if timed_seconds else 0.0
        result = TrainResult(self.out, self.step, self.train_seconds, throughput, metrics, session_start, ended_by,
                             self.total_steps, *self._val_counts())
        on_main(self.dist, lambda: self._finish(result))  # the other ranks wait, then all leave the group together
        close_distributed(self.dist)
        return result

    def _finish(self, result: TrainResult) -> None:
        """Rank 0's last writes: the loss plot, the task's pictures and ``summary.json``."""
        self._plot()
        self._report()
        summary = {**asdict(result), "out": str(self.out), "model": model_record(self.model),
                   "parameters": sum(p.numel() for p in self.model.parameters()), **self._note()}
        text = json.dumps(summary, indent=2)
        atomic_write(self.out / "summary.json", lambda tmp: Path(tmp).write_text(text))

    def _note(self) -> dict[str, str]:
        """``{"note": ...}`` where the run's data record one about its val figures (the training images scored, see
        :func:`~visionzoo.data.same_images_note`), else nothing: written beside those figures."""
        return {"note": self.run_meta["note"]} if "note" in self.run_meta else {}

    def _val_counts(self) -> tuple[int | None, int | None]:
        """The val images the task's metrics score (a GAN's FID fewer than the val set) and the val split's size
        (``run_meta``'s ``val_split_images``, else the val set's): (None, None) without a val set."""
        if self.val_set is None:
            return None, None
        return self.task.evaluated_images(self.val_set), self.run_meta.get("val_split_images", len(self.val_set))

    def _divergence_advice(self) -> str:
        return "lower --lr" if self.config.precision == "fp32" else "lower --lr or use --precision fp32"

    # ------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float]:
        """The task's metrics on the validation set (rank 0; the others wait). EMA ones prefixed ``ema_``."""
        return on_main(self.dist, self._evaluate_here) or {}

    def _evaluate_here(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.val_set is not None:
            batch_size = self.config.eval_batch_size or self.config.batch_size
            models = [("", self.model)] + ([("ema_", self.ema.module)] if self.ema is not None else [])
            for prefix, model in models:
                model.eval()
                try:
                    with torch.no_grad():
                        result = self.task.evaluate(model, self.val_set, batch_size, self.autocast)
                except NonFiniteOutputError:  # as a non-finite training loss stops the run
                    raise FloatingPointError(
                        f"the {'EMA ' if prefix else ''}model's outputs on the validation set are not finite (NaN or "
                        f"infinity) at step {self.step}; {self._divergence_advice()}") from None
                metrics.update({prefix + k: v for k, v in result.items()})
            scored, split = self._val_counts()
            self._log({"step": self.step, "split": "val", **metrics, "images_scored": scored, "split_images": split,
                       **self._note()})
            log.info("step %d: %s", self.step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    # ------------------------------------------------------------------------------ checkpoints
    def _save(self) -> None:
        on_main(self.dist, self._write_checkpoint)

    def _write_checkpoint(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.module.state_dict().items()})
        optim_meta = {}
        for name, optimizer in self.optimizers.items():
            optim_tensors, optim_meta[name] = _optimizer_tensors(name, optimizer)
            tensors.update(optim_tensors)
        meta = {
            "format": 1,
            "model": model_record(self.model),
            "task": {"name": self.task.name, **self.task.checkpoint_meta()},
            "task_state": self.task.run_state(),
            "step": self.step,
            "epoch_position": [*self._epoch_position(), self.steps_per_epoch],  # epoch, batch, batches per epoch
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "lr_anchor": list(self.lr_anchor),
            "train_seconds": self.train_seconds,
            "optimizers": optim_meta,
            "config": asdict(self.config),
            "world_size": self.dist.world_size,
            "run": self.run_meta,
        }
        save_checkpoint(self.out / CHECKPOINT_NAME, tensors, meta)

    def _load(self, given: TrainConfig) -> None:
        """The run's state from its checkpoint, checked against this run's settings (``given``: as the user gave
        them); what it tells the user comes once no check has refused the run, so that a refusal is all they read."""
        path = self.out / CHECKPOINT_NAME
        tensors, meta = read_checkpoint(path)
        check_training_record(meta, path)
        saved_name = meta["model"]["name"]
        if saved_name != model_record(self.model)["name"]:
            raise CheckpointError(f"--resume: {path} was trained as {saved_name!r}, not {model_record(self.model)['name']!r}")
        saved_size, size = meta.get("run", {}).get("img_size"), self.run_meta.get("img_size")
        if saved_size is not None and size is not None and saved_size != size:
            raise CheckpointError(f"--resume: {path} was trained at {saved_size} px, this run is at {size} px; "
                                  f"give --img-size {saved_size} to continue it")
        saved_images, images = meta.get("run", {}).get("train_images"), self.run_meta.get("train_images")
        if saved_images is not None and images is not None and saved_images != images:
            raise CheckpointError(f"--resume: {path} was trained on {saved_images} images, this run has {images}; "
                                  f"give --train-size {saved_images} to continue it")
        trained_decay = meta.get("config", {}).get("ema_decay")
        has_ema = any(key.startswith("ema.") for key in tensors)
        if self.ema is None and has_ema:
            # as another --lr is: the run would go on, and checkpoint, without the average it kept so far
            raise CheckpointError(f"--resume: {path} was trained with --ema-decay {trained_decay}, this run asks for "
                                  f"{self.config.ema_decay:g}, which would drop its EMA weights; leave --ema-decay out "
                                  "or give a decay in (0, 1) to continue it")
        load_state_dict_strict(self.model, model_state(tensors, meta), str(path))
        if self.ema is not None:
            load_state_dict_strict(self.ema.module, model_state(tensors, meta, ema=True), str(path))
        for name, optimizer in self.optimizers.items():
            if name not in meta["optimizers"]:
                raise CheckpointError(f"--resume: {path} has no state for optimizer {name!r}")
            check_resumed_hyperparameters(path, optimizer.param_groups, meta["optimizers"][name]["param_groups"])
            optimizer.load_state_dict(_optimizer_state(name, tensors, meta["optimizers"][name]))
        self.task.load_run_state(meta.get("task_state") or {})
        self.step = meta["step"]
        self.step_offset = self.step - resumed_epoch_step(meta, self.steps_per_epoch)
        self._check_resumed_budget(given)
        self._check_resumed_seed(path, meta.get("config", {}).get("seed"))
        self._warn_of_another_global_batch(path, meta)
        self.total_steps = meta["total_steps"]
        # Checkpoints written before the warmup was recorded: the default one of their plan.
        self.resumed_warmup_steps = meta.get("warmup_steps", max(1, meta["total_steps"] // 20))
        self.lr_anchor = tuple(meta.get("lr_anchor", FRESH_PLAN))
        self.train_seconds = meta["train_seconds"]
        if self.ema is not None and not has_ema:
            log.info("--resume: %s was trained without an EMA: the average (--ema-decay %g) starts from the weights "
                     "of step %d", path, self.config.ema_decay, meta["step"])
        log.info("resumed %s at step %d of %d", path, self.step, self.total_steps)

    def _check_resumed_seed(self, path: Path, trained: int | None) -> None:
        """Refuse another seed than the run's in the middle of an epoch: the epoch's order is a shuffle by the seed,
        so a new one would draw the rest of it anew (some images twice, others not at all). At an epoch's end the
        new seed shuffles the next epochs and draws the steps' randomness, and the log says so."""
        seed = self.config.seed
        if trained is None or trained == seed:
            return
        epoch, batch = self._epoch_position()
        if batch:
            raise CheckpointError(
                f"--resume: {path} stopped at batch {batch} of {self.steps_per_epoch} of epoch {epoch} with --seed "
                f"{trained}; --seed {seed} would shuffle the rest of that epoch anew (some images twice, others not at "
                f"all): leave --seed out to go on with {trained}, or give it when resuming from an epoch's end")
        log.info("the run goes on with --seed %d from epoch %d (it was trained with --seed %d)", seed, epoch, trained)

    def _warn_of_another_global_batch(self, path: Path, meta: Mapping[str, Any]) -> None:
        """Say when the run goes on in another number of processes with another global batch (``--batch-size`` x
        processes) than it was trained with: --batch-size is per process, and the run keeps its own, so resuming a
        torchrun run in one process (or the reverse) changes the batch of every step, which the log showed only as
        "batch 32 x 1 process(es)". The data position is mapped as for another --batch-size (see
        :func:`resumed_epoch_step`). Checkpoints that do not record their process count: nothing to compare."""
        trained_world, trained_batch = meta.get("world_size"), meta.get("config", {}).get("batch_size")
        world, batch = self.dist.world_size, self.config.batch_size
        if trained_world is None or trained_batch is None or trained_world == world:
            return
        trained_global = trained_batch * trained_world
        if trained_global == batch * world:
            return
        keep = (f"give --batch-size {trained_global // world} to keep it in {world} process(es)"
                if trained_global % world == 0 else f"no --batch-size keeps it in {world} process(es)")
        log.warning("--resume: %s was trained with a global batch of %d (--batch-size %d x %d process(es)), this run's "
                    "is %d (%d x %d process(es)); %s", path, trained_global, trained_batch, trained_world,
                    batch * world, batch, world, keep)

    # ---------------------------------------------------------------------------------- logging
    def _log(self, record: Mapping[str, Any]) -> None:
        with open(self.out / METRICS_NAME, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _truncate_log(self) -> None:
        """On resume, drop log lines of steps after the checkpoint (they will be run again) and any line a crash
        cut short; of a run already at its end, also its final evaluation, which :meth:`fit` does and logs again."""
        path = self.out / METRICS_NAME
        if not path.exists():
            return
        finished = self.step >= self.total_steps
        records = [(line, _logged_record(line)) for line in path.read_text().splitlines()]
        kept = [line for line, record in records if record is not None and record["step"] <= self.step
                and not (finished and record["step"] == self.step and record.get("split") == "val")]
        # atomically: a process killed while rewriting would otherwise lose the whole log of the run so far
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept)))

    def _plot(self) -> None:
        from visionzoo.train.plots import plot_metrics

        plot_metrics(self.out / METRICS_NAME, self.out / "loss.png")

    def _report(self) -> None:
        """The task's own pictures of the final model on the validation set (rank 0)."""
        if self.val_set is None:
            return
        self.model.eval()
        with torch.no_grad():
            paths = self.task.report(self.model, self.val_set, self.out,
                                     self.config.eval_batch_size or self.config.batch_size, self.autocast)
        for path in paths:
            log.info("wrote %s", path)


def _logged_record(line: str) -> dict[str, Any] | None:
    """A metrics log line's record, or None for one that is not a whole record with a step."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and record.get("step") is not None else None


def show_preparation_progress(datasets: Iterable[Dataset | None], shown: bool) -> None:
    """Switch the bar of each data set that shows one of its own as it prepares (R-CNN's proposals: those with a
    ``progress`` attribute) on or off, as the command's own bar."""
    for dataset in datasets:
        if hasattr(dataset, "progress"):
            dataset.progress = shown


def fit(task: Task, model: nn.Module, train_set: Dataset, val_set: Dataset | None, config: TrainConfig,
        run_meta: Mapping[str, Any] | None = None) -> TrainResult:
    """Train ``model`` with ``task`` on ``train_set`` as ``config`` says; evaluate on ``val_set``.

    Writes into ``config.out``: ``checkpoint.safetensors`` (+ ``.json``), ``metrics.jsonl``,
    ``loss.png``, ``summary.json`` and the task's own pictures (:meth:`Task.report`). Under ``torchrun``
    every process calls this; rank 0 alone writes. ``run_meta`` (data set name, image size, ...) is
    stored in the checkpoint. A data set with a ``progress`` attribute (one that shows a bar as it prepares itself,
    R-CNN's proposals) has it set as the engine's own bar: off with ``config.progress`` False and on ranks but 0; one
    with a ``workers`` attribute (processes it prepares itself in) gets ``config.num_workers`` when it is at least
    1, else None (one process per CPU).
    """
    return Trainer(task, model, train_set, val_set, config, run_meta).fit()
