"""The backend over a run directory with bad checkpoint files: each is skipped with a warning, /predict keeps
serving the last checkpoint that loaded, and /health names the same model_version (and what it skipped)."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from tests.ls_backend.test_app import (
    GRID,
    digit_uri,
    make_client,
    predict_body,
    save_round,
)
from trainer.core.models import build_model
from trainer.runs.checkpoint import checkpoint_path, save_checkpoint
from trainer.runs.run import Run, RunConfig


@pytest.fixture
def run(tmp_path) -> Run:
    run = Run.create(tmp_path / "run", RunConfig(top_k=3))
    save_round(run, 0)
    return run


def served(client) -> tuple[str, dict]:
    """(the model_version /predict answered with, /health's body)."""
    resp = client.post("/predict", json=predict_body(digit_uri(0)))
    assert resp.status_code == 200, resp.json
    return resp.json["results"][0]["model_version"], client.get("/health").json


def save_foreign(path, classes, round_=1) -> None:
    """A checkpoint another run would write: same architecture, its own classes."""
    model = build_model("small-cnn", len(classes), 1, 28)
    save_checkpoint(path, model, {"model": "small-cnn", "num_classes": len(classes), "in_channels": 1,
                                  "image_size": 28, "classes": classes, "round": round_,
                                  "model_version": f"other-r{round_:03d}",
                                  "grid": {"rows": GRID.rows, "cols": GRID.cols}})  # fmt: skip


def make_bad(run: Run, kind: str, tmp_path) -> None:
    """Round 1's file, made one the backend must not serve."""
    path = checkpoint_path(run.checkpoint_dir, 1)
    if kind == "truncated":
        save_round(run, 1, seed=1)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "directory":
        path.mkdir(parents=True)
    elif kind == "dangling link":
        path.symlink_to(tmp_path / "gone.pt")
    elif kind == "not a checkpoint":
        path.write_text("round one notes\n")
    elif kind == "link to another run":
        other = tmp_path / "other" / "round-001.pt"
        save_foreign(other, [f"class-{k}" for k in range(10)])
        path.symlink_to(other)
    elif kind == "another run's classes":
        save_foreign(path, [f"class-{k}" for k in range(10)])
    elif kind == "another round":
        path.symlink_to(checkpoint_path(run.checkpoint_dir, 0))
    else:
        raise AssertionError(kind)


KINDS = ["truncated", "directory", "dangling link", "not a checkpoint", "link to another run",
         "another run's classes", "another round"]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_newest_checkpoint_is_skipped_and_the_last_good_one_served(run, kind, tmp_path, caplog):
    make_bad(run, kind, tmp_path)
    _, client = make_client(run)
    with caplog.at_level(logging.WARNING, logger="ls_backend"):
        version, health = served(client)
        again, _ = served(client)
    assert version == again == health["model_version"] == run.model_version(0)
    [skipped] = health["skipped_checkpoints"]
    assert skipped.startswith("checkpoints/round-001.pt") and str(tmp_path) not in skipped
    warnings = [r for r in caplog.records if "checkpoints/round-001.pt" in r.getMessage()]
    assert len(warnings) == 1  # once per version of the file, not once per request
    assert client.get("/versions").json == {"versions": [run.model_version(0)]}
    assert client.post("/setup", json={"project": "1.1", "schema": None}).json["model_version"] == version


@pytest.mark.parametrize("name", ["round-٩.pt", "round-５.pt", "round-" + "9" * 30 + ".pt"])
def test_a_file_with_non_ascii_or_overlong_digits_is_not_a_round(run, name):
    """round-٩.pt counted as round 9: /health said r009 while /predict served r000."""
    shutil.copy(checkpoint_path(run.checkpoint_dir, 0), run.checkpoint_dir / name)
    _, client = make_client(run)
    assert client.get("/health").json["model_version"] == run.model_version(0)
    version, health = served(client)
    assert version == health["model_version"] == run.model_version(0) and health["skipped_checkpoints"] == []
    assert client.get("/versions").json == {"versions": [run.model_version(0)]}


def test_the_served_checkpoint_going_bad_keeps_it_served_until_a_good_one_comes(run, tmp_path):
    save_round(run, 1, seed=1)
    _, client = make_client(run)
    assert served(client)[0] == run.model_version(1)
    path = checkpoint_path(run.checkpoint_dir, 1)
    path.write_bytes(path.read_bytes()[:100])  # rewritten in place, truncated
    version, health = served(client)
    assert version == health["model_version"] == run.model_version(1)  # the copy in memory, not round 0
    assert health["skipped_checkpoints"][0].startswith("checkpoints/round-001.pt is not a readable checkpoint")
    save_round(run, 2, seed=2)
    version, health = served(client)
    assert version == health["model_version"] == run.model_version(2) and health["skipped_checkpoints"] == []


def test_a_bad_file_that_is_replaced_by_a_good_one_is_served(run, tmp_path):
    make_bad(run, "truncated", tmp_path)
    _, client = make_client(run)
    assert served(client)[0] == run.model_version(0)
    save_round(run, 1, seed=1)  # retrained: a new file where the bad one was
    assert served(client)[0] == run.model_version(1)


def test_no_loadable_checkpoint_is_503_naming_the_files(tmp_path):
    run = Run.create(tmp_path / "run", RunConfig())
    save_round(run, 0)
    torch.save({"weights": [0]}, checkpoint_path(run.checkpoint_dir, 0))
    _, client = make_client(run)
    resp = client.post("/predict", json=predict_body(digit_uri(0)))
    assert resp.status_code == 503
    assert resp.json["error"] == ("no checkpoint can be served: checkpoints/round-000.pt is not a checkpoint of "
                                  "this project (no 'model'/'meta' keys)")  # fmt: skip
    health = client.get("/health").json
    assert health["model_version"] is None and len(health["skipped_checkpoints"]) == 1
