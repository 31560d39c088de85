"""scripts/gpu-checks.sh (run on a lent GPU machine, never here): every command it would run parses with the
real CLI, the parts write one file per check, and the family part names the whole family and the seeds."""

import os
import shlex
import subprocess
from pathlib import Path

from trainer.app.cli import build_parser
from trainer.data.registry import CONFOUNDED

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-checks.sh"


def _dry_run(tmp_path: Path, *args: str) -> dict[str, list[str]]:
    """Run the script with HITL=echo: each check's file then holds the argument list it would pass to hitl."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "HITL": "echo"}
    subprocess.run(["bash", str(SCRIPT), *args], env=env, check=True, capture_output=True, timeout=60)
    return {p.stem: shlex.split(p.read_text()) for p in out.glob("*.out")}


def test_bench_part_runs_step_and_round_at_224_px_fp32_and_bf16_with_valid_arguments(tmp_path):
    checks = _dry_run(tmp_path, "bench")
    assert {f"step-{m}-224-{p}" for m in ("resnet18", "resnet50") for p in ("fp32", "bf16")} <= set(checks)
    assert {"round-resnet18-224-fp32", "round-resnet18-224-bf16", "round-small-cnn"} <= set(checks)
    for name, argv in checks.items():
        args = build_parser().parse_args(argv)  # a typo in a flag exits here
        assert args.device == "cuda", name


def test_family_part_names_every_confounded_rgb_dataset_and_the_seeds(tmp_path):
    (name, argv), = _dry_run(tmp_path, "family", "0", "2").items()
    args = build_parser().parse_args(argv)
    assert name == "family-resnet18-112-seeds-0-2" and args.seeds == [0, 2]
    rgb = {d for d in CONFOUNDED if d.endswith("-rgb")}
    assert set(args.dataset) == rgb and len(rgb) == 5
    assert (args.model, args.image_size, args.device, args.budget) == ("resnet18", 112, "cuda", [0.01])


def test_an_unknown_part_is_refused_by_name(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "HITL": "echo"}
    done = subprocess.run(["bash", str(SCRIPT), "benhc"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown part 'benhc'" in done.stderr
    assert not (tmp_path / "out").exists()
