"""The ledger: one embedded SQLite file per run, the single record of what was pushed, pulled and used.

Shape legend: G_h x G_w grid cells.

Tables: ``meta`` (schema version), ``rounds``, ``pushed_tasks`` (Label Studio task <-> sample id per
round), ``annotations`` (consumed Label Studio annotations, cells bit-packed), ``round_feedback`` (the
per-sample feedback a round trained with) and ``pulls`` (each pull's counts, invalid annotations and
warnings). Every write is one transaction, and ``transaction()`` groups several writes into one, so a crash
between pulling and training leaves either all of a pull or none of it. Replaying the same pull changes nothing:
an annotation is only replaced by a newer ``updated_at``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from label_config.grid import Grid
from label_config.rasterise import combine_cells
from trainer.core.feedback import Feedback
from trainer.runs.locks import pid_lock

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 300.0  # a pull of 10,000 annotations holds the write lock for seconds; SQLite's default is 5
FEEDBACK_MODES = ("union", "majority")
PULL_LOCK_WAIT_S = 900.0  # a pull of 10,000 annotations reads its export for about 25 s; a stuck one is named
LISTED = 20  # invalid annotations and warnings kept per pull (the counts keep the totals)
LINE_CHARS = 300
PULLS_KEPT = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, model_version TEXT NOT NULL,
    started_at TEXT, finished_at TEXT, metrics TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS pushed_tasks (
    project_id INTEGER NOT NULL, task_id INTEGER NOT NULL, sample_id INTEGER NOT NULL,
    round INTEGER NOT NULL, pushed_at TEXT NOT NULL,
    UNIQUE (project_id, sample_id, round), UNIQUE (project_id, task_id));
CREATE TABLE IF NOT EXISTS annotations (
    annotation_id INTEGER PRIMARY KEY, project_id INTEGER, task_id INTEGER NOT NULL,
    sample_id INTEGER NOT NULL, updated_at TEXT NOT NULL, annotator INTEGER,
    cells_rows INTEGER, cells_cols INTEGER, cells BLOB, label_fix INTEGER,
    skip INTEGER NOT NULL DEFAULT 0, was_cancelled INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0, consumed_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS annotations_sample ON annotations (sample_id);
CREATE TABLE IF NOT EXISTS round_feedback (
    round INTEGER NOT NULL, sample_id INTEGER NOT NULL, cells_rows INTEGER, cells_cols INTEGER,
    cells BLOB, label_fix INTEGER, skipped INTEGER NOT NULL, PRIMARY KEY (round, sample_id));
CREATE TABLE IF NOT EXISTS pulls (
    pull INTEGER PRIMARY KEY AUTOINCREMENT, project_id INTEGER NOT NULL, started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL, report TEXT NOT NULL);
"""


@dataclass(frozen=True)
class PushedTask:
    project_id: int
    task_id: int
    sample_id: int
    round: int
    pushed_at: str


@dataclass(frozen=True)
class Question:
    """One pushed task and what came back for it: live answers (not skipped), skips or cancellations, whether
    an answer marked cells, whether one fixed the label."""

    round: int
    sample_id: int
    answers: int
    skips: int
    marked: bool
    label_fix: bool


@dataclass(frozen=True)
class LedgerAnnotation:
    """One consumed annotation as the ledger holds it (cells left packed: counting needs none of them).
    ``updated_at`` is Label Studio's, as ``utc_timestamp`` writes it; ``annotator`` is its user id."""

    annotation_id: int
    project_id: int | None
    task_id: int
    sample_id: int
    updated_at: str
    annotator: int | None
    has_cells: bool
    label_fix: int | None
    skip: bool
    was_cancelled: bool


def utc_timestamp(value: datetime | str | None = None) -> str:
    """ISO 8601 UTC with microseconds (``2024-01-02T03:04:05.000006Z``): sorts as text, as in SQL."""
    if value is None:
        value = datetime.now(timezone.utc)
    elif isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise ValueError(f"expected a datetime or ISO 8601 string, got {value!r}")
    if value.tzinfo is None:
        raise ValueError(f"timestamp {value.isoformat()} has no time zone")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pack_cells(cells: np.ndarray) -> tuple[int, int, bytes]:
    """(G_h, G_w) bool -> (G_h, G_w, packed bits)."""
    cells = np.asarray(cells)
    if cells.ndim != 2 or cells.dtype != bool:
        raise ValueError(f"cells must be a 2-D bool array, got dtype {cells.dtype} shape {cells.shape}")
    return cells.shape[0], cells.shape[1], np.packbits(cells, axis=None).tobytes()


def unpack_cells(rows: int, cols: int, packed: bytes) -> np.ndarray:
    """Inverse of ``pack_cells``; returns (G_h, G_w) bool."""
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=rows * cols)
    return bits.reshape(rows, cols).astype(bool)


class Ledger:
    """The run's SQLite ledger: ``path`` is a ``.sqlite`` file, or a run directory (``<dir>/ledger.sqlite``)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.path = path / "ledger.sqlite" if path.is_dir() or not path.suffix else path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: we issue BEGIN/COMMIT ourselves so a transaction spans exactly what we say.
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
        )  # another process's large pull: wait, do not fail
        self._lock = threading.RLock()
        self._depth = 0
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        # executescript would commit an open transaction first, so the script carries its own.
        self._conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        with self.transaction():
            self._check_schema_version()

    def _check_schema_version(self) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise ValueError(f"ledger {self.path} has schema version {row[0]}, this code reads {SCHEMA_VERSION}")

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        # One connection serves every thread (the backend trains in the background): serialise use.
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    @property
    def schema_version(self) -> int:
        return int(self._query("SELECT value FROM meta WHERE key='schema_version'")[0][0])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes inside commit together or not at all; nested calls join the outer transaction."""
        with self._lock:
            if self._depth == 0:
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self._conn
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                self._conn.execute("COMMIT")

    # -- rounds ----------------------------------------------------------------------------------
    def record_round(
        self, round: int, model_version: str, *, started_at=None, finished_at=None, metrics: dict | None = None
    ) -> None:
        """Insert or update a round; fields left as None keep their stored value."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO rounds (round, model_version) VALUES (?, ?)", (round, model_version))
            db.execute(
                "UPDATE rounds SET model_version=?, started_at=COALESCE(?, started_at),"
                " finished_at=COALESCE(?, finished_at), metrics=COALESCE(?, metrics) WHERE round=?",
                (
                    model_version,
                    started_at and utc_timestamp(started_at),
                    finished_at and utc_timestamp(finished_at),
                    None if metrics is None else json.dumps(metrics, sort_keys=True),
                    round,
                ),
            )

    def rounds(self) -> list[dict]:
        rows = self._query("SELECT round, model_version, started_at, finished_at, metrics FROM rounds ORDER BY round")
        keys = ("round", "model_version", "started_at", "finished_at", "metrics")
        return [dict(zip(keys, r[:4] + (json.loads(r[4]),))) for r in rows]

    # -- pushed tasks ------------------------------------------------------------------------------
    def record_pushed(self, project_id: int, round: int, pairs: Iterable[tuple[int, int]], *, pushed_at=None) -> int:
        """Record ``(task_id, sample_id)`` pairs pushed in ``round``; returns how many were new."""
        stamp = utc_timestamp(pushed_at)
        with self.transaction() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO pushed_tasks VALUES (?, ?, ?, ?, ?)",
                [(project_id, int(t), int(s), round, stamp) for t, s in pairs],
            )
            return db.total_changes - before

    def pushed_tasks(self, project_id: int | None, round: int | None = None) -> list[PushedTask]:
        """The tasks pushed to ``project_id`` (None: to any project), in ``round`` (None: any round)."""
        where = [(c, v) for c, v in (("project_id", project_id), ("round", round)) if v is not None]
        sql = "SELECT * FROM pushed_tasks" + (" WHERE " + " AND ".join(f"{c}=?" for c, _ in where) if where else "")
        return [PushedTask(*r) for r in self._query(sql + " ORDER BY task_id", tuple(v for _, v in where))]

    def pushed_sample_ids(self, project_id: int, round: int | None = None) -> set[int]:
        return {t.sample_id for t in self.pushed_tasks(project_id, round)}

    def questions(self) -> list[Question]:
        """Every pushed task of every project with its live annotations summed up, by round and sample id."""
        rows = self._query(
            "SELECT p.round, p.sample_id,"
            " COALESCE(SUM(a.annotation_id IS NOT NULL AND a.skip = 0 AND a.was_cancelled = 0), 0),"
            " COALESCE(SUM(a.skip = 1 OR a.was_cancelled = 1), 0),"
            " COALESCE(MAX(a.cells IS NOT NULL AND a.skip = 0 AND a.was_cancelled = 0), 0),"
            " COALESCE(MAX(a.label_fix IS NOT NULL), 0)"
            " FROM pushed_tasks p LEFT JOIN annotations a ON a.task_id = p.task_id AND a.deleted = 0"
            " AND (a.project_id IS NULL OR a.project_id = p.project_id)"
            " GROUP BY p.project_id, p.task_id ORDER BY p.round, p.sample_id"
        )
        return [Question(r, s, int(n), int(k), bool(m), bool(f)) for r, s, n, k, m, f in rows]

    # -- annotations --------------------------------------------------------------------------------
    def upsert_annotation(
        self,
        annotation_id: int,
        *,
        task_id: int,
        sample_id: int,
        updated_at,
        cells: np.ndarray | None = None,
        label_fix: int | None = None,
        skip: bool = False,
        was_cancelled: bool = False,
        annotator: int | None = None,
        project_id: int | None = None,
    ) -> bool:
        """Store a consumed annotation; an existing one is replaced only by a newer ``updated_at``.

        ``cells``: (G_h, G_w) bool, the cells marked irrelevant (None when the annotation gives none).
        Returns True when the ledger changed.
        """
        stamp = utc_timestamp(updated_at)
        rows, cols, packed = pack_cells(cells) if cells is not None else (None, None, None)
        with self.transaction() as db:
            old = db.execute(
                "SELECT updated_at, deleted FROM annotations WHERE annotation_id=?", (annotation_id,)
            ).fetchone()
            if old is not None and old[0] >= stamp and not old[1]:
                return False
            db.execute(
                "INSERT OR REPLACE INTO annotations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,0,?)",
                (
                    annotation_id,
                    project_id,
                    task_id,
                    sample_id,
                    stamp,
                    annotator,
                    rows,
                    cols,
                    packed,
                    label_fix,
                    int(bool(skip)),
                    int(bool(was_cancelled)),
                    utc_timestamp(),
                ),
            )
            return True

    def mark_deleted(self, annotation_ids: Iterable[int]) -> int:
        """Mark annotations deleted in Label Studio; they stop counting. Returns how many changed."""
        with self.transaction() as db:
            before = db.total_changes
            db.executemany(
                "UPDATE annotations SET deleted=1 WHERE annotation_id=? AND deleted=0",
                [(int(a),) for a in annotation_ids],
            )
            return db.total_changes - before

    def live_annotation_ids(self, project_id: int) -> set[int]:
        """Annotation ids of one project that still count (not deleted in Label Studio)."""
        sql = "SELECT annotation_id FROM annotations WHERE deleted=0 AND project_id=?"
        return {r[0] for r in self._query(sql, (int(project_id),))}

    def consumed_annotation_ids(self, *, include_deleted: bool = False) -> set[int]:
        sql = "SELECT annotation_id FROM annotations" + ("" if include_deleted else " WHERE deleted=0")
        return {r[0] for r in self._query(sql)}

    def annotations(self, project_id: int | None = None) -> list[LedgerAnnotation]:
        """The live consumed annotations (of ``project_id``, or of every project), by annotation id."""
        sql = (
            "SELECT annotation_id, project_id, task_id, sample_id, updated_at, annotator, cells IS NOT NULL,"
            " label_fix, skip, was_cancelled FROM annotations WHERE deleted=0"
            + ("" if project_id is None else " AND project_id=?")
            + " ORDER BY annotation_id"
        )
        rows = self._query(sql, () if project_id is None else (int(project_id),))
        return [LedgerAnnotation(*r[:6], bool(r[6]), r[7], bool(r[8]), bool(r[9])) for r in rows]

    def annotation_versions(self) -> dict[int, str]:
        """annotation id -> stored ``updated_at`` (live annotations only): what a pull can skip."""
        return dict(self._query("SELECT annotation_id, updated_at FROM annotations WHERE deleted=0"))

    # -- pulls ----------------------------------------------------------------------------------------
    @contextmanager
    def pull_lock(self, *, wait_s: float = PULL_LOCK_WAIT_S) -> Iterator[None]:
        """One pull at a time per ledger, across threads and processes (``<ledger>.pull-lock``, flock): a pull
        reads Label Studio's export and applies it under this lock, so an older export never lands after a
        newer one. Other writers (push, training) only wait for the short write transaction, as before."""
        path = self.path.with_name(self.path.name + ".pull-lock")

        def busy(holder: str) -> TimeoutError:
            return TimeoutError(f"another pull into {self.path} (pid {holder}) has held {path.name} for over "
                                f"{wait_s:.0f} s")  # fmt: skip

        with pid_lock(path, busy, wait_s=wait_s):
            yield

    def record_pull(
        self, project_id: int, *, started_at, counts: dict[str, int], invalid: Iterable[dict], warnings: Iterable[str]
    ) -> None:
        """Store one pull's outcome, bounded: the counts, and the first ``LISTED`` invalid annotations
        (``task_id``, ``annotation_id``, ``reason``) and warnings, each line cut to ``LINE_CHARS``."""
        invalid, warnings = list(invalid), list(warnings)
        report = {
            "counts": {**{k: int(v) for k, v in counts.items()}, "invalid": len(invalid), "warnings": len(warnings)},
            "invalid": [{"task_id": int(i["task_id"]), "annotation_id": int(i["annotation_id"]),
                         "reason": str(i["reason"])[:LINE_CHARS]} for i in invalid[:LISTED]],
            "warnings": [str(w)[:LINE_CHARS] for w in warnings[:LISTED]],
        }  # fmt: skip
        with self.transaction() as db:
            db.execute(
                "INSERT INTO pulls (project_id, started_at, finished_at, report) VALUES (?, ?, ?, ?)",
                (int(project_id), utc_timestamp(started_at), utc_timestamp(), json.dumps(report)),
            )
            db.execute("DELETE FROM pulls WHERE pull <= (SELECT MAX(pull) FROM pulls) - ?", (PULLS_KEPT,))

    def last_pull(self, project_id: int | None = None) -> dict | None:
        """The newest pull (of ``project_id``, or of any project) as JSON-ready data, None before the first:
        ``{"project_id", "started_at", "finished_at", "counts": {new, updated, unchanged, skipped, deleted,
        ignored, invalidated, invalid, warnings}, "invalid": [{"task_id", "annotation_id", "reason"}, ...],
        "warnings": [str, ...]}``, the two lists cut to their first ``LISTED``."""
        sql = (
            "SELECT project_id, started_at, finished_at, report FROM pulls"
            + ("" if project_id is None else " WHERE project_id=?")
            + " ORDER BY pull DESC LIMIT 1"
        )
        rows = self._query(sql, () if project_id is None else (int(project_id),))
        if not rows:
            return None
        project, started, finished, report = rows[0]
        return {"project_id": project, "started_at": started, "finished_at": finished, **json.loads(report)}

    # -- feedback -------------------------------------------------------------------------------------
    def feedback(self, grid: Grid, mode: str = "union", *, project_id: int | None = None) -> Feedback:
        """Per-sample feedback from the live consumed annotations.

        Skips and cancelled annotations count for nothing but mark a sample ``skipped`` when it has no
        other annotation. ``union``: a cell is in W if any annotator marked it, the latest label fix wins.
        ``majority``: a cell is in W if more than half of the sample's annotations marked it, the most
        common label fix wins (ties: the latest).
        """
        if mode not in FEEDBACK_MODES:
            raise ValueError(f"mode must be one of {FEEDBACK_MODES}, got {mode!r}")
        sql = (
            "SELECT sample_id, cells_rows, cells_cols, cells, label_fix, skip OR was_cancelled"
            " FROM annotations WHERE deleted=0"
            + ("" if project_id is None else " AND project_id=?")
            + " ORDER BY sample_id, updated_at, annotation_id"
        )
        by_sample: dict[int, list[tuple]] = {}
        for row in self._query(sql, () if project_id is None else (project_id,)):
            by_sample.setdefault(row[0], []).append(row[1:])
        out = Feedback()
        for sample_id, rows in by_sample.items():
            given = [r for r in rows if not r[4]]
            if not given:
                out.skipped.add(sample_id)
                continue
            if any(r[2] is not None for r in given):
                # An annotation without cells is a vote for none: it counts in the majority's denominator.
                none = np.zeros(grid.shape, dtype=bool)
                votes = [none if r[2] is None else self._cells_for(grid, sample_id, r) for r in given]
                out.cells[sample_id] = combine_cells(votes, mode=mode)
            fixes = [r[3] for r in given if r[3] is not None]
            if fixes:
                out.labels[sample_id] = fixes[-1] if mode == "union" else _most_common_latest(fixes)
        return out

    @staticmethod
    def _cells_for(grid: Grid, sample_id: int, row: tuple) -> np.ndarray:
        rows, cols, packed = row[0], row[1], row[2]
        if (rows, cols) != grid.shape:
            raise ValueError(
                f"sample {sample_id} has {rows}x{cols} cells stored, the grid is {grid.shape[0]}x{grid.shape[1]}"
            )
        return unpack_cells(rows, cols, packed)

    def record_feedback(self, round: int, feedback: Feedback) -> None:
        """Store the feedback ``round`` trained with (replacing any earlier record for that round)."""
        ids = sorted(feedback.given_ids())
        rows = []
        for i in ids:
            r, c, packed = pack_cells(feedback.cells[i]) if i in feedback.cells else (None, None, None)
            rows.append((round, i, r, c, packed, feedback.labels.get(i), int(i in feedback.skipped)))
        with self.transaction() as db:
            db.execute("DELETE FROM round_feedback WHERE round=?", (round,))
            db.executemany("INSERT INTO round_feedback VALUES (?,?,?,?,?,?,?)", rows)

    def round_feedback(self, round: int) -> Feedback:
        out = Feedback()
        for sample_id, r, c, packed, label, skipped in self._query(
            "SELECT sample_id, cells_rows, cells_cols, cells, label_fix, skipped FROM round_feedback"
            " WHERE round=? ORDER BY sample_id",
            (round,),
        ):
            if packed is not None:
                out.cells[sample_id] = unpack_cells(r, c, packed)
            if label is not None:
                out.labels[sample_id] = label
            if skipped:
                out.skipped.add(sample_id)
        return out


def _most_common_latest(values: list[int]) -> int:
    """The most common value; among equally common ones, the one seen last."""
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in reversed(values) if counts[v] == best)
