"""The Label Studio projects this backend serves, and what it may write into them.

A project is served when Label Studio connected it (``/setup``, which carries the project's config) or when it is
the run's own linked project (``trainer.labelstudio.link``, a backend on one run). The configs from ``/setup`` are
kept in the backend's directory (``MODEL_DIR/backend-projects.json``: the run, or the folder of runs), so a restarted
backend still knows them. Writes into Label Studio
(``ls_backend.overlays``) go only to served projects, under the overlay key of the config stored here, never one
named by a request.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from label_config.interface import ProjectConfig, parse_project_config
from trainer.labelstudio.link import read_link
from trainer.runs.atomic import write_json
from trainer.runs.run import Run

log = logging.getLogger(__name__)
PROJECTS_FILE = "backend-projects.json"
LS_ID_MAX = 2**31 - 1  # Label Studio's ids are PostgreSQL/SQLite integer columns


def label_studio_id(value) -> int | None:
    """``value`` when it is a Label Studio id (an int in 1..2**31-1; a bool is not one), else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= LS_ID_MAX:
        return None
    return value


class ServedProjects:
    """Project id -> the label config Label Studio sent to ``/setup`` for it, persisted in ``path``."""

    def __init__(self, path: Path, run: Run | None = None) -> None:
        self.run = run  # a backend on one run also serves the run's linked project
        self.path = Path(path)
        self._lock = threading.Lock()
        self._configs: dict[int, str] = _load(self.path)
        self._parsed: dict[int, ProjectConfig] = {}

    def remember(self, project_id: int | None, label_config: str) -> None:
        """Keep ``label_config`` (already checked by the caller) as project ``project_id``'s config."""
        pid = label_studio_id(project_id)
        if pid is None:
            return
        with self._lock:
            if self._configs.get(pid) == label_config:
                return
            self._configs[pid] = label_config
            self._parsed.pop(pid, None)
            write_json(self.path, {str(k): v for k, v in sorted(self._configs.items())})

    def serves(self, project_id) -> bool:
        """Whether ``project_id`` connected through ``/setup`` or is the run's linked project."""
        pid = label_studio_id(project_id)
        if pid is None:
            return False
        if pid in self._configs:
            return True
        link = None if self.run is None else read_link(self.run)
        return link is not None and link.project_id == pid

    def ids(self) -> list[int]:
        """The projects connected through ``/setup``, in id order."""
        with self._lock:
            return sorted(self._configs)

    def config(self, project_id: int) -> ProjectConfig | None:
        """The parsed config ``/setup`` stored for the project; None when it never came through ``/setup``."""
        with self._lock:
            xml = self._configs.get(project_id)
            if xml is None:
                return None
            if project_id not in self._parsed:
                self._parsed[project_id] = parse_project_config(xml)
            return self._parsed[project_id]


def _load(path: Path) -> dict[int, str]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        configs = {int(k): v for k, v in data.items() if isinstance(v, str)}
    except (ValueError, AttributeError) as exc:  # a hand-edited or foreign file: start empty, say so
        log.warning("ignoring %s (%s): projects connect again through /setup", path, exc)
        return {}
    return {k: v for k, v in configs.items() if label_studio_id(k) is not None}
