"""Validation at the boundary, written once: each check returns the value or raises a ValueError that names
the setting and the bad value (cleanlab's style). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def check_int(value, name: str, *, minimum: int = 0) -> int:
    """An integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_share(value, name: str) -> float:
    """A finite number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def check_positive(value, name: str, *, optional: bool = False) -> float | None:
    """A finite number > 0 (or None when ``optional``)."""
    if value is None and optional:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.number))
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def check_choice(value, name: str, choices: Iterable[str]) -> str:
    """One of ``choices`` (a registry dict works: its keys are the choices)."""
    options = list(choices)
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}: {name} must be one of {', '.join(options)}")
    return value
