"""``hitl status``: where a run stands, for the people who run it and the teams who annotate for it.

``summarise`` is pure: pushed tasks and answers (from Label Studio when it answers, else from the ledger as of
the last pull) in, a ``RunStatus`` out. ``gather`` is the I/O edge that reads the ledger, the run's lock,
Label Studio and the ML backend's ``/health``; whatever of those cannot be reached is named in the status,
never raised.

Units: times in seconds (Label Studio's annotation ``lead_time``), budget in images.
"""

from __future__ import annotations

import json
import os
import statistics
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace

from label_config.rasterise import annotation_choices
from trainer.labelstudio.client import (
    LABEL_STUDIO_ERRORS,
    AnnotationRecord,
    connect,
    fetch_annotations,
    ml_backend_urls,
    user_emails,
)
from trainer.labelstudio.link import read_link
from trainer.labelstudio.push_team import is_team_run
from trainer.runs.ledger import LedgerAnnotation, PushedTask, utc_timestamp
from trainer.runs.run import Run

BACKEND_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Answer:
    """One annotation reduced to what the status counts. ``skip``: the Skip button (cancelled) or the skip
    choice; ``label_correction``: it names a correct label (the label is wrong)."""

    annotation_id: int
    task_id: int
    annotator: int | None
    skip: bool
    label_correction: bool
    lead_time: float | None
    updated_at: str


@dataclass(frozen=True)
class RoundStatus:
    """One round's tasks: ``pushed`` = ``annotated`` + ``skipped`` + ``pending``. A task is annotated when some
    answer gives feedback, skipped when every answer is a skip. ``label_corrections`` counts annotations.
    ``model_version`` and ``acc`` (test accuracy, 0-1) are those of the model trained in this round."""

    round: int
    pushed: int
    annotated: int
    skipped: int
    pending: int
    label_corrections: int
    model_version: str | None = None
    acc: float | None = None


@dataclass(frozen=True)
class AnnotatorStatus:
    """One annotator's answers on the run's tasks; ``median_lead_time_s`` over those that carry a time."""

    annotator: int | None
    name: str | None
    annotations: int
    skipped: int
    label_corrections: int
    median_lead_time_s: float | None


@dataclass(frozen=True)
class BudgetStatus:
    """Images annotated against the budget: ``per_round`` images (the run config's ``sampling.per_round``)
    times ``rounds`` feedback rounds (``hitl run --rounds``; by default the rounds pushed so far)."""

    annotated_images: int
    per_round: int
    rounds: int

    @property
    def images(self) -> int:
        return self.per_round * self.rounds

    @property
    def spent(self) -> float:
        """Share of the budget spent, 0-1 (more than 1 when annotators answered more than was asked)."""
        return self.annotated_images / self.images if self.images else 0.0


@dataclass(frozen=True)
class LabelStudioStatus:
    """Where the counts come from. ``message`` says why Label Studio was not read (not linked, not configured,
    unreachable); ``not_pulled``: its annotations that are new or edited since the last pull."""

    url: str | None
    project_id: int | None
    reachable: bool
    message: str | None = None
    not_pulled: int | None = None


@dataclass(frozen=True)
class BackendStatus:
    """The ML backend's ``/health``: its model_version and training state, or why it did not answer."""

    url: str
    model_version: str | None = None
    training: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class RunStatus:
    run: str
    counts_from: str  # "label-studio" or "ledger" (as of the last pull)
    rounds: list[RoundStatus]
    annotators: list[AnnotatorStatus]
    budget: BudgetStatus
    training: bool  # a round is training now (the run's train.lock is held)
    training_pid: int | None
    model_version: str | None  # the newest checkpoint's
    label_studio: LabelStudioStatus
    backend: BackendStatus | None = None
    last_pull: dict | None = None  # Ledger.last_pull: counts, invalid annotations and warnings of the newest pull

    def to_dict(self) -> dict:
        out = asdict(self)
        out["budget"].update(images=self.budget.images, spent=self.budget.spent)
        return out


def answers_from_label_studio(records: Iterable[AnnotationRecord]) -> list[Answer]:
    """Answers from Label Studio's annotations (tasks without a sample id are not ours: left out)."""
    out = []
    for r in records:
        if r.sample_id is None:
            continue
        try:
            choices = annotation_choices(r.result)
            skip, correction = choices.skip, choices.correct_label is not None
        except ValueError:  # unreadable choices: pull reports it; here it still counts as an answer
            skip, correction = False, False
        out.append(Answer(r.annotation_id, r.task_id, r.completed_by, r.was_cancelled or skip, correction,
                          r.lead_time, utc_timestamp(r.updated_at)))  # fmt: skip
    return out


def answers_from_ledger(rows: Iterable[LedgerAnnotation]) -> list[Answer]:
    """Answers as the ledger consumed them (no lead times: the ledger does not keep them)."""
    return [Answer(a.annotation_id, a.task_id, a.annotator, a.skip or a.was_cancelled, a.label_fix is not None,
                   None, a.updated_at) for a in rows]  # fmt: skip


def summarise(*, run: str, pushed: Sequence[PushedTask], answers: Sequence[Answer], counts_from: str,
              trained: Sequence[dict], per_round: int, budget_rounds: int | None, label_studio: LabelStudioStatus,
              training_pid: int | None = None, model_version: str | None = None, users: dict[int, str] | None = None,
              backend: BackendStatus | None = None, last_pull: dict | None = None,
              since_pushed: bool = False) -> RunStatus:  # fmt: skip
    """The status from its facts. pushed: the ledger's tasks; answers: on any task (those not pushed are left
    out); trained: the ledger's rounds (``round``, ``model_version``, ``metrics``). ``since_pushed``: only answers
    given since their task was pushed count (a team's project, whose tasks hold the team's labels from before)."""
    round_of = {t.task_id: t.round for t in pushed}
    pushed_at = {t.task_id: t.pushed_at for t in pushed}
    answers = [
        a for a in answers if a.task_id in round_of and (not since_pushed or a.updated_at >= pushed_at[a.task_id])
    ]
    by_task: dict[int, list[Answer]] = {}
    for a in answers:
        by_task.setdefault(a.task_id, []).append(a)
    models = {r["round"]: r for r in trained}
    rounds = []
    for round_ in sorted(set(round_of.values()) | set(models)):
        tasks = [t for t, r in round_of.items() if r == round_]
        annotated = sum(any(not a.skip for a in by_task.get(t, [])) for t in tasks)
        answered = sum(bool(by_task.get(t)) for t in tasks)
        model = models.get(round_, {})
        rounds.append(
            RoundStatus(
                round=round_,
                pushed=len(tasks),
                annotated=annotated,
                skipped=answered - annotated,
                pending=len(tasks) - answered,
                label_corrections=sum(a.label_correction for t in tasks for a in by_task.get(t, [])),
                model_version=model.get("model_version"),
                acc=(model.get("metrics") or {}).get("acc"),
            )
        )
    sample_of = {t.task_id: t.sample_id for t in pushed}
    images = {sample_of[a.task_id] for a in answers if not a.skip}
    pushed_rounds = len(set(round_of.values()))
    budget = BudgetStatus(annotated_images=len(images), per_round=per_round,
                          rounds=budget_rounds if budget_rounds is not None else pushed_rounds)  # fmt: skip
    return RunStatus(run=run, counts_from=counts_from, rounds=rounds, annotators=_annotators(answers, users or {}),
                     budget=budget, training=training_pid is not None, training_pid=training_pid,
                     model_version=model_version, label_studio=label_studio, backend=backend,
                     last_pull=last_pull)  # fmt: skip


def _annotators(answers: Sequence[Answer], users: dict[int, str]) -> list[AnnotatorStatus]:
    by_user: dict[int | None, list[Answer]] = {}
    for a in answers:
        by_user.setdefault(a.annotator, []).append(a)
    out = []
    for user, mine in sorted(by_user.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        times = [a.lead_time for a in mine if a.lead_time is not None]
        out.append(AnnotatorStatus(
            annotator=user, name=users.get(user) if user is not None else None, annotations=len(mine),
            skipped=sum(a.skip for a in mine), label_corrections=sum(a.label_correction for a in mine),
            median_lead_time_s=statistics.median(times) if times else None,
        ))  # fmt: skip
    return out


def not_pulled(records: Iterable[AnnotationRecord], pulled: Iterable[LedgerAnnotation]) -> int:
    """Label Studio annotations of our tasks that the ledger lacks or holds in an older version."""
    versions = {a.annotation_id: a.updated_at for a in pulled}
    return sum(versions.get(r.annotation_id) != utc_timestamp(r.updated_at) for r in records if r.sample_id is not None)


def gather(run: Run, *, api_key: str | None = None, backend_url: str | None = None, budget_rounds: int | None = None,
           timeout: float = 10.0) -> RunStatus:  # fmt: skip
    """Read every source of the status: the ledger, the run's lock, Label Studio (the linked project, with
    ``api_key`` or ``LABEL_STUDIO_API_KEY``) and the backend (``backend_url``, else the project's connected ML
    backend). A source that cannot be read is named in the result; nothing here raises for it."""
    link = read_link(run)
    project_id = None if link is None else link.project_id
    ledger = run.ledger
    pushed, pulled = ledger.pushed_tasks(project_id), ledger.annotations(project_id)
    team = project_id is not None and is_team_run(run, project_id)
    answers, counts_from, users, backends = answers_from_ledger(pulled), "ledger", {}, []
    if link is None:
        ls = LabelStudioStatus(None, None, False, "the run is not linked to a Label Studio project yet (`hitl push` "
                               "links it): counts are from the ledger")  # fmt: skip
    else:
        try:
            client = connect(link.url, api_key or os.environ.get("LABEL_STUDIO_API_KEY"), timeout=timeout)
            records = fetch_annotations(client, link.project_id)
        except ValueError as exc:  # not configured
            ls = LabelStudioStatus(link.url, project_id, False, f"{exc}; counts are from the ledger (last pull)")
        except LABEL_STUDIO_ERRORS as exc:
            why = "refused the request" if getattr(exc, "status_code", None) else "is unreachable"
            ls = LabelStudioStatus(link.url, project_id, False, f"Label Studio at {link.url} {why} "
                                   f"({_describe(exc)}); counts are from the ledger as of the last pull")  # fmt: skip
        else:
            if team:  # the team's tasks carry no sample id in their data: the ledger's, for the tasks pushed
                sample_of = {t.task_id: t.sample_id for t in pushed}
                records = [replace(r, sample_id=sample_of[r.task_id]) for r in records if r.task_id in sample_of]
            answers, counts_from = answers_from_label_studio(records), "label-studio"
            ls = LabelStudioStatus(link.url, project_id, True, not_pulled=not_pulled(records, pulled))
            users, backends = (
                _optional(user_emails, client, default={}),
                _optional(ml_backend_urls, client, link.project_id, default=[]),
            )
    url = backend_url or (backends[0] if backends else None)
    current = run.current_round()
    return summarise(
        run=run.name, pushed=pushed, answers=answers, counts_from=counts_from, trained=_trained(run),
        per_round=run.config.sampling.per_round, budget_rounds=budget_rounds, label_studio=ls,
        training_pid=run.training_pid(), model_version=run.model_version(current) if current >= 0 else None,
        users=users, backend=None if url is None else backend_health(url), last_pull=ledger.last_pull(project_id),
        since_pushed=team,
    )  # fmt: skip


def _trained(run: Run) -> list[dict]:
    """The ledger's rounds; a round's accuracy from the history when the ledger has none (a run whose
    ledger was started after the round trained)."""
    acc = {h["round"]: h.get("acc") for h in run.history()}
    out = []
    for r in run.ledger.rounds():
        metrics = r["metrics"] if r["metrics"].get("acc") is not None else {**r["metrics"], "acc": acc.get(r["round"])}
        out.append({**r, "metrics": metrics})
    return out


def _optional(read, *args, default):
    """Annotator names and the connected backend are extras: a token that may not list them costs only them."""
    try:
        return read(*args)
    except LABEL_STUDIO_ERRORS:
        return default


def backend_health(url: str, *, timeout: float = BACKEND_TIMEOUT_S) -> BackendStatus:
    """The backend's model_version and training state from ``GET <url>/health``, or what went wrong."""
    url = url.rstrip("/")
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return BackendStatus(url, error=f"/health answered {exc.code} {exc.reason}")
    except (OSError, ValueError) as exc:
        return BackendStatus(url, error=f"/health failed: {_describe(exc)}")
    training = body.get("training") if isinstance(body, dict) else None
    return BackendStatus(url, model_version=body.get("model_version"),
                         training=training.get("state") if isinstance(training, dict) else None)  # fmt: skip


def _describe(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc).strip()
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}" + (f" {status}" if status else "") + (f": {text[:200]}" if text else "")
