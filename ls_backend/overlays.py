"""The saliency overlay for tasks that arrived without one (imported by hand with the image only).

Our labelling config reads the overlay with ``valueList`` (``label_config.config``), which Label Studio 1.23
does not require in a task's data, so such tasks import fine and show an empty overlay panel. When ``/predict``
explains one of them, the backend writes the overlay into the task's data through Label Studio's API
(``PATCH /api/tasks/<id>``) as a PNG data URI: the backend cannot write into Label Studio's file storage, and
one 224 px overlay is a few kB. The task is read from Label Studio first and written only when it is in the project
the overlay was made for (a served one: ``ls_backend.projects``); its stored data is written back whole, so nothing
Label Studio resolved for the request (presigned URLs) is stored in its place.

The write happens after ``/predict`` has answered (``OverlayWriter``, one daemon thread): Label Studio waits for
``/predict`` inside a database transaction, so a write made from within the request waits for the very request it
is answering (measured on 1.23.2 with SQLite: the PATCH timed out and Label Studio retried ``/predict``).
"""

from __future__ import annotations

import base64
import io
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from label_config.config import overlay_value
from label_config.interface import ProjectConfig, ProjectConfigError, parse_project_config
from label_config.names import (
    LABEL_KEY,
    MODEL_VERSION_KEY,
    PREDICTION_KEY,
    PROBABILITY_KEY,
    ROUND_KEY,
    SALIENCY,
    SAMPLE_ID_KEY,
)

log = logging.getLogger(__name__)
# Shown in the labelling page's headers: written as "-" into an image-only task that lacks them. A sample id of
# "-" is no sample of ours, so pulls keep ignoring the task's annotations (they have no training image).
NOT_GIVEN = (SAMPLE_ID_KEY, ROUND_KEY, LABEL_KEY)


def overlay_key(config: ProjectConfig) -> str | None:
    """The data key of the config's overlay Image (named ``saliency``) when it is optional (``valueList``), else
    None: a config that requires the overlay never reaches the backend without one, and one without it shows none."""
    found = [i for i in config.images if i.name == SALIENCY and i.value_list]
    return found[0].data_key if found else None


def lacks_overlay(task: dict, key: str) -> bool:
    """Whether ``task`` (as Label Studio sent it to /predict) has no overlay under ``key``."""
    value = task.get("data", {}).get(key)
    return not value or (isinstance(value, list) and not any(value))


def overlay_png(picture: Image.Image) -> bytes:
    """The overlay as PNG bytes: what waits in the queue (a 224 px RGB picture is 147 KiB raw, less as PNG)."""
    buf = io.BytesIO()
    picture.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class PendingOverlay:
    """An overlay for task ``task_id``, to be written only if Label Studio says the task is in ``project_id``.
    ``key`` is the overlay's data key from the project's stored config; None: read that config from Label Studio."""

    task_id: int
    project_id: int
    key: str | None
    png: bytes = field(repr=False)
    model_version: str
    prediction: str
    probability: float


class ForeignTask(ValueError):
    """The task is not in the project the overlay was made for: nothing is written."""


def attach_overlay(client, item: PendingOverlay, key: str) -> bool:
    """Store ``item``'s overlay as its task's data under ``key``, with the model's answer shown above it; False when
    the stored task has an overlay already (another request attached it first). ForeignTask when Label Studio
    says the task belongs to another project than ``item.project_id``."""
    task = client.tasks.get(id=item.task_id)
    if getattr(task, "project", None) != item.project_id:
        raise ForeignTask(f"task {item.task_id} is in project {getattr(task, 'project', None)}, "
                          f"not {item.project_id}")  # fmt: skip
    data = dict(task.data or {})
    if data.get(key):
        return False
    data[key] = overlay_value("data:image/png;base64," + base64.b64encode(item.png).decode("ascii"))
    data.update({MODEL_VERSION_KEY: item.model_version, PREDICTION_KEY: item.prediction,
                 PROBABILITY_KEY: f"{item.probability:.2f}"})  # fmt: skip
    for key_shown in NOT_GIVEN:  # the page's headers name these; a task imported by hand has none ("undefined")
        data.setdefault(key_shown, "-")
    # One PATCH per task: Label Studio 1.23 has no bulk update of task data (its Data Manager's "Add Or Modify
    # Data Field" is experimental and sets one expression for every selected task, not a value per task).
    client.tasks.update(id=item.task_id, data=data)
    return True


class OverlayWriter:
    """Attaches overlays in the background, one at a time. ``client`` makes the SDK client on first use.

    Best effort: a refused write, a task of another project, or Label Studio out of reach after the retries, is
    logged and counted (``failed``) and the next overlay is tried; the predictions stand either way. The queue holds
    at most ``max_items`` overlays and ``max_bytes`` of PNG: beyond, new overlays are logged and counted
    (``dropped``), so a Label Studio that does not answer cannot grow the backend's memory.
    """

    def __init__(self, client: Callable[[], object], *, max_items: int = 1000, max_bytes: int = 64 * 2**20) -> None:
        self._make_client = client
        self._client = None
        self._queue: queue.Queue[PendingOverlay] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.max_items, self.max_bytes = max_items, max_bytes
        self.queued = self.queued_bytes = 0  # waiting or being written
        self._keys: dict[int, str | None] = {}  # project id -> overlay key read from Label Studio's stored config
        self.attached = 0
        self.failed = 0
        self.dropped = 0

    def submit(self, pending: PendingOverlay) -> bool:
        """Queue ``pending``; False (and counted in ``dropped``) when the queue is full."""
        with self._lock:
            full = self.queued >= self.max_items or self.queued_bytes + len(pending.png) > self.max_bytes
            if full:
                self.dropped += 1
            else:
                self.queued += 1
                self.queued_bytes += len(pending.png)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._work, name="overlay-writer", daemon=True)
                    self._thread.start()
                self._queue.put(pending)
        if full:
            log.warning("overlay queue full (%d overlays, %d bytes waiting for Label Studio): dropped the overlay "
                        "of task %s", self.queued, self.queued_bytes, pending.task_id)  # fmt: skip
        return not full

    def wait(self, timeout: float = 30.0) -> bool:
        """Whether every submitted overlay was handled within ``timeout`` seconds (tests and shutdown)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                self.attached += int(self._attach(item))
            except Exception as exc:  # noqa: BLE001 (any failure is one lost overlay, never the thread)
                self.failed += 1
                status = getattr(exc, "status_code", None) or f"{type(exc).__name__}: {exc}"
                log.warning("could not attach the saliency overlay to task %s: %s", item.task_id, status)
            finally:
                with self._lock:
                    self.queued -= 1
                    self.queued_bytes -= len(item.png)
                self._queue.task_done()

    def _attach(self, item: PendingOverlay) -> bool:
        if self._client is None:
            self._client = self._make_client()
        key = item.key if item.key is not None else self._stored_key(item.project_id)
        if key is None:
            return False  # the project's config in Label Studio shows no optional overlay
        return attach_overlay(self._client, item, key)

    def _stored_key(self, project_id: int) -> str | None:
        """The overlay key of the project's config as Label Studio stores it (read once per project)."""
        if project_id not in self._keys:
            xml = self._client.projects.get(id=project_id).label_config
            try:
                self._keys[project_id] = overlay_key(parse_project_config(xml))
            except ProjectConfigError as exc:
                log.warning("project %s: its config shows no overlay (%s)", project_id, exc)
                self._keys[project_id] = None
        return self._keys[project_id]
