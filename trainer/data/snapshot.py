"""A team's Label Studio project, as a snapshot in the run directory: files only, no Label Studio.

Shape legend: N images, C channels, H x W pixels (H = W = ``size``).

``hitl init RUN --dataset labelstudio:PROJECT`` (``trainer.labelstudio.snapshot``) downloads each labelled task's
image once and writes the manifest; this module only reads them, so training is offline and reproducible:

    RUN/labelstudio/tasks.json      the manifest (below)
    RUN/labelstudio/images/<task id>.<ext>

The manifest: ``{"project_id", "url", "classes", "control", "data_key", "split_rule", "test_fraction", "seed",
"revision", "tasks": [{"task_id", "file", "label", "split", "sample_id"}, ...]}``. ``split`` is ``train`` or
``test``; ``sample_id`` numbers each split from 0 in the order its tasks joined (append-only, so the ledger's
sample ids stay valid when tasks labelled later join); ``label`` indexes ``classes``; ``revision`` counts the
syncs that changed the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch.utils.data import Dataset

from trainer.data.files import FileDataset, probe_shape

SNAPSHOT_PREFIX = "labelstudio:"
SNAPSHOT_DIR = "labelstudio"
MANIFEST = "tasks.json"
SPLITS = ("train", "test")


def snapshot_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR


def read_manifest(run_dir: str | Path) -> dict:
    """The snapshot's manifest; ValueError naming the file when it is missing or not a manifest."""
    path = snapshot_dir(run_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist: a labelstudio: dataset is made by `hitl init RUN --dataset labelstudio:PROJECT`"
        )
    manifest = json.loads(path.read_text())
    missing = [k for k in ("project_id", "classes", "tasks", "revision") if k not in manifest]
    if missing:
        raise ValueError(f"{path} is not a snapshot manifest: it lacks {missing}")
    return manifest


def split_tasks(manifest: dict, split: str) -> list[dict]:
    """The manifest's tasks of ``split``, by sample id; ValueError when the ids are not 0..n-1."""
    rows = sorted((t for t in manifest["tasks"] if t["split"] == split), key=lambda t: t["sample_id"])
    if [t["sample_id"] for t in rows] != list(range(len(rows))):
        raise ValueError(f"the snapshot's {split} sample ids are not 0..{len(rows) - 1}")
    return rows


class SnapshotDataset(FileDataset):
    """One split of a snapshot. ``task_ids[sample_id]`` is the Label Studio task; ``revision`` the manifest's."""

    def __init__(self, run_dir: str | Path, split: str, *, size: int, channels: int = 3, cache: bool = False) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        manifest = read_manifest(run_dir)
        rows = split_tasks(manifest, split)
        if not rows:
            raise ValueError(
                f"the snapshot of project {manifest['project_id']} in {snapshot_dir(run_dir)} has no {split} tasks "
                "(label more tasks, or mark some with split: test in their data)"
            )
        root = snapshot_dir(run_dir)
        self.project_id = int(manifest["project_id"])
        self.revision = int(manifest["revision"])
        self.task_ids = [int(t["task_id"]) for t in rows]
        paths, labels = [root / t["file"] for t in rows], [int(t["label"]) for t in rows]
        super().__init__(paths, labels, list(manifest["classes"]), size=size, channels=channels, cache=cache)


def load_snapshot(spec: str, run_dir: str | Path | None, *, size: int, channels: int = 3,
                  **opts) -> tuple[Dataset, Dataset]:  # fmt: skip
    """(train, test) of ``labelstudio:PROJECT`` from ``run_dir``'s snapshot (the project must be the snapshot's)."""
    if run_dir is None:
        raise ValueError(f"dataset {spec!r} lives in a run directory: open it through its run (root= not given)")
    project = spec[len(SNAPSHOT_PREFIX) :]
    manifest = read_manifest(run_dir)
    if str(manifest["project_id"]) != project:
        raise ValueError(f"{snapshot_dir(run_dir)} holds project {manifest['project_id']}, not {project}")
    opts = {k: v for k, v in opts.items() if k == "cache"}
    return tuple(SnapshotDataset(run_dir, s, size=size, channels=channels, **opts) for s in SPLITS)  # type: ignore


def snapshot_shape(run_dir: str | Path) -> tuple[int, int]:
    """``(channels, size)`` the snapshot's images suggest (``probe_shape``)."""
    if run_dir is None:
        raise ValueError("a labelstudio: dataset lives in a run directory: give its run (root= not given)")
    manifest = read_manifest(run_dir)
    return probe_shape([snapshot_dir(run_dir) / t["file"] for t in manifest["tasks"]])
