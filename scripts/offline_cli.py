"""The ``hitl`` commands that need neither Label Studio nor its SDK: ``bench step``, ``bench round`` and
``experiment``, for a machine that has torch but not the SDK (the lent GPU machine of scripts/gpu-checks.sh).

    python3 scripts/offline_cli.py experiment --dataset frame-mnist-rgb --model resnet18 --device cuda ...

The arguments are those of ``hitl``; each subcommand is registered by the module that owns it, as in
``trainer.app.cli``, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, not an installed copy

from trainer.app import bench, bench_round, experiment  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offline_cli.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    experiment.register(sub)
    benches = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    bench.add_parser(benches)
    bench_round.add_parser(benches)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
