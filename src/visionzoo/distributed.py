"""Collectives shared by the layers and the training engine (both import them from here; layers never import train)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist

# How long a collective's caller waits for gloo's worker thread to let go of the collective's tensor.
RELEASE_WAIT_SECONDS = 10.0


def collective(operation: Callable[..., object], tensor: torch.Tensor, **kwargs) -> torch.Tensor:
    """``operation(tensor, **kwargs)`` (``dist.broadcast``, ``dist.all_reduce``) on a tensor made in Python;
    returns ``tensor`` once the backend no longer holds it.

    Gloo's worker thread drops a finished collective's tensors after the caller has its result, and dropping a
    tensor that Python made takes the GIL. A drop still waiting when the interpreter shuts down aborts the process
    after its work is done ("terminate called without an active exception", SIGABRT: 6 time-budget torchrun runs
    in 135 on a busy 2-core machine, which torchrun reports as failed). The caller lets the worker thread finish.
    """
    operation(tensor, **kwargs)
    if dist.get_backend() == "gloo":
        deadline = time.monotonic() + RELEASE_WAIT_SECONDS
        while tensor._use_count() > 1 and time.monotonic() < deadline:
            time.sleep(1e-4)  # releases the GIL to the worker thread
    return tensor
