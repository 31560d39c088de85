"""The background training job: at most one round at a time; a trigger during a round queues one follow-up.

Label Studio waits 1 s for a webhook, and a round takes minutes, so ``trigger`` only starts a thread. A
trigger while a round runs queues exactly one follow-up round for its project (the annotations it announces
arrived after the running round pulled); more triggers for that project join the queued one, and at most
``MAX_QUEUED`` projects wait at once. ANNOTATION_*
events are counted, and with ``auto_train_after`` > 0 that many of them start a round. Whatever a round raises,
SystemExit included, is reported, never lost. ``status()`` is what ``/health`` and ``/metrics`` show.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from trainer.runs.atomic import write_json

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED")
MAX_QUEUED = 16  # follow-up rounds waiting at once (one per project): a round takes minutes, so more is a backlog


class TrainingJob:
    """Runs ``train(project_id) -> model_version`` in a daemon thread, one round at a time."""

    def __init__(
        self,
        train: Callable[[int | None], str],
        *,
        auto_train_after: int = 0,
        state_path: Path | None = None,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self._train = train
        self.max_queued = max_queued
        self._state_path = state_path  # where a running round is noted, so a restart can tell it was cut off
        self.auto_train_after = auto_train_after
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._active = False  # a worker thread owns the queue (set and cleared under the lock)
        self._pending: dict[int | None, None] = {}  # projects with a follow-up round queued, in order
        self._running_project: int | None = None
        self._note_lock = threading.Lock()
        self.rounds = 0
        self.coalesced = 0
        self.refused = 0
        self.annotation_events = 0
        self.since_last_round = 0
        self.last_model_version: str | None = None
        self.last_error: str | None = None
        self.last_traceback: str | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._read_state()

    def _read_state(self) -> None:
        """What the previous backend process left: a round it was training when it stopped (cut off: trained again,
        resuming from the run's last saved state, and reported) and the rounds queued behind it, in order."""
        if self._state_path is None or not self._state_path.is_file():
            return
        try:
            state = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(state, dict):
            return
        queued = [p for p in state.get("pending") or [] if p is None or isinstance(p, int)]
        if state.get("state") == "running":
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(state.get("started_at") or 0))
            self.last_error = (
                f"Interrupted: the round for project {state.get('project')} started at {when} UTC "
                "stopped with the backend; it is trained again from the run's last saved state"
            )
            queued.insert(0, state.get("project"))
        for project_id in queued[: self.max_queued + 1]:
            self._pending.setdefault(project_id, None)
        self._note("interrupted" if state.get("state") == "running" else "idle", state.get("project"))

    def resume(self) -> bool:
        """Start the rounds the previous backend process left queued or cut off; whether any was."""
        with self._lock:
            if self._active or not self._pending:
                return False
            project_id = next(iter(self._pending))
            del self._pending[project_id]
            self._active = True
            self._begin()
            self._thread = threading.Thread(target=self._work, args=(project_id,), name="hitl-training", daemon=True)
            self._thread.start()
            return True

    def _note(self, state: str, project_id: int | None) -> None:
        """Write the job's state (the round running, the rounds queued); the newest write wins, never a mix."""
        if self._state_path is None:
            return
        with self._note_lock:
            write_json(self._state_path, {"state": state, "project": project_id, "started_at": self.started_at,
                                          "pending": list(self._pending), "pid": os.getpid()})  # fmt: skip

    @property
    def running(self) -> bool:
        return self._active

    def trigger(self, project_id: int | None) -> str:
        """Start a round (``"started"``), queue one follow-up while a round runs (``"queued"``), or join the
        follow-up already queued for this project (``"already queued"``); ``"queue full"`` when ``max_queued``
        other projects wait already (nothing is queued: the caller says so)."""
        with self._lock:
            if self._active:
                if project_id in self._pending:
                    self.coalesced += 1
                    return "already queued"
                if len(self._pending) >= self.max_queued:
                    self.refused += 1
                    return "queue full"
                self._pending[project_id] = None
                self._note("running", self._running_project)
                return "queued"
            self._active = True
            self._begin()
            self._thread = threading.Thread(target=self._work, args=(project_id,), name="hitl-training", daemon=True)
            self._thread.start()
            return "started"

    def note_annotation(self, project_id: int | None) -> bool:
        """Count one ANNOTATION_* event; True when it started a round (auto-train threshold reached)."""
        with self._lock:
            self.annotation_events += 1
            self.since_last_round += 1
            due = self.auto_train_after > 0 and self.since_last_round >= self.auto_train_after
        return self.trigger(project_id) == "started" if due else False

    def _begin(self) -> None:
        self.since_last_round = 0
        self.started_at, self.finished_at = time.time(), None

    def _work(self, project_id: int | None) -> None:
        """Rounds until the queue is empty; the thread gives up the queue under the lock, so a trigger either
        lands in the queue this loop reads or starts a new thread."""
        while True:
            self._round(project_id)
            with self._lock:
                if not self._pending:
                    self._active = False
                    return
                project_id = next(iter(self._pending))
                del self._pending[project_id]
                self._begin()

    def _round(self, project_id: int | None) -> None:
        self._running_project = project_id
        self._note("running", project_id)
        try:
            version = self._train(project_id)
        except BaseException as exc:  # noqa: BLE001  the error is state to show, not a silent end of the thread
            with self._lock:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.last_traceback = traceback.format_exc()
                self.finished_at = time.time()
            self._note("failed", project_id)
            return
        with self._lock:
            self.rounds += 1
            self.last_model_version, self.last_error = version, None
            self.finished_at = time.time()
        self._note("idle", project_id)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running round and its queued follow-ups end; False on timeout."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def status(self) -> dict:
        with self._lock:
            return {
                "state": "running" if self.running else "idle",
                "rounds": self.rounds,
                "last_model_version": self.last_model_version,
                "last_error": self.last_error,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                "queued_rounds": len(self._pending),
                "coalesced_triggers": self.coalesced,
                "refused_triggers": self.refused,
                "annotation_events": self.annotation_events,
                "annotations_since_last_round": self.since_last_round,
                "auto_train_after": self.auto_train_after,
            }
