"""The link between a run and its Label Studio project: ``RUN/label-studio.json`` (server URL, project id,
document root), written the first time a command connects, so every later command finds the project.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from trainer.labelstudio.client import ensure_project
from trainer.labelstudio.push import label_config_for
from trainer.labelstudio.push_team import is_team_run
from trainer.runs.atomic import write_json
from trainer.runs.run import Run

LINK_FILE = "label-studio.json"


@dataclass(frozen=True)
class Link:
    """Where a run's tasks live: the server, the project and how images reach it."""

    url: str
    project_id: int
    title: str
    document_root: str | None = None
    data_uri: bool = False


def read_link(run: Run) -> Link | None:
    path = run.directory / LINK_FILE
    return Link(**json.loads(path.read_text())) if path.is_file() else None


def owner_note(run: Run) -> str:
    """The description of a project a run creates: how the run knows it again by title (a restarted server)."""
    return f"Created by hitl for the run {run.directory.resolve()}"


def connect_project(
    run: Run,
    client,
    url: str,
    *,
    title: str | None = None,
    document_root=None,
    data_uri: bool | None = None,
    force: bool = False,
    adding: int | None = None,
) -> Link:
    """The run's project on ``url``: the linked one, or one found or created by ``title``; saved in the run.

    A project found by title that the run did not create is refused (``ForeignProject``: what would change,
    its config's controls and ``adding`` tasks) unless ``force``; then only its config is replaced, and the
    caller adds tasks. document_root defaults to the linked one, then to ``LOCAL_FILES_DOCUMENT_ROOT``.
    """
    url = url.rstrip("/")
    link = read_link(run)
    if link is not None and link.url != url:
        raise ValueError(
            f"run {run.directory} is linked to project {link.project_id} on {link.url}, not {url}; "
            f"delete {run.directory / LINK_FILE} to start over on another server"
        )
    if link is None:
        title = title or f"hitl {run.name}"[:50]
        project_id = ensure_project(
            client, title, label_config_for(run), owner=owner_note(run), force=force, adding=adding
        )
        link = Link(url=url, project_id=project_id, title=title)
    elif title is not None and title != link.title:
        raise ValueError(f"run {run.directory} is linked to project {link.title!r}, not {title!r}")
    else:
        client.projects.get(id=link.project_id)  # fails loudly when the project was deleted
    root = document_root or link.document_root or os.environ.get("LOCAL_FILES_DOCUMENT_ROOT")
    link = replace(
        link,
        document_root=str(Path(root).resolve()) if root else None,
        data_uri=link.data_uri if data_uri is None else bool(data_uri),
    )
    # A run made from the project pushes predictions onto its tasks: it writes no pictures.
    if link.document_root is None and not link.data_uri and not is_team_run(run, link.project_id):
        raise ValueError(
            "no document root for the task images: pass --document-root (Label Studio's "
            "LOCAL_FILES_DOCUMENT_ROOT) or set LOCAL_FILES_DOCUMENT_ROOT, or use --data-uri"
        )
    write_json(run.directory / LINK_FILE, asdict(link))
    return link
