"""``hitl bench pull``: pulling many annotations from a real Label Studio into the ledger and W, and what W
costs in memory for a large dataset.

The pull: a project with the run's own labelling config is filled through Label Studio's import API with
``annotations`` tasks, each carrying an annotation as the labelling page submits it (rectangles on the
cells of the image's true mask); then ``pull`` is timed from the first request to the feedback built.
The memory: a ``Feedback`` for ``images`` training images of which ``annotated`` carry cells, built as a pull
builds it, measured with tracemalloc, plus the pixel masks W of one replay step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from label_config.grid import Grid
from label_config.names import IMAGE_KEY, SALIENCY_KEY, SAMPLE_ID_KEY
from trainer.app.lsserver import LabelStudioServer
from trainer.core.feedback import AnnotatorConfig, Feedback, simulated_cells
from trainer.core.loop import REPLAY_CE_ROWS
from trainer.labelstudio.annotator import browser_result
from trainer.labelstudio.client import connect, ensure_project, import_tasks
from trainer.labelstudio.pull import pull
from trainer.labelstudio.push import label_config_for
from trainer.runs.run import Run, RunConfig

_PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)


def bench_pull(*, annotations: int = 10_000, url: str | None = None, api_key: str | None = None,
               workdir: str | Path | None = None, batch: int = 1000) -> dict:  # fmt: skip
    """Fill a project with ``annotations`` annotated tasks and time one pull of them. Starts a local Label
    Studio in ``workdir`` unless ``url`` and ``api_key`` name one."""
    with tempfile.TemporaryDirectory(prefix="hitl-bench-pull-") as tmp:
        root = Path(workdir or tmp)
        if url:
            return _bench(connect(url, api_key), url, root, annotations, batch)
        with LabelStudioServer(root / "label-studio") as server:
            return _bench(connect(server.url, server.token), server.url, root, annotations, batch)


def _bench(client, url: str, root: Path, annotations: int, batch: int) -> dict:
    run = Run.create(root / "run", RunConfig())
    train, _ = run.datasets
    truth = train.decoy_masks.numpy()
    rng = np.random.default_rng(0)
    project = ensure_project(client, f"bench pull {time.strftime('%H%M%S')} {rng.integers(1e6)}",
                             label_config_for(run))  # fmt: skip
    filled = time.perf_counter()
    tasks = []
    for k in range(annotations):  # more annotations than images: several tasks share a sample id
        sid = k % len(train)
        cells = simulated_cells(truth[sid], run.grid, AnnotatorConfig(), rng)
        tasks.append({"data": {IMAGE_KEY: _PIXEL, SALIENCY_KEY: _PIXEL, SAMPLE_ID_KEY: sid},
                      "annotations": [{"result": browser_result(run.grid, cells, "rect", rng)}]})  # fmt: skip
    import_tasks(client, project, tasks, batch_size=batch)
    filled = time.perf_counter() - filled
    started = time.perf_counter()
    report = pull(run, client, project)
    seconds = time.perf_counter() - started
    if report.new != annotations or report.errors:
        raise RuntimeError(f"the pull read {report.new} of {annotations} annotations ({len(report.errors)} errors): "
                           f"{report.errors[:3]}")  # fmt: skip
    return {"annotations": annotations, "pull_s": round(seconds, 3),
            "annotations_per_s": round(annotations / seconds, 1), "fill_s": round(filled, 2),
            "label_studio": url, "annotated_images": len(report.feedback.annotated_ids())}  # fmt: skip


def feedback_memory(*, images: int = 1_000_000, annotated: int = 10_000, grid_cells: tuple[int, int] = (7, 7),
                    pixels: int = 224, rows: int = REPLAY_CE_ROWS) -> dict:  # fmt: skip
    """Bytes held by W for ``images`` images of which ``annotated`` carry cells (a Feedback, as pulls build
    it), and by the pixel masks W of one replay step (``rows`` rows at ``pixels`` px: 16, what a step of a
    batch-norm model at 224 px draws under ``REPLAY_PLANS``)."""
    rng = np.random.default_rng(0)
    ids = rng.choice(images, size=annotated, replace=False)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    feedback = Feedback(cells={int(i): rng.random(grid_cells) < 0.2 for i in ids})
    held = tracemalloc.get_traced_memory()[0] - before
    grid = Grid(pixels, pixels, *grid_cells)
    step = feedback.masks([int(i) for i in ids[:rows]], grid)
    tracemalloc.stop()
    return {"images": images, "annotated": annotated, "w_bytes": held, "w_mb": round(held / 2**20, 2),
            "step_masks_mb": round(step.element_size() * step.nelement() / 2**20, 2), "pixels": pixels}  # fmt: skip


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("pull", help="time a pull of many annotations from a real Label Studio; W's memory")
    p.add_argument("--annotations", type=int, default=10_000)
    p.add_argument("--url", default=None, help="a running Label Studio (default: start one locally)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--images", type=int, default=1_000_000, help="dataset size for W's memory")
    p.add_argument("--annotated", type=int, default=10_000, help="annotated images for W's memory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    r = {"pull": bench_pull(annotations=args.annotations, url=args.url, api_key=args.api_key),
         "memory": feedback_memory(images=args.images, annotated=args.annotated)}  # fmt: skip
    if args.json:
        print(json.dumps(r))
        return 0
    p, m = r["pull"], r["memory"]
    print(f"pull: {p['annotations']} annotations in {p['pull_s']} s ({p['annotations_per_s']} a second; filling the "
          f"project took {p['fill_s']} s)")  # fmt: skip
    print(f"W for {m['images']} images, {m['annotated']} annotated: {m['w_mb']} MB; one replay step's pixel masks at "
          f"{m['pixels']} px: {m['step_masks_mb']} MB")  # fmt: skip
    return 0
