"""`hitl bench step --json` prints one JSON object with the fields the issue names, timing what it says."""

import json

import pytest
import torch
from torch import nn

from trainer.app.bench_all import run_all
from trainer.app.bench_fold import bench_fold, fold_cosines, smooth_activations
from trainer.app.bench_round import bench_round
from trainer.app.cli import main
from trainer.core.loop import TrainConfig
from trainer.core.models import build_model


def test_bench_step_json(capsys):
    args = ["bench", "step", "--model", "small-cnn", "--size", "28", "--batch", "16", "--steps", "3", "--json"]
    assert main([*args, "--annotated", "0.25"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"ce_ms", "reg_ms", "ratio", "model", "batch", "size", "device"} <= set(out)
    assert out["annotated_rows"] == 4 and out["model"] == "small-cnn" and out["batch"] == 16  # 25% of 16 rows
    # The penalised step runs a second forward and a double backward on top of the CE step: it costs more.
    assert out["reg_ms"] > out["ce_ms"] > 0 and out["ratio"] > 1


@pytest.mark.slow
def test_bench_round_json_times_a_plain_and_a_feedback_round_on_the_same_data(capsys, one_torch_thread):
    args = ["bench", "round", "--model", "small-cnn", "--train-fraction", "0.05", "--budget", "0.05", "--epochs", "1",
            "--compare", "replay=0", "--compare", "penalty_every=2", "replay=4", "--repeat", "2", "--json"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"plain_s", "feedback_s", "ratio", "model", "size", "device", "precision", "penalised_rows_per_step",
            "plain_acc", "feedback_acc"} <= set(out)  # fmt: skip
    assert out["model"] == "small-cnn" and out["size"] == 28 and out["precision"] == "fp32"
    assert out["train_images"] == 201 and out["annotated"] == 10  # 5% of each class, rounded
    seed = out["per_seed"][0]
    assert seed["plain"]["penalised_rows_per_step"] == 0 and out["penalised_rows_per_step"] > 0
    assert out["ratio"] == pytest.approx(seed["feedback"]["seconds"] / seed["plain"]["seconds"], abs=2e-3)
    for arm in (
        "plain",
        "feedback",
        "compare",
        "compare-2",
    ):  # each arm timed twice; its seconds are the median (here the mean)
        assert len(seed[arm]["seconds_all"]) == 2 and out["repeat"] == 2
        assert seed[arm]["seconds"] == pytest.approx(sum(seed[arm]["seconds_all"]) / 2, abs=2e-3)
    # The compared arm draws no replay rows: it penalises only annotated rows that fall in a batch.
    assert seed["compare"]["penalised_rows_per_step"] < out["penalised_rows_per_step"]
    assert out["compare"]["overrides"] == {"replay": 0}
    # The second compared arm penalises 4 drawn rows (and the batch's own) on every other step only.
    assert out["compare-2"]["overrides"] == {"penalty_every": 2, "replay": 4}
    assert seed["compare-2"]["penalised_rows_per_step"] < out["penalised_rows_per_step"] / 2
    for arm in ("compare", "compare-2"):
        assert out[arm]["ratio"] == pytest.approx(seed[arm]["seconds"] / seed["plain"]["seconds"], abs=2e-3)


@pytest.mark.slow
def test_bench_round_arms_start_from_the_same_state(one_torch_thread):
    """An arm compared with the very settings of the feedback arm trains to the same model: every arm starts from
    the round-0 model and optimizer, not from the moments the arms before it left (Adam updates them in place)."""
    out = bench_round(model="small-cnn", fraction=0.05, budget=0.05, train=TrainConfig(epochs=1),
                      compare=[{"lam": TrainConfig().lam}])  # fmt: skip
    seed = out["per_seed"][0]
    assert (seed["compare"]["acc"], seed["compare"]["loss"]) == (seed["feedback"]["acc"], seed["feedback"]["loss"])


def test_bench_round_refuses_an_unknown_override(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "round", "--compare", "colour=red"])
    assert "--compare takes KEY=VALUE" in capsys.readouterr().err


def test_bench_step_defaults_to_the_training_step_replay_rows_joining_the_batch(capsys):
    assert (
        main(["bench", "step", "--model", "small-cnn", "--size", "28", "--batch", "8", "--steps", "2", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["annotated_rows"] == 6 and out["joined"] is True and out["precision"] == "fp32"  # small-cnn's plan
    assert out["penalty_every"] == 1 and out["mean_ratio"] == out["ratio"]  # every step is a penalised one


@pytest.mark.slow
def test_bench_all_runs_each_benchmark_as_its_own_command_and_names_failures():
    quick = {"step-small-cnn": ["--steps", "2", "--batch", "8"], "round-small-cnn": ["--colour", "red"]}
    out = run_all(["step-small-cnn", "round-small-cnn"], quick)
    assert out["step-small-cnn"]["model"] == "small-cnn" and out["step-small-cnn"]["batch"] == 8
    assert out["step-small-cnn"]["ratio"] > 1 and out["step-small-cnn"]["wall_s"] > 0
    assert "unrecognized arguments: --colour red" in out["round-small-cnn"]["error"]


def test_bench_round_names_a_dataset_without_true_masks(capsys):
    assert main(["bench", "round", "--dataset", "decoy-mnist-clean", "--epochs", "1"]) == 2
    assert "has no true masks" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_fold_finite_differences_match_exact_double_backprop_only_on_a_smooth_network(one_torch_thread):
    """The finite-difference fold of the penalty gradient agrees with exact double backprop when the network's
    input gradient is smooth, and not on the ReLU/max-pool network we train, at any eps: a row's parameter
    gradient jumps where a unit switches, and the quotient divides each jump by eps."""
    net = smooth_activations(build_model("resnet18", 10, 3, 56))
    assert not any(isinstance(m, (nn.ReLU, nn.MaxPool2d)) for m in net.modules())
    assert any(isinstance(m, nn.GELU) for m in net.modules()) and any(
        isinstance(m, nn.AvgPool2d) for m in net.modules()
    )

    with pytest.raises(ValueError, match=r"masks must be \(N, H, W\)"):  # a channel axis is refused, not broadcast
        fold_cosines(build_model("small-cnn", 10, 1, 28), torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28))

    eps = (0.01, 0.001)
    smooth = bench_fold(model="small-cnn", steps=5, smooth=True, eps_rel=eps)
    relu = bench_fold(model="small-cnn", steps=5, eps_rel=eps)
    assert [r["eps_rel"] for r in smooth["cosines"]] == list(eps) and smooth["rows"] == 16
    for r in smooth["cosines"]:  # the measurement itself is sound: the quotient converges to the exact gradient
        assert r["two_sided"] > 0.999 and abs(r["norm_ratio"] - 1) < 0.01
    assert relu["best_two_sided"] < 0.99 and relu["best_one_sided"] < 0.99
