"""Label Studio's own exports of an image-classification project as a labelled dataset (``csv:EXPORT``).

Shape legend: N labelled images.

Three export types are read, as Label Studio 1.23 writes them (measured): CSV (a row per annotation, columns
``annotation_id, annotator, <Choices name>, created_at, id, <image data key>, lead_time, updated_at``), JSON_MIN
(the same rows as objects) and JSON (a list of tasks, each with ``data`` and ``annotations[].result``, a
``choices`` item per Choices control). Image values are Label Studio URLs: ``/data/local-files/?d=<path>``
maps to ``<document root>/<path>`` (Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``); anything else (an upload,
``s3://``, ``http://``) is refused with what to do instead. Classes are the config's Choices in their order when
the project's labelling config is given, else the labels present, sorted (a warning says so). A task annotated
several times counts once, with its most recently updated annotation; cancelled and empty ones are left out.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from urllib.parse import unquote

from label_config.interface import parse_project_config

LOCAL_FILES_PREFIX = "/data/local-files/?d="
EXPORT_COLUMNS = ("annotation_id", "annotator", "id")  # in every CSV / JSON_MIN export of a project
META_COLUMNS = frozenset(EXPORT_COLUMNS + ("created_at", "updated_at", "lead_time", "annotation"))


def is_export_header(header: list[str]) -> bool:
    return set(EXPORT_COLUMNS) <= set(header)


def read_export(
    path: Path, *, document_root=None, label_config: str | Path | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """(N image paths, N labels, classes) from a Label Studio export at ``path`` (CSV, JSON or JSON_MIN).

    document_root: where ``/data/local-files/`` URLs point (default: ``LOCAL_FILES_DOCUMENT_ROOT``).
    label_config: the project's labelling config (XML text or a file): the class control, image key, classes.
    Raises ValueError naming the file, the row or task and what is wrong.
    """
    xml = _config_text(label_config)
    config = parse_project_config(xml) if xml is not None else None
    rows = _rows(path)
    if not rows:
        raise ValueError(f"Label Studio export {path} holds no annotated tasks")
    image_key = config.image.data_key if config else None
    choice = config.classes.name if config else None
    image_key = image_key or _only(path, "image column", [k for k in _keys(rows) if k == "image"] or _urls(rows))
    choice = choice or _only(path, "Choices column", sorted(_keys(rows) - META_COLUMNS - {image_key}))
    root = document_root or os.environ.get("LOCAL_FILES_DOCUMENT_ROOT")
    latest: dict[object, tuple[str, str, dict]] = {}
    for where, row in rows:
        label = row.get(choice)
        if label in (None, "", []):
            continue  # not labelled (or cancelled): nothing to learn from
        if isinstance(label, list):
            if len(label) != 1:
                raise ValueError(f"{path}, {where}: {choice!r} holds {label}: one class per image is read")
            label = label[0]
        key = row.get("id", where)
        if key not in latest or str(row.get("updated_at", "")) >= latest[key][0]:
            latest[key] = (str(row.get("updated_at", "")), str(label), {"where": where, "image": row.get(image_key)})
    if not latest:
        raise ValueError(f"Label Studio export {path} has no {choice!r} labels")
    names = [label for _, label, _ in latest.values()]
    if config is not None:
        classes = list(config.classes.classes)
        try:
            labels = [config.classes.index(n) for n in names]
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    else:
        classes = sorted(set(names))
        labels = [classes.index(n) for n in names]
        warnings.warn(f"{path}: classes {classes} come from the labels present, sorted; pass the project's labelling "
                      "config (label_config=) for its Choices in their order", stacklevel=2)  # fmt: skip
    paths = [_image_path(path, info["where"], info["image"], root) for _, _, info in latest.values()]
    return paths, labels, classes


def _config_text(label_config) -> str | None:
    if label_config is None:
        return None
    text = str(label_config)
    if text.lstrip().startswith("<"):
        return text
    file = Path(label_config).expanduser()
    if not file.is_file():
        raise ValueError(f"label config {file} does not exist (pass the XML from Settings > Labeling Interface > Code)")
    return file.read_text(encoding="utf-8")


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) per annotation: CSV and JSON_MIN rows as they are, JSON tasks flattened to the same keys."""
    if path.suffix.lower() != ".json":
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [(f"line {i + 2}", row) for i, row in enumerate(csv.DictReader(f))]
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"Label Studio export {path} is not JSON: {exc}") from None
    if not isinstance(body, list) or not all(isinstance(t, dict) for t in body):
        raise ValueError(f"Label Studio export {path} is not a list of tasks (export as JSON, JSON_MIN or CSV)")
    if not any("annotations" in t for t in body):  # JSON_MIN
        return [(f"row {i}", row) for i, row in enumerate(body)]
    rows = []
    for task in body:
        for ann in task.get("annotations") or []:
            if ann.get("was_cancelled"):
                continue
            row = {**(task.get("data") or {}), "id": task.get("id"), "updated_at": ann.get("updated_at")}
            for item in ann.get("result") or []:
                if isinstance(item, dict) and item.get("type") == "choices":
                    row[item.get("from_name")] = (item.get("value") or {}).get("choices")
            rows.append((f"task {task.get('id')}, annotation {ann.get('id')}", row))
    return rows


def _keys(rows) -> set[str]:
    return {k for _, row in rows for k in row if isinstance(k, str)}


def _urls(rows) -> list[str]:
    """Columns whose values are Label Studio image URLs (for an image data key other than ``image``)."""
    return sorted({k for _, row in rows for k, v in row.items() if isinstance(v, str) and v.startswith("/data/")})


def _only(path: Path, what: str, candidates: list[str]) -> str:
    if len(candidates) != 1:
        raise ValueError(f"{path}: cannot tell the {what} of this Label Studio export (candidates: {candidates}); "
                         "pass the project's labelling config (label_config=)")  # fmt: skip
    return candidates[0]


def _image_path(path: Path, where: str, url, root) -> Path:
    if not isinstance(url, str) or not url:
        raise ValueError(f"{path}, {where}: no image URL")
    if not url.startswith(LOCAL_FILES_PREFIX):
        kind = "an upload to Label Studio" if url.startswith("/data/upload/") else "not a local file"
        raise ValueError(
            f"{path}, {where}: image {url!r} is {kind}; only /data/local-files/ URLs map to files "
            "(serve the images from a Local Files storage, or list them in an image,label CSV)"
        )
    if root is None:
        raise ValueError(f"{path}: image {url!r} is a Label Studio local file: pass document_root= "
                         "or set LOCAL_FILES_DOCUMENT_ROOT to the folder Label Studio serves it from")  # fmt: skip
    base = Path(root).expanduser().resolve()
    file = (base / unquote(url[len(LOCAL_FILES_PREFIX) :])).resolve()
    if not file.is_relative_to(base):
        raise ValueError(f"{path}, {where}: image {url!r} leaves the document root {base}")
    return file
