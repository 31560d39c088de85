"""The labelstudio: dataset source: a run directory's snapshot, read from files alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from trainer.data.registry import load_dataset, native_shape


def write_snapshot(run_dir, rows):
    images = run_dir / "labelstudio" / "images"
    images.mkdir(parents=True)
    tasks = []
    for task_id, label, split, sample_id in rows:
        Image.fromarray(np.full((20, 20), 40 + 100 * label, np.uint8), "L").save(images / f"{task_id}.png")
        tasks.append({"task_id": task_id, "file": f"images/{task_id}.png", "label": label, "split": split,
                      "sample_id": sample_id})  # fmt: skip
    manifest = {"project_id": 5, "classes": ["a", "b"], "revision": 3, "tasks": tasks}
    (run_dir / "labelstudio" / "tasks.json").write_text(json.dumps(manifest))


def test_the_dataset_reads_the_snapshot_alone(tmp_path):
    # sample ids follow the order tasks joined, not task ids: task 9 joined after 12 and keeps its place
    write_snapshot(tmp_path, [(12, 1, "train", 0), (3, 0, "test", 0), (9, 0, "train", 1)])
    train, test = load_dataset("labelstudio:5", root=tmp_path, size=20, channels=1)
    assert train.task_ids == [12, 9] and train.labels.tolist() == [1, 0] and train.revision == 3
    assert test.task_ids == [3] and train.classes == ["a", "b"]
    image, label, sid = train[0]
    assert image.shape == (1, 20, 20) and (label, sid) == (1, 0) and float(image.mean()) > 0.5
    assert native_shape("labelstudio:5", root=tmp_path) == (1, 20)
    with pytest.raises(ValueError, match="holds project 5, not 6"):
        load_dataset("labelstudio:6", root=tmp_path, size=20)
    with pytest.raises(ValueError, match="lives in a run directory"):
        load_dataset("labelstudio:5", size=20)


def test_sample_ids_with_a_gap_are_refused(tmp_path):
    write_snapshot(tmp_path, [(1, 0, "train", 0), (2, 1, "train", 2), (3, 0, "test", 0)])
    with pytest.raises(ValueError, match="train sample ids are not 0..1"):
        load_dataset("labelstudio:5", root=tmp_path, size=20)
