"""Small helpers shared across the package."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """A ', '-joined list of the names in ``choices`` closest to ``name`` (for error messages)."""
    choices = list(choices)
    matches = difflib.get_close_matches(name, choices, n=n, cutoff=0.4)
    if not matches:
        matches = [c for c in choices if name.lower() in c.lower()][:n]
    return ", ".join(matches) if matches else "none close"
