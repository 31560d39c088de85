"""``hitl demo`` end to end: its own Label Studio and ML backend, tiny settings; then resumed and left running."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.processes import alive, children
from trainer.app.cli import main
from trainer.app.demo import DemoConfig, example_ids
from trainer.app.lsserver import free_port
from trainer.app.plots import plot_accuracy
from trainer.core.loop import evaluate
from trainer.runs.run import Run

REPO = Path(__file__).resolve().parents[2]
# decoy-mnist, small-cnn: a few seconds a round on one thread; the first Label Studio start dominates.
TINY = ["--rounds", "1", "--per-round", "3", "--epochs", "1", "--batch-size", "128"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def demo_command(directory: Path, *args: str) -> list[str]:
    # A random free port each time, not the default 8080 another session on this machine may want meanwhile.
    return [sys.executable, "-m", "trainer.app.cli", "demo", "--dir", str(directory), *TINY, "--port", str(free_port()),
            *args]  # fmt: skip


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory):
    """A tiny demo run to the end with ``--stop``: (directory, its stdout, results.json)."""
    directory = tmp_path_factory.mktemp("demo") / "demo-run"
    proc = subprocess.run(demo_command(directory, "--stop"), cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return directory, proc.stdout, json.loads((directory / "results.json").read_text())


@pytest.mark.labelstudio
def test_demo_prints_the_table_and_writes_results_and_plots(finished_demo):
    directory, out, results = finished_demo
    token = json.loads((directory / "label-studio" / "hitl-credentials.json").read_text())["token"]
    assert f"API token (LABEL_STUDIO_API_KEY): {token}" in out and "password: " in out
    assert "arm" in out and "irrelevant share" in out and "accuracy points on the decoy test set" in out
    assert set(results["arms"]) == {"baseline", "feedback"}
    for arm in results["arms"].values():
        assert 0 <= arm["acc"] <= 1 and 0 <= arm["irrelevant_share"] <= 1 and arm["min_loss"] > 0
        assert len(arm["accuracy_per_round"]) == 2 and arm["rounds"] == 1
    assert results["arms"]["baseline"]["annotated_fraction"] == 0
    assert results["arms"]["feedback"]["annotated_fraction"] == pytest.approx(3 / 4000)
    accs = {}  # each arm's newest checkpoint, evaluated here on the decoy test set
    for arm in ("baseline", "feedback"):
        run = Run.open(directory / arm)
        model, _, _ = run.load_model("cpu")
        accs[arm], _ = evaluate(model, run.datasets[1])
        assert results["arms"][arm]["acc"] == pytest.approx(accs[arm])
    assert results["margin_points"] == pytest.approx(100 * (accs["feedback"] - accs["baseline"]))
    assert token not in (directory / "results.json").read_text()  # the secret stays out of the results
    for name in ("accuracy", "saliency"):
        path = Path(results["plots"][name])
        assert path.parent == directory / "plots" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.labelstudio
def test_demo_annotates_through_label_studio_then_stops_everything(finished_demo):
    directory, _, results = finished_demo
    feedback, baseline = Run.open(directory / "feedback"), Run.open(directory / "baseline")
    project = results["label_studio"]["project_id"]
    assert len(feedback.ledger.pushed_tasks(project, 0)) == 3
    assert [h["annotated"] for h in feedback.history()] == [0, 3]  # the simulated annotator's masks reached W
    assert feedback.history()[1]["epochs"][-1]["penalty"] > 0
    assert [h["annotated"] for h in baseline.history()] == [0, 0]
    assert not answers(results["label_studio"]["url"]) and not answers(results["backend_url"])


@pytest.mark.labelstudio
def test_demo_resumes_and_keeps_label_studio_running_until_ctrl_c(finished_demo):
    from label_studio_sdk.client import LabelStudio

    directory, _, before = finished_demo
    feedback = Run.open(directory / "feedback")
    stamps = {p.name: p.stat().st_mtime_ns for p in feedback.checkpoint_dir.glob("*.pt")}
    command = demo_command(directory)
    command[command.index("--rounds") + 1] = "2"
    # Ctrl-C must reach it even when the tests run in a background job, which starts with SIGINT ignored.
    proc = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        out = read_until(proc, "Press Ctrl-C", timeout=300)
        results = json.loads((directory / "results.json").read_text())
        ls = results["label_studio"]
        assert ls["url"] != before["label_studio"]["url"]  # another port: the project is found again
        assert ls["project_id"] == before["label_studio"]["project_id"]
        token = json.loads((directory / "label-studio" / "hitl-credentials.json").read_text())["token"]
        client = LabelStudio(base_url=ls["url"], api_key=token)
        tasks = list(client.tasks.list(project=ls["project_id"], fields="all"))
        assert sorted(t.data["round"] for t in tasks) == [0, 0, 0, 1, 1, 1]  # round 0 not pushed again
        assert all(len(t.annotations) == 1 for t in tasks)
        backends = client.ml.list(project=ls["project_id"])
        assert [b.url.rstrip("/") for b in backends] == [results["backend_url"]]  # the old one replaced
        hooks = [h.url for h in client.webhooks.list(project=str(ls["project_id"]))]
        assert hooks == [f"{results['backend_url']}/webhook"]
        assert answers(results["backend_url"])
        proc.send_signal(signal.SIGINT)
        out += proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in feedback.checkpoint_dir.glob("*.pt") if p.name in stamps} == stamps
    assert [h["annotated"] for h in feedback.history()] == [0, 3, 6]
    assert len(results["arms"]["baseline"]["accuracy_per_round"]) == 3
    assert not answers(ls["url"]) and not answers(results["backend_url"])


@pytest.mark.labelstudio
def test_a_demo_whose_baseline_worker_dies_says_so_and_stops_everything(tmp_path):
    """The baseline arm trains in a worker process. Before, the demo waited for a killed worker forever (a
    multiprocessing.Pool loses its job, and its terminate() then blocks on the lock the worker held): now it ends
    with an error that says what happened, and stops Label Studio, the backend and the worker."""
    command = demo_command(tmp_path / "demo-run", "--stop")
    proc = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started: dict[int, str] = {}
    try:
        deadline, worker = time.monotonic() + 300, None
        while worker is None and time.monotonic() < deadline and proc.poll() is None:
            started.update(children(proc.pid))
            worker = next((p for p, c in started.items() if "spawn_main" in c and alive(p)), None)
            time.sleep(0.1)
        assert worker is not None, f"no baseline worker (exit code {proc.poll()})"
        started.update(children(proc.pid))
        os.kill(worker, signal.SIGKILL)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, out[-3000:]
    assert "hitl demo: error: the baseline arm's worker process died" in out
    port = command[command.index("--port") + 1]
    assert not answers(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 20  # Label Studio, the backend, multiprocessing's resource tracker: all end
    while time.monotonic() < deadline and any(alive(p) for p in started):
        time.sleep(0.2)
    assert not [c for p, c in started.items() if alive(p)]


def read_until(proc: subprocess.Popen, marker: str, *, timeout: float) -> str:
    """The process's output up to the line holding ``marker``; fails on exit or timeout."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    out, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        out += line
        if marker in line:
            return out
    pytest.fail(f"no {marker!r} within {timeout:.0f} s (exit code {proc.poll()}):\n{out[-3000:]}")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rounds": 0}, "rounds must be an integer >= 1"),
        ({"per_round": 2.5}, "per_round must be an integer >= 1"),
        ({"port": 70000}, "port must be in 1..65535"),
        ({"label_studio_url": "http://localhost:8080"}, "needs all three"),
        (
            {"label_studio_url": "http://x", "api_key": "k", "document_root": Path("/tmp"), "port": 8080},
            "--port is for",
        ),
    ],
)
def test_demo_config_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoConfig(**kwargs)


def test_demo_command_reports_bad_settings(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path), "--api-key", "abc"]) == 2
    assert "needs all three" in capsys.readouterr().err


def test_example_ids_put_images_the_feedback_fixed_first():
    labels = torch.tensor([0, 1, 2, 3, 4])
    baseline = torch.tensor([0, 9, 2, 9, 4])
    feedback = torch.tensor([0, 1, 9, 3, 4])
    assert example_ids(labels, baseline, feedback, 3) == [1, 3, 0]


def test_plot_accuracy_writes_a_png_and_refuses_an_empty_arm(tmp_path):
    path = plot_accuracy({"baseline": [0.7, 0.75], "feedback": list(np.linspace(0.7, 0.9, 2))}, tmp_path / "a.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="feedback: 0"):
        plot_accuracy({"baseline": [0.7], "feedback": []}, tmp_path / "b.png")
