"""Checkpoint files a run directory may hold that are not good checkpoints: names with non-ASCII or too many
digits are not rounds; a truncated file, a directory, a dangling link, a link out of the run, another run's or
another round's file are refused with an error naming the file relative to the run, and the next round does
not start from them (nor overwrite them)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import trainer.runs.checkpoint as ckpt
from trainer.core.models import build_model
from trainer.runs.checkpoint import checkpoint_path, save_checkpoint
from trainer.runs.run import Run, RunConfig, with_overrides

TINY = {"train.epochs": 1, "train.batch_size": 256, "train.replay": 4}
MAX_ROUND = 99_999  # a round is one human feedback round: five digits is plenty


def save_round(run: Run, round_: int, **meta) -> None:
    torch.manual_seed(round_)
    model = build_model(run.config.model, len(run.classes), *run.image_shape[:2])
    save_checkpoint(checkpoint_path(run.checkpoint_dir, round_), model, {**run.meta(round_), **meta})


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Run:
    """A decoy-mnist run with rounds 0 and 1 saved (untrained weights: loading is what is tested)."""
    run = Run.create(tmp_path_factory.mktemp("hardening") / "template", with_overrides(RunConfig(), **TINY))
    save_round(run, 0)
    save_round(run, 1)
    return run


@pytest.fixture
def run(template, tmp_path) -> Run:
    run = Run.open(shutil.copytree(template.directory, tmp_path / "run"))
    run.__dict__["datasets"] = template.datasets  # same config, same data: no second load
    return run


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "name, round_",
    [("round-000.pt", 0), ("round-042.pt", 42), ("round-1000.pt", 1000), ("round-99999.pt", 99999),
     ("round-٩.pt", None), ("round-٠٠٩.pt", None), ("round-５.pt", None), ("round-00５.pt", None),
     ("round-0009.pt", None), ("round-9.pt", None), ("round-100000.pt", None), ("round-" + "9" * 30 + ".pt", None),
     ("round-001.pt.tmp", None), (".round-001.pt.123.tmp", None)],
)  # fmt: skip
def test_only_canonical_ascii_names_are_rounds(name, round_):
    assert ckpt.parse_round(name) == round_


@pytest.mark.parametrize("bad", [-1, MAX_ROUND + 1, 10**29, True, 1.0])
def test_checkpoint_path_refuses_rounds_out_of_range(bad, tmp_path):
    assert ckpt.MAX_ROUND == MAX_ROUND
    with pytest.raises(ValueError, match=f"a round is a whole number from 0 to {MAX_ROUND}"):
        checkpoint_path(tmp_path, bad)


@pytest.mark.parametrize("name", ["round-٩.pt", "round-５.pt", "round-" + "9" * 30 + ".pt", "round-0009.pt"])
def test_unicode_and_overlong_round_names_are_not_rounds(run, name):
    """`\\d` matched Arabic-Indic and full-width digits (round-٩.pt was round 9); 30 digits overflowed later."""
    shutil.copy(checkpoint_path(run.checkpoint_dir, 1), run.checkpoint_dir / name)
    assert run.current_round() == 1
    assert [r for r, _ in run.checkpoints()] == [0, 1]


def test_a_good_checkpoint_loads_verified(run):
    model, meta = run.load_checkpoint(1)
    assert meta["round"] == 1 and meta["classes"] == run.classes and not model.training


def break_checkpoint(run: Run, kind: str, tmp_path) -> None:
    """Make round 1's file one that must not be served or continued from."""
    path = checkpoint_path(run.checkpoint_dir, 1)
    if kind == "truncated":
        truncate(path)
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    elif kind == "dangling link":
        path.unlink()
        path.symlink_to(run.checkpoint_dir / "gone.pt")
    elif kind == "not a checkpoint":
        torch.save([1, 2, 3], path)
    elif kind == "another round":  # a link inside the run, to round 0's file
        path.unlink()
        path.symlink_to(checkpoint_path(run.checkpoint_dir, 0))
    elif kind == "another run's classes":  # a copy, not a link: its meta gives it away
        save_round(run, 1, classes=list("abcdefghij"))
    elif kind == "link out of the run":
        other = Run.create(tmp_path / "other", run.config)
        other.__dict__["datasets"] = run.datasets
        save_round(other, 1)  # a checkpoint that would otherwise pass every check
        path.unlink()
        path.symlink_to(checkpoint_path(other.checkpoint_dir, 1))
    else:
        raise AssertionError(kind)


BAD = {
    "truncated": "is not a readable checkpoint",
    "directory": "cannot be opened as a checkpoint file",
    "dangling link": "cannot be opened as a checkpoint file",
    "not a checkpoint": "is not a checkpoint of this project",
    "another round": "holds round 0, not round 1",
    "another run's classes": r"was saved for another run: classes \['a', 'b'",
    "link out of the run": "outside the run directory",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_checkpoint_is_refused_naming_it_relative_to_the_run(run, kind, tmp_path):
    break_checkpoint(run, kind, tmp_path)
    with pytest.raises(ckpt.CheckpointError, match=BAD[kind]) as caught:
        run.load_checkpoint(1)
    message = str(caught.value)
    assert message.startswith(os.path.join("checkpoints", "round-001.pt"))
    assert str(tmp_path) not in message  # relative: no absolute path, of the run's file or a link's target


@pytest.mark.parametrize("kind", list(BAD))
def test_the_next_round_refuses_a_bad_newest_checkpoint_and_keeps_it(run, kind, tmp_path):
    """Training stops with an error that names the file and what to do; it neither starts from the file nor
    overwrites it (nothing silently lost), and no round 2 appears."""
    break_checkpoint(run, kind, tmp_path)
    path = checkpoint_path(run.checkpoint_dir, 1)
    before = os.readlink(path) if path.is_symlink() else (path.read_bytes() if path.is_file() else None)
    with pytest.raises(ValueError, match=BAD[kind]) as caught:
        run.train_next_round()
    message = str(caught.value)
    assert "checkpoints/round-001.pt" in message and "continue from round 0" in message
    after = os.readlink(path) if path.is_symlink() else (path.read_bytes() if path.is_file() else None)
    assert after == before and os.path.lexists(path)
    assert run.current_round() == 1 and not checkpoint_path(run.checkpoint_dir, 2).exists()


def test_moving_the_bad_file_away_continues_from_the_last_good_round(run, tmp_path, one_torch_thread):
    truncate(checkpoint_path(run.checkpoint_dir, 1))
    with pytest.raises(ValueError, match="move it out of checkpoints/ to continue from round 0"):
        run.train_next_round()
    checkpoint_path(run.checkpoint_dir, 1).rename(tmp_path / "kept-round-001.pt")
    record = run.train_next_round()
    assert record["round"] == 1 and run.load_checkpoint(1)[1]["round"] == 1


def test_no_round_past_the_bound_is_trained(run):
    shutil.copy(checkpoint_path(run.checkpoint_dir, 1), run.checkpoint_dir / f"round-{MAX_ROUND}.pt")
    with pytest.raises(ValueError, match=f"from 0 to {MAX_ROUND}, got {MAX_ROUND + 1}"):
        run.train_next_round()
