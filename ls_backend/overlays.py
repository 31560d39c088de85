"""The saliency overlay for tasks that arrived without one (imported by hand with the image only).

Our labelling config reads the overlay with ``valueList`` (``label_config.config``), which Label Studio 1.23
does not require in a task's data, so such tasks import fine and show an empty overlay panel. When ``/predict``
explains one of them, the backend writes the overlay into the task's data through Label Studio's API
(``PATCH /api/tasks/<id>``) as a PNG data URI: the backend cannot write into Label Studio's file storage, and
one 224 px overlay is a few kB. The task's stored data is read first and written back whole, so nothing
Label Studio resolved for the request (presigned URLs) is stored in its place.

The write happens after ``/predict`` has answered (``OverlayWriter``, one daemon thread): Label Studio waits for
``/predict`` inside a database transaction, so a write made from within the request waits for the very request it
is answering (measured on 1.23.2 with SQLite: the PATCH timed out and Label Studio retried ``/predict``).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from label_studio_sdk.core.api_error import ApiError
from PIL import Image

from label_config.config import overlay_value
from label_config.controls import ConfigControls
from label_config.names import (
    LABEL_KEY,
    MODEL_VERSION_KEY,
    PREDICTION_KEY,
    PROBABILITY_KEY,
    ROUND_KEY,
    SALIENCY,
    SAMPLE_ID_KEY,
)
from ls_backend.images import to_data_uri
from trainer.labelstudio.retry import LabelStudioUnavailable

log = logging.getLogger(__name__)
# Shown in the labelling page's headers: written as "-" into an image-only task that lacks them. A sample id of
# "-" is no sample of ours, so pulls keep ignoring the task's annotations (they have no training image).
NOT_GIVEN = (SAMPLE_ID_KEY, ROUND_KEY, LABEL_KEY)


def overlay_key(controls: ConfigControls) -> str | None:
    """The data key of the config's overlay object when it is optional (``valueList``), else None: a config
    that requires the overlay never reaches the backend without one, and one without it shows none."""
    if SALIENCY not in controls.list_objects:
        return None
    return dict(controls.data_keys).get(SALIENCY)


def lacks_overlay(task: dict, key: str) -> bool:
    """Whether ``task`` (as Label Studio sent it to /predict) has no overlay under ``key``."""
    value = task.get("data", {}).get(key)
    return not value or (isinstance(value, list) and not any(value))


def attach_overlay(client, task_id: int, key: str, picture: Image.Image, *, model_version: str, prediction: str,
                   probability: float) -> bool:  # fmt: skip
    """Store ``picture`` as task ``task_id``'s overlay, with the model's answer shown above it; False when the
    stored task has an overlay already (another request attached it first)."""
    data = dict(client.tasks.get(id=task_id).data or {})
    if data.get(key):
        return False
    data[key] = overlay_value(to_data_uri(picture.convert("RGB")))
    data.update({MODEL_VERSION_KEY: model_version, PREDICTION_KEY: prediction, PROBABILITY_KEY: f"{probability:.2f}"})
    for key_shown in NOT_GIVEN:  # the page's headers name these; a task imported by hand has none ("undefined")
        data.setdefault(key_shown, "-")
    client.tasks.update(id=task_id, data=data)
    return True


@dataclass(frozen=True)
class PendingOverlay:
    task_id: int
    key: str
    picture: Image.Image = field(repr=False)
    model_version: str
    prediction: str
    probability: float


class OverlayWriter:
    """Attaches overlays in the background, one at a time. ``client`` makes the SDK client on first use.
    Best effort: a refused write, or Label Studio out of reach after the retries, is logged and counted
    (``failed``) and the next overlay is tried; the predictions stand either way."""

    def __init__(self, client: Callable[[], object]) -> None:
        self._make_client = client
        self._client = None
        self._queue: queue.Queue[PendingOverlay] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.attached = 0
        self.failed = 0

    def submit(self, pending: PendingOverlay) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="overlay-writer", daemon=True)
                self._thread.start()
        self._queue.put(pending)

    def wait(self, timeout: float = 30.0) -> bool:
        """Whether every submitted overlay was handled within ``timeout`` seconds (tests and shutdown)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if self._client is None:
                    self._client = self._make_client()
                self.attached += int(attach_overlay(self._client, item.task_id, item.key, item.picture,
                                                    model_version=item.model_version, prediction=item.prediction,
                                                    probability=item.probability))  # fmt: skip
            except (ApiError, httpx.HTTPError, ValueError, LabelStudioUnavailable) as exc:  # the thread lives on
                self.failed += 1
                status = getattr(exc, "status_code", None) or type(exc).__name__
                log.warning("could not attach the saliency overlay to task %s: %s", item.task_id, status)
            finally:
                self._queue.task_done()
