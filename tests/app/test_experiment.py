"""The offline experiment: the simulated annotator, arms, and the results.json shape the issue asks for."""

import json

import numpy as np
import pytest

from label_config.grid import Grid
from trainer.app.cli import main
from trainer.app.experiment import (
    AnnotatorConfig,
    ExperimentConfig,
    arm_names,
    simulated_cells,
)


def _decoy_mask(r0=0, c0=24):
    m = np.zeros((28, 28), dtype=bool)
    m[r0 : r0 + 4, c0 : c0 + 4] = True
    return m


def test_simulated_annotator_marks_exactly_the_decoy_cell():
    grid = Grid.from_cell_px(28, 28, 4)
    cells = simulated_cells(_decoy_mask(), grid, AnnotatorConfig(), np.random.default_rng(0))
    assert cells.sum() == 1 and cells[0, 6]


@pytest.mark.parametrize("miss, wrong, expect", [(1.0, 0.0, 0), (0.0, 1.0, 2)])
def test_simulated_annotator_misses_and_adds_wrong_cells(miss, wrong, expect):
    grid = Grid.from_cell_px(28, 28, 4)
    cells = simulated_cells(_decoy_mask(), grid, AnnotatorConfig(miss_rate=miss, wrong_rate=wrong), np.random.default_rng(0))
    assert cells.sum() == expect


def test_sweep_names_arms_apart():
    cfg = ExperimentConfig(arms=("baseline", "hitl"), budgets=(0.01, 0.05), strategies=("entropy", "random"))
    names = [n for n, *_ in arm_names(cfg)]
    assert names == ["baseline", "hitl[entropy@0.01]", "hitl[random@0.01]", "hitl[entropy@0.05]", "hitl[random@0.05]"]


@pytest.mark.parametrize("bad, match", [({"arms": ("nope",)}, "unknown arms"), ({"budgets": (2.0,)}, "budgets"),
                                        ({"dataset": "folder:x"}, "known decoy"), ({"rounds": 0}, "rounds")])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(**bad)


def test_cli_writes_results_json_in_the_issue_shape(tmp_path, capsys):
    out = tmp_path / "exp"
    code = main(["experiment", "--seeds", "0", "--budget", "0.02", "--rounds", "1", "--epochs", "1",
                 "--train-fraction", "0.1", "--workers", "1", "--saliency", "saliency", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "decoy-mnist"
    assert set(results["arms"]) == {"baseline", "clean", "rrr_all", "hitl"}
    for arm in results["arms"].values():
        assert len(arm["acc"]) == len(arm["min_loss"]) == len(arm["irrelevant_share"]) == 1
        assert 0 <= arm["acc"][0] <= 1 and 0 <= arm["irrelevant_share"][0] <= 1
    assert results["arms"]["hitl"]["annotated_fraction"] == [pytest.approx(0.02, abs=0.003)]
    assert "annotated_fraction" not in results["arms"]["baseline"]
    printed = capsys.readouterr().out
    assert "rrr_all" in printed and "wall time" in printed
