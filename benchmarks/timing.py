"""Wall-clock timing shared by the benchmark scripts: the best of several repeats, since a shared machine's
slow spells only ever add time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


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
