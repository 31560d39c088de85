"""Run directories: rounds continue from checkpoints with the ledger's feedback; configs are checked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.core.feedback import Feedback
from trainer.core.sampling import predict_probs, select
from trainer.runs.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    read_checkpoint,
    read_train_probs,
    save_checkpoint,
)
from trainer.runs.run import Run, RunBusy, RunConfig, with_overrides

TINY = {"train.epochs": 1, "train.batch_size": 256, "train.replay": 4}


def test_create_is_idempotent_and_refuses_another_config(tmp_path):
    cfg = with_overrides(RunConfig(), **TINY)
    Run.create(tmp_path / "r", cfg)
    assert Run.create(tmp_path / "r", cfg).config == cfg
    with pytest.raises(ValueError, match="another config"):
        Run.create(tmp_path / "r", with_overrides(cfg, seed=3))
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        Run.open(tmp_path / "missing")


def test_config_round_trips_and_rejects_unknown_keys():
    cfg = with_overrides(RunConfig(), **TINY, **{"sampling.strategy": "margin"})
    data = json.loads(json.dumps(__import__("dataclasses").asdict(cfg)))
    assert RunConfig.from_dict(data) == cfg
    with pytest.raises(ValueError, match="unknown run config keys: colour"):
        RunConfig.from_dict({**data, "colour": "red"})


@pytest.mark.slow
def test_rounds_continue_from_checkpoint_with_feedback(tmp_path, one_torch_thread):
    run = Run.create(tmp_path / "r", with_overrides(RunConfig(), **TINY))
    assert run.current_round() == -1
    first = run.train_next_round()
    assert first["round"] == 0 and first["annotated"] == 0 and run.current_round() == 0
    weights0 = read_checkpoint(run.checkpoint_dir / "round-000.pt")["model"]

    train, _ = run.datasets
    ids = [3, 17, 29]
    fb = Feedback(cells={i: run.grid.mask_to_cells(train.decoy_masks[i].numpy()) for i in ids}, labels={5: 1})
    second = run.train_next_round(fb)
    assert second["round"] == 1 and second["annotated"] == 3 and second["label_fixes"] == 1
    assert second["epochs"][0]["penalised_rows"] > 0 and second["epochs"][0]["penalty"] > 0
    model, meta = load_checkpoint(run.checkpoint_dir / "round-001.pt")
    assert meta["model_version"] == run.model_version(1) and meta["grid"] == {"rows": 7, "cols": 7}
    changed = any(not torch.equal(weights0[k], v) for k, v in model.state_dict().items())
    assert changed
    assert [h["round"] for h in Run.open(run.directory).history()] == [0, 1]


def test_choose_samples_excludes_given_ids(tmp_path, one_torch_thread):
    run = Run.create(tmp_path / "r", with_overrides(RunConfig(), **TINY))
    model, _, _ = run.load_model()
    first = run.choose_samples(model, 0, 5, exclude=set())
    second = run.choose_samples(model, 0, 5, exclude=set(first))
    assert len(set(first) | set(second)) == 10


@pytest.mark.slow
def test_the_sampler_ranks_the_scores_the_rounds_last_epoch_saved(round0_run, tmp_path, one_torch_thread):
    """A round's checkpoint keeps its last epoch's softmax of every training image; choosing the next images
    ranks those (no second pass), and a checkpoint without them is scored by the model instead."""
    run = round0_run
    train, _ = run.datasets
    probs = read_train_probs(checkpoint_path(run.checkpoint_dir, 0))
    assert probs.shape == (len(train), len(run.classes)) and not torch.isnan(probs).any()
    assert torch.allclose(probs.sum(1), torch.ones(len(train)), atol=1e-4)
    model, _ = load_checkpoint(checkpoint_path(run.checkpoint_dir, 0))
    chosen = run.choose_samples(model, 0, 5, exclude={1, 2})
    strategy = run.config.sampling.strategy
    assert chosen == [int(i) for i in select(probs, train.labels, 5, strategy=strategy, exclude={1, 2},
                                             seed=run.config.seed * 1000)]  # fmt: skip
    # An older checkpoint (no scores): the model scores the training set in eval mode.
    old = Run.create(tmp_path / "old", run.config)
    old.__dict__["datasets"] = run.datasets
    save_checkpoint(checkpoint_path(old.checkpoint_dir, 0), model, old.meta(0))
    eval_probs = predict_probs(model, train)
    assert old.choose_samples(model, 0, 5, exclude=set()) == [
        int(i) for i in select(eval_probs, train.labels, 5, strategy=strategy, seed=run.config.seed * 1000)
    ]


@pytest.mark.slow
def test_history_records_irrelevant_share_on_decoy_test_set(tmp_path, one_torch_thread):
    run = Run.create(tmp_path / "r", with_overrides(RunConfig(), **TINY, saliency="saliency"))
    record = run.train_next_round()
    assert 0 <= record["irrelevant_share"] <= 1


def test_one_trainer_at_a_time_per_run(tmp_path):
    """The backend's Start Training and `hitl train` both took round N + 1 and overwrote each other."""
    run = Run.create(tmp_path / "run", RunConfig())
    with run.exclusive():
        with pytest.raises(RunBusy, match=rf"training a round in another process or thread \(pid {os.getpid()}\)"):
            Run.open(run.directory).train_next_round()
    with run.exclusive():  # released: the next holder gets it
        pass


@pytest.mark.slow
def test_a_second_process_is_refused_while_a_round_trains(tmp_path):
    run = Run.create(tmp_path / "run", RunConfig())
    code = (
        "import sys; from trainer.runs.run import Run, RunBusy\n"
        "try:\n    Run.open(sys.argv[1]).train_next_round()\nexcept RunBusy as e:\n    print(e); sys.exit(3)"
    )
    with run.exclusive():
        done = subprocess.run([sys.executable, "-c", code, str(run.directory)], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert done.returncode == 3 and "training a round in another process" in done.stdout


def test_the_ledger_waits_for_another_writer_instead_of_failing(tmp_path):
    from trainer.runs.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.sqlite")
    (busy_ms,) = ledger._conn.execute("PRAGMA busy_timeout").fetchone()
    assert busy_ms >= 60_000  # SQLite's default of 5 s failed a second `hitl pull` during a large one


@pytest.mark.slow
def test_train_fraction_keeps_a_seeded_stratified_share_and_the_whole_test_split(tmp_path):
    full = Run.create(tmp_path / "full", RunConfig())
    part = Run.create(tmp_path / "part", with_overrides(RunConfig(), train_fraction=0.1))
    (train, test), (small, small_test) = full.datasets, part.datasets
    assert len(small_test) == len(test)
    assert len(small) == pytest.approx(0.1 * len(train), abs=len(train.classes))
    np.testing.assert_allclose(np.bincount(small.labels.numpy()) / len(small),
                               np.bincount(train.labels.numpy()) / len(train), atol=0.01)  # fmt: skip
    again = Run.open(tmp_path / "part").datasets[0]
    assert torch.equal(again[5][0], small[5][0])  # seeded: the same images on every open
    with pytest.raises(ValueError, match=r"train_fraction must be in \(0, 1\], got 0"):
        RunConfig(train_fraction=0)


@pytest.mark.slow
def test_twin_trains_the_same_rounds_without_feedback(tmp_path, one_torch_thread):
    run = Run.create(tmp_path / "r", with_overrides(RunConfig(), train_fraction=0.1, **TINY))
    run.train_next_round()
    masks = run.datasets[0].decoy_masks.numpy()
    feedback = Feedback(cells={i: run.grid.mask_to_cells(masks[i]) for i in range(4)})
    run.train_next_round(feedback)
    twin = run.twin()
    assert twin.directory == tmp_path / "r-twin" and twin.config.twin_of == "r"
    assert twin.config == with_overrides(run.config, twin_of="r")
    assert [h["round"] for h in twin.train_to(run.current_round(), Feedback())] == [0, 1]
    assert twin.train_to(1, Feedback()) == []  # caught up: nothing trained twice
    ours, theirs = run.history(), twin.history()
    assert [h["annotated"] for h in theirs] == [0, 0] and ours[1]["annotated"] == 4
    assert ours[1]["epochs"][-1]["penalty"] > 0 and theirs[1]["epochs"][-1]["penalised_rows"] == 0
    assert theirs[0]["acc"] == pytest.approx(ours[0]["acc"])  # same data, seeds and schedule
    assert sum(map(sum, theirs[1]["confusion"])) == len(twin.datasets[1])
    assert run.twin().directory == twin.directory  # reopened, not recreated
    with pytest.raises(ValueError, match="itself the no-feedback twin"):
        twin.twin()


def test_training_pid_names_the_process_holding_the_lock(tmp_path):
    run = Run.create(tmp_path / "r", RunConfig())
    assert run.training_pid() is None  # no lock file yet
    with run.exclusive():
        assert run.training_pid() == os.getpid()
        with pytest.raises(RunBusy):  # the probe did not take the lock away from its holder
            with run.exclusive():
                pass
    assert run.training_pid() is None
    with run.exclusive():  # nor did it keep the lock
        pass
