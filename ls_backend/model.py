"""The served models, as label-studio-ml examples shape them: one class with setup / predict / fit.

Shape legend: N images (one per task), C channels, H x W pixels, G_h x G_w grid cells.

``MODEL_DIR`` is either one run directory (``hitl init``; every project connected to the backend is served that
run's model, and "Start Training" trains it: the demo's set-up) or a folder of runs, one per project: a project's
run is ``MODEL_DIR/project-<id>/``, made at the project's first "Start Training" from its own labels
(``trainer.labelstudio.project_run``), trained and versioned on its own. ``/predict`` and "Start Training" for one
project never touch another's model. At most ``MAX_MODELS`` runs' models are loaded at once, the least recently used
unloaded first. A round runs in its own process (``ls_backend.round``), never in the web worker.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from label_config.config import display_px
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
from ls_backend.projects import PROJECTS_FILE, ServedProjects, label_studio_id
from ls_backend.served import RunModel, Snapshot
from trainer.core.models import autocast
from trainer.data.view import model_view
from trainer.explain.batch import explain_batch
from trainer.explain.overlay import overlay_image
from trainer.labelstudio.auth import LabelStudioAuth
from trainer.labelstudio.client import connect
from trainer.runs.run import Run

_log = logging.getLogger(__name__)
RUN_DEFAULTS_FILE = "run-defaults.json"  # in a folder of runs: the settings of each new project's run
PROJECT_RUN_PREFIX = "project-"


def is_run_directory(path: Path) -> bool:
    return (Path(path) / "config.json").is_file()


class SaliencyModel:
    """Predicts with the newest checkpoint of each project's run and trains its next round."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        directory = config.model_dir
        # One per server: a personal access token's access token is cached across requests (AuthError: a bad key).
        self.auth = (LabelStudioAuth(config.label_studio_url, config.api_key)
                     if config.label_studio_url and config.api_key else None)  # fmt: skip
        self.predicted_tasks = 0
        # The SDK client refreshes a personal access token itself.
        self.overlays = OverlayWriter(
            lambda: connect(config.label_studio_url, config.api_key),
            max_items=config.overlay_queue,
            max_bytes=config.overlay_queue_bytes,
        )
        self._lock = threading.Lock()
        self._models: OrderedDict[int | None, RunModel] = OrderedDict()  # most recently used last
        if is_run_directory(directory) or not directory.is_dir():
            run = Run.open(directory)  # FileNotFoundError names a directory that is not a run
            self.home: Path | None = None
            self._single: RunModel | None = RunModel(run, config.device)
            self.projects = ServedProjects(run.directory / PROJECTS_FILE, run)
        else:
            _log.info("MODEL_DIR %s is not a run directory: serving a run per project under it", directory)
            self.home, self._single = directory, None
            self.projects = ServedProjects(directory / PROJECTS_FILE)

    # ------------------------------------------------------------------ which run serves which project
    @property
    def several(self) -> bool:
        """Whether each project has its own run (MODEL_DIR is a folder of runs)."""
        return self.home is not None

    @property
    def run(self) -> Run:
        """The one run of a backend whose MODEL_DIR is a run directory."""
        if self._single is None:
            raise AttributeError("this backend serves a run per project: use run_for(project_id)")
        return self._single.run

    @property
    def state_dir(self) -> Path:
        """Where the backend keeps its own state (served projects, the training queue)."""
        return self.home if self.home is not None else self.run.directory

    def run_dir(self, project_id: int | None) -> Path:
        """The run directory that serves ``project_id``."""
        if self._single is not None:
            return self._single.run.directory
        pid = label_studio_id(project_id)
        if pid is None:
            raise BackendError("this backend serves a run per project: the request must name its project", 400)
        return self.home / f"{PROJECT_RUN_PREFIX}{pid}"  # type: ignore[operator]

    def model_for(self, project_id: int | None) -> RunModel:
        """The model of ``project_id``'s run (opened on first use, loaded on demand; at most ``max_models`` stay
        loaded, the least recently used unloaded first). 503 when a served project has no run yet, 403 when the
        project is not served (a folder of runs makes none for a project that never connected)."""
        if self._single is not None:
            return self._single
        directory = self.run_dir(project_id)
        with self._lock:
            found = self._models.get(project_id)
            if found is None:
                if not self.projects.serves(project_id):
                    raise BackendError(f"project {project_id} is not served by this backend: connect the backend "
                                       "to it in the project's settings (Label Studio calls /setup)", 403)  # fmt: skip
                if not is_run_directory(directory):
                    raise BackendError(f"no trained model yet for project {project_id}: label some tasks and press "
                                       "Start Training (the project's run is made from its labels)", 503)  # fmt: skip
                found = self._models[project_id] = RunModel(Run.open(directory), self.config.device)
            self._models.move_to_end(project_id)
            loaded = [m for m in self._models.values() if m.loaded and m is not found]
            for old in loaded[: max(0, len(loaded) - self.config.max_models + 1)]:
                old.unload()
        return found

    def models(self) -> list[tuple[int | None, RunModel]]:
        """(project, model) of every run this backend has: the one run, or each served project's that exists."""
        if self._single is not None:
            return [(None, self._single)]
        found = []
        for pid in self.projects.ids():
            try:
                found.append((pid, self.model_for_status(pid)))
            except BackendError:
                continue
        return found

    def model_for_status(self, project_id: int) -> RunModel:
        """``model_for`` without loading or reordering anything (for /health and /metrics)."""
        with self._lock:
            found = self._models.get(project_id)
            if found is not None:
                return found
        directory = self.run_dir(project_id)
        if not is_run_directory(directory):
            raise BackendError(f"project {project_id} has no run yet", 503)
        with self._lock:
            return self._models.setdefault(project_id, RunModel(Run.open(directory), self.config.device))

    # ------------------------------------------------------------------ versions
    def latest_version(self, project_id: int | None = None) -> str | None:
        """The model_version /predict serves for ``project_id`` (any project of a one-run backend); None before any
        checkpoint loads, or for a project without a run yet."""
        try:
            return self.model_for(project_id).latest_version() if self.served_or_single(project_id) else None
        except BackendError:
            return None

    def served_or_single(self, project_id) -> bool:
        return self._single is not None or label_studio_id(project_id) is not None

    def versions(self, project_id: int | None = None) -> list[str]:
        if self._single is None and project_id is None:
            return [v for _, m in self.models() for v in m.versions()]
        try:
            return self.model_for(project_id).versions()
        except BackendError:
            return []

    def skipped(self) -> list[str]:
        return [line for _, m in self.models() for line in m.skipped()]

    # ------------------------------------------------------------------ the three verbs
    def setup(self, label_config: str | None, project_id: int | None = None) -> str | None:
        """Check that the project's config can be served (an Image with a Choices over it, whose classes are its
        model's) and keep it as the config of a project this backend now serves; the model_version."""
        if label_config is not None:
            config = project_config(label_config)
            if self.several and label_studio_id(project_id) is None:
                raise BackendError("this backend serves a run per project: /setup must name its project", 400)
            if (snap := self._served_or_none(project_id)) is not None:
                class_order(config, snap.meta["classes"])
            self.projects.remember(project_id, label_config)
        return self.latest_version(project_id)

    def _served_or_none(self, project_id) -> Snapshot | None:
        try:
            if self._single is not None:
                return self._single.snapshot()
            return self.model_for_status(project_id).snapshot()
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
        served = self.model_for(project_id)
        snap, run = served.snapshot(), served.run
        order = class_order(config, snap.meta["classes"], several=self.several)
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
                with served.lock, autocast(run.config.train.precision, self.config.device):
                    found = explain_batch(snap.model, images, snap.grid, method=run.config.saliency,
                                          top_k=run.config.top_k, twin=snap.twin)  # fmt: skip
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
                task_id=label_studio_id(task.get("id")), timeout=self.config.image_timeout,
                max_bytes=self.config.max_image_bytes,
                image_hosts=self.config.image_hosts, image_networks=self.config.image_networks,
            )  # fmt: skip
        except ImageError as exc:
            raise BackendError(f"task {tid}: {exc}", exc.status) from exc
        try:
            return model_view(image, meta["image_size"], meta["in_channels"])
        except ValueError as exc:  # a mode that cannot be shown to the model (LAB, HSV)
            raise BackendError(f"task {tid}: {exc}", 422) from exc

    def fit(self, project_id: int | None) -> str:
        """Train one round for ``project_id`` in its own process (``ls_backend.round``: pulling the project's
        annotations when Label Studio is configured; a folder of runs makes the project's run at its first round);
        the new model_version. Runs in the background job, never inside a request. Its log lines are relayed into
        this process's log; a failed round raises with the worker's last line."""
        directory = self.run_dir(project_id)
        command = [sys.executable, "-m", "ls_backend.round", os.fspath(directory)]
        if project_id is not None and self.config.label_studio_url and self.config.api_key:
            command += ["--project", str(project_id)]
        elif self.several:
            raise ValueError(f"project {project_id}: a run per project needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"
                             " to read the project's labels")  # fmt: skip
        if self.home is not None:
            command += ["--defaults", os.fspath(self.home / RUN_DEFAULTS_FILE)]
        env = {k: v for k, v in os.environ.items() if k not in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")}
        if self.config.label_studio_url and self.config.api_key:
            env.update(LABEL_STUDIO_URL=self.config.label_studio_url, LABEL_STUDIO_API_KEY=self.config.api_key)
        return run_worker(command, env, project_id)


def run_worker(command: list[str], env: dict[str, str], project_id: int | None) -> str:
    """Run one round's process to its end; its model_version (the last stdout line). Its stderr lines (``LEVEL
    message``) are logged here at their level, as they come."""
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          bufsize=1) as proc:  # fmt: skip
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        last = ""
        for line in proc.stderr:  # type: ignore[union-attr]
            line = line.rstrip("\n")
            if not line:
                continue
            level, _, message = line.partition(" ")
            number = logging.getLevelName(level)
            _log.log(number if isinstance(number, int) else logging.INFO, "round for project %s: %s", project_id,
                     message if isinstance(number, int) else line)  # fmt: skip
            last = line
        reader.join()
        code = proc.wait()
    if code != 0:
        raise RuntimeError(last.removeprefix("ERROR ") or f"the round's process exited with status {code}")
    try:
        return str(json.loads(out[-1])["model_version"])
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"the round's process ended without a model_version ({exc})") from exc
