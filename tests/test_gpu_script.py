"""scripts/gpu-checks.sh (run on a lent GPU machine, never here): every command it would run parses with the
real CLI and with scripts/offline_cli.py (what the machine without the Label Studio SDK runs), the parts write one
file per check into one archive, and the family part names the whole family and the seeds."""

import importlib.util
import os
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from trainer.app.cli import build_parser
from trainer.data.registry import CONFOUNDED

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-checks.sh"


def _dry_run(tmp_path: Path, *args: str) -> dict[str, list[str]]:
    """Run the script with HITL=echo: each check's file then holds the argument list it would pass to hitl."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "HITL": "echo"}
    subprocess.run(["bash", str(SCRIPT), *args], env=env, check=True, capture_output=True, timeout=60)
    assert sorted(p.name for p in out.iterdir()) == ["card.txt", "checks.tar.gz", "log.txt"]  # at most 8 come back
    with tarfile.open(out / "checks.tar.gz") as archive:
        archive.extractall(tmp_path / "checks", filter="data")
    return {p.stem: shlex.split(p.read_text()) for p in (tmp_path / "checks").glob("*.out")}


def _offline_parser():
    spec = importlib.util.spec_from_file_location("offline_cli", SCRIPT.parent / "offline_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def test_bench_part_runs_step_and_round_at_224_px_fp32_and_bf16_with_valid_arguments(tmp_path):
    checks = _dry_run(tmp_path, "bench")
    assert {f"step-{m}-224-{p}" for m in ("resnet18", "resnet50") for p in ("fp32", "bf16")} <= set(checks)
    assert {"round-resnet18-224-fp32", "round-resnet18-224-bf16", "round-small-cnn"} <= set(checks)
    for name, argv in checks.items():
        args = build_parser().parse_args(argv)  # a typo in a flag exits here
        assert args.device == "cuda", name
        assert vars(_offline_parser().parse_args(argv)) == vars(args), name  # the same command without the SDK


def test_all_part_runs_steps_then_the_family_then_the_rounds(tmp_path):
    checks = _dry_run(tmp_path, "all", "0", "1", "2")
    assert {"family-resnet18-112-seeds-0-1-2", "step-resnet18-224-bf16", "round-resnet50-224-bf16"} <= set(checks)
    order = [line.split()[1] for line in (tmp_path / "checks" / "log.txt").read_text().splitlines()
             if line.startswith("== ")]  # fmt: skip
    assert (
        order.index("step-resnet50-224-bf16")
        < order.index("family-resnet18-112-seeds-0-1-2")
        < order.index("round-resnet18-224-fp32")
    )
    args = _offline_parser().parse_args(checks["family-resnet18-112-seeds-0-1-2"])
    assert args.seeds == [0, 1, 2] and args.workers == 14 and args.device == "cuda"


@pytest.mark.slow
def test_offline_cli_runs_without_the_label_studio_sdk(tmp_path):
    """The GPU machine has torch but not the SDK: the offline commands must import without it."""
    shadow = tmp_path / "shadow" / "label_studio_sdk"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no label_studio_sdk on this machine')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "offline_cli.py"), "bench", "step", "--model",
                           "small-cnn", "--size", "28", "--steps", "1", "--device", "cpu", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"model": "small-cnn"' in done.stdout


def test_family_part_names_every_confounded_rgb_dataset_and_the_seeds(tmp_path):
    ((name, argv),) = _dry_run(tmp_path, "family", "0", "2").items()
    args = build_parser().parse_args(argv)
    assert name == "family-resnet18-112-seeds-0-2" and args.seeds == [0, 2]
    rgb = {d for d in CONFOUNDED if d.endswith("-rgb")}
    assert set(args.dataset) == rgb and len(rgb) == 5
    assert (args.model, args.image_size, args.device, args.budget) == ("resnet18", 112, "cuda", [0.01])


def test_family_args_reach_the_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("FAMILY_ARGS", "--lr-schedule constant")
    ((name, argv),) = _dry_run(tmp_path, "family", "1").items()
    args = build_parser().parse_args(argv)
    assert args.lr_schedule == "constant" and args.seeds == [1] and args.model == "resnet18"
    assert args.arms == ["baseline", "clean", "hitl"]


def test_arms_pick_the_family_arms(tmp_path, monkeypatch):
    monkeypatch.setenv("ARMS", "clean hitl")
    ((_, argv),) = _dry_run(tmp_path, "family", "0", "1").items()
    assert build_parser().parse_args(argv).arms == ["clean", "hitl"]


def test_an_unknown_part_is_refused_by_name(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "HITL": "echo"}
    done = subprocess.run(["bash", str(SCRIPT), "benhc"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown part 'benhc'" in done.stderr
    assert not (tmp_path / "out").exists()
