"""The Label Studio loop: ``hitl push``, ``hitl pull`` and ``hitl run``, plus a simulated annotator.

Shape legend: H x W pixels, G_h x G_w grid cells.

A run is linked to one Label Studio project through ``RUN/label-studio.json`` (server URL, project id,
document root), written the first time a command connects, so every later command finds the project.
``hitl run`` is resumable: checkpoints say which rounds were trained and the ledger which were pushed,
so after Ctrl-C or a crash it starts where it stopped, without pushing or training anything twice.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from label_config.config import display_size
from label_config.names import (
    ANNOTATED,
    CELL_POINT,
    CELL_POINT_LABEL,
    CELL_RECT,
    CELL_RECT_LABEL,
    LABEL_CHECK,
    LABEL_OK,
    SAMPLE_ID_KEY,
)
from trainer.ledger import FEEDBACK_MODES
from trainer.ls_client import annotate_as_browser, connect, ensure_project, fetch_annotations
from trainer.pull import PullReport, pull
from trainer.push import display_px, label_config_for, push

__all__ = ["PullReport", "connect_project", "pull", "push", "register", "run_loop", "simulate_annotator"]

LINK_FILE = "label-studio.json"
SIMULATED_KINDS = ("rect", "point")


@dataclass(frozen=True)
class Link:
    """Where a run's tasks live: the server, the project and how images reach it."""

    url: str
    project_id: int
    title: str
    document_root: str | None = None
    data_uri: bool = False


def read_link(run) -> Link | None:
    path = run.directory / LINK_FILE
    return Link(**json.loads(path.read_text())) if path.is_file() else None


def connect_project(run, client, url: str, *, title: str | None = None, document_root=None,
                    data_uri: bool | None = None) -> Link:
    """The run's project on ``url``: the linked one, or one found or created by ``title``; saved in the run.

    document_root defaults to the linked one, then to ``LOCAL_FILES_DOCUMENT_ROOT`` (Label Studio's name).
    """
    url = url.rstrip("/")
    link = read_link(run)
    if link is not None and link.url != url:
        raise ValueError(f"run {run.directory} is linked to project {link.project_id} on {link.url}, not {url}; "
                         f"delete {run.directory / LINK_FILE} to start over on another server")
    if link is None:
        title = title or f"hitl {run.name}"[:50]
        link = Link(url=url, project_id=ensure_project(client, title, label_config_for(run)), title=title)
    elif title is not None and title != link.title:
        raise ValueError(f"run {run.directory} is linked to project {link.title!r}, not {title!r}")
    else:
        client.projects.get(id=link.project_id)  # fails loudly when the project was deleted
    root = document_root or link.document_root or os.environ.get("LOCAL_FILES_DOCUMENT_ROOT")
    link = replace(link, document_root=str(Path(root).resolve()) if root else None,
                   data_uri=link.data_uri if data_uri is None else bool(data_uri))
    if link.document_root is None and not link.data_uri:
        raise ValueError("no document root for the task images: pass --document-root (Label Studio's "
                         "LOCAL_FILES_DOCUMENT_ROOT) or set LOCAL_FILES_DOCUMENT_ROOT, or use --data-uri")
    path = run.directory / LINK_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(link), indent=2))
    os.replace(tmp, path)
    return link


# --- A simulated annotator, acting only through Label Studio's REST API -----------------------------------


def simulate_annotator(run, client, project_id: int, *, kind: str = "rect", miss_rate: float = 0.0,
                       task_ids=None, seed: int = 0) -> list[int]:
    """Annotate every unanswered task (of ``task_ids``, default all) as a person would; the new annotation ids.

    Marks the cells that overlap the true decoy (``run.datasets[0].decoy_masks``), each missed with
    probability ``miss_rate``: one rectangle inside each cell (``kind="rect"``) or a click on its centre
    (``"point"``), in percent of the displayed picture, as the labelling page posts them.
    """
    if kind not in SIMULATED_KINDS:
        raise ValueError(f"kind must be one of {SIMULATED_KINDS}, got {kind!r}")
    if not 0.0 <= miss_rate <= 1.0:
        raise ValueError(f"miss_rate must be in [0, 1], got {miss_rate!r}")
    masks = run.datasets[0].decoy_masks  # (N, H, W) bool
    if masks is None:
        raise ValueError(f"dataset {run.config.dataset!r} has no decoy masks: nothing to simulate an annotator with")
    wanted = None if task_ids is None else {int(t) for t in task_ids}
    rng = np.random.default_rng(seed)
    created = []
    for task in client.tasks.list(project=project_id, fields="all"):
        sample_id = (task.data or {}).get(SAMPLE_ID_KEY)
        if task.annotations or sample_id is None or (wanted is not None and task.id not in wanted):
            continue
        cells = run.grid.mask_to_cells(masks[int(sample_id)].numpy())  # (G_h, G_w)
        cells &= rng.random(cells.shape) >= miss_rate
        created.append(annotate_as_browser(client, task.id, browser_result(run.grid, cells, kind, rng)))
    return created


def browser_result(grid, cells: np.ndarray, kind: str, rng: np.random.Generator) -> list[dict]:
    """What the labelling page submits for ``cells`` (G_h, G_w) bool, plus "label is correct"."""
    width, height, _ = display_size(grid, display_px(grid))
    result = []
    for r, c in np.argwhere(cells):
        x, y, w, h = grid.cell_box_percent(int(r), int(c))
        if kind == "rect":  # drawn by hand: a little inside the cell's borders
            value = {"x": x + 0.1 * w, "y": y + 0.1 * h, "width": 0.8 * w, "height": 0.8 * h, "rotation": 0,
                     "rectanglelabels": [CELL_RECT_LABEL]}
            name, tag = CELL_RECT, "rectanglelabels"
        else:
            value = {"x": x + w / 2, "y": y + h / 2, "width": 0.5, "keypointlabels": [CELL_POINT_LABEL]}
            name, tag = CELL_POINT, "keypointlabels"
        result.append({"id": _region_id(rng), "from_name": name, "to_name": ANNOTATED, "type": tag,
                       "origin": "manual", "original_width": width, "original_height": height,
                       "image_rotation": 0, "value": value})
    result.append({"id": _region_id(rng), "from_name": LABEL_CHECK, "to_name": ANNOTATED, "type": "choices",
                   "origin": "manual", "value": {"choices": [LABEL_OK]}})
    return result


def _region_id(rng: np.random.Generator) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=10))


# --- The loop ----------------------------------------------------------------------------------------


def wait_for_annotations(client, project_id: int, task_ids: list[int], *, min_annotations: int | None = None,
                         deadline_s: float | None = None, poll_s: float = 10.0, progress: bool = True,
                         desc: str = "annotated") -> int:
    """Poll until ``min_annotations`` of ``task_ids`` have an annotation (default: all) or the deadline
    passes; how many have one. A skip counts: the annotator answered."""
    tasks = set(task_ids)
    target = len(tasks) if min_annotations is None else min(min_annotations, len(tasks))
    from tqdm import tqdm

    began = time.monotonic()
    with tqdm(total=len(tasks), desc=desc, unit="task", disable=not progress, file=sys.stderr) as bar:
        while True:
            done = len({r.task_id for r in fetch_annotations(client, project_id)} & tasks)
            waited = time.monotonic() - began
            bar.n = done
            bar.set_postfix(pending=len(tasks) - done, waited=f"{waited:.0f}s")
            if done >= target or (deadline_s is not None and waited >= deadline_s):
                return done
            left = poll_s if deadline_s is None else min(poll_s, max(0.0, deadline_s - waited))
            time.sleep(left)


def run_loop(run, client, link: Link, *, rounds: int, min_annotations: int | None = None,
             deadline_minutes: float | None = None, poll_seconds: float = 10.0, simulate: str | None = None,
             miss_rate: float = 0.0, mode: str = "union", progress: bool = True, log=print) -> list[dict]:
    """Train until the newest checkpoint is round ``rounds``: each round push -> annotate -> pull -> train.

    Starts where the checkpoints and the ledger say the run stopped. Returns the rounds trained now.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    if mode not in FEEDBACK_MODES:
        raise ValueError(f"mode must be one of {FEEDBACK_MODES}, got {mode!r}")
    for name, value in (("poll_seconds", poll_seconds), ("min_annotations", min_annotations),
                        ("deadline_minutes", deadline_minutes)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    trained = []
    if run.current_round() < 0:
        trained.append(_train(run, None, progress, log))
    while (r := run.current_round()) < rounds:
        task_ids = push(run, client, link.project_id, round=r, document_root=link.document_root,
                        data_uri=link.data_uri)
        log(f"round {r}: {len(task_ids)} tasks in project {link.project_id} ({link.url}/projects/{link.project_id})")
        if simulate:
            simulate_annotator(run, client, link.project_id, kind=simulate, miss_rate=miss_rate,
                               task_ids=task_ids, seed=run.config.seed + r)
        else:
            wait_for_annotations(client, link.project_id, task_ids, min_annotations=min_annotations,
                                 deadline_s=None if deadline_minutes is None else 60.0 * deadline_minutes,
                                 poll_s=poll_seconds, progress=progress, desc=f"round {r} annotated")
        report = pull(run, client, link.project_id, mode=mode)
        log(f"round {r}: pulled {report.summary()}")
        for error in report.errors:
            log(f"  skipped a bad annotation: {error}")
        trained.append(_train(run, report.feedback, progress, log))
    return trained


def _train(run, feedback, progress: bool, log) -> dict:
    record = run.train_next_round(feedback, progress=progress)  # also records the round and its feedback in the ledger
    summary = {k: record.get(k) for k in ("round", "model_version", "annotated", "label_fixes", "acc")}
    log(json.dumps(summary))
    return record


# --- Command line ------------------------------------------------------------------------------------------


def register(sub) -> None:
    """``hitl push``, ``hitl pull`` and ``hitl run`` (Label Studio from LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY)."""
    p = sub.add_parser("push", help="push the newest round's images to Label Studio")
    _link_args(p)
    p.set_defaults(func=_push)

    p = sub.add_parser("pull", help="pull the project's annotations into the run's ledger")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--mode", choices=FEEDBACK_MODES, default="union", help="how several annotators combine")
    p.set_defaults(func=_pull)

    p = sub.add_parser("run", help="the loop: push, wait for annotators, pull, train; resumable")
    _link_args(p)
    p.add_argument("--rounds", type=int, required=True, help="feedback rounds: stop when round R is trained")
    p.add_argument("--min-annotations", type=int, default=None, help="annotated tasks to wait for (default: all)")
    p.add_argument("--deadline-minutes", type=float, default=None, help="stop waiting after this long")
    p.add_argument("--poll-seconds", type=float, default=10.0)
    p.add_argument("--mode", choices=FEEDBACK_MODES, default="union")
    p.add_argument("--simulate", nargs="?", const="rect", choices=SIMULATED_KINDS, default=None,
                   help="annotate with a simulated annotator (rectangles or points on the true decoy)")
    p.add_argument("--miss-rate", type=float, default=0.0, help="simulated annotator misses a decoy cell")
    p.set_defaults(func=_run)


def _link_args(p) -> None:
    p.add_argument("run_dir", type=Path)
    p.add_argument("--project-title", default=None, help="default: 'hitl <run name>'")
    p.add_argument("--document-root", default=None, help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT")
    p.add_argument("--data-uri", action="store_true", default=None, help="inline images instead of local files")


def _open(args, *, linking: bool = True):
    from trainer.run import Run

    run = Run.open(args.run_dir)
    client = connect()
    url = os.environ["LABEL_STUDIO_URL"]  # connect() has checked it is set
    if linking:
        return run, client, connect_project(run, client, url, title=args.project_title,
                                            document_root=args.document_root, data_uri=args.data_uri)
    link = read_link(run)
    if link is None:
        raise ValueError(f"run {args.run_dir} is not linked to a Label Studio project yet: run `hitl push` first")
    return run, client, link


def _push(args) -> int:
    run, client, link = _open(args)
    task_ids = push(run, client, link.project_id, document_root=link.document_root, data_uri=link.data_uri)
    print(f"round {run.current_round()}: {len(task_ids)} tasks in {link.url}/projects/{link.project_id}")
    return 0


def _pull(args) -> int:
    run, client, link = _open(args, linking=False)
    report = pull(run, client, link.project_id, mode=args.mode)
    print(f"pulled {report.summary()}; {len(report.feedback.annotated_ids())} images with a mask W")
    for error in report.errors:
        print(f"  skipped a bad annotation: {error}", file=sys.stderr)
    return 0


def _run(args) -> int:
    run, client, link = _open(args)
    try:
        run_loop(run, client, link, rounds=args.rounds, min_annotations=args.min_annotations,
                 deadline_minutes=args.deadline_minutes, poll_seconds=args.poll_seconds, simulate=args.simulate,
                 miss_rate=args.miss_rate, mode=args.mode)
    except KeyboardInterrupt:
        print(f"\ninterrupted; `hitl run {args.run_dir} --rounds {args.rounds}` resumes where this stopped",
              file=sys.stderr)
        return 130
    print(f"done: round {run.current_round()} trained ({run.model_version(run.current_round())})")
    return 0
