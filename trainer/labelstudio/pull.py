"""Pull submitted annotations from Label Studio into the ledger, as grid cells, label fixes and skips.

Shape legend: G_h x G_w grid cells.

One pull is one ledger transaction: either all of it lands or none. Replaying a pull changes nothing (an
annotation is only rewritten when Label Studio's ``updated_at`` moved), an annotation edited in Label
Studio replaces its old cells, and one deleted there stops counting. A malformed annotation is reported
(task, annotation, region) and left out; the others still land.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from label_config.rasterise import parse_annotation, regions_without_cells
from trainer.core.checks import check_choice
from trainer.core.feedback import Feedback
from trainer.core.progress import progress_bar
from trainer.labelstudio.client import AnnotationRecord, fetch_annotations
from trainer.labelstudio.retry import activity
from trainer.runs.ledger import FEEDBACK_MODES, utc_timestamp
from trainer.runs.run import Run


@dataclass(frozen=True)
class PullReport:
    """What one pull did. new / updated / unchanged partition the annotations that could be read;
    ``skipped`` counts the new or updated ones that give no feedback (cancelled, or the skip choice);
    ``ignored`` tasks without a sample id (imported by someone else); ``errors`` names each bad one, and
    ``invalidated`` counts those that were valid before (their old cells stop counting); ``warnings`` names
    regions that mark no cells (a polygon or a brush stroke)."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    deleted: int = 0
    ignored: int = 0
    errors: tuple[str, ...] = ()
    invalidated: int = 0
    warnings: tuple[str, ...] = ()
    feedback: Feedback = field(default_factory=Feedback, repr=False, compare=False)

    def summary(self) -> str:
        return (f"{self.new} new, {self.updated} updated, {self.unchanged} unchanged, {self.skipped} skipped, "
                f"{self.deleted} deleted, {self.ignored} ignored, {len(self.errors)} errors "
                f"({self.invalidated} of them valid before), {len(self.warnings)} warnings")


def pull(run: Run, client, project_id: int, *, mode: str = "union", progress: bool = False) -> PullReport:
    """Bring the project's annotations into ``run.ledger``; the report carries the resulting feedback.

    mode: how several annotators of one image combine into W (``union`` or ``majority``). progress: a bar over
    the project's tasks as they are read (on a terminal only).
    """
    check_choice(mode, "feedback mode", FEEDBACK_MODES)
    with progress_bar(enabled=progress, desc="pull", unit="task") as bar, \
            activity(f"pull of project {project_id}'s annotations"):
        # network first: the ledger lock is held briefly
        records = fetch_annotations(client, project_id, progress=lambda done, total: _advance(bar, done, total))
    ledger = run.ledger
    counts = dict(new=0, updated=0, unchanged=0, skipped=0, ignored=0, invalidated=0)
    errors: list[str] = []
    warnings = [f"task {r.task_id}, annotation {r.annotation_id}: {kind} regions mark no cells (use a "
                f"rectangle or a click)" for r in records for kind in sorted(set(_region_kinds(r)))]  # fmt: skip
    with ledger.transaction():
        versions = ledger.annotation_versions()
        for record in records:
            outcome = _consume(run, record, versions, project_id)
            if isinstance(outcome, str):
                errors.append(outcome)
                if record.annotation_id in versions:  # edited into something unreadable: its old cells go
                    counts["invalidated"] += ledger.mark_deleted([record.annotation_id])
                continue
            kind, skipped = outcome
            counts[kind] += 1
            counts["skipped"] += skipped
        seen = {r.annotation_id for r in records}
        # Scoped to this project: another project of the same run is left alone.
        deleted = ledger.mark_deleted(sorted(ledger.live_annotation_ids(project_id) - seen))
    feedback = ledger.feedback(run.grid, mode)
    return PullReport(**counts, deleted=deleted, errors=tuple(errors), warnings=tuple(warnings), feedback=feedback)


def _advance(bar, done: int, total: int) -> None:
    bar.total = total
    bar.update(done - bar.n)


def _region_kinds(record: AnnotationRecord) -> list[str]:
    try:
        return regions_without_cells(record.result)
    except ValueError:  # a malformed result is reported as an error by _consume
        return []


def _consume(run: Run, record: AnnotationRecord, versions: dict[int, str], project_id: int):
    """('new' | 'updated' | 'unchanged' | 'ignored', gives no feedback) or an error message."""
    if record.sample_id is None:
        return "ignored", False
    stamp = utc_timestamp(record.updated_at)
    if versions.get(record.annotation_id) == stamp:
        return "unchanged", False
    where = f"task {record.task_id}, annotation {record.annotation_id}"
    n_train = len(run.datasets[0])
    if not 0 <= record.sample_id < n_train:
        return f"{where}: sample id {record.sample_id} is outside the training set (0..{n_train - 1})"
    try:
        parsed = parse_annotation(record.result, run.grid, run.classes, task_id=record.task_id,
                                  annotation_id=record.annotation_id)
    except ValueError as exc:
        return str(exc)
    skip = parsed.skip or record.was_cancelled
    changed = run.ledger.upsert_annotation(
        record.annotation_id, task_id=record.task_id, sample_id=record.sample_id, updated_at=stamp,
        cells=None if record.was_cancelled else parsed.cells, label_fix=parsed.label_fix, skip=parsed.skip,
        was_cancelled=record.was_cancelled, annotator=record.completed_by, project_id=project_id,
    )  # fmt: skip
    if not changed:
        return "unchanged", False
    return ("updated" if record.annotation_id in versions else "new"), skip
