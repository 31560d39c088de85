"""``hitl bench serve``: the backend under gunicorn with concurrent clients calling /predict for a while.

Starts ``gunicorn 'ls_backend.wsgi:create()'`` (the production line of ``hitl serve --help``) on a free local
port for a run directory (``--model-dir``, or a throwaway run with an untrained checkpoint), then ``clients``
threads POST /predict with local images inlined as data URIs for ``seconds``: each request decodes, explains
and answers, as one Label Studio task does. Reports errors (any answer but 200, or no answer), latency
percentiles and throughput. Latency is measured at the client: queueing behind other clients included.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

from label_config.config import build_config
from label_config.grid import Grid
from ls_backend.images import to_data_uri
from trainer.core.models import build_model
from trainer.runs.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from trainer.runs.run import Run, RunConfig

CLASSES = [str(k) for k in range(10)]
REPO = Path(__file__).resolve().parents[1]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``serve`` on the ``hitl bench`` subparsers; the command runs ``main(args)``."""
    p = subparsers.add_parser("serve", help="load-test the ML backend under gunicorn: concurrent /predict calls")
    p.add_argument("--clients", type=int, default=20, help="concurrent clients, each one request at a time")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the clients keep calling")
    p.add_argument("--tasks", type=int, default=1, help="tasks per /predict request (Label Studio sends one per "
                                                         "opened task)")  # fmt: skip
    p.add_argument("--model-dir", default=None, help="run directory to serve (default: a throwaway small-cnn run)")
    p.add_argument("--workers", type=int, default=1, help="gunicorn workers (production: 1, see wsgi.py)")
    p.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=main)
    return p


def throwaway_run(directory: Path) -> Run:
    """A decoy-mnist small-cnn run with an untrained round-0 checkpoint: the backend's work, without training."""
    run = Run.create(directory, RunConfig(image_size=28, channels=1))
    grid = Grid.from_cell_px(28, 28, run.config.cell_px)
    torch.manual_seed(0)
    model = build_model("small-cnn", len(CLASSES), 1, grid.height)
    meta = {"model": "small-cnn", "num_classes": len(CLASSES), "in_channels": 1, "image_size": grid.height,
            "classes": CLASSES, "round": 0, "model_version": run.model_version(0),
            "grid": {"rows": grid.rows, "cols": grid.cols}}  # fmt: skip
    save_checkpoint(checkpoint_path(run.checkpoint_dir, 0), model, meta)
    return run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def gunicorn(model_dir: Path, *, workers: int, threads: int, startup_s: float = 120.0):
    """The backend under gunicorn on a free loopback port; yields its URL, stops it (SIGTERM) after."""
    port = _free_port()
    env = {**os.environ, "MODEL_DIR": str(model_dir)}
    # --chdir: gunicorn imports the app from this checkout first (it puts the directory on sys.path)
    cmd = [sys.executable, "-m", "gunicorn", "--chdir", str(REPO), "--workers", str(workers), "--threads", str(threads),
           "--bind", f"127.0.0.1:{port}", "--timeout", "120", "ls_backend.wsgi:create()"]  # fmt: skip
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"gunicorn exited with {proc.returncode} before answering {url}/health:\n"
                                   f"{log.read().decode(errors='replace')[-2000:]}")  # fmt: skip
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"gunicorn did not answer {url}/health within {startup_s:.0f} s")
            time.sleep(0.25)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def request_bodies(run: Run, tasks: int, n: int = 16, seed: int = 0) -> list[bytes]:
    """``n`` /predict bodies of ``tasks`` random local images each (PNG data URIs, a little larger than the model
    input, so the backend decodes and resizes as it does for real tasks)."""
    path = latest_checkpoint(run.checkpoint_dir)
    if path is None:
        raise ValueError(f"run {run.directory} has no checkpoint to serve: train round 0 first (`hitl train`)")
    meta = read_checkpoint(path)["meta"]
    size, rows, cols = meta["image_size"], meta["grid"]["rows"], meta["grid"]["cols"]
    config = build_config(meta["classes"], Grid(size, size, rows, cols))
    shape, mode = ((size + 8, size + 8), "L") if meta["in_channels"] == 1 else ((size + 8, size + 8, 3), "RGB")
    rng = np.random.default_rng(seed)
    bodies = []
    for b in range(n):
        images = [Image.fromarray((rng.random(shape) * 255).astype(np.uint8), mode) for _ in range(tasks)]
        task_list = [{"id": b * tasks + i, "data": {"image": to_data_uri(im)}} for i, im in enumerate(images)]
        bodies.append(json.dumps({"tasks": task_list, "label_config": config, "project": "1.0"}).encode())
    return bodies


def load(url: str, bodies: list[bytes], *, clients: int, seconds: float) -> dict:
    """``clients`` threads POST /predict in turn until ``seconds`` pass; counts and client-side latencies."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        session = requests.Session()
        i = k
        while time.monotonic() < stop_at:
            body = bodies[i % len(bodies)]
            i += clients
            began = time.perf_counter()
            try:
                resp = session.post(f"{url}/predict", data=body, headers={"Content-Type": "application/json"},
                                    timeout=120)  # fmt: skip
                problem = None if resp.status_code == 200 else f"HTTP {resp.status_code}: {resp.text[:200]}"
            except requests.RequestException as exc:
                problem = f"{type(exc).__name__}: {exc}"
            took = time.perf_counter() - began
            with lock:
                (errors.append(problem) if problem else latencies.append(took))

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - began
    ms = np.array(latencies) * 1e3
    return {
        "requests": len(latencies) + len(errors), "ok": len(latencies), "errors": len(errors),
        "first_errors": errors[:3], "wall_s": round(wall, 2),
        "throughput_rps": round(len(latencies) / wall, 2),
        "p50_ms": round(float(statistics.median(ms)), 1) if len(ms) else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
        "max_ms": round(float(ms.max()), 1) if len(ms) else None,
    }  # fmt: skip


def bench_serve(*, clients: int = 20, seconds: float = 60.0, tasks: int = 1, model_dir: str | None = None,
                workers: int = 1, threads: int = 4) -> dict:  # fmt: skip
    for name, value in (("clients", clients), ("tasks", tasks), ("workers", workers), ("threads", threads)):
        if value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if seconds <= 0:
        raise ValueError(f"--seconds must be > 0, got {seconds}")
    with tempfile.TemporaryDirectory(prefix="hitl-bench-serve-") as tmp:
        run = Run.open(model_dir) if model_dir else throwaway_run(Path(tmp) / "run")
        bodies = request_bodies(run, tasks)
        with gunicorn(run.directory, workers=workers, threads=threads) as url:
            result = load(url, bodies, clients=clients, seconds=seconds)
    return {"clients": clients, "seconds": seconds, "tasks_per_request": tasks, "workers": workers,
            "threads": threads, "model": run.config.model,
            "cpus": os.cpu_count(), **result}  # fmt: skip


def main(args: argparse.Namespace) -> int:
    r = bench_serve(clients=args.clients, seconds=args.seconds, tasks=args.tasks, model_dir=args.model_dir,
                    workers=args.workers, threads=args.threads)  # fmt: skip
    if args.json:
        print(json.dumps(r))
    else:
        print(f"/predict under gunicorn ({r['workers']} x {r['threads']} threads), {r['clients']} clients for "
              f"{r['seconds']:.0f} s: {r['ok']} ok, {r['errors']} errors, p50 {r['p50_ms']} ms, p95 {r['p95_ms']} "
              f"ms, {r['throughput_rps']} requests/s")  # fmt: skip
        for error in r["first_errors"]:
            print(f"  error: {error}", file=sys.stderr)
    return 0 if r["errors"] == 0 else 1
