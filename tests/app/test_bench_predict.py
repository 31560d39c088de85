"""``hitl bench predict``: the backend's /predict work against a bare forward pass."""

from __future__ import annotations


def test_bench_predict_reports_the_ratio():
    from trainer.app.bench_predict import run_benchmark

    result = run_benchmark(model_name="small-cnn", size=28, tasks=2, requests=2, cell_px=4)
    assert {"p50_ms", "p95_ms", "forward_ms", "ratio"} <= set(result)
    assert result["ratio"] > 1 and result["p95_ms"] >= result["p50_ms"]  # predicting costs more than a forward
