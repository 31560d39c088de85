"""A trainer killed with SIGKILL in the middle of a round, then run again: nothing lost but the time.

The killed ``hitl train`` leaves ``train.lock`` behind with its pid in it; the lock is an fcntl lock, which the
kernel drops with the process, so the rerun is not blocked. It starts the round again from the last checkpoint
with the same ledger, and ends with the very weights an uninterrupted run gets.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.runs.checkpoint import checkpoint_path, read_checkpoint
from trainer.runs.run import LOCK_FILE, Run

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def hitl_train(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "trainer.app.cli", "train", str(run_dir)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for_lock(run_dir: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until ``proc`` holds the run's training lock (its pid is in train.lock): the round has begun."""
    lock, deadline = run_dir / LOCK_FILE, time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"hitl train ended before the kill: {proc.communicate()}"
        if lock.exists() and lock.read_text().strip() == str(proc.pid):
            return
        time.sleep(0.02)
    raise AssertionError(f"hitl train did not take {lock} within {timeout} s")


def annotate(run: Run, samples: dict[int, tuple[int, int]]) -> None:
    """Annotations as a pull leaves them: one marked cell per sample."""
    for annotation_id, (sample_id, cell) in enumerate(samples.items(), start=1):
        marked = np.zeros(run.grid.shape, dtype=bool)
        marked[cell] = True
        run.ledger.upsert_annotation(annotation_id, task_id=100 + annotation_id, sample_id=sample_id,
                                     updated_at=datetime.now(timezone.utc), cells=marked, project_id=1)  # fmt: skip


def test_a_round_killed_with_sigkill_resumes_from_the_last_checkpoint(fresh_run, tmp_path):
    run = fresh_run
    annotate(run, {3: (0, 0), 8: (6, 6), 21: (0, 6)})
    before = run.ledger.annotation_versions()
    twin = shutil.copytree(run.directory, tmp_path / "twin")  # the same run, never interrupted

    killed = hitl_train(run.directory)
    wait_for_lock(run.directory, killed)
    time.sleep(0.5)  # inside the round: model loaded, training
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    assert run.current_round() == 0, "the round finished before the kill: the test did not test anything"
    assert (run.directory / LOCK_FILE).read_text().strip() == str(killed.pid)  # stale, left behind

    resumed = hitl_train(run.directory)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert '"round": 1' in out
    done = hitl_train(twin)
    assert done.wait(timeout=300) == 0, done.stderr.read()

    reopened = Run.open(run.directory)
    assert reopened.current_round() == 1 and [h["round"] for h in reopened.history()] == [0, 1]
    assert reopened.ledger.annotation_versions() == before  # same annotations, none lost or doubled
    assert set(reopened.ledger.round_feedback(1).annotated_ids()) == {3, 8, 21}  # round 1 trained with them
    resumed_state = read_checkpoint(checkpoint_path(reopened.checkpoint_dir, 1))["model"]
    twin_state = read_checkpoint(checkpoint_path(twin / "checkpoints", 1))["model"]
    for name, tensor in twin_state.items():  # started again from round 0's checkpoint, not from scratch
        assert torch.equal(resumed_state[name], tensor), name
