"""Small helpers shared across the package."""

from __future__ import annotations

import collections.abc
import contextlib
import ctypes
import ctypes.util
import dataclasses
import difflib
import functools
import inspect
import logging
import math
import numbers
import operator
import os
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

# PIL's modes of 16-bit greyscale images. Mode "I" (32-bit integers) holds 16-bit files too: a 16-bit PGM, or with
# older Pillow a 16-bit PNG; in other files (a 32-bit integer TIFF) or in memory its scale is read from its values.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
SIXTEEN_BIT_FORMATS = ("PNG", "PPM")

log = logging.getLogger(__name__)


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer, Python's or NumPy's, and not a bool (which Python counts as one)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def whole_number(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int (numpy integers too) of at least ``minimum``; else ValueError naming ``name``."""
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number, Python's or NumPy's, and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def require_integers(owner: str, **settings: Any) -> None:
    """Raise ValueError naming ``owner`` and the setting when one given (not None) is not an integer, Python's or
    NumPy's: int() would turn seed=1.5 into another data set's seed 1, or grid_size=2.5 into 2, without a word."""
    for name, value in settings.items():
        if value is not None and not is_integer(value):
            raise ValueError(f"{owner} {name} must be an integer, got {value!r:.40}")


_SIMPLE_TYPES = {bool: "a bool", int: "an integer", float: "a number", str: "a string", type(None): "None"}
_PLURALS = {bool: "bools", int: "integers", float: "numbers", str: "strings", type(None): "None"}
_SEQUENCE_ORIGINS = (tuple, list, collections.abc.Sequence)


@dataclasses.dataclass(frozen=True)
class _SequenceOf:
    """The kind of a ``tuple[int, int]`` (``length`` 2), ``tuple[int, ...]``, ``list[int]`` or ``Sequence[int]``
    (``length`` None) argument: a list, tuple (what ``--model-arg KEY=[...]`` gives), other sequence but a string,
    or NumPy array, of ``items``."""

    items: tuple[Any, ...]
    length: int | None

    def describe(self, plural: bool = False) -> str:
        items = " or ".join(_describe(kind, plural=True) for kind in self.items)
        count = "" if self.length is None else f"{self.length} "
        return f"{'sequences' if plural else 'a sequence'} of {count}{items}"


def _describe(kind: Any, plural: bool = False) -> str:
    if isinstance(kind, _SequenceOf):
        return kind.describe(plural)
    return (_PLURALS if plural else _SIMPLE_TYPES)[kind]


def _argument_kinds(annotation: Any, namespace: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The kinds of value an annotation takes: bool, int, float, str and None, and lists or tuples of them
    (:class:`_SequenceOf`, nested too), in a union (``int | tuple[int, int]``); None for any other annotation (a
    module, a callable, a dict, a tuple of mixed types), which is not checked."""
    if isinstance(annotation, str):
        try:
            annotation = eval(annotation, dict(namespace))  # the package's own annotations, as typing does
        except Exception:
            return None
    union = typing.get_origin(annotation) in (types.UnionType, typing.Union)
    kinds = []
    for member in typing.get_args(annotation) if union else (annotation,):
        if member in _SIMPLE_TYPES:
            kinds.append(member)
            continue
        args = typing.get_args(member)
        if typing.get_origin(member) not in _SEQUENCE_ORIGINS or not args:
            return None
        variable = typing.get_origin(member) is not tuple or (len(args) == 2 and args[1] is Ellipsis)
        if not variable and len(set(args)) > 1:
            return None
        items = _argument_kinds(args[0], namespace)
        if items is None:
            return None
        kinds.append(_SequenceOf(items, None if variable else len(args)))
    return tuple(kinds)


def _is_of(value: Any, kind: Any) -> bool:
    if isinstance(kind, _SequenceOf):
        sequence = (isinstance(value, collections.abc.Sequence) and not isinstance(value, str | bytes)
                    or isinstance(value, np.ndarray) and value.ndim > 0)
        return (sequence and (kind.length is None or len(value) == kind.length)
                and all(any(_is_of(item, item_kind) for item_kind in kind.items) for item in value))
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool | np.bool_)
    if kind is int:
        return is_integer(value)
    if kind is float:
        return is_real(value)
    return isinstance(value, kind)


def check_argument_types(init: Callable[..., None]) -> Callable[..., None]:
    """Decorate a model's ``__init__``: an argument annotated with bool, int, float or str, a list, tuple or
    sequence of them (``tuple[int, int]``, ``Sequence[int]``: a list, tuple or array of that length and those
    items), or a union of these with None, given a value of another kind is refused in a ValueError naming the
    class, the argument and the value. Models are built from the command line's ``--model-arg KEY=VALUE``, where
    ``drop_rate=abc`` otherwise ended in a TypeError traceback from deep inside torch, ``small_input=no`` (a
    string) counted as true, and ``window_size=abc`` or ``depths=[2,"a"]`` failed with "invalid literal for int()".
    The annotations are read once, at the first call."""
    signature = inspect.signature(init)
    namespace = init.__globals__
    kinds_of: dict[str, tuple[Any, ...] | None] = {}

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        if not kinds_of:
            kinds_of.update({name: _argument_kinds(parameter.annotation, namespace)
                             for name, parameter in signature.parameters.items()})
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:  # an unknown keyword: __init__'s own error names it
            bound = None
        for name, value in list(bound.arguments.items())[1:] if bound else ():
            kinds = kinds_of[name]
            if kinds and not any(_is_of(value, kind) for kind in kinds):
                expected = " or ".join(_describe(kind) for kind in kinds)
                raise ValueError(f"{type(self).__name__}: {name} must be {expected}, got {value!r:.40}")
        init(self, *args, **kwargs)

    return checked


def require_nested_args(name: str, args: Any, reserved: Mapping[str, str]) -> None:
    """Refuse a detector's ``name`` (``backbone_args``, ``cnn_args``) when it is no dict, or sets one of the
    ``reserved`` arguments (key: what sets it instead) that the detector passes itself: else a TypeError
    ("got multiple values for keyword argument"), a traceback from the CLI's --model-arg."""
    if args is None:
        return
    if not isinstance(args, Mapping):
        raise ValueError(f"{name} must be a dict of the backbone's arguments, got {args!r:.60}")
    for key, instead in reserved.items():
        if key in args:
            raise ValueError(f"{name} cannot set {key}: {instead}")


def require_unit_interval(**settings: float) -> None:
    """Raise ValueError naming the setting when one (a threshold, IoU or fraction) lies outside [0, 1] or is NaN:
    a percentage such as box_score_thresh=50 would keep no detection, without a word."""
    for name, value in settings.items():
        if not 0.0 <= value <= 1.0:  # NaN fails too
            raise ValueError(f"{name} must be in [0, 1], got {value!r:.40}")


def require_bools(**settings: Any) -> None:
    """Raise ValueError naming the setting when one is not a bool, Python's or NumPy's: ``--model-arg
    frozen_batch_norm=no`` gives the string "no", which counts as true, and would switch it on without a word."""
    for name, value in settings.items():
        if not isinstance(value, bool | np.bool_):
            raise ValueError(f"{name} must be a bool, got {value!r:.40}")


def require_folder_or_absent(path: str | os.PathLike, option: str) -> Path:
    """``path`` as a Path, refused up front (NotADirectoryError naming ``option``) when a file already holds
    the name of the folder a command is about to write into, or of a folder above it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{option} {path} is a file, not a folder; give a folder path")
    above = next((parent for parent in path.absolute().parents if parent.exists()), None)
    if above is not None and not above.is_dir():  # else mkdir fails after the work: "[Errno 20] Not a directory"
        raise NotADirectoryError(f"{option} {path}: {above} is a file, not a folder; give a folder path")
    return path


def require_not_folder(path: str | os.PathLike, option: str, kind: str) -> Path:
    """``path`` as a Path, refused up front (IsADirectoryError naming ``option``) when a folder holds the name of
    the file (``kind``, e.g. "a .json file") a command is about to write, and (NotADirectoryError) when a file holds
    the name of a folder above it."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a folder; give the path of {kind}")
    above = next((parent for parent in path.absolute().parents if parent.exists()), None)
    if above is not None and not above.is_dir():  # else writing fails after the work: "[Errno 17] File exists"
        raise NotADirectoryError(f"{option} {path}: {above} is a file, not a folder; give the path of {kind}")
    return path


def with_article(word: str) -> str:
    """``word`` after "a" or "an", by its first letter (a model name: "an image_gpt_small", "a dcgan")."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The at most ``n`` names of ``choices`` closest to ``name``, closest first (for error messages); empty where none
    is close, so that a message says something else than a suggestion of nothing."""
    choices = list(choices)
    matches = difflib.get_close_matches(name, choices, n=n, cutoff=0.4)
    return matches or [c for c in choices if name.lower() in c.lower()][:n]


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, False on a device autocast does not know (meta), where torch
    raises instead."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def resolve_device(device: str | None, index: int = 0) -> torch.device:
    """The device ``--device`` names: ``"cuda"`` (GPU ``index``), ``"cpu"``, or None: CUDA where available, else the
    CPU. ``"cuda"`` where no GPU is raises ValueError naming ``--device``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but no CUDA device is available")
        return torch.device("cuda", index)
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r}; use cpu or cuda")


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed: Python's MemoryError, CUDA's, torch's CPU allocator's
    RuntimeError ("can't allocate memory"), or a tensor torch cannot even size (:data:`TENSOR_SIZE_OVERFLOW`)."""
    return isinstance(error, MemoryError | torch.cuda.OutOfMemoryError) or any(
        words in str(error) for words in ("can't allocate memory", *TENSOR_SIZE_OVERFLOW))


# torch's words for a tensor it cannot even size (beyond 2**63 elements or bytes: an --img-size or --batch-size of
# 10**20): out of memory on any machine, as a smaller one too large for this machine is.
TENSOR_SIZE_OVERFLOW = ("Overflow when unpacking long", "Storage size calculation overflowed")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls natively (CUDA with bf16, or a CPU with AMX or AVX512-BF16).

    Elsewhere bf16 is emulated: on an AVX2-only CPU a bf16 matmul is tens of times slower than fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_native_bf16()


def is_traced() -> bool:
    """Whether the caller runs under ``torch.jit.trace``, ``torch.compile``, ``torch.export`` or ``torch.fx``'s
    symbolic tracing, which record one pass of the Python code: a loop over chunks of a batch would be fixed at the
    traced batch size (the rows beyond it left unprocessed; under torch.fx, where sizes are symbols, it cannot be
    written at all), and a cache keyed on a tensor's storage cannot be read from a traced graph."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or is_fx_symbolic_tracing()


def inference_layout(x: torch.Tensor, in_fp32: bool = False) -> torch.Tensor:
    """``x`` Tensor[B, C, H, W] channels-last where a convolutional network's inference runs faster so: on the CPU,
    without autograd, in bf16/fp16 (autocast or such an input) and, with ``in_fp32``, in fp32 too; else ``x``. Each
    convolution and norm keeps the layout it is given, so this at the input sets the whole network's. On an AMX CPU it
    doubles a ResNet-50's or FID Inception's bf16 images/s. fp32 is left alone where a reference's numbers are to be
    met: the channels-last kernels round otherwise (a ResNet-50's logits 4e-4 apart)."""
    low_precision = torch.is_autocast_enabled("cpu") or x.dtype in (torch.bfloat16, torch.float16)
    if (low_precision or in_fp32) and not torch.is_grad_enabled() and x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x


def runs_in_cache_chunks(x: torch.Tensor) -> bool:
    """Whether inference may take ``x`` through a block in CPU-cache-sized chunks (the ViT block's MLP, Swin's
    sub-batches, ConvNeXt's residual): on the CPU, without autograd (which needs the whole activations) and not
    traced (see :func:`is_traced`). A GPU runs the whole batch faster in one kernel than in hundreds of small ones."""
    # the device last: under torch.fx, x is a proxy whose device cannot be read
    return not torch.is_grad_enabled() and not is_traced() and x.device.type == "cpu"


# glibc's mallopt parameters (malloc.h), and its ceiling for M_MMAP_THRESHOLD on 64-bit systems
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 2**20
_freed_memory_kept = False


def keep_freed_memory() -> None:
    """Make glibc's malloc keep freed blocks of up to 32 MiB for reuse instead of returning them to the system
    (process-wide, for every library in the process; the process's memory then does not shrink).

    By default a freed block above glibc's (dynamic) mmap threshold is unmapped and the heap's free top is trimmed,
    so a forward pass's large activations are mapped again and every page faulted in on first touch: timm's bf16
    ViT-S/16 forward at batch 32 takes ~120,000 page faults (~25% of its CPU time on one thread), and how many depends
    on the process's allocation history. With both thresholds raised that cost is gone, as PyTorch's CUDA allocator
    keeps freed blocks on a GPU. The ViT block's inference MLP, which runs in cache-sized chunks to avoid those
    faults, then takes chunks as large as a block glibc still reuses. ``OSError`` where the C library has no
    ``mallopt`` (not glibc)."""
    global _freed_memory_kept
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallopt"):
        raise OSError("this C library has no mallopt (glibc's): keeping freed memory needs Linux with glibc")
    for parameter, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (M_TRIM_THRESHOLD, 2**31 - 1)):
        if libc.mallopt(parameter, value) != 1:
            raise OSError(f"mallopt({parameter}, {value}) failed")
    _freed_memory_kept = True


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has run in this process."""
    return _freed_memory_kept


def inference_chunk_elements(x: torch.Tensor, default: int) -> int:
    """How many hidden activations a block computes at once in CPU inference on ``x`` (the ViT block's MLP,
    ConvNeXt's residual): ``default``, cache-sized chunks that spare the page faults of a large buffer mapped afresh
    at every call; where glibc keeps freed blocks (:func:`keep_freed_memory`) there are none below its 32 MiB
    ceiling and larger products run faster, so as many as fit in 32 MiB of the computing dtype (autocast's or
    ``x``'s)."""
    if not _freed_memory_kept:
        return default
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return MMAP_THRESHOLD_MAX // dtype.itemsize


@functools.cache
def _cpu_native_bf16() -> bool:
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Xeon since Sapphire Rapids), whose matmuls want larger products."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def image_array(image: Image.Image, channels: int, name: str = "image") -> np.ndarray:
    """float32[H, W, channels] in [0, 1] (``channels`` 1 or 3) from a PIL ``image`` of any mode.

    8-bit images are converted by PIL (grey, palette, RGBA, CMYK, LAB to "L" or "RGB", through "RGB" where PIL
    has no direct conversion) and divided by 255; a mode PIL cannot convert raises ValueError naming ``name``; 16-bit
    greyscale ones are divided by 65535, since PIL's conversion would clip every value above 255 to white.
    A mode "I" (32-bit integer) image is 16-bit when its file is a PNG or PGM/PPM; otherwise (a 32-bit TIFF, or one
    made in memory) it is divided by 255 when its values fit 0..255, else by 65535, and a warning names ``name``
    and the guess (once per ``name``). Values outside 0..65535 raise ValueError naming ``name``. 32-bit float ("F", e.g.
    a float TIFF) images are taken as they are when in [0, 1]; other values raise, since PIL would clip them to
    0..255 and no one scale fits every float image.
    """
    if image.mode == "F":
        grey = np.asarray(image, dtype=np.float32)
        advice = "float images are read in [0, 1]: scale it, or save it as an 8- or 16-bit PNG"
        counts = {"NaN": int(np.isnan(grey).sum()), "infinite": int(np.isinf(grey).sum())}
        if any(counts.values()):  # else its range, taken without them, would look in [0, 1]
            held = " and ".join(f"{count} {kind} value{'s' if count > 1 else ''}" for kind, count in counts.items()
                                if count)
            raise ValueError(f"{name} is a 32-bit float image holding {held}; {advice}")
        if grey.size and not 0 <= grey.min() <= grey.max() <= 1:
            raise ValueError(f"{name} is a 32-bit float image with values {grey.min():.4g}..{grey.max():.4g}; {advice}")
        return np.repeat(grey[..., None], channels, axis=2)
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        grey = np.asarray(image, dtype=np.float32)
        low, high = (float(grey.min()), float(grey.max())) if grey.size else (0.0, 0.0)
        if not 0 <= low <= high <= 65535:
            raise ValueError(f"{name} has values {low:.0f}..{high:.0f}, beyond 16 bits (0..65535)")
        scale = 65535
        if image.mode == "I" and image.format not in SIXTEEN_BIT_FORMATS:
            scale = 255 if high <= 255 else 65535
            _warn_integer_scale(name, f"{low:.0f}..{high:.0f}", scale)
        return np.repeat(grey[..., None] / scale, channels, axis=2)
    target = "L" if channels == 1 else "RGB"
    try:
        converted = image.convert(target)
    except ValueError:  # PIL has no direct path for some modes (a CIELab TIFF's LAB to L): go through RGB
        try:
            converted = image.convert("RGB").convert(target)
        except ValueError as error:
            raise ValueError(f"{name} has mode {image.mode}, which PIL cannot convert to {target} ({error}); "
                             "save it as an RGB or greyscale PNG") from None
    pixels = np.asarray(converted, dtype=np.float32) / 255
    return pixels[..., None] if channels == 1 else pixels


@functools.cache  # once per image: a data set reads its files again every epoch
def _warn_integer_scale(name: str, values: str, scale: int) -> None:
    bits = 8 if scale == 255 else 16
    log.warning("%s is a 32-bit integer image with values %s: read as %d-bit (divided by %d); save it as an 8- or "
                "16-bit PNG to read it without a guess", name, values, bits, scale)


def first_non_finite(module: torch.nn.Module) -> str | None:
    """The name of the first tensor of ``module``'s state that holds NaN or infinity (a run that diverged), or None."""
    return next((name for name, tensor in module.state_dict().items()
                 if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())), None)


class NonFiniteOutputError(ValueError):
    """A model's outputs hold NaN or infinity (diverged weights, or bf16's range): scores, metrics or samples drawn
    from them would be meaningless. The commands name the checkpoint and the likely cause. Here, not in
    visionzoo.train.task (which the tasks import it from), because the samplers and the detectors' RPN and RoI heads
    raise it too."""


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """``module`` and its submodules in eval mode inside the block; afterwards each gets back its own mode (a
    model that keeps a frozen part in eval mode while training keeps it so)."""
    modes = [(part, part.training) for part in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for part, training in modes:
            part.training = training


def require_tensor(x: Any, expected: str = "images Tensor[B, C, H, W]") -> None:
    """TypeError naming what ``x`` is when it is no tensor: a NumPy batch has a shape too, and would fail deep inside
    the first conv; a list of images has none."""
    if not isinstance(x, torch.Tensor):
        kind = type(x).__qualname__
        if type(x).__module__ != "builtins":
            kind = f"{type(x).__module__}.{kind}"
        hint = "; convert it with torch.from_numpy" if kind == "numpy.ndarray" else ""
        raise TypeError(f"expected {expected}, got a {kind}{hint}")


def require_image_batch(x: torch.Tensor, in_chans: int) -> None:
    """ValueError unless ``x`` is a floating-point ``Tensor[B, in_chans, H, W]`` of images, naming the shape it has
    (and, for other channels, the ``in_chans`` that would take it) or its dtype (:func:`require_float_images`);
    TypeError when it is no tensor (:func:`require_tensor`)."""
    require_tensor(x)
    if x.ndim != 4:
        raise ValueError(f"expected images Tensor[B, C, H, W], got a tensor of shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"the model takes {in_chans}-channel images, got {x.shape[1]} channels "
            f"(input shape {tuple(x.shape)}); build it with in_chans={x.shape[1]}"
        )
    require_float_images(x)


def require_float_images(x: torch.Tensor, who: str = "the model", normalised: str = "",
                         normalisation: str = "normalise them with the mean and std in model.pretrained_cfg") -> None:
    """ValueError unless the images ``x`` (a Tensor) are floating point: integer or bool pixels (uint8, as PIL and
    OpenSlide give them through torch.from_numpy) ended in the first conv's "Input type (unsigned char) and bias type
    (float) should be the same", naming neither the input nor what the model takes. ``normalised`` and
    ``normalisation``: a model's own input normalisation, said after "floating-point images" and after the scaling
    to [0, 1]."""
    if not x.is_floating_point():
        raise ValueError(f"{who} takes floating-point images{normalised}, got dtype {x.dtype}; scale uint8 pixels to "
                         f"[0, 1] (x / 255), then {normalisation}")


def check_finite_outputs(*outputs: torch.Tensor) -> None:
    """NonFiniteOutputError when any of ``outputs`` (Tensors of any shape, floating point) holds NaN or infinity
    (one check, so one device synchronisation, for all of them)."""
    if not bool(torch.stack([torch.isfinite(output).all() for output in outputs]).all()):
        raise NonFiniteOutputError("the model's outputs are not finite (NaN or infinity)")


def check_unit_range(images: torch.Tensor, who: str) -> None:
    """ValueError unless every value of ``images`` (a Tensor) is in [0, 1], give or take a few roundings of its
    dtype (an antialiased bilinear resize of a white float32 image gives 1 + 3.6e-7); NaN is outside."""
    if not images.numel():
        return
    low, high = (float(v) for v in torch.aminmax(images.detach()))  # detached: a generator's output warns otherwise
    if math.isnan(low) or math.isnan(high):  # aminmax gives NaN for both: "these span [nan, nan]" hid the cause
        count = int(images.isnan().sum())
        raise ValueError(f"{who} takes images in [0, 1]; these hold {count} NaN value{'s' if count > 1 else ''}")
    rounding = 8 * torch.finfo(images.dtype).eps if images.is_floating_point() else 0.0
    if not (-rounding <= low and high <= 1 + rounding):
        raise ValueError(f"{who} takes images in [0, 1]; these span [{_bound(low)}, {_bound(high)}] (convert uint8 "
                         "with / 255, [-1, 1] with (x + 1) / 2)")


def _bound(value: float) -> str:
    """``value`` to 3 significant digits, or as many more as show it on its side of [0, 1] (1.000002, not 1)."""
    for digits in range(3, 17):
        text = f"{value:.{digits}g}"
        if (0 <= float(text) <= 1) == (0 <= value <= 1):
            return text
    return repr(value)


def check_generator(generator: Any, who: str = "") -> None:
    """ValueError naming ``who``'s generator unless it is a torch.Generator or None (a seed given in its place would
    fail inside torch.randperm with a list of its signatures, or on its missing ``device``)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"{who + ' ' if who else ''}generator must be a torch.Generator or None, got {generator!r} "
                         f"(seed one with torch.Generator().manual_seed({generator!r}))")


def positive_batch_size(value: Any, name: str) -> int:
    """``value`` as a Python int (Tensor.split refuses NumPy's integers) when it is a positive integer, else
    ValueError naming ``name``."""
    if not is_integer(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
