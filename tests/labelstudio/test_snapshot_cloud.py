"""A team's project whose images live in an S3 bucket as a run's dataset: ``hitl init RUN --dataset labelstudio:ID``
reads the ``s3://`` tasks through Label Studio's presign (a real Label Studio S3 import storage over moto's
standalone server, ``tests.s3``), ``hitl train`` trains round 0 on them, and a missing object is reported by task and
left out while the rest is snapshotted."""

from __future__ import annotations

import pytest

from tests.ls_backend.stock import STOCK_CLASSES
from tests.s3 import BUCKET, choice, png, s3_project
from trainer.app.cli import main
from trainer.data.snapshot import snapshot_dir
from trainer.runs.run import Run

pytestmark = pytest.mark.labelstudio


@pytest.fixture
def ls_env(label_studio, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)


def label_all(ls_client, project) -> dict[int, int]:
    """Every task labelled through the API, classes in turn; task id -> class index."""
    given = {}
    for n, task_id in enumerate(sorted(project.tasks)):
        given[task_id] = n % len(STOCK_CLASSES)
        ls_client.annotations.create(id=task_id, result=[choice(STOCK_CLASSES[given[task_id]])])
    return given


def init(directory, project_id: int) -> int:
    return main(["init", str(directory), "--dataset", f"labelstudio:{project_id}", "--epochs", "1", "--seed", "3",
                 "--per-round", "2"])  # fmt: skip


def test_init_snapshots_the_s3_images_and_trains_round_0(label_studio, ls_client, s3_server, ls_env, tmp_path,
                                                         one_torch_thread):  # fmt: skip
    names = [f"{k}.png" for k in range(9)]
    project = s3_project(label_studio, ls_client, s3_server, "train", names)
    given = label_all(ls_client, project)
    assert init(tmp_path / "run", project.project_id) == 0
    run = Run.open(tmp_path / "run")
    train, test = run.datasets
    assert sorted(train.task_ids + test.task_ids) == sorted(project.tasks)  # every S3 task, none left out
    assert {t: int(y) for part in run.datasets for t, y in zip(part.task_ids, part.labels)} == given
    for task_id, key in project.tasks.items():  # the snapshot holds the bucket's bytes
        assert (snapshot_dir(run.directory) / "images" / f"{task_id}.png").read_bytes() == png_of(project, key)
    assert run.classes == STOCK_CLASSES and run.image_shape == (1, 28, 28)
    assert main(["train", str(run.directory)]) == 0
    (record,) = Run.open(run.directory).history()
    assert record["round"] == 0 and record["train_images"] == len(train)


def png_of(project, key: str) -> bytes:
    """The bytes ``tests.s3.s3_project`` put into the bucket for ``key`` (``<n>.png``, the n-th name it was given)."""
    return png(700 + 10 * len(project.prefix) + int(key.split(".")[0]))


def test_a_missing_object_is_reported_by_task_and_the_rest_snapshotted(label_studio, ls_client, s3_server, ls_env,
                                                                       tmp_path, capsys):  # fmt: skip
    project = s3_project(label_studio, ls_client, s3_server, "gaps", ["0.png", "1.png", "2.png", "3.png", "4.png"])
    label_all(ls_client, project)
    s3_server.delete(BUCKET, "gaps/2.png")
    gone = next(i for i, key in project.tasks.items() if key == "2.png")
    assert init(tmp_path / "run", project.project_id) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if f"task {gone}:" in x)
    assert f"s3://{BUCKET}/gaps/2.png" in line and "HTTP 403" in line and "left out" in line
    assert "X-Amz" not in err  # the presigned URL is never quoted: its signature is a credential
    run = Run.open(tmp_path / "run")
    kept = sorted(t for part in run.datasets for t in part.task_ids)
    assert kept == sorted(i for i in project.tasks if i != gone)
