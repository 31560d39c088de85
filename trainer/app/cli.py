"""The ``hitl`` command line: one subcommand per job, each registered by the module that owns it.

``ls_backend`` sits above ``trainer``, so its ``serve`` command arrives through the ``hitl.commands`` entry
point, never through an import here.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from trainer.app import (
    bench,
    bench_all,
    bench_fold,
    bench_predict,
    bench_pull,
    bench_round,
    bench_team,
    commands,
    compare,
    config_cmd,
    demo,
    experiment,
    report,
)
from trainer.app.workers import WorkerDied
from trainer.labelstudio.retry import LabelStudioUnavailable
from trainer.runs.run import RunBusy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hitl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands.register(sub)
    report.register(sub)
    compare.register(sub)
    config_cmd.register(sub)
    demo.register(sub)
    experiment.register(sub)
    benches = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    bench.add_parser(benches)
    bench_predict.add_parser(benches)
    bench_round.add_parser(benches)
    bench_pull.add_parser(benches)
    bench_fold.add_parser(benches)
    bench_team.add_parser(benches)
    bench_all.add_parser(benches)
    for entry in entry_points(group="hitl.commands"):
        entry.load()(sub, benches)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RunBusy, LabelStudioUnavailable, WorkerDied) as exc:
        print(f"hitl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
