"""What a request to the backend must hold, checked at the door: the project's config (parsed once, as
``label_config.interface`` reads it), classes that are the served model's, and tasks that carry the image.

A request-level problem is a ``BackendError`` with its HTTP status; a problem with one task of a /predict batch
is recorded in ``PredictOutcome`` (that task gets no prediction, the others do) and logged at warning level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from label_config.interface import ProjectConfig, ProjectConfigError, parse_project_config

_log = logging.getLogger("ls_backend.model")


class BackendError(Exception):
    """A request the backend cannot serve; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def image_key(config: ProjectConfig) -> str:
    """The data key of the image the config's classes are about."""
    image = config.image
    if image.value_list:
        raise BackendError(f"label config unusable: the image {image.name!r} reads a list of images "
                           "(valueList); the backend explains one image per task (value='$<key>')", 422)  # fmt: skip
    return image.data_key  # type: ignore[return-value]  # parse_project_config refuses an Image without one


def class_order(config: ProjectConfig, classes: list[str], *, several: bool = False) -> list[int]:
    """For each of the model's classes, its index in the project's class control (a Choice matches by its value or
    its alias); a 422 listing both when the two are not the same classes. The order may differ: a folder dataset's
    classes are its sorted subfolder names, a template's are in the order it lists them. ``several``: the backend
    keeps a run per project (the project's Choices changed since its run was made)."""
    options = config.classes.options
    found = {c: [i for i, o in enumerate(options) if c in (o.value, o.stored)] for c in classes}
    if len(options) == len(classes) and all(len(v) == 1 for v in found.values()):
        order = [found[c][0] for c in classes]
        if len(set(order)) == len(order):
            return order
    shown = [o.value if o.alias is None else f"{o.value} (alias {o.alias})" for o in options]
    if several:
        why = "a run's classes are fixed: the project's run was made with the others; remove its run directory"
    else:
        why = "train a run on this project's classes (this backend serves one run, for every project it serves)"
    raise BackendError(
        f"the project's classes (Choices {config.classes.name!r}: {shown}) are not the served model's classes "
        f"{list(classes)}: {why}",
        422,
    )


def check_task(task, key: str) -> None:
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise BackendError(f"each task needs a 'data' object, got {str(task)[:80]!r}", 400)
    if key not in task["data"]:
        raise BackendError(
            f"task {task.get('id', '?')} has no data key {key!r} (the config's image reads ${key}); "
            f"keys: {sorted(task['data'])}", 400,
        )  # fmt: skip


def project_config(label_config) -> ProjectConfig:
    if not isinstance(label_config, str) or not label_config.strip():
        raise BackendError("the request has no label config (expected a non-empty XML string)", 400)
    try:
        return parse_project_config(label_config)
    except ProjectConfigError as exc:
        raise BackendError(str(exc), 422) from exc


@dataclass
class PredictOutcome:
    """What /predict answers: ``results`` (one per task, ``[]`` for a task skipped) and why each was skipped."""

    results: list = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    errors: list[BackendError] = field(default_factory=list)

    def skip(self, task, exc: BackendError, project_id) -> None:
        tid = task.get("id") if isinstance(task, dict) else None
        _log.warning("/predict for project %s: task %s skipped: %s", project_id, tid, exc)
        self.skipped.append({"task": tid, "error": str(exc)})
        self.errors.append(exc)
