"""The served model, as label-studio-ml examples shape it: one class with setup / predict / fit.

Shape legend: N images (one per task), C channels, H x W pixels, G_h x G_w grid cells.

The model is loaded once and replaced only when a newer checkpoint appears in the run directory. A
training round builds its own model from the checkpoint file (``trainer.runs.run``), so the object that
predicts is never the one being trained; predictions take a lock because captum hooks the model.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass

import torch
from torch import nn

from label_config.config import display_px
from label_config.grid import Grid
from label_config.interface import ProjectConfig, ProjectConfigError
from label_config.names import PREDICTION_KEY, PROBABILITY_KEY
from label_config.suggest import prediction_result
from ls_backend.checks import BackendError, PredictOutcome, check_task, class_order, image_key, project_config
from ls_backend.config import BackendConfig
from ls_backend.images import ImageError, load_task_image
from ls_backend.overlays import (
    OverlayWriter,
    PendingOverlay,
    lacks_overlay,
    overlay_key,
    overlay_png,
)
from ls_backend.projects import ServedProjects, label_studio_id
from trainer.core.models import autocast
from trainer.data.view import model_view
from trainer.explain.batch import explain_batch
from trainer.explain.deeplift import DeepLiftTwin
from trainer.explain.overlay import overlay_image
from trainer.labelstudio.auth import LabelStudioAuth
from trainer.labelstudio.client import connect
from trainer.labelstudio.loop import training_round
from trainer.runs.checkpoint import CheckpointError
from trainer.runs.run import Run

_log = logging.getLogger(__name__)


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


class SaliencyModel:
    """Predicts with the newest checkpoint of a run directory and trains its next round."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.run = Run.open(config.model_dir)  # FileNotFoundError names a directory that is not a run
        # One per server: a personal access token's access token is cached across requests (AuthError: a bad key).
        self.auth = (LabelStudioAuth(config.label_studio_url, config.api_key)
                     if config.label_studio_url and config.api_key else None)  # fmt: skip
        self._snapshot: Snapshot | None = None
        self._refused: dict[str, tuple[tuple, str]] = {}  # file name -> (its stamp when it failed, why)
        self._load_lock = threading.Lock()
        self._predict_lock = threading.Lock()
        self.predicted_tasks = 0
        # The SDK client refreshes a personal access token itself.
        self.overlays = OverlayWriter(
            lambda: connect(config.label_studio_url, config.api_key),
            max_items=config.overlay_queue,
            max_bytes=config.overlay_queue_bytes,
        )
        self.projects = ServedProjects(self.run)

    # ------------------------------------------------------------------ versions
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
        model.to(self.config.device).eval()
        size, ch = meta["image_size"], meta["in_channels"]
        twin = DeepLiftTwin(model, torch.zeros(1, ch, size, size, device=self.config.device))
        return Snapshot(model, meta, self._grid(meta), stamp, twin)

    def _grid(self, meta: dict) -> Grid:
        size, grid = meta["image_size"], meta.get("grid")
        return Grid(size, size, grid["rows"], grid["cols"]) if grid else self.run.grid

    # ------------------------------------------------------------------ the three verbs
    def setup(self, label_config: str | None, project_id: int | None = None) -> str | None:
        """Check that the project's config can be served (an Image with a Choices over it, whose classes are the
        served model's) and keep it as the config of the project this backend now serves; the model_version."""
        if label_config is not None:
            config = project_config(label_config)
            if (snap := self._served_or_none()) is not None:
                class_order(config, snap.meta["classes"])
            self.projects.remember(project_id, label_config)
        return self.latest_version()

    def _served_or_none(self) -> Snapshot | None:
        try:
            return self.snapshot()
        except BackendError:
            return None

    def serves(self, project_id) -> bool:
        """Whether ``project_id`` is a project this backend serves: connected through /setup, or the run's own."""
        return self.projects.serves(project_id)

    def predict(self, tasks: list[dict], label_config: str, project_id: int | None = None) -> PredictOutcome:
        """One prediction per task, in order: the class as a ``choices`` result, then the top-k salient cells as
        regions of the config's feedback tool (``label_config.suggest``). A task that cannot be read gets ``[]``
        (no prediction: Label Studio stores none and asks again next time) and a warning; a request whose every
        task fails answers the first task's error. Tasks are explained ``predict_batch`` at a time; overlays go
        only into tasks of ``project_id`` when it is served."""
        if len(tasks) > self.config.max_predict_tasks:
            raise BackendError(
                f"{len(tasks)} tasks in one /predict, over this backend's cap of "
                f"{self.config.max_predict_tasks} (MAX_PREDICT_TASKS): select fewer tasks",
                413,
            )
        config = project_config(label_config)
        key = image_key(config)
        snap = self.snapshot()
        order = class_order(config, snap.meta["classes"])
        overlay = self._overlay_target(project_id)
        outcome = PredictOutcome()
        for start in range(0, len(tasks), self.config.predict_batch):
            chunk = tasks[start : start + self.config.predict_batch]
            read: list[tuple[int, torch.Tensor]] = []
            for i, task in enumerate(chunk):
                try:
                    read.append((i, self._view(task, key, snap.meta)))
                except BackendError as exc:
                    outcome.skip(task, exc, project_id)
            answers: dict[int, list | dict] = {i: [] for i in range(len(chunk))}
            if read:
                images = torch.stack([view for _, view in read])  # (B, C, H, W)
                with self._predict_lock, autocast(self.run.config.train.precision, self.config.device):
                    found = explain_batch(snap.model, images, snap.grid, method=self.run.config.saliency,
                                          top_k=self.run.config.top_k, twin=snap.twin)  # fmt: skip
                good = []
                for j, (i, _) in enumerate(read):
                    try:
                        answers[i] = self._prediction(chunk[i], found, j, config, order, snap)
                        good.append(j)
                    except BackendError as exc:
                        outcome.skip(chunk[i], exc, project_id)
                if overlay is not None:
                    self._attach_overlays([chunk[read[j][0]] for j in good], images, found, good, overlay, snap)
            outcome.results.extend(answers[i] for i in range(len(chunk)))
        if len(outcome.skipped) == len(tasks):
            raise outcome.errors[0]
        self.predicted_tasks += len(tasks) - len(outcome.skipped)
        return outcome

    def _prediction(self, task: dict, found, j: int, config: ProjectConfig, order: list[int],
                    snap: Snapshot) -> dict:  # fmt: skip
        """The prediction of row ``j`` of ``found`` (the explained batch): Label Studio's keys, plus ours."""
        k = int(found.predicted[j])
        p = float(found.probs[j, k])
        if not math.isfinite(p):
            raise BackendError(f"task {task.get('id', '?')}: the model's output is not finite (an image with NaN "
                               "or infinite pixels?)", 422)  # fmt: skip
        cells = [tuple(rc) for rc in found.top[j]]
        peak = float(found.scores[j].max()) or 1.0
        scores = [float(found.scores[j][r, c]) / peak for r, c in cells]
        result = prediction_result(config, order[k], p, cells, snap.grid, scores=scores,
                                   display_px=display_px(snap.grid))  # fmt: skip
        classes = snap.meta["classes"]
        return {"result": result, "score": p, "model_version": snap.model_version,
                PREDICTION_KEY: classes[k], PROBABILITY_KEY: p}  # fmt: skip

    def _overlay_target(self, project_id) -> tuple[int, str | None] | None:
        """(project, overlay key) to write overlays under, or None: no Label Studio, a project this backend does
        not serve, or a stored config without an optional overlay. The key comes from the config /setup stored;
        None there means the writer reads the project's config from Label Studio (a linked project never set up)."""
        if self.auth is None or not self.serves(project_id):
            return None
        try:
            config = self.projects.config(project_id)
        except ProjectConfigError as exc:  # stored by an older backend that accepted more
            _log.warning("project %s: no overlays, its stored config cannot be served (%s)", project_id, exc)
            return None
        if config is None:
            return project_id, None
        key = overlay_key(config)
        return None if key is None else (project_id, key)

    def _attach_overlays(self, tasks: list[dict], images: torch.Tensor, found, rows: list[int],
                         target: tuple[int, str | None], snap: Snapshot) -> None:  # fmt: skip
        """Queue the overlay just computed (row ``rows[i]`` of the batch) for each task that came without one."""
        project_id, key = target
        px = display_px(snap.grid)
        for task, j in zip(tasks, rows):
            task_id = label_studio_id(task.get("id"))
            if task_id is None or (key is not None and not lacks_overlay(task, key)):
                continue
            k = int(found.predicted[j])
            self.overlays.submit(PendingOverlay(
                task_id, project_id, key, overlay_png(overlay_image(images[j], found.saliency[j], display_px=px)),
                model_version=snap.model_version, prediction=snap.meta["classes"][k],
                probability=float(found.probs[j, k]),
            ))  # fmt: skip

    def _view(self, task: dict, key: str, meta: dict) -> torch.Tensor:
        """(C, H, W) in [0, 1]: the task's image through the same view training used."""
        check_task(task, key)
        tid = task.get("id", "?")
        try:
            image = load_task_image(
                task["data"][key], label_studio_url=self.config.label_studio_url, auth=self.auth,
                timeout=self.config.image_timeout, max_bytes=self.config.max_image_bytes,
                image_hosts=self.config.image_hosts, image_networks=self.config.image_networks,
            )  # fmt: skip
        except ImageError as exc:
            raise BackendError(f"task {tid}: {exc}", exc.status) from exc
        try:
            return model_view(image, meta["image_size"], meta["in_channels"])
        except ValueError as exc:  # a mode that cannot be shown to the model (LAB, HSV)
            raise BackendError(f"task {tid}: {exc}", 422) from exc

    def fit(self, project_id: int | None) -> str:
        """Train one round (pulling the project's annotations when Label Studio is configured); the new
        model_version. Runs in the background job, never inside a request."""
        client = None
        if self.config.label_studio_url and self.config.api_key and project_id is not None:
            client = connect(self.config.label_studio_url, self.config.api_key)
        return training_round(self.run, label_studio=client, project_id=project_id if client else None)


def _stamp(path) -> tuple:
    """What tells one version of a checkpoint file from the next (an atomic write makes a new inode); a
    dangling link or a vanished file gets its own stamp rather than an error."""
    try:
        st = os.stat(path)
    except OSError:
        return (os.fspath(path), None)
    return (os.fspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
