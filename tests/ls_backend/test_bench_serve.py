"""``hitl bench serve``: the backend under gunicorn, concurrent /predict calls, a report with zero errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ls_backend.bench import bench_serve

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_a_short_load_run_reports_latency_and_throughput_without_errors():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "trainer.app.cli", "bench", "serve", "--clients", "3", "--seconds",
                           "3", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"clients", "seconds", "requests", "ok", "errors", "p50_ms", "p95_ms", "throughput_rps", "workers",
            "threads"} <= set(report)  # fmt: skip
    assert report["errors"] == 0, report["first_errors"]
    assert report["clients"] == 3 and report["ok"] == report["requests"] > 0
    assert 0 < report["p50_ms"] <= report["p95_ms"] and report["throughput_rps"] > 0


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="--clients must be >= 1, got 0"):
        bench_serve(clients=0)
