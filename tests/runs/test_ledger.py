"""The SQLite ledger: compact cells, idempotent writes, union/majority feedback, atomic transactions."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from label_config.grid import Grid
from trainer.runs.ledger import (
    LINE_CHARS,
    LISTED,
    PULLS_KEPT,
    SCHEMA_VERSION,
    Ledger,
    pack_cells,
    unpack_cells,
    utc_timestamp,
)

GRID = Grid(28, 28, 4, 4)
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def cells_at(*coords, shape=GRID.shape):
    cells = np.zeros(shape, dtype=bool)
    for r, c in coords:
        cells[r, c] = True
    return cells


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "run") as led:
        yield led


def add(ledger, annotation_id, sample_id, cells=None, *, minutes=0, **kw):
    return ledger.upsert_annotation(
        annotation_id,
        task_id=100 + sample_id,
        sample_id=sample_id,
        updated_at=T0 + timedelta(minutes=minutes),
        cells=cells,
        **kw,
    )


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 7), (4, 4), (28, 28), (2, 9)])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_packbits_round_trip(shape, density):
    cells = np.random.default_rng(0).random(shape) < density
    rows, cols, packed = pack_cells(cells)
    assert (rows, cols) == shape
    assert len(packed) == -(-cells.size // 8)
    np.testing.assert_array_equal(unpack_cells(rows, cols, packed), cells)


@pytest.mark.parametrize("bad", [np.zeros((2, 2), dtype=np.uint8), np.zeros(4, dtype=bool), np.zeros((1, 2, 2), bool)])
def test_pack_cells_rejects_non_bool_or_non_2d(bad):
    with pytest.raises(ValueError, match="2-D bool"):
        pack_cells(bad)


def test_run_directory_holds_wal_mode_versioned_file(tmp_path):
    led = Ledger(tmp_path / "run")
    assert led.path == tmp_path / "run" / "ledger.sqlite"
    assert led.schema_version == SCHEMA_VERSION
    assert led._query("PRAGMA journal_mode")[0][0] == "wal"
    led.close()


def test_other_schema_version_is_refused(tmp_path):
    Ledger(tmp_path / "l.sqlite").close()
    with sqlite3.connect(tmp_path / "l.sqlite") as db:
        db.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    with pytest.raises(ValueError, match="schema version 999"):
        Ledger(tmp_path / "l.sqlite")


@pytest.mark.parametrize(
    "value, expected",
    [
        (T0, "2024-05-01T12:00:00.000000Z"),
        ("2024-05-01T14:00:00+02:00", "2024-05-01T12:00:00.000000Z"),
        ("2024-05-01T12:00:00.5Z", "2024-05-01T12:00:00.500000Z"),
    ],
)
def test_timestamps_normalise_to_utc(value, expected):
    assert utc_timestamp(value) == expected


def test_naive_timestamp_is_refused():
    with pytest.raises(ValueError, match="no time zone"):
        utc_timestamp(datetime(2024, 1, 1))


def test_record_round_updates_in_place(ledger):
    ledger.record_round(0, "v0", started_at=T0)
    ledger.record_round(0, "v0", finished_at=T0 + timedelta(hours=1), metrics={"acc": 0.5})
    ledger.record_round(1, "v1", started_at=T0)
    rounds = ledger.rounds()
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[0]["started_at"] == utc_timestamp(T0)
    assert rounds[0]["metrics"] == {"acc": 0.5}
    assert rounds[1]["finished_at"] is None


def test_record_pushed_twice_records_once(ledger):
    pairs = [(11, 1), (12, 2), (13, 3)]
    assert ledger.record_pushed(7, 0, pairs) == 3
    assert ledger.record_pushed(7, 0, pairs) == 0
    assert ledger.record_pushed(7, 1, [(21, 1)]) == 1  # the same sample may be pushed again next round
    assert [(t.task_id, t.sample_id, t.round) for t in ledger.pushed_tasks(7)] == [
        (11, 1, 0),
        (12, 2, 0),
        (13, 3, 0),
        (21, 1, 1),
    ]
    assert ledger.pushed_sample_ids(7, round=0) == {1, 2, 3}
    assert ledger.pushed_tasks(8) == []


def test_pushed_tasks_of_every_project_and_round(ledger):
    ledger.record_pushed(7, 0, [(11, 1)])
    ledger.record_pushed(8, 1, [(21, 2)])
    assert [(t.project_id, t.task_id) for t in ledger.pushed_tasks(None)] == [(7, 11), (8, 21)]
    assert [t.task_id for t in ledger.pushed_tasks(None, round=1)] == [21]


def test_annotations_read_back_what_counts(ledger):
    add(ledger, 1, 0, cells_at((0, 0)), annotator=3, project_id=7)
    add(ledger, 2, 1, was_cancelled=True, annotator=3, project_id=7)
    add(ledger, 3, 2, label_fix=4, skip=True, project_id=8)
    add(ledger, 4, 3, project_id=7)
    ledger.mark_deleted([4])
    rows = ledger.annotations(7)
    assert [(a.annotation_id, a.task_id, a.annotator, a.has_cells, a.was_cancelled) for a in rows] == [
        (1, 100, 3, True, False),
        (2, 101, 3, False, True),
    ]
    (other,) = [a for a in ledger.annotations() if a.project_id == 8]
    assert (other.label_fix, other.skip, other.updated_at) == (4, True, utc_timestamp(T0))


@pytest.mark.parametrize("minutes, replaced", [(5, True), (0, False), (-5, False)])
def test_only_a_newer_version_replaces_an_annotation(ledger, minutes, replaced):
    add(ledger, 1, sample_id=3, cells=cells_at((0, 0)))
    assert add(ledger, 1, sample_id=3, cells=cells_at((1, 1)), minutes=minutes) is replaced
    expected = cells_at((1, 1)) if replaced else cells_at((0, 0))
    np.testing.assert_array_equal(ledger.feedback(GRID).cells[3], expected)


def test_replaying_a_pull_gives_the_same_feedback(ledger):
    pull = [(1, 0, cells_at((0, 0))), (2, 1, cells_at((3, 3), (2, 2))), (3, 1, None)]
    for aid, sid, cells in pull:
        add(ledger, aid, sid, cells)
    first = ledger.feedback(GRID)
    assert not any(add(ledger, aid, sid, cells) for aid, sid, cells in pull)
    second = ledger.feedback(GRID)
    assert first.cells.keys() == second.cells.keys()
    for k in first.cells:
        np.testing.assert_array_equal(first.cells[k], second.cells[k])


# Three annotators on sample 0: cell (0,0) by all, (1,1) by two, (2,2) by one.
VOTES = [cells_at((0, 0), (1, 1), (2, 2)), cells_at((0, 0), (1, 1)), cells_at((0, 0))]


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("union", cells_at((0, 0), (1, 1), (2, 2))),
        ("majority", cells_at((0, 0), (1, 1))),
    ],
)
def test_union_and_majority(ledger, mode, expected):
    for i, cells in enumerate(VOTES):
        add(ledger, i + 1, sample_id=0, cells=cells, annotator=i, minutes=i)
    np.testing.assert_array_equal(ledger.feedback(GRID, mode=mode).cells[0], expected)


def test_majority_counts_an_annotation_without_cells_as_a_vote(ledger):
    add(ledger, 1, sample_id=0, cells=cells_at((0, 0)))
    add(ledger, 2, sample_id=0, cells=None, label_fix=4)
    assert not ledger.feedback(GRID, mode="majority").cells[0].any()
    assert ledger.feedback(GRID, mode="union").cells[0][0, 0]


@pytest.mark.parametrize("mode, expected", [("union", 2), ("majority", 5)])
def test_label_fixes(ledger, mode, expected):
    for i, label in enumerate([5, 5, 2]):
        add(ledger, i + 1, sample_id=0, label_fix=label, minutes=i)
    assert ledger.feedback(GRID, mode=mode).labels == {0: expected}


def test_skips_mark_a_sample_only_when_nothing_else_was_given(ledger):
    add(ledger, 1, sample_id=0, skip=True)
    add(ledger, 2, sample_id=1, was_cancelled=True)
    add(ledger, 3, sample_id=2, was_cancelled=True)
    add(ledger, 4, sample_id=2, cells=cells_at((1, 2)))
    fb = ledger.feedback(GRID)
    assert fb.skipped == {0, 1}
    assert set(fb.cells) == {2}


def test_deleted_annotations_stop_counting(ledger):
    add(ledger, 1, sample_id=0, cells=cells_at((0, 0)))
    add(ledger, 2, sample_id=1, cells=cells_at((0, 1)))
    assert ledger.mark_deleted([2, 99]) == 1
    assert ledger.mark_deleted([2]) == 0
    assert set(ledger.feedback(GRID).cells) == {0}
    assert ledger.consumed_annotation_ids() == {1}
    assert ledger.consumed_annotation_ids(include_deleted=True) == {1, 2}


def test_feedback_checks_the_grid(ledger):
    add(ledger, 1, sample_id=0, cells=np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="3x3 cells stored, the grid is 4x4"):
        ledger.feedback(GRID)
    with pytest.raises(ValueError, match="mode must be one of"):
        ledger.feedback(GRID, mode="mean")


def test_round_feedback_round_trip(ledger):
    add(ledger, 1, sample_id=0, cells=cells_at((0, 3)), label_fix=1)
    add(ledger, 2, sample_id=4, skip=True)
    fb = ledger.feedback(GRID)
    ledger.record_feedback(2, fb)
    ledger.record_feedback(2, fb)  # recording again replaces, never duplicates
    back = ledger.round_feedback(2)
    assert back.labels == {0: 1} and back.skipped == {4}
    np.testing.assert_array_equal(back.cells[0], fb.cells[0])
    assert ledger.round_feedback(3).given_ids() == set()


def test_exception_inside_a_transaction_writes_nothing(ledger):
    add(ledger, 1, sample_id=0, cells=cells_at((0, 0)))
    with pytest.raises(RuntimeError, match="boom"):
        with ledger.transaction():
            add(ledger, 2, sample_id=1, cells=cells_at((1, 1)))
            ledger.record_pushed(1, 0, [(5, 1)])
            ledger.mark_deleted([1])
            raise RuntimeError("boom")
    assert ledger.consumed_annotation_ids() == {1}
    assert ledger.pushed_tasks(1) == []


def test_a_process_killed_mid_transaction_leaves_nothing_half_written(tmp_path):
    path = tmp_path / "crash.sqlite"
    with Ledger(path) as led:
        led.record_pushed(1, 0, [(10, 0)])
    script = textwrap.dedent(f"""
        import os
        from datetime import datetime, timezone
        import numpy as np
        from trainer.runs.ledger import Ledger
        led = Ledger({str(path)!r})
        with led.transaction():
            led.record_pushed(1, 0, [(11, 1), (12, 2)])
            led.upsert_annotation(7, task_id=11, sample_id=1, updated_at=datetime.now(timezone.utc),
                                  cells=np.ones((4, 4), dtype=bool))
            os._exit(9)  # a crash: no rollback, no commit, no cleanup
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), capture_output=True, env=env)
    assert proc.returncode == 9, proc.stderr.decode()
    with Ledger(path) as led:
        assert [t.task_id for t in led.pushed_tasks(1)] == [10]
        assert led.consumed_annotation_ids() == set()
        assert led._query("PRAGMA integrity_check")[0][0] == "ok"


# --- pulls: the record of each pull, and one pull at a time ------------------------------------------------

COUNTS = dict(new=2, updated=0, unchanged=1, skipped=0, deleted=0, ignored=0, invalidated=1)


def test_last_pull_is_the_newest_pulls_bounded_json_record(ledger):
    assert ledger.last_pull() is None
    invalid = [
        {"task_id": 10 + i, "annotation_id": 20 + i, "reason": f"task {10 + i}, annotation {20 + i}: " + "x" * 999}
        for i in range(LISTED + 5)
    ]
    ledger.record_pull(5, started_at=T0, counts=COUNTS, invalid=invalid, warnings=["w1", "w2"])
    ledger.record_pull(6, started_at=T0 + timedelta(minutes=1), counts={**COUNTS, "new": 7}, invalid=[],
                       warnings=[])  # fmt: skip
    newest, of_5 = ledger.last_pull(), ledger.last_pull(5)
    assert newest["project_id"] == 6 and newest["counts"]["new"] == 7 and newest["invalid"] == []
    assert of_5["started_at"] == utc_timestamp(T0) and of_5["finished_at"] >= of_5["started_at"]
    assert of_5["counts"] == {**COUNTS, "invalid": LISTED + 5, "warnings": 2}
    assert [(i["task_id"], i["annotation_id"]) for i in of_5["invalid"]] == [(10 + i, 20 + i) for i in range(LISTED)]
    assert all(len(i["reason"]) == LINE_CHARS for i in of_5["invalid"]) and of_5["warnings"] == ["w1", "w2"]
    assert json.loads(json.dumps(of_5)) == of_5 and len(json.dumps(of_5)) < 10_000
    assert ledger.last_pull(99) is None


def test_only_the_newest_pulls_are_kept(ledger):
    for i in range(PULLS_KEPT + 3):
        ledger.record_pull(1, started_at=T0, counts={**COUNTS, "new": i}, invalid=[], warnings=[])
    assert ledger._query("SELECT COUNT(*) FROM pulls")[0][0] == PULLS_KEPT
    assert ledger.last_pull()["counts"]["new"] == PULLS_KEPT + 2


def test_pull_lock_lets_one_pull_in_at_a_time(tmp_path):
    """Two ledgers on one file (as two processes), and two threads on one ledger, take turns."""
    first, second = Ledger(tmp_path / "run"), Ledger(tmp_path / "run")
    order = []

    def other(ledger):
        with ledger.pull_lock():
            order.append("other")

    for ledger in (first, second):
        with first.pull_lock():
            thread = threading.Thread(target=other, args=(ledger,))
            thread.start()
            thread.join(0.5)  # it waits for the lock
            assert thread.is_alive()
            order.append("holder")
        thread.join(5)
        assert order[-2:] == ["holder", "other"]
    with first.pull_lock():
        with pytest.raises(TimeoutError, match=rf"pid {os.getpid()}.*over 0 s"):
            with second.pull_lock(wait_s=0.2):
                pass
