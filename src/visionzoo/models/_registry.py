"""The model registry, in timm's style: ``@register_model`` on a function that builds one size.

``create_model(name, ...)`` builds a registered model, then optionally loads weights: a local
checkpoint (ours, timm's or torchvision's file, converted by the family's checkpoint filter) or the
official weights of that name (``pretrained=True``, downloaded once into a hash-checked cache).
Every model it returns carries ``model_name`` and ``model_args``, which our checkpoints record so
that a checkpoint alone rebuilds its model.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visionzoo.checkpoint import CheckpointError, model_state, read_checkpoint
from visionzoo.utils import closest, whole_number

log = logging.getLogger(__name__)

CheckpointFilter = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
CheckpointReader = Callable[[str | Path], dict[str, torch.Tensor]]


class ModelArgumentError(TypeError, ValueError):
    """An argument the model's builder does not take: a TypeError as in timm, a ValueError for the CLI's
    one-line errors."""


@dataclass(frozen=True)
class Pretrained:
    """Where the official weights of a model name live.

    ``url`` is a direct download (torchvision's); ``hf_hub_id`` names a Hugging Face repository
    (timm's) with ``filename`` in it. ``sha256`` is the full hex digest or a prefix of it
    (torchvision puts the first hex digits in its file names). ``model_args`` are builder arguments
    the weights are used with (torchvision's detectors freeze their batch norms for their COCO
    weights); ``pretrained=True`` passes them unless the caller gives the same keywords. ``tag``: timm's tag
    for these weights (``tv_in1k`` for torchvision's ResNets), with which ``NAME.TAG`` names the model; a timm
    repository's (``timm/NAME.TAG``) is read from ``hf_hub_id`` (see :func:`weights_tag`). ``cache_name``: the
    file's name in the cache for a URL whose path does not end in one (a share link's ``.../files/?p=...``).
    """

    url: str | None = None
    hf_hub_id: str | None = None
    filename: str = "model.safetensors"
    sha256: str | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)
    tag: str | None = None
    cache_name: str | None = None

    def __post_init__(self):
        if (self.url is None) == (self.hf_hub_id is None):
            raise ValueError(f"Pretrained needs exactly one of url and hf_hub_id, got {self}")
        if self.sha256 is not None and not (
            0 < len(self.sha256) <= 64 and all(c in "0123456789abcdefABCDEF" for c in self.sha256)
        ):
            raise ValueError(f"Pretrained sha256 must be hex digits (a digest or its prefix), got {self.sha256!r}")


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder, family (module name), task, official weights, the
    module names of its stem conv and classifier (for in_chans/num_classes adaptation), the
    arguments for which None is a value of its own (``none_args``, kept by :func:`create_model`), and the two
    places of its final norm (``final_norms``: a ViT's ``norm`` before the pooling, ``fc_norm`` after it)."""

    name: str
    builder: Callable[..., nn.Module]
    family: str
    task: str = "classification"
    pretrained: Pretrained | None = None
    checkpoint_filter: CheckpointFilter | None = None
    first_conv: str | None = None
    classifier: tuple[str, ...] = ()
    default_cfg: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_reader: CheckpointReader | None = None
    none_args: tuple[str, ...] = ()
    final_norms: tuple[str, ...] = ()


_MODELS: dict[str, ModelEntry] = {}

# create_model's own weight arguments: a builder passes them on to the models it nests (a detector's
# backbone_args={"checkpoint": ...}), so they are recorded among the outer model's arguments
_WEIGHT_SOURCES = ("pretrained", "checkpoint", "use_ema")


def without_weight_sources(args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` without the weights of nested models (``pretrained``, ``checkpoint``, ``use_ema`` inside a dict
    argument such as ``backbone_args``): for a model whose own weights are all loaded afterwards, they would only
    read (or download) again a file that may be gone."""
    return {key: {k: v for k, v in value.items() if k not in _WEIGHT_SOURCES} if isinstance(value, Mapping) else value
            for key, value in args.items()}


def register_model(
    fn: Callable[..., nn.Module] | None = None,
    *,
    task: str = "classification",
    pretrained: Pretrained | None = None,
    checkpoint_filter: CheckpointFilter | None = None,
    first_conv: str | None = None,
    classifier: str | tuple[str, ...] = (),
    checkpoint_reader: CheckpointReader | None = None,
    none_args: tuple[str, ...] = (),
    final_norms: tuple[str, ...] = (),
    **default_cfg: Any,
):
    """Register a builder under its function name.

    Args:
        task: the training task the CLI and the engine use for this model ("classification", ...).
        pretrained: the official weights of this name, for ``pretrained=True``.
        checkpoint_filter: ``(state_dict, model) -> state_dict`` converting foreign key layouts.
        first_conv: the name of the stem conv whose weights adapt to another ``in_chans``.
        classifier: the name(s) of the head module(s) re-initialised for another ``num_classes``.
        checkpoint_reader: ``path -> state_dict`` for the official files that the safe generic reader
            refuses (HIPT's DINO training states hold an ``argparse.Namespace``); tried when it does.
        none_args: arguments for which None means something other than the default (a quantiser's
            ``ema_decay=None``: a codebook learned by gradient), which :func:`create_model` passes on
            instead of dropping them as "not set".
        final_norms: the two module names the final norm takes depending on the pooling (a ViT's ``("norm",
            "fc_norm")``): a file with it in the other place loads when ``num_classes`` is asked (see
            :func:`adapt_state_dict`).
        default_cfg: input size, mean/std and the like, as timm's ``pretrained_cfg``.
    """

    def decorator(builder: Callable[..., nn.Module]):
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        family = builder.__module__.rsplit(".", 1)[-1]
        heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        _MODELS[name] = ModelEntry(
            name, builder, family, task, pretrained, checkpoint_filter, first_conv, heads, dict(default_cfg),
            checkpoint_reader, tuple(none_args), tuple(final_norms),
        )
        return builder

    return decorator(fn) if fn is not None else decorator


def list_models(
    pattern: str | Sequence[str] | None = "*",
    task: str | None = None,
    *,
    pretrained: bool = False,
    exclude_filters: str | Sequence[str] = (),
) -> list[str]:
    """Registered names matching the glob ``pattern`` (or any of several, as timm's ``filter``) and
    ``task`` if given, sorted. As in timm, no pattern (``""``, ``[]``, None) means every name,
    ``pretrained=True`` keeps the names with official weights and ``exclude_filters`` (globs) removes names.
    A ``task`` no model has raises ``ValueError`` naming the tasks (timm's second argument, ``module``, is not one)."""
    if task is not None and task not in list_tasks():
        raise ValueError(f"unknown task {task!r}; the tasks are {', '.join(list_tasks())}")
    patterns = _globs(pattern) or ["*"]  # no pattern ("", [] or None) lists every name, as timm's filter=''
    excluded = _globs(exclude_filters)
    return sorted(
        name for name, entry in _MODELS.items()
        if any(fnmatch.fnmatch(name, p) for p in patterns)
        and not any(fnmatch.fnmatch(name, p) for p in excluded)
        and (task is None or entry.task == task)
        and (not pretrained or entry.pretrained is not None)
    )


def _globs(value: str | Sequence[str] | None) -> list[str]:
    """``value`` as a list of globs: one string, several, or none ("" and None, as timm's ``_to_str_list``)."""
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def is_model(name: str) -> bool:
    """Whether :func:`create_model` takes ``name``: a registered name, or ``NAME.TAG`` with our weights' tag (timm's
    ``is_model``, which takes any tag of its own weights)."""
    try:
        get_model_entry(name)
    except (TypeError, ValueError):
        return False
    return True


def list_tasks() -> list[str]:
    """The tasks of the registered models (``classification``, ``detection``, ...), sorted."""
    return sorted({entry.task for entry in _MODELS.values()})


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``, or of ``NAME.TAG`` (timm's name of a model with its weights) where ``TAG`` is
    our weights' :func:`weights_tag`; an unknown name raises ``ValueError`` with the closest names, a tag of other
    weights ``ValueError`` naming ours, a name that is no string ``TypeError``."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {name!r}")
    if name in _MODELS:
        return _MODELS[name]
    arch, _, tag = name.partition(".")
    if tag and arch in _MODELS:
        entry = _MODELS[arch]
        ours = weights_tag(entry)
        if tag == ours:
            return entry
        if ours:
            have = f"its weights are timm's {arch}.{ours}; give {arch!r} or '{arch}.{ours}'"
        else:
            have = f"its official weights {'have no tag' if entry.pretrained else 'are none'}; give {arch!r}"
        raise ValueError(f"{arch} has no weights tagged {tag!r}: {have}")
    near = closest(name, _MODELS)
    hint = (f"closest registered: {', '.join(near)}" if near
            else "no registered name is close (list_models() or `visionzoo list-models` lists them)")
    raise ValueError(f"unknown model {name!r}; {hint}")


def weights_tag(entry: ModelEntry) -> str | None:
    """timm's tag for ``entry``'s official weights (``augreg_in21k_ft_in1k``): ``Pretrained.tag``, else the tag in
    a timm repository's name (``timm/NAME.TAG``); None without weights or a tag."""
    weights = entry.pretrained
    if weights is None:
        return None
    if weights.tag is not None:
        return weights.tag
    repo = (weights.hf_hub_id or "").rpartition("/")[2]
    arch, _, tag = repo.partition(".")
    return tag if arch == entry.name and tag else None


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    use_ema: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name`` and optionally load weights into it.

    Args:
        pretrained: download the official weights of this name (cached, hash-checked) and load them.
        checkpoint: a local weights file: ours (which also restores the model's arguments), or a
            timm/torchvision file of the same architecture (converted by the family's filter). ``""`` loads
            nothing, as None (timm's ``checkpoint_path=""``, a script's unset option).
        use_ema: take the checkpoint's EMA weights where it has them: the ``ema.`` section of ours
            (a run with ``--ema-decay``), ``state_dict_ema`` or ``model_ema`` of a timm training file;
            the trained weights otherwise. True by default, as timm's ``create_model(checkpoint_path=)``
            (its ``load_checkpoint(use_ema=True)``); ``visionzoo eval``/``predict`` take the trained
            weights unless given ``--use-ema``, as timm's ``validate.py``.
        num_classes, in_chans: as in timm. Loading weights made for another number of classes
            re-initialises the head; for another number of input channels the stem conv is adapted
            (summed or repeated), each with a log line.
        device, dtype (keywords): as timm's, the device the model is built on (``"meta"``: no memory) and the
            floating-point dtype of its weights (integer buffers stay integers); a checkpoint's weights are
            copied in cast. Neither is recorded in ``model_args``.
        feature_cls (keyword, with ``features_only=True``): timm's ``"getter"`` or ``"list"``, whose list of maps
            ours give (see :func:`_check_feature_cls`); not recorded.
        kwargs: passed to the builder (sizes, drop_path_rate, ...); they override the arguments
            recorded in our checkpoints. As in timm, a keyword given as None means "not set" and is
            dropped (the builder's default, or the checkpoint's recorded value, stays), so that a
            script may pass ``drop_path_rate=args.drop_path`` to any model; the exceptions are the
            entry's ``none_args``, where None is a value (see :func:`register_model`). With weights
            loaded, the weights of nested models (``backbone_args={"checkpoint": ...}``) are not read,
            nor recorded (see :func:`without_weight_sources`).

    Returns the model (in train mode, as built), with ``model_name``, ``model_args`` (what rebuilds
    it) and ``default_cfg`` (also as ``pretrained_cfg``, timm's name for it). Weights that do not fit
    raise :class:`CheckpointError` naming the keys.
    """
    entry = get_model_entry(name)
    name = entry.name  # without a weights tag: the name that rebuilds the model
    kwargs = {key: _plain(value) for key, value in kwargs.items() if value is not None or key in entry.none_args}
    device, dtype = _placement(kwargs.pop("device", None), kwargs.pop("dtype", None))
    if kwargs.get("features_only") and "feature_cls" in kwargs:
        _check_feature_cls(name, kwargs.pop("feature_cls"))
    foreign_sources = sorted(_FOREIGN_WEIGHT_SOURCES.intersection(kwargs))
    if foreign_sources:  # refused before pretrained=True downloads weights that were not asked for
        key = foreign_sources[0]
        raise ModelArgumentError(f"{name} takes no argument {key!r}{_local_file_hint(key, kwargs[key])}")
    if isinstance(checkpoint, str) and not checkpoint:
        checkpoint = None
    if pretrained and checkpoint is not None:
        raise ValueError("give either pretrained=True or checkpoint=PATH, not both")
    state: dict[str, torch.Tensor] | None = None
    foreign = True
    source = ""
    if checkpoint is not None:
        tensors, meta = read_weights(entry, checkpoint, use_ema)
        source = str(checkpoint)
        if meta is not None:
            saved_args = dict(_saved_model(meta, name, source).get("args") or {})
            saved_classes = saved_args.pop("num_classes", None)
            saved_chans = saved_args.pop("in_chans", None)
            num_classes = saved_classes if num_classes is None else num_classes
            in_chans = saved_chans if in_chans is None else in_chans
            kwargs = {**saved_args, **kwargs}
        state = model_state(tensors, meta, ema=use_ema)
        if meta is not None and (meta.get("task") or {}).get("objective") == "mpp":
            state = encoder_section(state)  # a masked-patch pretraining: the ViT it trained, with its colour head
        foreign = meta is None
    elif pretrained and entry.pretrained is not None:  # without weights, the download below refuses naming the model
        kwargs = {**entry.pretrained.model_args, **kwargs}

    args = dict(kwargs) if state is None and not pretrained else without_weight_sources(kwargs)
    if num_classes is not None:
        args["num_classes"] = whole_number(num_classes, "num_classes", 0)
    if in_chans is not None:
        args["in_chans"] = whole_number(in_chans, "in_chans", 1)
    try:
        with device if device is not None else contextlib.nullcontext():
            model = entry.builder(**args)
    except TypeError as error:
        # a keyword the builder passes itself (a detector's backbone): Python's "multiple values" error, a traceback
        given_twice = re.search(r"multiple values for (?:keyword )?argument '(\w+)'", str(error))
        if given_twice and given_twice[1] in args:
            raise ModelArgumentError(f"{name} sets {given_twice[1]!r} itself: it cannot be given") from None
        if "unexpected keyword argument" not in str(error):
            raise
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        raise ModelArgumentError(f"{name} takes no argument {unknown[1] if unknown else str(error)!r}") from None
    if dtype is not None:
        model.to(dtype=dtype)
    model.model_name = name
    model.model_args = args
    model.default_cfg = _default_cfg(entry)
    model.pretrained_cfg = model.default_cfg  # the name timm 0.9+ reads (timm.data.resolve_model_data_config)
    if pretrained:  # downloaded once the model is built: arguments it refuses download nothing
        state, source = _pretrained_state(entry)
    if state is not None:
        _load_state(model, entry, state, foreign, source, asked={"num_classes", "in_chans"} if pretrained else set(args))
    return model


def _placement(device: Any, dtype: Any) -> tuple[torch.device | None, torch.dtype | None]:
    """timm's ``create_model(device=, dtype=)``: the device the model is built on and the floating-point dtype of its
    weights, each None where not given; anything else raises ``ValueError`` naming the argument."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype (torch.bfloat16, ...), got {dtype!r}")
    if device is None:
        return None, dtype
    try:
        return torch.device(device), dtype
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r}: {error}") from None


# timm's feature_cls values whose outputs our feature extractors give: a list of maps from the model's own stages
# (timm's "getter" reads them through forward_intermediates, NCHW for Swin too; "list" is its default class)
_FEATURE_CLASSES = ("getter", "list")


def _check_feature_cls(name: str, feature_cls: Any) -> None:
    """timm's ``feature_cls`` for ``features_only``: one whose outputs ours give is taken (and, building nothing
    else, not recorded); another (``"dict"``, ``"hook"``, ``"fx"``, a class) raises ``ValueError`` naming it."""
    if not (isinstance(feature_cls, str) and feature_cls.lower() in _FEATURE_CLASSES):
        raise ValueError(f"{name}'s feature extractor returns a list of maps, as timm's feature_cls "
                         f"{' or '.join(map(repr, _FEATURE_CLASSES))} does; got feature_cls={feature_cls!r}")


def _pretrained_state(entry: ModelEntry) -> tuple[dict[str, torch.Tensor], str]:
    """The official weights of ``entry`` (downloaded once into the cache) and the file they came from."""
    from visionzoo.models._hub import download_pretrained

    path = download_pretrained(entry)
    try:
        state, _ = read_weights(entry, path)
    except CheckpointError as error:  # timm's cached files have no hash to check: one cut short would fail every time
        raise CheckpointError(f"{error}; it is the cached download of {entry.name}'s weights: delete it to "
                              "download them again") from None
    return state, str(path)


# timm's create_model keywords that give weights: a local file (checkpoint_path=PATH, or pretrained_cfg_overlay=
# dict(file=PATH) with pretrained=True) or another pretrained config; and torchvision's builders' (weights="DEFAULT")
_FOREIGN_WEIGHT_SOURCES = {"checkpoint_path", "pretrained_cfg_overlay", "pretrained_cfg", "weights", "weights_backbone"}


def _local_file_hint(key: str, value: Any) -> str:
    """Where timm's or torchvision's ``key=value`` gives weights, how to give them here."""
    if key == "checkpoint_path" or (isinstance(value, Mapping) and "file" in value):
        return "; give a local weights file as checkpoint=PATH"
    if key == "weights":
        return ("; torchvision's weights: give pretrained=True for the official weights of this name, or "
                "checkpoint=PATH for a file")
    if key == "weights_backbone":
        return ("; a detector's backbone weights go in backbone_args={'pretrained': True} or {'checkpoint': PATH} "
                "(R-CNN's CNN: cnn_args)")
    return ""


def record_model_args(model: nn.Module, **args: Any) -> None:
    """After a change made in place (``set_input_size``), update the arguments :func:`create_model` recorded
    to rebuild ``model`` (``model_args``, which our checkpoints keep), as timm's ``update_model_input_size``;
    a model not built by :func:`create_model` has none."""
    if hasattr(model, "model_args"):
        model.model_args = {**model.model_args, **args}


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars (``img_size=np.int64(64)``), also inside tuples, lists and dicts, as Python's: the
    arguments are recorded in our checkpoints' JSON metadata, which takes no NumPy scalar."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):  # a torch.Size or a named tuple too: a plain tuple, as JSON keeps it
        return tuple(_plain(item) for item in value)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def load_checkpoint(model: nn.Module, checkpoint: str | Path, use_ema: bool = True) -> None:
    """Load a weights file into an existing ``model``, all of it or nothing.

    The same conversions as :func:`create_model` apply when the model came from the registry
    (it has ``model_name``): the family's filter for foreign files, head re-initialisation and stem
    adaptation. ``use_ema`` (default True, as timm's ``load_checkpoint``) takes the EMA weights
    where the file has them, as :func:`create_model` does; False, the trained weights.
    A file that does not fit raises :class:`CheckpointError` and leaves the model unchanged.
    """
    name = getattr(model, "model_name", None)
    entry = _MODELS.get(name) if name is not None else None
    tensors, meta = read_weights(entry, checkpoint, use_ema)
    if meta is not None and name is not None:
        _saved_model(meta, name, str(checkpoint))
    _load_state(model, entry, model_state(tensors, meta, ema=use_ema), meta is None, str(checkpoint),
                asked=set(getattr(model, "model_args", {})))


def read_weights(
    entry: ModelEntry | None, path: str | Path, use_ema: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """:func:`read_checkpoint`, falling back on the family's own reader for official files it refuses."""
    try:
        return read_checkpoint(path, use_ema)
    except CheckpointError:
        if entry is None or entry.checkpoint_reader is None:
            raise
        return entry.checkpoint_reader(path), None


def encoder_section(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``encoder.`` weights of a wrapper's state dict (a masked-patch pretraining's) under the encoder's names."""
    return {key.removeprefix("encoder."): value for key, value in state.items() if key.startswith("encoder.")}


def _saved_model(meta: Mapping[str, Any], name: str, source: str) -> Mapping[str, Any]:
    saved = meta.get("model") or {}
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"checkpoint {source} has a malformed 'model' entry in its metadata: {saved!r}")
    if saved.get("name") not in (None, name):
        raise CheckpointError(f"checkpoint {source} is for model {saved['name']!r}, not {name!r}")
    return saved


def _default_cfg(entry: ModelEntry) -> dict[str, Any]:
    cfg: dict[str, Any] = {"architecture": entry.name, **entry.default_cfg}
    if "crop_pct" in cfg:  # timm's evaluation crop: centred, unless the family says otherwise
        cfg.setdefault("crop_mode", "center")
    if "input_size" in cfg:  # timm's: may the weights be run at another size (the family's entries say if not)
        cfg.setdefault("fixed_input_size", False)
    if entry.first_conv is not None:
        cfg["first_conv"] = entry.first_conv
    if entry.classifier:
        cfg["classifier"] = entry.classifier[0] if len(entry.classifier) == 1 else entry.classifier
    weights = entry.pretrained
    if weights is not None:
        cfg.update({"url": weights.url} if weights.url else {"hf_hub_id": weights.hf_hub_id, "filename": weights.filename})
        if weights.sha256:
            cfg["sha256"] = weights.sha256
        tag = weights_tag(entry)
        if tag:
            cfg["tag"] = tag  # timm's name of these weights (NAME.TAG)
    return cfg


def _load_state(
    model: nn.Module, entry: ModelEntry | None, state: dict[str, torch.Tensor], foreign: bool, source: str,
    asked: set[str] | None = None,
) -> None:
    """``asked``: the builder arguments the caller gave; the head and stem adapt only to a ``num_classes`` and
    ``in_chans`` among them (None: both)."""
    if foreign:
        state = filter_foreign_state(entry, state, model, source)
    asked = {"num_classes", "in_chans"} if asked is None else asked
    state = adapt_state_dict(state, model, entry, source, reinit_head="num_classes" in asked,
                             adapt_stem="in_chans" in asked)
    load_state_dict_strict(model, state, source)


def without_wrapper_prefix(state: dict[str, torch.Tensor], model: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """``state`` without the one prefix that all its keys carry and the model's lack (``model.``: a PyTorch Lightning
    module's file of the network it holds as ``self.model``), where no key is the model's as it is and some are
    once it is taken off; ``state`` itself otherwise (a file with more than the network is left for the strict load
    to report). As :func:`~visionzoo.checkpoint.read_checkpoint` takes off DDP's ``module.``, with a log line."""
    prefixes = {key.partition(".")[0] for key in state}
    own = model.state_dict()
    if len(prefixes) != 1 or not all("." in key for key in state) or any(key in own for key in state):
        return state
    prefix = prefixes.pop() + "."
    stripped = {key.removeprefix(prefix): value for key, value in state.items()}
    if not any(key in own for key in stripped):
        return state
    log.info("%s: every key carries the prefix %r (a wrapper's, as a Lightning module's attribute): taking it off",
             source, prefix)
    return stripped


def filter_foreign_state(entry: ModelEntry | None, state: dict[str, torch.Tensor], model: nn.Module,
                         source: str) -> dict[str, torch.Tensor]:
    """``state``, a foreign file's (timm's, torchvision's, an official release's), without a wrapper's prefix
    (:func:`without_wrapper_prefix`) and through the family's checkpoint filter where it has one; a filter's
    :class:`CheckpointError` is raised again naming ``source``, the file."""
    state = without_wrapper_prefix(state, model, source)
    if entry is None or entry.checkpoint_filter is None:
        return state
    try:
        return entry.checkpoint_filter(state, model)
    except CheckpointError as error:  # a filter knows the weights, not the file they came from
        raise CheckpointError(f"checkpoint {source}: {error}") from None


def _absent_module(key: str, model: nn.Module) -> str | None:
    """The shortest module path of ``key`` that ``model`` lacks (``head``, ``stages.3``), or None when
    the module that would hold the weight exists (a wrong key there is for the strict load to report)."""
    parts = key.split(".")[:-1]
    for depth in range(1, len(parts) + 1):
        path = ".".join(parts[:depth])
        try:
            model.get_submodule(path)
        except AttributeError:
            return path
    return None


def adapt_state_dict(
    state: Mapping[str, torch.Tensor], model: nn.Module, entry: ModelEntry | None, source: str,
    reinit_head: bool = True, adapt_stem: bool = True,
) -> dict[str, torch.Tensor]:
    """Fit a checkpoint to the model's head and stem (timm's rules), each change with a log line.

    - A feature extractor (``model.features_only``) leaves out the head and late stages: their
      weights are dropped. So are the head's weights for a model built with ``num_classes=0``.
    - A head for another number of classes keeps the model's fresh head when ``reinit_head`` (the caller asked
      for its ``num_classes``; the head may then take another width, as after ``global_pool="catavgmax"``);
      otherwise one of the same input features is refused, as timm's strict load does, naming the number of
      classes to ask for. A file without the head (a backbone's) keeps the
      model's fresh head likewise (:func:`_fresh_heads`).
    - A stem conv for another number of input channels is adapted by :func:`adapt_input_conv` when
      ``adapt_stem`` (the caller asked for its ``in_chans``); otherwise it is refused in the same way.

    Anything else that differs is left for :func:`load_state_dict_strict` to report.
    """
    own = model.state_dict()
    state = dict(state)
    if getattr(model, "features_only", False):
        absent = {k: _absent_module(k, model) for k in state if k not in own}
        absent = {k: module for k, module in absent.items() if module is not None}
        if absent:
            log.info("%s: the feature extractor has no %s; dropping their weights",
                     source, ", ".join(sorted(set(absent.values()))))
            state = {k: v for k, v in state.items() if k not in absent}
    if entry is None:
        return state
    headless: list[str] = []  # the model's heads the file has no weights for
    for head in entry.classifier:
        weight, bias = head + ".weight", head + ".bias"
        head_keys = [k for k in state if k.startswith(head + ".")]
        if not head_keys and weight in own:
            headless.append(head)
        elif head_keys and not any(k.startswith(head + ".") for k in own):
            log.info("%s: the model has no classifier %s (num_classes=0); dropping its weights", source, head)
            for key in head_keys:
                del state[key]
        elif weight in state and weight in own and _other_classes(state[weight], own[weight], reinit_head):
            if not reinit_head:
                # a fine-tuned file loaded without num_classes would otherwise lose its trained head unnoticed
                raise CheckpointError(
                    f"checkpoint {source} has a classifier {head} of {state[weight].shape[0]} classes, the model "
                    f"{own[weight].shape[0]}; give num_classes={state[weight].shape[0]} to load it "
                    "(or another num_classes to re-initialise it)")
            log.info("%s: %s has %d classes, the model %d: re-initialising the classifier %s",
                     source, weight, state[weight].shape[0], own[weight].shape[0], head)
            for key in (weight, bias):
                if key in state and key in own:
                    state[key] = own[key]
    if headless:
        state = _fresh_heads(state, own, headless, reinit_head, source)
    if reinit_head and len(entry.final_norms) == 2:
        state = _moved_final_norm(state, own, entry.final_norms, source)
    if entry.first_conv is not None:
        key = entry.first_conv + ".weight"
        if key in state and key in own and _other_in_chans(state[key], own[key]):
            if not adapt_stem:
                raise CheckpointError(
                    f"checkpoint {source} has a stem {entry.first_conv} for {state[key].shape[1]} input channels, "
                    f"the model {own[key].shape[1]}; give in_chans={state[key].shape[1]} to load it "
                    "(or another in_chans to adapt it)")
            log.info("%s: adapting %s from %d to %d input channels",
                     source, key, state[key].shape[1], own[key].shape[1])
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
    return state


def _fresh_heads(state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], heads: list[str], reinit_head: bool,
                 source: str) -> dict[str, torch.Tensor]:
    """``state`` of a file without the classifiers ``heads`` (a backbone's, self-supervised weights), with the
    model's fresh ones where the caller asked for a ``num_classes`` (``reinit_head``), as timm's pretrained load.
    Unasked, a file that lacks nothing else is refused saying so; any other is left for the strict load to report."""
    head_keys = {key for key in own if key.startswith(tuple(head + "." for head in heads))}
    names = ", ".join(heads)
    if reinit_head:
        log.info("%s: the file has no classifier %s; keeping the model's fresh one", source, names)
        return {**state, **{key: own[key] for key in head_keys}}
    missing = {key for key in own if key not in state and not key.endswith("num_batches_tracked")}
    if missing == head_keys and set(state) <= set(own):
        raise CheckpointError(f"checkpoint {source} has no classifier {names} (a backbone's weights); "
                              "give num_classes=N for a fresh one (0: none)")
    return state


def _moved_final_norm(state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], places: tuple[str, ...],
                      source: str) -> dict[str, torch.Tensor]:
    """``state`` for a model whose final norm is in the other of ``places`` than the file's (a ViT's ``norm``
    before the pooling, ``fc_norm`` after it: a class-token file fine-tuned with average pooling): the file's
    norm is dropped and the model's keeps its fresh initialisation, as timm's pretrained load does when
    ``num_classes`` is asked. Any other state is returned as it is."""
    def under(keys: Iterable[str], module: str) -> set[str]:
        return {key for key in keys if key.startswith(module + ".")}

    for theirs, ours in (places, places[::-1]):
        dropped, fresh = under(state, theirs), under(own, ours)
        if dropped and fresh and not under(own, theirs) and not under(state, ours):
            log.info("%s: the file's final norm %s precedes the pooling, the model's %s follows it (or the reverse):"
                     " dropping the file's, keeping the model's fresh one", source, theirs, ours)
            state = {key: value for key, value in state.items() if key not in dropped}
            state.update({key: own[key] for key in fresh})
    return state


def _other_classes(saved: torch.Tensor, own: torch.Tensor, any_width: bool) -> bool:
    """A head for another number of classes: of the same input width, or (``any_width``: the caller asked for its
    classes, whose head timm's pretrained load then drops whatever its shape) of any, as a "catavgmax" pool's
    doubled width or ConvNeXt's 1×1-conv head without pooling."""
    return saved.shape[0] != own.shape[0] and (any_width or saved.shape[1:] == own.shape[1:])


def _other_in_chans(saved: torch.Tensor, own: torch.Tensor) -> bool:
    same_kernel = saved.ndim == own.ndim >= 2 and saved.shape[0] == own.shape[0] and saved.shape[2:] == own.shape[2:]
    return same_kernel and saved.shape[1] != own.shape[1]


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """Stem conv weights ``Tensor[O, I, kh, kw]`` for ``in_chans`` inputs instead of ``I``.

    As timm does: for one channel the ``I`` input planes are summed (a grey image is R = G = B);
    otherwise they are repeated cyclically and scaled by ``I / in_chans`` so that activations keep
    their scale. Computed in float32, returned in the weight's dtype.
    """
    if in_chans < 1:
        raise ValueError(f"in_chans must be positive, got {in_chans}")
    original = weight.shape[1]
    dtype = weight.dtype
    weight = weight.float()
    if in_chans == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        repeats = -(-in_chans // original)
        adapted = weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (original / in_chans)
    return adapted.to(dtype)


def _listing(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load all of ``state`` or nothing: differences in keys or shapes raise before any copy.

    Batch-norm step counters (``num_batches_tracked``) may be absent, as in checkpoints written
    before PyTorch 0.4.1 (torchvision's ImageNet ResNets among them): the model keeps its own. Counters the
    model has no place for (frozen batch norms) are dropped, as torchvision's ``FrozenBatchNorm2d`` drops them.
    Submodules a model leaves out on purpose (``model.omitted_weights``, key prefixes such as a code prior's
    ``tokenizer.discriminator``) have their weights dropped.
    Raises :class:`CheckpointError` listing the missing, unexpected and shape-mismatched keys.
    """
    own = model.state_dict()
    state = dict(state)
    for prefix in getattr(model, "omitted_weights", ()):
        omitted = [k for k in state if k.startswith(prefix + ".")]
        if omitted:
            log.info("%s: the model leaves out %s; dropping its %d weights", source, prefix, len(omitted))
            state = {k: v for k, v in state.items() if not k.startswith(prefix + ".")}
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    state = {k: v for k, v in state.items() if k in own or not k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches: " + _listing(
                [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]))
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(f"checkpoint {source} does not fit model {name}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
