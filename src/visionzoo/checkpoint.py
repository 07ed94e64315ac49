"""Checkpoint files: reading any weights file safely, writing ours atomically.

Our checkpoints are one ``.safetensors`` file. Tensors are stored under prefixes
(``model.``, ``ema.``, ``optimizer.``, ``rng.``) and a JSON document travels in the safetensors
metadata under the key ``visionzoo``: the model's registry name and arguments (so the file alone
rebuilds its model), and, for training checkpoints, the step, the optimizer's hyper-parameters and
the run's configuration. A readable copy of that JSON is written beside it as ``NAME.json``.

Foreign files (timm's ``.safetensors``/``.pth``, torchvision's ``.pth``) are read with
``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors.torch import safe_open

METADATA_KEY = "visionzoo"
MODEL_PREFIX = "model."


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit its model (a user error)."""


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    A process killed at any moment leaves either the old file or the new one, never a half file:
    the temporary file is fsynced before ``os.replace``, which is atomic on POSIX.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
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
    document = json.dumps(meta, sort_keys=True)
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata={METADATA_KEY: document}))
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True)))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read any weights file safely: ``(tensors, our metadata or None)``.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``, unwrapping the usual containers (``state_dict``, ``model``,
    ``module.`` prefixes). Raises :class:`CheckpointError` naming the file for a missing, truncated,
    corrupt or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if _is_safetensors(path):
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {error}") from None
        meta = json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else None
        return tensors, meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise CheckpointError(
                f"checkpoint {path} holds Python objects beyond tensors and is refused for safety "
                "(it would need arbitrary unpickling); save its state_dict instead"
            ) from None
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {error}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {error}") from None
    return _unwrap_state_dict(obj, path), None


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as handle:
        head = handle.read(9)
    # A safetensors file starts with a little-endian u64 header length followed by '{'.
    return len(head) == 9 and head[8:9] == b"{"


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_ema", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def model_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None, ema: bool = False) -> dict[str, torch.Tensor]:
    """The model's state dict from what :func:`read_checkpoint` returned.

    For our training checkpoints this is the ``model.`` (or, with ``ema=True``, ``ema.``) section;
    foreign files are returned as they are.
    """
    if meta is None:
        return dict(tensors)
    prefix = "ema." if ema and any(k.startswith("ema.") for k in tensors) else MODEL_PREFIX
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
