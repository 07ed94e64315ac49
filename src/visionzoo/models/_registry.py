"""The model registry, in timm's style: ``@register_model`` on a function that builds one size.

``create_model(name, ...)`` builds a registered model, then optionally loads weights: a local
checkpoint (ours, timm's or torchvision's file, converted by the family's checkpoint filter) or the
official weights of that name (``pretrained=True``, downloaded once into a hash-checked cache).
Every model it returns carries ``model_name`` and ``model_args``, which our checkpoints record so
that a checkpoint alone rebuilds its model.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionzoo.checkpoint import CheckpointError, model_state, read_checkpoint
from visionzoo.utils import closest

log = logging.getLogger(__name__)

CheckpointFilter = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Pretrained:
    """Where the official weights of a model name live.

    ``url`` is a direct download (torchvision's); ``hf_hub_id`` names a Hugging Face repository
    (timm's) with ``filename`` in it. ``sha256`` is the full hex digest or a prefix of it
    (torchvision puts the first hex digits in its file names).
    """

    url: str | None = None
    hf_hub_id: str | None = None
    filename: str = "model.safetensors"
    sha256: str | None = None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    task: str = "classification"
    pretrained: Pretrained | None = None
    checkpoint_filter: CheckpointFilter | None = None
    first_conv: str | None = None
    classifier: tuple[str, ...] = ()
    default_cfg: Mapping[str, Any] = field(default_factory=dict)


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    fn: Callable[..., nn.Module] | None = None,
    *,
    task: str = "classification",
    pretrained: Pretrained | None = None,
    checkpoint_filter: CheckpointFilter | None = None,
    first_conv: str | None = None,
    classifier: str | tuple[str, ...] = (),
    **default_cfg: Any,
):
    """Register a builder under its function name.

    Args:
        task: the training task the CLI and the engine use for this model ("classification", ...).
        pretrained: the official weights of this name, for ``pretrained=True``.
        checkpoint_filter: ``(state_dict, model) -> state_dict`` converting foreign key layouts.
        first_conv: the name of the stem conv whose weights adapt to another ``in_chans``.
        classifier: the name(s) of the head module(s) re-initialised for another ``num_classes``.
        default_cfg: input size, mean/std and the like, as timm's ``pretrained_cfg``.
    """

    def decorator(builder: Callable[..., nn.Module]):
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        family = builder.__module__.rsplit(".", 1)[-1]
        heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        _MODELS[name] = ModelEntry(
            name, builder, family, task, pretrained, checkpoint_filter, first_conv, heads, dict(default_cfg)
        )
        return builder

    return decorator(fn) if fn is not None else decorator


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered names matching the glob ``pattern`` (and ``task`` if given), sorted."""
    return sorted(
        name for name, entry in _MODELS.items()
        if fnmatch.fnmatch(name, pattern) and (task is None or entry.task == task)
    )


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name raises ``ValueError`` with the closest names."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; closest registered: {closest(name, _MODELS)}")
    return _MODELS[name]


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name`` and optionally load weights into it.

    Args:
        pretrained: download the official weights of this name (cached, hash-checked) and load them.
        checkpoint: a local weights file: ours (which also restores the model's arguments), or a
            timm/torchvision file of the same architecture (converted by the family's filter).
        num_classes, in_chans: as in timm. Loading weights made for another number of classes
            re-initialises the head; for another number of input channels the stem conv is adapted
            (summed or repeated), each with a log line.
        kwargs: passed to the builder (sizes, drop_path_rate, ...).
    """
    entry = get_model_entry(name)
    if pretrained and checkpoint is not None:
        raise ValueError("give either pretrained=True or checkpoint=PATH, not both")
    state: dict[str, torch.Tensor] | None = None
    source = ""
    if checkpoint is not None:
        tensors, meta = read_checkpoint(checkpoint)
        source = str(checkpoint)
        if meta is not None:
            saved = meta.get("model", {})
            if saved.get("name") not in (None, name):
                raise CheckpointError(f"checkpoint {checkpoint} is for model {saved['name']!r}, not {name!r}")
            kwargs = {**saved.get("args", {}), **kwargs}
            if num_classes is None:
                num_classes = kwargs.pop("num_classes", None)
            if in_chans is None:
                in_chans = kwargs.pop("in_chans", None)
            kwargs.pop("num_classes", None)
            kwargs.pop("in_chans", None)
        state = model_state(tensors, meta)
        foreign = meta is None
    elif pretrained:
        from visionzoo.models._hub import download_pretrained

        path = download_pretrained(entry)
        source = str(path)
        tensors, _ = read_checkpoint(path)
        state, foreign = tensors, True

    args = dict(kwargs)
    if num_classes is not None:
        args["num_classes"] = num_classes
    if in_chans is not None:
        args["in_chans"] = in_chans
    model = entry.builder(**args)
    model.model_name = name
    model.model_args = args
    model.default_cfg = dict(entry.default_cfg)
    if state is not None:
        if foreign and entry.checkpoint_filter is not None:
            state = entry.checkpoint_filter(state, model)
        state = adapt_state_dict(state, model, entry, source)
        load_state_dict_strict(model, state, source)
    return model


def adapt_state_dict(
    state: dict[str, torch.Tensor], model: nn.Module, entry: ModelEntry, source: str
) -> dict[str, torch.Tensor]:
    """Fit a checkpoint to another head size or input channel count (timm's rules)."""
    own = model.state_dict()
    state = dict(state)
    for head in entry.classifier:
        for suffix in (".weight", ".bias"):
            key = head + suffix
            if key in state and key in own and state[key].shape != own[key].shape:
                log.info("%s: %s has shape %s, the model %s: re-initialising the classifier",
                         source, key, tuple(state[key].shape), tuple(own[key].shape))
                state[key] = own[key]
    if entry.first_conv is not None:
        key = entry.first_conv + ".weight"
        if key in state and key in own and state[key].shape[1] != own[key].shape[1]:
            log.info("%s: adapting %s from %d to %d input channels", source, key, state[key].shape[1], own[key].shape[1])
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
    return state


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """Stem conv weights ``Tensor[O, I, kh, kw]`` for ``in_chans`` inputs instead of ``I``.

    As timm does: RGB→grey sums the three input planes; otherwise the planes are repeated
    cyclically and scaled by ``I / in_chans`` so that activations keep their scale.
    """
    original = weight.shape[1]
    dtype = weight.dtype
    weight = weight.float()
    if in_chans == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        repeats = -(-in_chans // original)
        adapted = weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (original / in_chans)
    return adapted.to(dtype)


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load all of ``state`` or nothing: differences in keys or shapes raise before any copy."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append("shape mismatches: " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched[:3]))
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(f"checkpoint {source} does not fit model {name}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
