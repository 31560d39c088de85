"""The background training job: at most one round at a time, triggers during a round coalesced.

Label Studio waits 1 s for a webhook, and a round takes minutes, so ``trigger`` only starts a thread.
A trigger while a round runs joins that round (no second concurrent training); ANNOTATION_* events are
counted, and with ``auto_train_after`` > 0 that many of them start a round. ``status()`` is what
``/health`` and ``/metrics`` show.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED")


class TrainingJob:
    """Runs ``train(project_id) -> model_version`` in a daemon thread, one round at a time."""

    def __init__(self, train: Callable[[int | None], str], *, auto_train_after: int = 0) -> None:
        self._train = train
        self.auto_train_after = auto_train_after
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.rounds = 0
        self.coalesced = 0
        self.annotation_events = 0
        self.since_last_round = 0
        self.last_model_version: str | None = None
        self.last_error: str | None = None
        self.last_traceback: str | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def trigger(self, project_id: int | None) -> bool:
        """Start a round; False when one is already running (this trigger joins it)."""
        with self._lock:
            if self.running:
                self.coalesced += 1
                return False
            self.since_last_round = 0
            self.started_at, self.finished_at = time.time(), None
            self._thread = threading.Thread(target=self._round, args=(project_id,), name="hitl-training", daemon=True)
            self._thread.start()
            return True

    def note_annotation(self, project_id: int | None) -> bool:
        """Count one ANNOTATION_* event; True when it started a round (auto-train threshold reached)."""
        with self._lock:
            self.annotation_events += 1
            self.since_last_round += 1
            due = self.auto_train_after > 0 and self.since_last_round >= self.auto_train_after
        return self.trigger(project_id) if due else False

    def _round(self, project_id: int | None) -> None:
        try:
            version = self._train(project_id)
        except Exception as exc:  # the error is state to show, not a crash of the server
            with self._lock:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.last_traceback = traceback.format_exc()
                self.finished_at = time.time()
            return
        with self._lock:
            self.rounds += 1
            self.last_model_version, self.last_error = version, None
            self.finished_at = time.time()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running round (if any) ends; False on timeout."""
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
                "coalesced_triggers": self.coalesced,
                "annotation_events": self.annotation_events,
                "annotations_since_last_round": self.since_last_round,
                "auto_train_after": self.auto_train_after,
            }
