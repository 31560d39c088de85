"""``hitl bench predict``: the latency of the backend's /predict work against a bare forward pass.

Per request the backend decodes N task images, puts them through ``model_view``, runs ``explain_batch``
(prediction, saliency, top cells) and builds the regions; that is what is timed here, minus HTTP. The
bare forward is the same model on the same N images, without gradients, timed interleaved with the
requests in the same process so both see the same machine load. ``ratio`` = p50 / forward_ms.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import time

import numpy as np
import torch
from PIL import Image

from label_config.config import suggestion_result
from label_config.grid import Grid
from trainer.core.models import build_model
from trainer.data.view import decode_image, model_view
from trainer.explain.attribute import METHODS
from trainer.explain.batch import explain_batch
from trainer.explain.deeplift import DeepLiftTwin


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``predict`` on the ``hitl bench`` subparsers; the command runs ``main(args)``."""
    p = subparsers.add_parser("predict", help="time the ML backend's /predict work against a bare forward pass")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=224, help="model input size in pixels")
    p.add_argument("--method", default="deeplift", choices=METHODS)
    p.add_argument("--tasks", type=int, default=8, help="tasks per /predict request (one batch)")
    p.add_argument("--requests", type=int, default=15)
    p.add_argument("--cell-px", type=int, default=28)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=main)
    return p


def encoded_images(n: int, size: int, seed: int = 0) -> list[bytes]:
    """``n`` PNG files of random RGB pictures a little larger than the model input (so the view resizes)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray((rng.random((size + 32, size + 64, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
        out.append(base64.b64encode(buf.getvalue()))
    return out


def predict_request(
    model, payloads: list[bytes], grid: Grid, *, method: str, top_k: int, twin: DeepLiftTwin | None = None
) -> str:
    """One request's work: decode, view, explain (with the twin the backend keeps per checkpoint), regions, JSON."""
    images = [model_view(decode_image(base64.b64decode(payload)), grid.height, 3) for payload in payloads]
    found = explain_batch(model, torch.stack(images), grid, method=method, top_k=top_k, twin=twin)
    results = [
        {"result": suggestion_result(cells, grid), "score": float(found.probs[i].max())}
        for i, cells in enumerate(found.top)
    ]
    return json.dumps({"results": results})


def run_benchmark(*, model_name="resnet18", size=224, method="deeplift", tasks=8, requests=15, cell_px=28,
                  top_k=3, threads=None, seed=0) -> dict:  # fmt: skip
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = build_model(model_name, 10, 3, size).eval()
    grid = Grid.from_cell_px(size, size, cell_px)
    payloads = encoded_images(tasks, size, seed)
    batch = torch.rand(tasks, 3, size, size)
    twin = DeepLiftTwin(model, batch[:1])

    def forward() -> None:
        with torch.no_grad():
            model(batch)

    for _ in range(2):  # warm-up: allocator, DeepLIFT twin, lazy imports
        forward()
        predict_request(model, payloads, grid, method=method, top_k=top_k, twin=twin)
    fwd, req = [], []
    for _ in range(requests):
        began = time.perf_counter()
        forward()
        fwd.append(time.perf_counter() - began)
        began = time.perf_counter()
        predict_request(model, payloads, grid, method=method, top_k=top_k, twin=twin)
        req.append(time.perf_counter() - began)
    p50, forward_ms = 1e3 * statistics.median(req), 1e3 * statistics.median(fwd)
    return {
        "model": model_name, "size": size, "method": method, "tasks_per_request": tasks, "requests": requests,
        "threads": torch.get_num_threads(), "p50_ms": round(p50, 1),
        "p95_ms": round(1e3 * float(np.percentile(req, 95)), 1), "forward_ms": round(forward_ms, 1),
        "ratio": round(p50 / forward_ms, 2), "per_task_p50_ms": round(p50 / tasks, 1),
    }  # fmt: skip


def main(args: argparse.Namespace) -> int:
    result = run_benchmark(
        model_name=args.model,
        size=args.size,
        method=args.method,
        tasks=args.tasks,
        requests=args.requests,
        cell_px=args.cell_px,
        top_k=args.top_k,
        threads=args.threads,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(f"/predict {result['p50_ms']} ms p50, {result['p95_ms']} ms p95 for {args.tasks} tasks; bare forward "
              f"{result['forward_ms']} ms; ratio {result['ratio']} ({result['threads']} threads)")  # fmt: skip
    return 0
