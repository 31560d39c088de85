"""``hitl bench all --json``: every benchmark at the settings docs/speed.md reports, one JSON object.

Each runs as its own ``hitl bench NAME --json`` process (the same command a user types, with a fresh torch
and no state from the one before), so a benchmark registered by another package (``hitl bench serve``
arrives from ``ls_backend`` through an entry point) is run the same way as the trainer's own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

# name -> the arguments after `hitl bench`; docs/speed.md's table uses these.
PLAN: dict[str, list[str]] = {
    "step-small-cnn": ["step", "--model", "small-cnn", "--size", "28"],
    "step-resnet18": ["step", "--model", "resnet18", "--size", "56"],
    "round-small-cnn": ["round", "--model", "small-cnn", "--seeds", "0", "1", "2"],
    "round-resnet18": ["round", "--model", "resnet18", "--size", "56", "--seeds", "0"],
    "fold-small-cnn": ["fold", "--model", "small-cnn"],
    "fold-resnet18": ["fold", "--model", "resnet18", "--size", "56"],
    "predict": ["predict"],
    "pull": ["pull"],
    "serve": ["serve", "--clients", "20", "--seconds", "60"],
}


def run_all(names: list[str], extra: dict[str, list[str]] | None = None, *, timeout: float = 7200) -> dict:
    """Run the named benchmarks one after another; ``{name: its JSON, or {"error": ...}}`` plus timings."""
    out: dict = {}
    for name in names:
        argv = [sys.executable, "-m", "trainer.app.cli", "bench", *PLAN[name], *(extra or {}).get(name, []), "--json"]
        started = time.perf_counter()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            out[name] = {"error": f"timed out after {timeout:.0f} s"}
            continue
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            out[name] = {"error": f"exit {done.returncode}: {' | '.join(tail)}"}
        else:
            out[name] = json.loads(lines[-1])
        out[name]["wall_s"] = round(time.perf_counter() - started, 1)
    return out


def _names(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in PLAN]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(PLAN)}")
    return names


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("all", help="every benchmark, one JSON object")
    p.add_argument("--only", type=_names, default=list(PLAN), help=f"comma-separated subset of {', '.join(PLAN)}")
    p.add_argument("--skip", type=_names, default=[], help="comma-separated benchmarks to leave out")
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output too)")
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    names = [n for n in args.only if n not in args.skip]
    result = run_all(names)
    print(json.dumps(result))
    return 0 if not any("error" in r for r in result.values()) else 1
