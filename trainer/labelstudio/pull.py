"""Pull submitted annotations from Label Studio into the ledger, as grid cells, label fixes and skips.

Shape legend: G_h x G_w grid cells.

One pull is one ledger transaction: either all of it lands or none. Replaying a pull changes nothing (an
annotation is only rewritten when Label Studio's ``updated_at`` moved), an annotation edited in Label
Studio replaces its old cells, and one deleted there stops counting. A malformed annotation is recorded
invalid (task, annotation, reason) and left out; the others still land. Pulls of one ledger take turns
(``Ledger.pull_lock``): each reads its export and applies it before the next one reads, so an older export
never lands last. Results are rasterised before the write transaction, which stays short.

A run made from a team's project (``hitl init RUN --dataset labelstudio:PROJECT``) syncs its snapshot first
(``trainer.labelstudio.snapshot``: changed labels, newly labelled tasks) and maps the project's tasks, which carry
no sample id in their data, to their sample ids through the snapshot, so marks given there become W. Annotations
that still reach no sample id are ``ignored``, and a warning says on which tasks and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from label_config.names import SAMPLE_ID_KEY
from label_config.rasterise import AnnotationFeedback, parse_annotation, regions_without_cells
from trainer.core.checks import check_choice
from trainer.core.feedback import Feedback
from trainer.core.progress import progress_bar
from trainer.data.snapshot import SNAPSHOT_PREFIX
from trainer.labelstudio.client import AnnotationRecord, annotation_records, export_tasks
from trainer.labelstudio.retry import activity
from trainer.labelstudio.snapshot import SyncReport, sync_snapshot, test_task_ids, train_sample_ids
from trainer.runs.ledger import FEEDBACK_MODES, utc_timestamp
from trainer.runs.run import Run

COUNTS = ("new", "updated", "unchanged", "skipped", "deleted", "ignored", "invalidated")


@dataclass(frozen=True)
class InvalidAnnotation:
    """An annotation the pull could not use, and why (the reason names the task, annotation and region)."""

    task_id: int
    annotation_id: int
    reason: str


@dataclass(frozen=True)
class PullReport:
    """What one pull did. new / updated / unchanged partition the annotations that could be read;
    ``skipped`` counts the new or updated ones that give no feedback (cancelled, or the skip choice);
    ``ignored`` tasks without a sample id (imported by someone else); ``invalid`` names each bad one, and
    ``invalidated`` counts those that were valid before (their old cells stop counting); ``warnings`` names
    regions that mark no cells (a type no image tool makes, or a label that is not irrelevant-like), tasks
    ignored and the snapshot's problems; ``snapshot`` is the sync of a run made from the project (None for any
    other run)."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    deleted: int = 0
    ignored: int = 0
    invalid: tuple[InvalidAnnotation, ...] = ()
    invalidated: int = 0
    warnings: tuple[str, ...] = ()
    snapshot: SyncReport | None = field(default=None, compare=False)
    feedback: Feedback = field(default_factory=Feedback, repr=False, compare=False)

    @property
    def errors(self) -> tuple[str, ...]:
        """One line per invalid annotation."""
        return tuple(i.reason for i in self.invalid)

    def summary(self) -> str:
        return (
            f"{self.new} new, {self.updated} updated, {self.unchanged} unchanged, {self.skipped} skipped, "
            f"{self.deleted} deleted, {self.ignored} ignored, {len(self.invalid)} invalid "
            f"({self.invalidated} of them valid before), {len(self.warnings)} warnings"
        )

    def lines(self) -> list[str]:
        """The summary, then a line per invalid annotation and per warning: what ``hitl pull``, ``hitl run`` and
        the backend's "Start Training" print or log."""
        head = [f"pulled {self.summary()}"] + ([] if self.snapshot is None else [self.snapshot.lines()[0]])
        return (head + [f"  invalid annotation: {e}" for e in self.errors]
                + [f"  warning: {w}" for w in self.warnings])  # fmt: skip

    def counts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in COUNTS}


def pull(run: Run, client, project_id: int, *, mode: str = "union", progress: bool = False) -> PullReport:
    """Bring the project's annotations into ``run.ledger`` and record the pull there (``Ledger.last_pull``);
    the report carries the resulting feedback.

    mode: how several annotators of one image combine into W (``union`` or ``majority``). progress: a bar over
    the project's tasks as they are read (on a terminal only).
    """
    check_choice(mode, "feedback mode", FEEDBACK_MODES)
    ledger = run.ledger
    with ledger.pull_lock():
        started = utc_timestamp()
        with (
            progress_bar(enabled=progress, desc="pull", unit="task") as bar,
            activity(f"pull of project {project_id}'s annotations"),
        ):
            tasks = export_tasks(client, project_id)
            records = []
            for done, task in enumerate(tasks, 1):
                records += annotation_records(project_id, task)
                _advance(bar, done, len(tasks))
            records.sort(key=lambda r: (r.task_id, r.annotation_id))
            synced = _sync(run, client, project_id, tasks)
        records, ignored = _map_sample_ids(run, records, synced)
        # Only pulls write annotations and they take turns: the versions read here hold until the write below.
        parsed = _parse_changed(run, records, ledger.annotation_versions())
        warnings = [f"task {r.task_id}, annotation {r.annotation_id}: {what} mark no cells"
                    for r in records for what in sorted(set(_region_kinds(r)))]  # fmt: skip
        warnings += ignored + ([] if synced is None else synced.warnings())
        extra = [] if synced is None else [InvalidAnnotation(**i) for i in synced.invalid]
        with ledger.transaction():
            report = _apply(run, records, parsed, project_id)
            report = replace(report, warnings=tuple(warnings), invalid=report.invalid + tuple(extra), snapshot=synced)
            ledger.record_pull(project_id, started_at=started, counts=report.counts(), warnings=warnings,
                               invalid=[vars(i) for i in report.invalid])  # fmt: skip
    return replace(report, feedback=ledger.feedback(run.grid, mode))


def _sync(run: Run, client, project_id: int, tasks: list[dict]) -> SyncReport | None:
    """Sync the run's snapshot when the run was made from this project; the run then reloads its datasets."""
    if run.config.dataset != f"{SNAPSHOT_PREFIX}{project_id}":
        return None
    report = sync_snapshot(run.data_root, client, project_id, tasks)
    run.reload_datasets()
    return report


def _map_sample_ids(run: Run, records: list[AnnotationRecord], synced: SyncReport | None):
    """(records with the snapshot's sample ids on the project's tasks, a warning per kind of task ignored)."""
    ids, test = ({}, set()) if synced is None else (train_sample_ids(run.data_root), test_task_ids(run.data_root))
    records = [replace(r, sample_id=ids[r.task_id]) if r.sample_id is None and r.task_id in ids else r
               for r in records]  # fmt: skip
    lost = [r for r in records if r.sample_id is None]
    on_test = [r for r in lost if r.task_id in test]
    others = [r for r in lost if r.task_id not in test]
    warnings = []
    if on_test:
        warnings.append(f"{_tasks(on_test, 'test tasks')} ignored: test images give no feedback")
    if others and synced is None:
        warnings.append(
            f"{_tasks(others, 'tasks')} ignored: their data has no {SAMPLE_ID_KEY!r} (tasks this run did "
            "not push; to train on a team's own project: `hitl init RUN --dataset labelstudio:PROJECT`)"
        )
    elif others:
        warnings.append(f"{_tasks(others, 'tasks')} ignored: not in the snapshot (no single class label, or an "
                        "unreadable image: see the snapshot's lines)")  # fmt: skip
    return records, warnings


def _tasks(records: list[AnnotationRecord], kind: str, shown: int = 10) -> str:
    ids = sorted({r.task_id for r in records})
    head = ", ".join(map(str, ids[:shown])) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
    return f"{len(records)} annotations on {len(ids)} {kind} ({head})"


def _advance(bar, done: int, total: int) -> None:
    bar.total = total
    bar.update(done - bar.n)


def _region_kinds(record: AnnotationRecord) -> list[str]:
    try:
        return regions_without_cells(record.result)
    except ValueError:  # a malformed result is reported as invalid by _parse
        return []


def _parse_changed(run: Run, records: list[AnnotationRecord], versions: dict[int, str]) -> dict:
    """annotation id -> AnnotationFeedback or InvalidAnnotation, for our annotations whose version is new."""
    return {
        r.annotation_id: _parse(run, r)
        for r in records
        if r.sample_id is not None and versions.get(r.annotation_id) != utc_timestamp(r.updated_at)
    }


def _parse(run: Run, record: AnnotationRecord) -> AnnotationFeedback | InvalidAnnotation:
    where = f"task {record.task_id}, annotation {record.annotation_id}"
    n_train = len(run.datasets[0])
    if not 0 <= record.sample_id < n_train:
        return InvalidAnnotation(
            record.task_id,
            record.annotation_id,
            f"{where}: sample id {record.sample_id} is outside the training set (0..{n_train - 1})",
        )
    try:
        return parse_annotation(
            record.result, run.grid, run.classes, task_id=record.task_id, annotation_id=record.annotation_id
        )
    except ValueError as exc:
        return InvalidAnnotation(record.task_id, record.annotation_id, str(exc))
    except (TypeError, ArithmeticError) as exc:  # a shape the validation missed: still only this annotation's loss
        return InvalidAnnotation(record.task_id, record.annotation_id, f"{where}: unreadable result "
                                 f"({type(exc).__name__}: {str(exc)[:200]})")  # fmt: skip


def _apply(run: Run, records: list[AnnotationRecord], parsed: dict, project_id: int) -> PullReport:
    """Write the parsed annotations and mark the vanished ones deleted; inside the pull's transaction."""
    ledger = run.ledger
    versions = ledger.annotation_versions()
    counts = dict(new=0, updated=0, unchanged=0, skipped=0, ignored=0, invalidated=0)
    invalid: list[InvalidAnnotation] = []
    for record in records:
        outcome = _consume(run, record, versions, project_id, parsed)
        if isinstance(outcome, InvalidAnnotation):
            invalid.append(outcome)
            if record.annotation_id in versions:  # edited into something unreadable: its old cells go
                counts["invalidated"] += ledger.mark_deleted([record.annotation_id])
            continue
        kind, skipped = outcome
        counts[kind] += 1
        counts["skipped"] += skipped
    seen = {r.annotation_id for r in records}
    # Scoped to this project: another project of the same run is left alone.
    deleted = ledger.mark_deleted(sorted(ledger.live_annotation_ids(project_id) - seen))
    return PullReport(**counts, deleted=deleted, invalid=tuple(invalid))


def _consume(run: Run, record: AnnotationRecord, versions: dict[int, str], project_id: int, parsed: dict):
    """('new' | 'updated' | 'unchanged' | 'ignored', gives no feedback) or an InvalidAnnotation."""
    if record.sample_id is None:
        return "ignored", False
    stamp = utc_timestamp(record.updated_at)
    if versions.get(record.annotation_id) == stamp:
        return "unchanged", False
    # Parsed before the transaction as a rule; here only if another writer changed the versions meanwhile.
    result = parsed[record.annotation_id] if record.annotation_id in parsed else _parse(run, record)
    if isinstance(result, InvalidAnnotation):
        return result
    skip = result.skip or record.was_cancelled
    changed = run.ledger.upsert_annotation(
        record.annotation_id, task_id=record.task_id, sample_id=record.sample_id, updated_at=stamp,
        cells=None if record.was_cancelled else result.cells, label_fix=result.label_fix, skip=result.skip,
        was_cancelled=record.was_cancelled, annotator=record.completed_by, project_id=project_id,
    )  # fmt: skip
    if not changed:
        return "unchanged", False
    return ("updated" if record.annotation_id in versions else "new"), skip
