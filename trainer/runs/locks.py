"""Process locks in one place: an exclusive ``flock`` on a file that names the process holding it.

The kernel drops an flock with its process (even on SIGKILL), so a crash never leaves a stale lock; the id written
into the file only tells a waiting process whom it waits for.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def pid_lock(path: Path, busy: Callable[[str], Exception], *, wait_s: float = 0.0) -> Iterator[None]:
    """Hold ``path``'s exclusive lock, waiting up to ``wait_s`` seconds for it; past that ``busy(holder)`` is
    raised, ``holder`` being the id the holding process wrote ("?" if none). Each call opens its own file, so the
    lock excludes other threads of this process too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    raise busy(handle.read().strip() or "?") from None
                time.sleep(0.05)
        try:
            handle.truncate(0)
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
