"""Progress bars for the long steps (training epochs, evaluation, saliency, push, pull): one place decides
where they go and when they show.

A bar writes to stderr and shows only when its caller asks (``enabled``, a command's ``progress=True``) and
stderr is a terminal (tqdm's ``disable=None``), so tests, logs and the backend's threads stay clean.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one: ``total=``, ``.update(n)``); kwargs go to tqdm."""
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, disable=None if enabled else True, **kwargs)
