"""The models of one run directory, as the backend serves them: the newest checkpoint that loads, its versions.

Shape legend: C channels, H x W pixels, G_h x G_w grid cells.

A checkpoint is loaded once and replaced only when a newer file appears in the run directory. A training round
builds its own model from the checkpoint file in its own process (``ls_backend.round``), so the object that predicts
is never the one being trained. ``unload`` drops the loaded model (the backend keeps only a few loaded: least
recently used first out); the next prediction loads it again.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import torch
from torch import nn

from label_config.grid import Grid
from ls_backend.checks import BackendError
from trainer.explain.deeplift import DeepLiftTwin
from trainer.runs.checkpoint import CheckpointError
from trainer.runs.run import Run

_log = logging.getLogger("ls_backend.model")


@dataclass(frozen=True)
class Snapshot:
    """One loaded checkpoint. ``stamp`` identifies the file version it came from (``_stamp``)."""

    model: nn.Module
    meta: dict
    grid: Grid
    stamp: tuple
    twin: DeepLiftTwin  # built once per checkpoint: /predict reuses it

    @property
    def model_version(self) -> str:
        return str(self.meta["model_version"])


class RunModel:
    """The newest checkpoint of ``run`` that loads, on ``device``; ``lock`` serialises predictions (captum hooks
    the model)."""

    def __init__(self, run: Run, device: str = "cpu") -> None:
        self.run, self.device = run, device
        self._snapshot: Snapshot | None = None
        self._refused: dict[str, tuple[tuple, str]] = {}  # file name -> (its stamp when it failed, why)
        self._load_lock = threading.Lock()
        self.lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._snapshot is not None

    def unload(self) -> None:
        """Drop the loaded model (a prediction running with it keeps its own reference until it ends)."""
        with self._load_lock:
            self._snapshot = None

    def latest_version(self) -> str | None:
        """The model_version /predict serves (the newest checkpoint that loads; loaded now if none is yet), so
        /health, /setup and /predict name the same one; None before any checkpoint loads."""
        try:
            return self.snapshot().model_version
        except BackendError:
            return None

    def versions(self) -> list[str]:
        """Every checkpoint's model_version, oldest first, less those that failed to load."""
        return [self.run.model_version(r) for r, p in self.run.checkpoints() if not self._still_refused(p)]

    def skipped(self) -> list[str]:
        """Why each checkpoint newer than the served one is not served (files named relative to the run)."""
        served = -1 if self._snapshot is None else int(self._snapshot.meta["round"])
        return [self._refused[p.name][1] for r, p in self.run.checkpoints() if r >= served and self._still_refused(p)]

    def _still_refused(self, path) -> bool:
        entry = self._refused.get(path.name)
        return entry is not None and entry[0] == _stamp(path)

    def snapshot(self) -> Snapshot:
        """The newest checkpoint that loads, reloaded only when a checkpoint file changed. A file that fails to
        load (truncated, a directory, a link out of the run, another run's meta) is skipped with a warning, once
        per version of the file, and the model already served stays served."""
        found = self.run.checkpoints()
        current = self._snapshot
        if current is not None and found and _stamp(found[-1][1]) == current.stamp:
            return current
        with self._load_lock:
            current = self._snapshot
            for round_, path in reversed(found):
                stamp = _stamp(path)
                if current is not None and stamp == current.stamp:
                    return current
                if not self._still_refused(path):
                    try:
                        self._snapshot = self._load(round_, stamp)
                        return self._snapshot
                    except (CheckpointError, OSError) as exc:  # OSError: the file went away while being read
                        _log.warning("not serving %s", exc)
                        self._refused[path.name] = (stamp, str(exc))
                if current is not None and round_ == int(current.meta["round"]):
                    return current  # its file went bad: the copy in memory is still good (a deleted one: older)
            if current is not None:
                return current
        if not found:
            raise BackendError(f"no trained model yet: {self.run.checkpoint_dir} holds no checkpoint", 503)
        raise BackendError("no checkpoint can be served: " + "; ".join(self.skipped()), 503)

    def _load(self, round_: int, stamp) -> Snapshot:
        model, meta = self.run.load_checkpoint(round_)  # verified: this run's file, meta and round
        model.to(self.device).eval()
        size, ch = meta["image_size"], meta["in_channels"]
        twin = DeepLiftTwin(model, torch.zeros(1, ch, size, size, device=self.device))
        return Snapshot(model, meta, self._grid(meta), stamp, twin)

    def _grid(self, meta: dict) -> Grid:
        size, grid = meta["image_size"], meta.get("grid")
        return Grid(size, size, grid["rows"], grid["cols"]) if grid else self.run.grid


def _stamp(path) -> tuple:
    """What tells one version of a checkpoint file from the next (an atomic write makes a new inode); a
    dangling link or a vanished file gets its own stamp rather than an error."""
    try:
        st = os.stat(path)
    except OSError:
        return (os.fspath(path), None)
    return (os.fspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
