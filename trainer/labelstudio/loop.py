"""The Label Studio loop (``hitl run``): each round push -> annotators (or the simulated one) -> pull -> train.

``hitl run`` is resumable: checkpoints say which rounds were trained and the ledger which were pushed, so
after Ctrl-C or a crash it starts where it stopped, without pushing or training anything twice. With a
``twin`` (``Run.twin``), the no-feedback twin trains each round while annotators work on the next one.
``training_round`` is the backend's "Start Training": pull, then train one round.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

from trainer.core.checks import check_choice, check_int, check_positive
from trainer.core.feedback import Feedback
from trainer.labelstudio.annotator import parse_kinds, simulate_annotator
from trainer.labelstudio.client import fetch_annotations
from trainer.labelstudio.link import Link
from trainer.labelstudio.pull import pull
from trainer.labelstudio.push import push
from trainer.labelstudio.push_team import is_team_run, round_view_id, round_view_title
from trainer.runs.ledger import FEEDBACK_MODES, utc_timestamp
from trainer.runs.run import Run

_LOG = logging.getLogger(__name__)


def wait_for_annotations(
    client,
    project_id: int,
    task_ids: list[int],
    *,
    min_annotations: int | None = None,
    deadline_s: float | None = None,
    poll_s: float = 10.0,
    progress: bool = True,
    desc: str = "annotated",
    since: dict[int, str] | None = None,
) -> int:
    """Poll until ``min_annotations`` of ``task_ids`` have an annotation (default: all) or the deadline
    passes; how many have one. A skip counts: the annotator answered. ``since``: task id -> the time it was
    asked (``utc_timestamp``), for tasks that held answers before (a team's labels): only newer ones count."""
    tasks = set(task_ids)
    since = since or {}
    target = len(tasks) if min_annotations is None else min(min_annotations, len(tasks))
    began = time.monotonic()
    with tqdm(total=len(tasks), desc=desc, unit="task", disable=not progress, file=sys.stderr) as bar:
        while True:
            records = fetch_annotations(client, project_id)
            done = len({r.task_id for r in records if utc_timestamp(r.updated_at) >= since.get(r.task_id, "")} & tasks)
            waited = time.monotonic() - began
            bar.n = done
            bar.set_postfix(pending=len(tasks) - done, waited=f"{waited:.0f}s")
            if done >= target or (deadline_s is not None and waited >= deadline_s):
                return done
            left = poll_s if deadline_s is None else min(poll_s, max(0.0, deadline_s - waited))
            time.sleep(left)


def run_loop(
    run: Run,
    client,
    link: Link,
    *,
    rounds: int,
    min_annotations: int | None = None,
    deadline_minutes: float | None = None,
    poll_seconds: float = 10.0,
    simulate: str | None = None,
    miss_rate: float = 0.0,
    mode: str = "union",
    progress: bool = True,
    log=print,
    twin: Run | None = None,
) -> list[dict]:
    """Train until the newest checkpoint is round ``rounds``: each round push -> annotate -> pull -> train.

    Starts where the checkpoints and the ledger say the run stopped. Returns the rounds trained now.
    ``twin``: a run with the same config trained to the same round with no feedback at all, round r while
    round r's tasks wait for annotators. ``simulate``: the simulated annotator's kind(s) (``simulate_annotator``).
    """
    check_int(rounds, "rounds")
    check_choice(mode, "feedback mode", FEEDBACK_MODES)
    check_positive(poll_seconds, "poll_seconds")
    check_positive(min_annotations, "min_annotations", optional=True)
    check_positive(deadline_minutes, "deadline_minutes", optional=True)
    if simulate:
        parse_kinds(simulate)
    trained = []
    if run.current_round() < 0:
        trained.append(_train(run, None, progress, log))
    while (r := run.current_round()) < rounds:
        task_ids = push(
            run,
            client,
            link.project_id,
            round=r,
            document_root=link.document_root,
            data_uri=link.data_uri,
            progress=progress,
        )
        log(f"round {r}: {len(task_ids)} tasks in project {link.project_id} ({_tasks_url(run, client, link, r)})")
        _train_twin(twin, r, progress, log)
        if simulate:
            simulate_annotator(
                run,
                client,
                link.project_id,
                kind=simulate,
                miss_rate=miss_rate,
                task_ids=task_ids,
                seed=run.config.seed + r,
            )
        else:
            wait_for_annotations(
                client,
                link.project_id,
                task_ids,
                min_annotations=min_annotations,
                deadline_s=None if deadline_minutes is None else 60.0 * deadline_minutes,
                poll_s=poll_seconds,
                progress=progress,
                desc=f"round {r} annotated",
                since=asked_at(run, link.project_id, r),
            )
        report = pull(run, client, link.project_id, mode=mode, progress=progress)
        summary, *details = report.lines()
        log(f"round {r}: {summary}")
        for line in details:
            log(line)
        trained.append(_train(run, report.feedback, progress, log))
    _train_twin(twin, run.current_round(), progress, log)
    return trained


def asked_at(run: Run, project_id: int, round_: int) -> dict[int, str] | None:
    """Task id -> when round ``round_`` asked about it, for a run made from the project (its tasks hold the team's
    answers from before); None for tasks the run imported (every answer on them is an answer to the round)."""
    if not is_team_run(run, project_id):
        return None
    return {t.task_id: t.pushed_at for t in run.ledger.pushed_tasks(project_id, round_)}


def _tasks_url(run: Run, client, link: Link, round_: int) -> str:
    """Where annotators find the round's tasks: the project, or a team's project's tab of the round."""
    url = f"{link.url}/projects/{link.project_id}"
    view = round_view_id(client, link.project_id, run, round_) if is_team_run(run, link.project_id) else None
    return url if view is None else f"{url}/data?tab={view} (Data Manager tab {round_view_title(run, round_)!r})"


def _train_twin(twin: Run | None, round_: int, progress: bool, log) -> None:
    if twin is None:
        return
    for record in twin.train_to(round_, Feedback(), progress=progress):
        log(f"twin {json.dumps({k: record.get(k) for k in ('round', 'model_version', 'annotated', 'acc')})}")


def _train(run: Run, feedback, progress: bool, log) -> dict:
    record = run.train_next_round(feedback, progress=progress)  # also records the round and its feedback in the ledger
    summary = {k: record.get(k) for k in ("round", "model_version", "annotated", "label_fixes", "acc")}
    log(json.dumps(summary))
    return record


def training_round(run: Run | str | Path, *, label_studio=None, project_id: int | None = None,
                   progress: bool = False) -> str:  # fmt: skip
    """Pull annotations (when given a Label Studio client and project), train one round; the new model_version.
    ``run`` is a Run (its datasets and ledger stay open across rounds) or a run directory. The pull's report,
    its invalid annotations and warnings included, is logged here and kept in the ledger (``Ledger.last_pull``)."""
    run = run if isinstance(run, Run) else Run.open(run)
    if label_studio is not None and project_id is not None:
        summary, *details = pull(run, label_studio, project_id).lines()
        _LOG.info("project %s: %s", project_id, summary)
        for line in details:
            _LOG.warning("project %s: %s", project_id, line.strip())
    return run.train_next_round(progress=progress)["model_version"]
