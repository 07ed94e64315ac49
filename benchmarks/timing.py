"""Wall-clock timing shared by the benchmark scripts: the best of several repeats, since a shared machine's
slow spells only ever add time; and a description of the machine, since the project's machines differ (AVX2
alone, AVX512-BF16, AMX) and a figure means little without it."""

from __future__ import annotations

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
