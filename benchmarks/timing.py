"""Wall-clock timing shared by the benchmark scripts: the best of several repeats, since a shared machine's
slow spells only ever add time; and a description of the machine, since the project's machines differ (AVX2
alone, AVX512-BF16, AMX) and a figure means little without it."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from visionzoo.utils import native_bf16


def best_of(fn: Callable[[], Any], repeats: int = 3, clock: Callable[[], float] = time.perf_counter
            ) -> tuple[float, Any]:
    """(the fewest seconds one call of ``fn`` took over ``repeats`` calls, the last call's result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = clock()
        out = fn()
        best = min(best, clock() - start)
    return best, out


def best_seconds(fn: Callable[[], Any], repeats: int = 3) -> float:
    """The fewest seconds one call of ``fn`` took over ``repeats`` calls."""
    return best_of(fn, repeats)[0]


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems


def keep_freed_memory() -> None:
    """Make glibc's malloc keep freed blocks of up to 32 MiB for reuse instead of returning them to the system.

    By default a freed block above the (dynamic) mmap threshold is unmapped, and the heap's free top is trimmed,
    so each forward pass's large activations are mapped again and every page faulted in on first touch: in bf16
    ViT-S/16 inference at batch 32, timm's forward takes ~120,000 page faults (~25% of its CPU time on one thread),
    and how many it takes depends on the process's allocation history. With both thresholds raised (the process
    keeps what it has freed, as PyTorch's CUDA allocator does on a GPU) that cost is gone for every model in the
    process. ``OSError`` where the C library has no ``mallopt`` (not glibc)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallopt"):
        raise OSError("this C library has no mallopt (glibc's): --keep-freed-memory needs Linux with glibc")
    for parameter, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (M_TRIM_THRESHOLD, 2**31 - 1)):
        if libc.mallopt(parameter, value) != 1:
            raise OSError(f"mallopt({parameter}, {value}) failed")


def machine(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What a result was measured on: CPU architecture and vector extension (torch's dispatch level, e.g. AVX2 or
    AVX512), whether bf16 runs natively (else ``--precision auto`` trains in fp32), threads, torch, the command;
    and the GPU's name when ``device`` is a CUDA device."""
    about = {"machine": platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
             "native_bf16": native_bf16(torch.device("cpu")), "cpus": os.cpu_count(),
             "threads": torch.get_num_threads(), "torch": torch.__version__, "command": " ".join(["python", *sys.argv])}
    if torch.device(device).type == "cuda":
        about["gpu"] = torch.cuda.get_device_name(device)
    return about
