"""``hitl compare``: runs side by side; a run and its no-feedback twin get the paper's heading."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from trainer.app.cli import main
from trainer.app.compare import score_run
from trainer.core.feedback import Feedback
from trainer.runs.atomic import write_json
from trainer.runs.run import Run, RunConfig, with_overrides

TINY = {"train.epochs": 1, "train.batch_size": 256, "train.replay": 4}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A decoy-mnist run on 10% of the training split with masks on 8 images in round 1, and its twin."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = Run.create(tmp_path_factory.mktemp("compare") / "mine", with_overrides(RunConfig(), train_fraction=0.1,
                                                                                    **TINY))  # fmt: skip
        run.train_next_round()
        masks = run.datasets[0].decoy_masks.numpy()
        run.train_next_round(Feedback(cells={i: run.grid.mask_to_cells(masks[i]) for i in range(8)}))
        twin = run.twin()
        twin.train_to(1, Feedback())
        return run, twin
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_compare_prints_the_paper_heading_and_a_row_per_run(pair, tmp_path, capsys):
    run, twin = pair
    out = tmp_path / "cmp.png"
    assert main(["compare", str(run.directory), str(twin.directory), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Baseline 10% vs HITL 10%"
    assert lines[2].split()[:6] == ["mine", "hitl", "10%", "1", "8", f"{run.history()[-1]['acc']:.1%}"]
    assert lines[3].split()[:5] == ["mine-twin", "baseline", "10%", "1", "0"]
    assert lines[-1] == f"plot: {out}"
    with Image.open(out) as picture:
        assert picture.width > 300


@pytest.mark.slow
def test_compare_json_and_scores_from_history(pair, tmp_path, capsys):
    run, twin = pair
    assert main(["compare", str(twin.directory), str(run.directory), "--json", "--out", str(tmp_path / "c.png")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["headings"] == ["Baseline 10% vs HITL 10%"]
    mine = {r["name"]: r for r in data["runs"]}["mine"]
    assert mine["source"] == "history" and mine["acc"] == run.history()[-1]["acc"]
    assert 0 < mine["balanced_acc"] <= 1 and 0 < mine["macro_f1"] <= 1
    assert mine["min_loss"] == min(h["min_loss"] for h in run.history())


@pytest.mark.slow
def test_an_old_run_without_confusion_is_scored_from_its_checkpoint(pair, tmp_path):
    run, _ = pair
    import shutil

    old = Run.open(shutil.copytree(run.directory, tmp_path / "old"))
    write_json(
        old.directory / "history.json", [{k: v for k, v in h.items() if k != "confusion"} for h in run.history()]
    )
    new, recomputed = score_run(run), score_run(old)
    assert recomputed.source == "checkpoint"
    assert (recomputed.balanced_acc, recomputed.macro_f1) == pytest.approx((new.balanced_acc, new.macro_f1))


@pytest.mark.slow
def test_compare_needs_two_trained_runs(pair, tmp_path, capsys):
    run, _ = pair
    assert main(["compare", str(run.directory)]) == 2
    assert "at least two runs" in capsys.readouterr().err
    Run.create(tmp_path / "fresh", RunConfig())
    assert main(["compare", str(run.directory), str(tmp_path / "fresh"), "--out", str(tmp_path / "x.png")]) == 2
    assert "has no trained round yet" in capsys.readouterr().err


def test_compare_plots_a_run_whose_name_has_dollar_signs(pair, tmp_path, capsys):
    """matplotlib read `$\\frac$` in a run's name as mathtext and `hitl compare` crashed drawing the plot."""
    import shutil

    run, twin = pair
    odd = shutil.copytree(run.directory, tmp_path / r"run-$\frac$")
    out = tmp_path / "odd.png"
    assert main(["compare", str(odd), str(twin.directory), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(r"run-$\frac$ ")
    with Image.open(out) as picture:
        assert picture.width > 300
