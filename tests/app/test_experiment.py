"""The offline experiment: the simulated annotator, arms, and the results.json shape the issue asks for."""

import json

import pytest

from trainer.app.cli import main
from trainer.app.experiment import ExperimentConfig, arm_names


def test_sweep_names_arms_apart():
    cfg = ExperimentConfig(arms=("baseline", "hitl"), budgets=(0.01, 0.05), strategies=("entropy", "random"))
    names = [n for n, *_ in arm_names(cfg)]
    assert names == ["baseline", "hitl[entropy@0.01]", "hitl[random@0.01]", "hitl[entropy@0.05]", "hitl[random@0.05]"]


@pytest.mark.parametrize("bad, match", [({"arms": ("nope",)}, "unknown arms"), ({"budgets": (2.0,)}, "budgets"),
                                        ({"datasets": ("folder:x",)}, "known decoy"), ({"rounds": 0}, "rounds")])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(**bad)


def test_cli_writes_results_json_in_the_issue_shape(tmp_path, capsys):
    out = tmp_path / "exp"
    code = main(["experiment", "--dataset", "decoy-mnist", "watermark-mnist", "--seeds", "0", "--budget", "0.02",
                 "--rounds", "1", "--epochs", "1", "--train-fraction", "0.1", "--workers", "1", "--saliency",
                 "saliency", "--image-size", "21", "--out", str(out)])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["datasets"]) == ["decoy-mnist", "watermark-mnist"]  # one table per dataset
    assert results["config"]["image_size"] == 21
    for table in results["datasets"].values():
        arms = table["arms"]
        assert set(arms) == {"baseline", "clean", "rrr_all", "hitl"}
        for arm in arms.values():
            assert len(arm["acc"]) == len(arm["min_loss"]) == len(arm["irrelevant_share"]) == 1
            assert [h["round"] for h in arm["history"][0]] == [0, 1]
        assert arms["hitl"]["annotated_fraction"] == [pytest.approx(0.02, abs=0.003)]
        assert "annotated_fraction" not in arms["baseline"]
        assert arms["rrr_all"]["irrelevant_share"][0] < arms["baseline"]["irrelevant_share"][0]
    printed = capsys.readouterr().out
    assert "watermark-mnist" in printed and "rrr_all" in printed and "wall time" in printed
