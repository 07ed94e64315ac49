"""Small helpers shared across the package."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable

import torch


def closest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """A ', '-joined list of the names in ``choices`` closest to ``name`` (for error messages)."""
    choices = list(choices)
    matches = difflib.get_close_matches(name, choices, n=n, cutoff=0.4)
    if not matches:
        matches = [c for c in choices if name.lower() in c.lower()][:n]
    return ", ".join(matches) if matches else "none close"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls natively (CUDA with bf16, or a CPU with AMX or AVX512-BF16).

    Elsewhere bf16 is emulated: on an AVX2-only CPU a bf16 matmul is tens of times slower than fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_native_bf16()


@functools.cache
def _cpu_native_bf16() -> bool:
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
