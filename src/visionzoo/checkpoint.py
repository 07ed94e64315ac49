"""Checkpoint files: reading any weights file safely, writing ours atomically.

Our checkpoints are one ``.safetensors`` file. Tensors are stored under prefixes
(``model.``, ``ema.``, ``optimizer.``, ``rng.``) and a JSON document travels in the safetensors
metadata under the key ``visionzoo``: the model's registry name and arguments (so the file alone
rebuilds its model), and, for training checkpoints, the step, the optimizer's hyper-parameters and
the run's configuration. A readable copy of that JSON is written beside it as ``NAME.json``.

Foreign files (timm's ``.safetensors``/``.pth``, torchvision's ``.pth``) are read with
``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is refused. Allowed beyond tensors and
containers are ``argparse.Namespace``, which timm's ``train.py`` and torchvision's reference scripts save as
``args`` beside the weights (timm's own loader allows it the same way): its unpickling sets attributes, runs no
code; and numpy's boolean and numeric scalars and their dtypes (a script's ``"best": np.float64(0.5)``), which are
a type code and raw bytes; and the callback classes that PyTorch Lightning 1.0–1.4 files use as dictionary keys
(taming-transformers' ``.ckpt`` files), read as inert stand-ins.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

METADATA_KEY = "visionzoo"
MODEL_PREFIX = "model."

def _numpy_scalar_globals() -> list[Any]:
    """What weights-only unpickling needs for numpy's boolean and numeric scalars and dtypes (a training script's
    ``"best": np.float64(0.5)``): ``numpy.dtype`` and its classes, which it builds from a type code, and numpy's
    ``scalar``, which makes a scalar of a dtype and raw bytes; under numpy 1's module name too, as older files name
    it. Neither runs code; numpy's arrays and object dtypes stay refused."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    kinds = {type(np.dtype(code)) for code in "?" + np.typecodes["AllInteger"] + np.typecodes["AllFloat"]}
    return [np.dtype, *kinds, core.multiarray.scalar, (core.multiarray.scalar, "numpy.core.multiarray.scalar")]


class LightningCallbackKey:
    """Stands in, on load, for a PyTorch Lightning callback class: Lightning 1.0–1.4 ``.ckpt`` files (those of
    taming-transformers' official VQGANs among them) key their callbacks' states by the class itself
    (``checkpoint["callbacks"][ModelCheckpoint]``). Only the name is read; nothing of Lightning is imported or run."""


def _lightning_callback_keys() -> list[tuple[type, str]]:
    """A stand-in class (:class:`LightningCallbackKey`) under the name of each of Lightning's callbacks that keep a
    state, one class each so that two callbacks stay two keys."""
    names = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
             "pytorch_lightning.callbacks.early_stopping.EarlyStopping")
    return [(type(name.rpartition(".")[2], (LightningCallbackKey,), {}), name) for name in names]


# the classes weights-only loading takes beyond tensors and containers: training files' saved arguments, the
# numpy scalars their scripts keep beside the weights (a best metric, an epoch), and old Lightning files' callback keys
SAFE_GLOBALS = [argparse.Namespace, *_numpy_scalar_globals(), *_lightning_callback_keys()]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit its model (a user error)."""


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    A process killed at any moment leaves either the old file or the new one, never a half file:
    the temporary file is fsynced before ``os.replace``, which is atomic on POSIX. The file gets the
    mode ``open`` would give it (0o666 less the umask), as the run's other files do, not the 0o600 of
    ``mkstemp`` (and of safetensors' own writer).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~process_umask())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def process_umask() -> int:
    """The process's umask, read from /proc where Linux shows it: ``os.umask`` can only read it by setting it,
    which another thread creating a file meanwhile would see."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write ``tensors`` and the JSON-serialisable ``meta`` as one safetensors file, atomically.

    Tensors are made contiguous and detached; tensors that share storage are cloned (safetensors
    refuses shared storage). ``NAME.json`` beside the file repeats ``meta`` for people to read.
    """
    path = Path(path)
    seen: set[int] = set()
    flat: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach()
        if tensor.untyped_storage().data_ptr() in seen and tensor.numel() > 0:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        flat[name] = tensor.contiguous().cpu()
    try:
        document = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint {path}: the metadata is not JSON-serialisable ({error})") from None
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata={METADATA_KEY: document}))
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True)))


def _checkpoint_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path to an existing file; a folder (often a run folder) is refused naming the file
    that the command wants, since it says neither missing nor corrupt. An empty path (``Path("")`` is the working
    folder) raises FileNotFoundError, and no path at all TypeError, each naming it."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path (str or os.PathLike), got {path!r}")
    if not os.fspath(path):
        raise FileNotFoundError("checkpoint path is empty ('')")
    path = Path(path)
    if path.is_dir():
        inside = path / "checkpoint.safetensors"
        hint = f"; did you mean {inside}?" if inside.is_file() else ""
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file{hint}")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    return path


def read_checkpoint(
    path: str | os.PathLike, use_ema: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read any weights file safely: ``(tensors, our metadata or None)``.

    ``.safetensors`` files (by suffix or by their header) are read with safetensors; anything else
    with ``torch.load(weights_only=True)``, unwrapping the usual containers (``state_dict``,
    ``model``); foreign files of either kind lose the ``module.`` and ``_orig_mod.`` key prefixes of
    DDP and torch.compile. The metadata is ours (a dict) only for files that
    :func:`save_checkpoint` wrote; foreign files give ``None``.

    Training files of timm's ``train.py`` and torchvision's reference scripts load too: the ``argparse.Namespace``
    they keep beside the weights is allowed (:data:`SAFE_GLOBALS`).

    ``use_ema``: a foreign training file that holds EMA weights beside the trained ones gives its
    ``state_dict_ema`` (else ``model_ema``) rather than its ``state_dict``/``model``, as timm's
    ``load_state_dict(use_ema=True)``. Our own files are returned whole (both sections); see
    :func:`model_state`.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: a truncated or corrupt file, or one holding Python objects beyond tensors
            and plain containers (refused: loading it would need arbitrary unpickling).
    """
    path = _checkpoint_file(path)
    if _is_safetensors(path):
        return _read_safetensors(path)
    return unwrap_state_dict(load_torch_file(path), path, use_ema), None


def load_torch_file(path: str | os.PathLike) -> Any:
    """The object a ``torch.save`` file holds, read with ``torch.load(weights_only=True)`` (:data:`SAFE_GLOBALS`
    allowed), on the CPU: what a family's own reader of official files (HIPT's DINO states) unwraps itself.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: as :func:`read_checkpoint`, in one line naming ``path``: a truncated or corrupt file, a
            file that is no weights at all (a Git LFS pointer, an image), or one refused for safety; never torch's
            advice to load it with ``weights_only=False``.
    """
    path = _checkpoint_file(path)
    if _is_torchscript(path):  # torch.load would warn, then advise weights_only=False
        raise CheckpointError(f"checkpoint {path} is a TorchScript archive (torch.jit.save's), not a state dict of "
                              "weights; where you trust it, load it with torch.jit.load and save its state_dict()")
    try:
        with warnings.catch_warnings():  # a damaged protocol byte would print torch's "file an issue" warning
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                # an open file, not the path: torch.load would read a file named .safetensors as one by its name
                with open(path, "rb") as handle:
                    obj = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = _unsafe_global(error, path)
        if unsafe:
            raise CheckpointError(
                f"checkpoint {path} is refused for safety: it holds a Python object of type {unsafe}, "
                "which only arbitrary unpickling could load; save the model's state_dict (or a .safetensors) instead"
            ) from None
        raise _unreadable(path, error) from None
    except Exception as error:  # a damaged file fails in zipfile, struct, pickle or torch, each its own way
        raise _unreadable(path, error) from None
    return obj


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive: a zip whose entries hold ``constants.pkl``, as torch's own test."""
    return any(name.rpartition("/")[2] == "constants.pkl" for name in _zip_names(path))


def _zip_names(path: Path) -> list[str]:
    """The entries of the zip archive at ``path``; none for a file that is no readable zip."""
    try:
        if not zipfile.is_zipfile(path):
            return []
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except Exception:  # a damaged archive fails in zipfile its own way (BadZipFile, NotImplementedError, ...):
        return []  # left for torch.load to report


def _unsafe_global(error: pickle.UnpicklingError, path: Path) -> str | None:
    """The ``module.name`` that weights-only unpickling refused, or None when the file is just damaged.

    A legacy (non-zip) file cut inside a GLOBAL opcode is refused with the partial name it ends on,
    so the name only counts when the file holds it whole (``module\\nname\\n``; torch's zip entries
    are stored uncompressed, so the same test holds for them).
    """
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if not found:
        return None
    name = found.group(1)
    needles = [f"{name[:i]}\n{name[i + 1:]}\n".encode() for i, c in enumerate(name) if c == "."]
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return name if any(data.find(needle) >= 0 for needle in needles) else None


def _first_line(error: BaseException) -> str:
    """The reason in one line: torch's weights-only advice is cut away and a bare ``KeyError: 253`` keeps its type."""
    text = str(error).strip()
    if text.startswith(_TORCH_WEIGHTS_ONLY_PREFIX):
        text = _weights_only_reason(text)
    line = text.splitlines()[0].strip() if text else ""
    line = line.split(_TORCH_ZIP_ADVICE)[0]  # torch's paragraph after a zip's reason says "corrupt" again
    if not re.search("[A-Za-z]{3}", line):
        line = f"{type(error).__name__} {line}".strip()
    return line


_TORCH_WEIGHTS_ONLY_PREFIX = "Weights only load failed."
_TORCH_ZIP_ADVICE = ". This is an internal miniz error."


def _weights_only_reason(text: str) -> str:
    """The unpickler's own reason inside torch's message, which wraps it in advice to re-load with
    ``weights_only=False``: unsafe for a file that is already known not to be a clean checkpoint."""
    body = text.split("\n\nCheck the documentation")[0]
    if "WeightsUnpickler error:" in body:
        reason = body.rsplit("WeightsUnpickler error:", 1)[1].strip()
    elif "\n\n" in body:
        reason = body.rsplit("\n\n", 1)[1].strip()
    else:
        reason = body.removeprefix(_TORCH_WEIGHTS_ONLY_PREFIX).strip()
    unknown = re.match(r"Unsupported global: GLOBAL (\S+)", reason)
    return f"unknown Python object {unknown.group(1)}" if unknown else reason


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _unreadable(path, error) from None
    meta = _parse_metadata(metadata, path)
    return (tensors if meta is not None else clean_state_dict(tensors)), meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """Our JSON document of a ``.safetensors`` checkpoint without reading its tensors (None: not ours, e.g.
    a timm or torchvision file, ``.safetensors`` or ``.pth``).

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` for an unreadable one.
    """
    path = _checkpoint_file(path)
    if not _is_safetensors(path):
        # Ours are all safetensors; a torch file is read whole only to tell a foreign state dict from a damaged file.
        read_checkpoint(path)
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _unreadable(path, error) from None
    return _parse_metadata(metadata, path)


def _parse_metadata(metadata: Mapping[str, str], path: Path) -> dict[str, Any] | None:
    if METADATA_KEY not in metadata:
        return None
    try:
        meta = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata: {error}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has corrupt metadata: expected a JSON object")
    return meta


def _unreadable(path: Path, error: BaseException) -> CheckpointError:
    """The error for a file that neither safetensors nor torch.load could read: a JSON document (a run's
    checkpoint.json or summary.json given by mistake) is named as such, else the file is truncated or corrupt."""
    if path.stat().st_size <= 10**7:
        try:
            json.loads(path.read_bytes())
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            pass
        else:
            weights = path.parent / "checkpoint.safetensors"
            hint = f"; the run's weights are {weights}" if weights.is_file() and weights != path else ""
            return CheckpointError(f"checkpoint {path} is a JSON document, not a weights file{hint}")
    other = _other_kind(path)
    if other is not None:
        return CheckpointError(f"checkpoint {path} {other}")
    protocol = _pickle_protocol(path)
    if protocol is not None and protocol >= 4 and "Unsupported operand" in str(error):
        return CheckpointError(
            f"checkpoint {path} was saved with pickle protocol {protocol} (torch.save(..., pickle_protocol={protocol})), "
            "which PyTorch's weights-only loader does not read; where you trust the file, save it again with "
            "torch.save's default protocol")
    return CheckpointError(f"checkpoint {path} is truncated or corrupt: {_first_line(error)}")


def _pickle_protocol(path: Path) -> int | None:
    """The pickle protocol of a torch.save file (its ``data.pkl`` entry, or the legacy format's first pickle), None
    when there is no pickle to tell."""
    pickles = [name for name in _zip_names(path) if name.rpartition("/")[2] == "data.pkl"]
    try:
        if pickles:
            with zipfile.ZipFile(path) as archive, archive.open(pickles[0]) as entry:
                head = entry.read(2)
        else:
            with open(path, "rb") as handle:
                head = handle.read(2)
    except Exception:  # a damaged archive: no protocol to tell
        return None
    return head[1] if len(head) == 2 and head[0] == 0x80 else None


_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_IMAGE_FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]


def _other_kind(path: Path) -> str | None:
    """What an unreadable file is instead of weights, where that can be told: a Git LFS pointer (a model repository
    cloned without git-lfs holds these small text files under the weights' names), an HTML page (a web page saved in
    place of the download), a NumPy file (JAX/Flax weights come as .npz) or an image; None for a file that may be
    damaged weights."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(_LFS_POINTER):
        return "is a Git LFS pointer, not the weights it stands for: fetch them with `git lfs pull` in its repository"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "is an HTML page, not a weights file"
    if head.startswith(b"\x93NUMPY"):
        return "is a NumPy array file (.npy), not a weights file"
    names = _zip_names(path)
    if names and all(name.endswith(".npy") for name in names):
        return ("is a NumPy archive (.npz), not a PyTorch weights file: JAX/Flax weights (Google's ViT releases) are "
                "read by timm's ViTs (model.load_pretrained(FILE)), whose state_dict() loads here")
    try:
        with Image.open(path, formats=_IMAGE_FORMATS) as image:
            return f"is a {image.format} image, not a weights file"
    except (OSError, ValueError, SyntaxError):  # PIL's UnidentifiedImageError is an OSError
        return None


# How torch.save's files begin: a zip's first entry, or the legacy format's pickled magic number (protocol 2)
_TORCH_STARTS = (b"PK\x03\x04", b"\x80\x02\x8a\x0a")


def _is_safetensors(path: Path) -> bool:
    """By the file's start, else its name: a torch.save file renamed ``.safetensors`` is read as what it is."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head.startswith(_TORCH_STARTS):
        return False
    # A safetensors file starts with a little-endian u64 header length followed by '{'.
    return path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")


_STATE_DICT_KEYS = ("state_dict", "model", "model_ema", "module")
_EMA_FIRST_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")  # timm's order with use_ema


def unwrap_state_dict(obj: Any, path: str | os.PathLike, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of tensors in a loaded file's ``obj``: ``obj`` itself or its ``state_dict``/``model``/
    ``model_ema``/``module`` entry (the EMA's first with ``use_ema``), wrapper prefixes taken off; CheckpointError
    naming ``path`` and the entries that are no tensors otherwise."""
    for key in _EMA_FIRST_KEYS if use_ema else _STATE_DICT_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict of tensors")
    if "n_averaged" in obj and any(str(k).startswith("module.") for k in obj):
        # torch.optim.swa_utils.AveragedModel (torchvision's reference EMA, "model_ema"): its step count is no weight
        obj = {k: v for k, v in obj.items() if k != "n_averaged"}
    others = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if others or not obj:
        found = f"non-tensor entries {others[:5]}" if others else "no tensors"
        raise CheckpointError(f"checkpoint {path} is not a state dict of tensors: it has {found}")
    return clean_state_dict(obj)


# DistributedDataParallel saves its wrapped model under "module.", torch.compile under "_orig_mod.", nested either way
_WRAPPER_PREFIXES = ("_orig_mod.", "module.", "_orig_mod.")


def clean_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the wrapper prefixes of DDP (``module.``) and torch.compile (``_orig_mod.``) taken
    off its keys, as timm's ``clean_state_dict``."""
    cleaned = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        cleaned[key] = value
    return cleaned


def model_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None, ema: bool = False) -> dict[str, torch.Tensor]:
    """The model's state dict from what :func:`read_checkpoint` returned.

    For our training checkpoints this is the ``model.`` section, or with ``ema=True`` the ``ema.``
    section where the run kept one (``--ema-decay``); foreign files are returned as they are.
    """
    if meta is None:
        return dict(tensors)
    prefix = "ema." if ema and any(k.startswith("ema.") for k in tensors) else MODEL_PREFIX
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
