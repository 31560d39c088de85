"""One training round in its own process: ``python -m ls_backend.round RUN_DIR [--project ID] [--defaults FILE]``.

The backend's training job (``ls_backend.jobs``) starts one such process per round, so a round's memory and CPU
never sit in the web worker and a round that dies takes nothing with it. Label Studio's URL and key come in the
environment (``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``), never on the command line, where any user of the
machine could read them.

With ``--project`` the round pulls that project's annotations first; a run directory without a run yet (a team's
project at its first "Start Training") is made from the project (``trainer.labelstudio.project_run``) with the
settings of ``--defaults``. The last line on stdout is ``{"model_version": ...}``; logs go to stderr, one record a
line as ``LEVEL message``, which the job relays into the backend's log. Exit status 1: the round failed, and the
last stderr line says why.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from trainer.labelstudio.client import connect
from trainer.labelstudio.loop import training_round
from trainer.labelstudio.project_run import init_project_run
from trainer.runs.run import Run

_log = logging.getLogger("ls_backend.round")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ls_backend.round", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--project", type=int, default=None, help="pull this Label Studio project first")
    parser.add_argument("--defaults", type=Path, default=None, help="JSON: settings of a new project's run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s", force=True)
    try:
        print(json.dumps({"model_version": one_round(args.run_dir, args.project, args.defaults)}), flush=True)
    except Exception as exc:  # noqa: BLE001  the parent shows this line as the round's error
        _log.debug("round failed", exc_info=True)
        print(f"ERROR {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def one_round(run_dir: Path, project_id: int | None, defaults_file: Path | None) -> str:
    """Pull (with a project and Label Studio configured) and train the next round of ``run_dir``; its model_version."""
    url, key = os.environ.get("LABEL_STUDIO_URL"), os.environ.get("LABEL_STUDIO_API_KEY")
    client = connect(url, key) if url and key and project_id is not None else None
    if (run_dir / "config.json").is_file():
        run = Run.open(run_dir)
    elif client is None:
        raise ValueError(f"{run_dir} holds no run yet, and without Label Studio (LABEL_STUDIO_URL, "
                         "LABEL_STUDIO_API_KEY) and a project there is nothing to make one from")  # fmt: skip
    else:
        defaults = json.loads(defaults_file.read_text()) if defaults_file and defaults_file.is_file() else {}
        run, report = init_project_run(run_dir, client, url, project_id, defaults)  # type: ignore[arg-type]
        if report is not None:
            _log.info("project %s: new run %s: %s", project_id, run_dir.name, report.lines()[0])
    return training_round(run, label_studio=client, project_id=project_id if client else None)


if __name__ == "__main__":
    sys.exit(main())
