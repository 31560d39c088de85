"""Worker processes for ``hitl experiment`` and the demo's baseline arm: one torch thread each, and gone with the
process that started them.

A pool's workers do not die with their parent: after a ``kill`` (SIGTERM's default action ends the parent without
unwinding anything), a SIGKILL or the OOM killer, a worker in the middle of a training arm trains on for as long
as the arm lasts (half an hour of both cores, measured on a ResNet experiment). So each worker watches its parent
and ends itself once the parent is gone, and the commands turn SIGTERM into an exit that unwinds their pools.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch

PARENT_POLL_S = 0.5


class WorkerDied(RuntimeError):
    """A pool's worker process ended in the middle of a job (killed, or out of memory)."""


@contextlib.contextmanager
def worker_pool(workers: int, *, threads: int = 1) -> Iterator[ProcessPoolExecutor]:
    """A ``ProcessPoolExecutor`` of ``workers`` spawned processes with ``threads`` torch threads each, which end
    when this process does. Leaving the block by an exception (Ctrl-C, a kill under ``exit_on_sigterm``, a failed
    job) terminates them, running jobs included, where the executor alone would wait for those jobs."""
    context = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(os.getpid(), threads)) as pool:  # fmt: skip
        try:
            yield pool
        except BaseException:
            _stop_workers(pool)
            raise


def job_result(future: Future, died: str):
    """``future.result()``; a worker that died under it (killed, or out of memory) raises ``WorkerDied(died)``."""
    try:
        return future.result()
    except BrokenProcessPool as exc:
        raise WorkerDied(died) from exc


def _start_worker(parent: int, threads: int) -> None:
    """A pool worker's initializer: ``threads`` torch threads, and a daemon thread that ends this process as soon
    as ``parent`` is no longer its parent (it died, and the process was re-parented)."""
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="exit-with-parent", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)  # no unwinding: the parent that would collect the result is gone


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate a pool's workers now, running jobs included. Python 3.14's ``terminate_workers`` where there is
    one, else the same on the executor's process table (read first: ``shutdown`` drops it)."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


@contextlib.contextmanager
def exit_on_sigterm(code: int = 143) -> Iterator[None]:
    """Within the block a SIGTERM raises ``SystemExit(code)`` (128 + 15, what a shell reports for it), so a plain
    ``kill`` unwinds ``finally`` blocks and pools as Ctrl-C does."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(code))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
