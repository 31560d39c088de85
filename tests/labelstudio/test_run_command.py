"""``hitl run``: the whole loop against the real Label Studio, with the simulated annotator; and resuming."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.app.cli import main
from trainer.labelstudio.annotator import simulate_annotator
from trainer.labelstudio.client import list_task_data
from trainer.labelstudio.link import LINK_FILE, Link, read_link
from trainer.labelstudio.loop import run_loop
from trainer.runs.ledger import Ledger
from trainer.runs.run import Run, RunConfig

pytestmark = [pytest.mark.labelstudio, pytest.mark.usefixtures("one_torch_thread")]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ls_env(label_studio, monkeypatch):
    """The environment a user sets for the CLI; returns the extra arguments every command gets."""
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    return ["--document-root", str(label_studio.document_root)]


def rounds_pushed(run: Run, ls_client) -> dict[int, int]:
    """Round -> number of this run's tasks in its Label Studio project."""
    out: dict[int, int] = {}
    for data in list_task_data(ls_client, read_link(run).project_id).values():
        out[data["round"]] = out.get(data["round"], 0) + 1
    return out


def test_hitl_run_simulated_two_rounds(tmp_path, ls_env, ls_client, capsys):
    run_dir = tmp_path / tmp_path.name  # the name must be unique on the shared server
    assert main(["init", str(run_dir), "--epochs", "1", "--replay", "4", "--per-round", "3"]) == 0
    assert main(["run", str(run_dir), "--rounds", "2", "--simulate", *ls_env]) == 0
    run = Run.open(run_dir)
    assert run.current_round() == 2
    assert [h["round"] for h in run.history()] == [0, 1, 2]
    assert [h["annotated"] for h in run.history()] == [0, 3, 6]  # every image has a decoy to mark
    assert all(h["epochs"][-1]["penalty"] > 0 for h in run.history()[1:])
    assert rounds_pushed(run, ls_client) == {0: 3, 1: 3}
    assert [r["round"] for r in run.ledger.rounds()] == [0, 1, 2]
    assert len(run.ledger.round_feedback(2).annotated_ids()) == 6
    assert "done: round 2 trained" in capsys.readouterr().out


def test_interrupted_run_resumes_without_pushing_or_training_twice(fresh_run, ls_env, ls_client, label_studio):
    run = fresh_run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # A real Ctrl-C while the loop waits for annotators in round 0.
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.app.cli", "run", str(run.directory), "--rounds", "1", "--poll-seconds", "0.5",
         *ls_env], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job starts with SIGINT ignored
    )  # fmt: skip
    try:
        _wait_for_pushed(run.directory / "ledger.sqlite", proc, expect=run.config.sampling.per_round)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "resumes where this stopped" in err
    assert run.current_round() == 0 and rounds_pushed(run, ls_client) == {0: 3}
    stamp0 = (run.checkpoint_dir / "round-000.pt").stat().st_mtime_ns

    assert main(["run", str(run.directory), "--rounds", "1", "--simulate", *ls_env]) == 0
    assert run.current_round() == 1 and rounds_pushed(run, ls_client) == {0: 3}  # round 0 not pushed again
    stamp1 = (run.checkpoint_dir / "round-001.pt").stat().st_mtime_ns

    assert main(["run", str(run.directory), "--rounds", "2", "--simulate", *ls_env]) == 0
    assert run.current_round() == 2 and rounds_pushed(run, ls_client) == {0: 3, 1: 3}
    assert (run.checkpoint_dir / "round-000.pt").stat().st_mtime_ns == stamp0  # nothing retrained
    assert (run.checkpoint_dir / "round-001.pt").stat().st_mtime_ns == stamp1
    assert [h["round"] for h in run.history()] == [0, 1, 2]

    assert main(["run", str(run.directory), "--rounds", "2", "--simulate", *ls_env]) == 0  # already there
    assert run.current_round() == 2 and rounds_pushed(run, ls_client) == {0: 3, 1: 3}


def _wait_for_pushed(ledger_path: Path, proc: subprocess.Popen, *, expect: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"hitl run exited early ({proc.returncode}): {proc.stderr.read()}")
        if ledger_path.exists():
            with Ledger(ledger_path) as ledger:
                if len(ledger.pushed_tasks(_project(ledger_path.parent), 0)) >= expect:
                    return
        time.sleep(0.5)
    pytest.fail(f"hitl run pushed nothing within {timeout:.0f} s")


def _project(run_dir: Path) -> int:
    return read_link(Run.open(run_dir)).project_id


def test_push_and_pull_commands_find_the_linked_project(fresh_run, ls_env, ls_client, capsys):
    run_dir = str(fresh_run.directory)
    assert main(["pull", run_dir]) == 2  # not linked yet
    assert "run `hitl push` first" in capsys.readouterr().err
    assert main(["push", run_dir, *ls_env]) == 0
    assert (fresh_run.directory / LINK_FILE).is_file()
    assert main(["push", run_dir]) == 0  # the link remembers the project and the document root
    assert rounds_pushed(fresh_run, ls_client) == {0: 3}
    assert main(["pull", run_dir, "--mode", "majority"]) == 0
    assert "pulled 0 new" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rounds": -1}, "rounds must be an integer >= 0"),
        ({"rounds": 1, "mode": "vote"}, "mode must be one of"),
        ({"rounds": 1, "poll_seconds": 0}, "poll_seconds must be > 0"),
        ({"rounds": 1, "min_annotations": 0}, "min_annotations must be > 0"),
    ],
)
def test_run_loop_refuses_bad_settings(tmp_path, kwargs, match):
    run = Run.create(tmp_path / "run", RunConfig())
    with pytest.raises(ValueError, match=match):
        run_loop(run, None, Link(url="http://localhost:8080", project_id=1, title="t"), **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "lasso"}, "kind must be one of"),
        ({"miss_rate": 1.5}, r"miss_rate must be in \[0, 1\]"),
    ],
)
def test_simulated_annotator_refuses_bad_settings(tmp_path, kwargs, match):
    run = Run.create(tmp_path / "run", RunConfig())
    with pytest.raises(ValueError, match=match):
        simulate_annotator(run, None, 1, **kwargs)
