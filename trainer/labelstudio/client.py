"""The thin I/O edge to Label Studio, over label-studio-sdk 2.x.

Projects, the Local Files storage that serves images from disk, task import and the pull of submitted
annotations. Nothing here interprets a result: the rasteriser turns results into cells, the ledger keeps
them. Configuration uses the ecosystem's names, ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``, read
when ``connect`` is called.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from label_config.changes import control_changes, removed_controls
from label_config.names import SAMPLE_ID_KEY
from trainer.labelstudio.auth import AuthError, LabelStudioAuth, TokenAuth
from trainer.labelstudio.retry import RetryPolicy, RetryTransport

LOCAL_FILES_PREFIX = "/data/local-files/?d="
STORAGE_TITLE = "hitl-images"
TITLE_LENGTH = (3, 50)  # Label Studio's PROJECT_TITLE_MIN_LEN / _MAX_LEN
# What SDK calls raise when the server is down, slow or refuses (401, a deleted project, a redirect): to report.
LABEL_STUDIO_ERRORS = (httpx.HTTPError, ApiError, OSError, AuthError)
# What the SDK is given as its key: not a JWT, so it never exchanges one itself; TokenAuth sets the real header.
SDK_KEY_PLACEHOLDER = "set-per-request-by-trainer-labelstudio-auth"


@dataclass(frozen=True)
class AnnotationRecord:
    """One annotation as Label Studio holds it. ``sample_id`` is None for tasks without one in their data
    (tasks someone imported by hand); a cancelled (skipped) annotation has ``was_cancelled`` and no result.
    ``lead_time`` is the seconds the annotator spent on the task, as the labelling page reports it (None when
    the annotation was made without one, e.g. through the API)."""

    project_id: int
    task_id: int
    sample_id: int | None
    annotation_id: int
    result: list[dict[str, Any]] = field(repr=False)
    updated_at: datetime
    was_cancelled: bool
    completed_by: int | None
    ground_truth: bool
    lead_time: float | None = None


def connect(
    url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0, retry: RetryPolicy = RetryPolicy()
) -> LabelStudio:
    """A client for ``url`` / ``api_key``, falling back to ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``.
    Every call is retried by ``retry`` (``trainer.labelstudio.retry``), never by the SDK.
    The key may be a legacy token or a personal access token; ``label_studio_http`` carries it, not the SDK."""
    url = url or os.environ.get("LABEL_STUDIO_URL")
    api_key = api_key or os.environ.get("LABEL_STUDIO_API_KEY")
    missing = [name for name, value in (("LABEL_STUDIO_URL", url), ("LABEL_STUDIO_API_KEY", api_key)) if not value]
    if missing:
        raise ValueError(
            f"Label Studio connection is not configured: set {' and '.join(missing)} "
            f"(or pass url= / api_key=); the key is a personal access token or the legacy token (Account & Settings)"
        )
    http = label_studio_http(url, api_key, timeout=timeout, retry=retry)
    return LabelStudio(base_url=url.rstrip("/"), api_key=SDK_KEY_PLACEHOLDER, timeout=timeout, httpx_client=http,
                       max_retries=0)  # fmt: skip


def label_studio_http(url: str, api_key: str, *, timeout: float = 60.0,
                      retry: RetryPolicy = RetryPolicy()) -> httpx.Client:  # fmt: skip
    """The httpx client under the SDK: ``api_key``'s header (a PAT exchanged at ``<url>/api/token/refresh/``,
    path prefix kept) on requests to ``url``'s origin and path only, no redirect followed, every call retried.

    The SDK's own exchange would post a PAT to the host's root and follow a 307 with it, so it is never used."""
    refresher = httpx.Client(timeout=timeout, follow_redirects=False, transport=RetryTransport(url, retry))
    auth = LabelStudioAuth(url, api_key, timeout=timeout, session=refresher)
    return httpx.Client(timeout=timeout, follow_redirects=False, auth=TokenAuth(auth),
                        transport=RetryTransport(url, retry))  # fmt: skip


class ForeignProject(ValueError):
    """A project found by title that this run did not create: using it would change a team's work, so it is
    refused unless forced; the message says what would change and how to proceed."""


class ConfigRefused(ValueError):
    """Label Studio refused a labelling config change (400): existing annotations use what it removes."""


def ensure_project(
    client: LabelStudio,
    title: str,
    label_config: str,
    *,
    owner: str | None = None,
    force: bool = False,
    adding: int | None = None,
) -> int:
    """The id of the project titled ``title`` (the oldest if several), created if there is none.

    owner: the description a project this run created carries (``owner`` is written into it on creation). A
    project found by title whose description is not ``owner`` is someone else's: without ``force`` it is left
    untouched and ForeignProject says what using it would change (its config's controls, ``adding`` tasks);
    with ``force`` only its label config changes (to ``label_config``, when it differs). A config change
    Label Studio refuses is a ConfigRefused naming the project and the annotations that block it.
    """
    if not TITLE_LENGTH[0] <= len(title) <= TITLE_LENGTH[1]:
        raise ValueError(
            f"Label Studio project titles have {TITLE_LENGTH[0]} to {TITLE_LENGTH[1]} characters, got {title!r}"
        )
    # The server's title filter matches substrings: keep exact matches only.
    matches = sorted(p.id for p in client.projects.list(title=title, page_size=100) if p.title == title)
    if not matches:
        return client.projects.create(title=title, label_config=label_config, description=owner or "").id
    project = client.projects.get(id=matches[0])
    if not force and (owner is None or (project.description or "") != owner):
        raise ForeignProject(_refusal(project, label_config, adding))
    if (project.label_config or "").strip() != label_config.strip():  # Label Studio drops a trailing newline
        set_label_config(client, project, label_config)
    return project.id


def _refusal(project, label_config: str, adding: int | None) -> str:
    changes = control_changes(project.label_config or "", label_config)
    tasks, annotated = project.task_number or 0, project.num_tasks_with_annotations or 0
    would = [f"replace its labelling config ({'; '.join(changes)})"] if changes else []
    would.append(f"add {adding if adding is not None else 'new'} tasks to its {tasks} ({annotated} annotated)")
    return (
        f"Label Studio project {project.title!r} (id {project.id}) was not created by this run, so nothing was "
        f"changed. Using it would {' and '.join(would)}. Pass --force to make exactly these changes (force=True), "
        f"or choose another --project-title for a project of the run's own"
    )


def set_label_config(client: LabelStudio, project, label_config: str) -> None:
    """Give ``project`` (an SDK project) ``label_config``; ConfigRefused names the annotations that block it."""
    try:
        client.projects.update(id=project.id, label_config=label_config)
    except ApiError as exc:
        if exc.status_code != 400:
            raise
        removed = removed_controls(project.label_config or "", label_config)
        blocking = [r for r in fetch_annotations(client, project.id) if _uses(r.result, removed)]
        named = ", ".join(f"annotation {r.annotation_id} (task {r.task_id})" for r in blocking[:5])
        more = f" and {len(blocking) - 5} more" if len(blocking) > 5 else ""
        raise ConfigRefused(
            f"Label Studio refused to change the labelling config of project {project.title!r} (id {project.id}): "
            f"{len(blocking)} annotations use the controls {sorted(removed)} it would remove"
            f"{': ' + named + more if blocking else ''}. Nothing was changed. Add our controls to the project's "
            f"own config instead (`hitl config --project-config FILE`), or use another project. Label Studio said: "
            f"{str(exc.body)[:300]}"
        ) from None


def _uses(result: list, controls: set[str]) -> bool:
    return any(isinstance(item, dict) and item.get("from_name") in controls for item in result)


def local_file_url(path: str | os.PathLike, document_root: str | os.PathLike) -> str:
    """The URL Label Studio serves ``path`` under: ``/data/local-files/?d=<path relative to root>``."""
    full, root = Path(path).resolve(), Path(document_root).resolve()
    if not full.is_relative_to(root):
        raise ValueError(f"{full} is not under the Label Studio document root {root}")
    return LOCAL_FILES_PREFIX + quote(full.relative_to(root).as_posix(), safe="/")


def ensure_local_storage(
    client: LabelStudio,
    project_id: int,
    path: str | os.PathLike,
    document_root: str | os.PathLike,
    *,
    title: str = STORAGE_TITLE,
) -> int:
    """A Local Files import storage on ``project_id`` for folder ``path`` (reused if present); its id.

    Label Studio serves ``/data/local-files/`` only from folders some project's storage points at. The
    storage is never synced: tasks are imported explicitly, not one per file.
    """
    folder, root = Path(path).resolve(), Path(document_root).resolve()
    if not folder.is_dir():
        raise ValueError(f"local storage folder {folder} does not exist")
    if not folder.is_relative_to(root):
        raise ValueError(f"local storage folder {folder} is not under the document root {root}")
    for storage in client.import_storage.local.list(project=project_id):
        if storage.path and Path(storage.path).resolve() == folder:
            return storage.id
    storage = client.import_storage.local.create(project=project_id, path=str(folder), title=title, use_blob_urls=True)
    return storage.id


def import_tasks(client: LabelStudio, project_id: int, tasks: list[dict], *, batch_size: int = 100,
                 progress: Callable[[int], None] | None = None,
                 on_batch: Callable[[list[int], list[dict]], None] | None = None) -> list[int]:  # fmt: skip
    """Import ``tasks`` (each ``{"data": {...}, "predictions": [...]}``); their Label Studio ids, in order.
    ``on_batch(ids, batch)`` runs after each batch lands, so a caller can record it before the next one;
    ``progress`` is called with the number of tasks of each batch once it is imported."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    task_ids: list[int] = []
    for start in range(0, len(tasks), batch_size):
        batch = tasks[start : start + batch_size]
        response = client.projects.import_tasks(id=project_id, request=batch, return_task_ids=True)
        ids = list(response.task_ids or [])
        if len(ids) != len(batch):
            raise RuntimeError(f"Label Studio returned {len(ids)} task ids for a batch of {len(batch)} tasks")
        task_ids.extend(ids)
        if on_batch is not None:
            on_batch(ids, batch)
        if progress is not None:
            progress(len(ids))
    return task_ids


def list_task_data(client: LabelStudio, project_id: int, *, page_size: int = 100) -> dict[int, dict]:
    """Task id -> task data for every task of the project (to reconcile pushes with the ledger)."""
    _check_project(client, project_id)
    return {t.id: dict(t.data or {}) for t in client.tasks.list(project=project_id, page_size=page_size)}


def fetch_annotations(
    client: LabelStudio,
    project_id: int,
    *,
    sample_key: str = SAMPLE_ID_KEY,
    progress: Callable[[int, int], None] | None = None,
) -> list[AnnotationRecord]:
    """Every submitted annotation of the project, ordered by task then annotation id.

    One request: Label Studio's JSON export of every task (``download_all_tasks``), which holds the
    annotations themselves (predictions and drafts are kept apart, so they never count). Paging through
    ``tasks.list`` took 62-71 s for 10,000 annotated tasks where the export takes 25 s (``hitl bench pull``).
    Cancelled (skipped) annotations come back with ``was_cancelled`` set and their result dropped, so the
    caller records them as skips. ``progress(tasks read, tasks in the project)`` is called after each task.
    """
    tasks = export_tasks(client, project_id)
    records = []
    for done, task in enumerate(tasks, 1):
        records += annotation_records(project_id, task, sample_key=sample_key)
        if progress is not None:
            progress(done, len(tasks))
    return sorted(records, key=lambda r: (r.task_id, r.annotation_id))


def export_tasks(client: LabelStudio, project_id: int) -> list[dict]:
    """Every task of the project with its data and submitted annotations: Label Studio's JSON export."""
    _check_project(client, project_id)  # a missing project is a clear 404, not an empty export
    body = b"".join(client.projects.exports.download_sync(project_id, export_type="JSON", download_all_tasks=True))
    try:
        tasks = json.loads(body)
    except ValueError as exc:
        raise RuntimeError(f"Label Studio's export of project {project_id} is not JSON ({len(body)} bytes)") from exc
    if not isinstance(tasks, list):
        raise RuntimeError(f"Label Studio's export of project {project_id} is not a list of tasks")
    return tasks


def annotation_records(project_id: int, task: dict, *, sample_key: str = SAMPLE_ID_KEY) -> list[AnnotationRecord]:
    """The annotations of one exported task, in the export's order."""
    sample_id = _sample_id(task.get("data") or {}, sample_key, task["id"])
    return [_record(project_id, int(task["id"]), sample_id, ann) for ann in task.get("annotations") or []]


def _check_project(client: LabelStudio, project_id: int):
    # The SDK's pager ends quietly on any 404, so make sure the project is there before paging.
    return client.projects.get(id=project_id)


def ml_backend_urls(client: LabelStudio, project_id: int) -> list[str]:
    """The URLs of the ML backends connected to the project (Settings -> Model), oldest first."""
    return [ml.url.rstrip("/") for ml in sorted(client.ml.list(project=project_id), key=lambda m: m.id) if ml.url]


def user_emails(client: LabelStudio) -> dict[int, str]:
    """User id -> e-mail of every user on the server (to name annotators)."""
    return {u.id: u.email for u in client.users.list() if u.id is not None and u.email}


def _sample_id(data: dict, key: str, task_id: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        # A task someone imported by hand: not ours, so it must not stop the pull of everyone else's work.
        return None


def _record(project_id: int, task_id: int, sample_id: int | None, ann: Any) -> AnnotationRecord:
    ann = ann if isinstance(ann, dict) else ann.dict()
    cancelled = bool(ann.get("was_cancelled"))
    updated = ann.get("updated_at") or ann.get("created_at")
    return AnnotationRecord(
        project_id=project_id,
        task_id=task_id,
        sample_id=sample_id,
        annotation_id=int(ann["id"]),
        result=[] if cancelled else list(ann.get("result") or []),
        updated_at=updated if isinstance(updated, datetime) else datetime.fromisoformat(updated.replace("Z", "+00:00")),
        was_cancelled=cancelled,
        completed_by=_user_id(ann.get("completed_by")),
        ground_truth=bool(ann.get("ground_truth")),
        lead_time=None if ann.get("lead_time") is None else float(ann["lead_time"]),
    )


def _user_id(user: Any) -> int | None:
    # Some Label Studio views expand the user into {"id": ..., "email": ...}.
    return user.get("id") if isinstance(user, dict) else user


def annotate_as_browser(
    client: LabelStudio,
    task_id: int,
    result: list[dict],
    *,
    was_cancelled: bool = False,
    ground_truth: bool = False,
    lead_time: float | None = None,
    parent_prediction: int | None = None,
) -> int:
    """Submit an annotation through the REST API, as the labelling page does; its id.

    ``was_cancelled=True`` is the "Skip" button (send ``result=[]``); ``lead_time``: seconds spent on the task,
    which the labelling page sends; ``parent_prediction``: the prediction the annotation started from (accepted,
    or edited).
    """
    extra = {} if lead_time is None else {"lead_time": float(lead_time)}
    if parent_prediction is not None:
        extra["parent_prediction"] = int(parent_prediction)
    annotation = client.annotations.create(
        id=task_id, result=result, was_cancelled=was_cancelled, ground_truth=ground_truth, **extra
    )
    return annotation.id
