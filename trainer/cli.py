"""The ``hitl`` command line: one subcommand per job, each in the module that owns it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _experiment_parser(sub) -> None:
    from trainer.loop import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("experiment", help="offline benchmark with a simulated annotator (Decoy-MNIST)")
    p.add_argument("--dataset", default="decoy-mnist")
    p.add_argument("--model", default="small-cnn")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=float, nargs="+", default=[0.01],
                   help="share of training images that may receive feedback over all rounds (several: a sweep)")
    p.add_argument("--strategy", nargs="+", default=["entropy"],
                   help="sampler(s): entropy, confident_mistakes, margin, random")
    p.add_argument("--rounds", type=int, default=5, help="feedback rounds after the initial round")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs per round (default {d.epochs})")
    p.add_argument("--lam", type=float, default=None, help=f"penalty weight (default {d.lam}; < 0: automatic)")
    p.add_argument("--replay", type=int, default=None, help=f"annotated rows appended to each batch (default {d.replay})")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--cell-px", type=int, default=4)
    p.add_argument("--train-fraction", type=float, default=1.0)
    p.add_argument("--arms", nargs="+", default=["baseline", "clean", "rrr_all", "hitl"])
    p.add_argument("--saliency", default="deeplift", help="method for the irrelevant-share metric")
    p.add_argument("--miss-rate", type=float, default=0.0, help="simulated annotator misses a decoy cell")
    p.add_argument("--wrong-rate", type=float, default=0.0, help="simulated annotator adds a wrong cell")
    p.add_argument("--workers", type=int, default=2, help="parallel processes")
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=_experiment)


def _experiment(args) -> int:
    from trainer.experiment import config_from_args, format_table, run_experiment

    results = run_experiment(config_from_args(args), args.out)
    print(format_table(results))
    print(f"wall time {results['seconds']:.0f} s" + (f"; results in {args.out / 'results.json'}" if args.out else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hitl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _experiment_parser(sub)
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    from trainer import bench as bench_step
    from trainer import bench_predict

    bench_step.add_parser(bench)
    bench_predict.add_parser(bench)
    for register in _optional_registrations():
        register(sub, bench)
    return parser


def _optional_registrations():
    """Commands owned by other modules, wired in one place. ``ls_backend`` sits above ``trainer``, so its
    ``serve`` command arrives through the ``hitl.commands`` entry point, never through an import here."""
    from importlib.metadata import entry_points

    from trainer import commands

    yield commands.register
    for entry in entry_points(group="hitl.commands"):
        yield entry.load()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"hitl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
