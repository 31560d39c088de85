"""`hitl bench step --json` prints one JSON object with the fields the issue names, timing what it says."""

import json

from trainer.app.cli import main


def test_bench_step_json(capsys):
    args = ["bench", "step", "--model", "small-cnn", "--size", "28", "--batch", "16", "--steps", "3", "--json"]
    assert main([*args, "--annotated", "0.25"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"ce_ms", "reg_ms", "ratio", "model", "batch", "size", "device"} <= set(out)
    assert out["annotated_rows"] == 4 and out["model"] == "small-cnn" and out["batch"] == 16  # 25% of 16 rows
    # The penalised step runs a second forward and a double backward on top of the CE step: it costs more.
    assert out["reg_ms"] > out["ce_ms"] > 0 and out["ratio"] > 1
