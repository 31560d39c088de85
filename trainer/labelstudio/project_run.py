"""A run for a team's own Label Studio project, made the way ``hitl init RUN --dataset labelstudio:ID`` makes one.

The backend makes one per project it serves (``ls_backend.round``), at the project's first "Start Training": the
project's labelled tasks are snapshotted into the run (``trainer.labelstudio.snapshot``), the run's config is
``hitl init``'s for that data (``trainer.runs.create``) with the backend's defaults for new projects on top.
"""

from __future__ import annotations

from pathlib import Path

from trainer.data.snapshot import SNAPSHOT_PREFIX
from trainer.labelstudio.client import export_tasks
from trainer.labelstudio.snapshot import SyncReport, create_snapshot
from trainer.runs.create import new_run_config
from trainer.runs.run import Run

# What a new project's run may set (``hitl init``'s flags, as RunConfig keys): anything else is a typo to refuse.
DEFAULT_KEYS = ("model", "image_size", "channels", "cell_px", "seed", "saliency", "top_k", "test_fraction",
                "train.epochs", "train.lam", "train.replay", "train.device", "train.batch_size", "train.lr",
                "sampling.strategy", "sampling.per_round")  # fmt: skip


def check_defaults(defaults: dict) -> dict:
    """``defaults`` (a new project's run settings) when every key is one of ``DEFAULT_KEYS``; ValueError naming
    the others."""
    if not isinstance(defaults, dict):
        raise ValueError(f"run defaults must be a JSON object, got {type(defaults).__name__}")
    unknown = sorted(set(defaults) - set(DEFAULT_KEYS))
    if unknown:
        raise ValueError(f"unknown run defaults {unknown}: the keys are {list(DEFAULT_KEYS)}")
    return defaults


def init_project_run(run_dir: str | Path, client, url: str, project_id: int,
                     defaults: dict | None = None) -> tuple[Run, SyncReport | None]:  # fmt: skip
    """Snapshot project ``project_id`` into ``run_dir`` and create the run on it; an existing run is opened (its
    snapshot is synced by every pull; the report is None then). ValueError when the project has no labelled task."""
    run_dir = Path(run_dir)
    if (run_dir / "config.json").is_file():
        return Run.open(run_dir), None
    settings = dict(check_defaults(dict(defaults or {})))
    seed, fraction = int(settings.get("seed", 0)), float(settings.pop("test_fraction", 0.2))
    report = create_snapshot(run_dir, client, url.rstrip("/"), project_id, export_tasks(client, project_id),
                             seed=seed, test_fraction=fraction)  # fmt: skip
    shape = {k: settings.pop(k, None) for k in ("channels", "image_size", "model", "cell_px")}
    config = new_run_config(f"{SNAPSHOT_PREFIX}{project_id}", run_dir, **shape, **settings)
    return Run.create(run_dir, config), report
