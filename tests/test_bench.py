"""`hitl bench step --json` prints one JSON object with the fields the issue names."""

import json

from trainer.cli import main


def test_bench_step_json(capsys):
    assert main(["bench", "step", "--model", "small-cnn", "--size", "28", "--batch", "16", "--steps", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"ce_ms", "reg_ms", "ratio", "model", "batch", "size", "device"} <= set(out)
    assert out["ratio"] == round(out["reg_ms"] / out["ce_ms"], 3) or abs(out["ratio"] - out["reg_ms"] / out["ce_ms"]) < 0.01
    assert out["annotated_rows"] == 1 and out["model"] == "small-cnn" and out["batch"] == 16
