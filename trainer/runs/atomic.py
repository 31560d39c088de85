"""Atomic writes, in one place: write a temporary file beside the target, then rename it over the target.

A crash never leaves half a file, and a reader (Label Studio serving an image, a process reading a
checkpoint) sees the old file or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` fills a temporary path, which then replaces ``path``; the parent is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one temporary name per process and thread: two threads writing the same file never share one
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | os.PathLike, data) -> Path:
    """``data`` as indented JSON (numpy and torch scalars as floats), atomically."""
    text = json.dumps(data, indent=2, default=_plain)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _plain(value):
    """numpy and torch scalars as numbers, anything else (paths) as text."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
