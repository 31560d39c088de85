"""``hitl compare RUN_A RUN_B ...``: runs side by side in the paper's form (test accuracy, minimum test loss),
plus balanced accuracy and macro-F1, as a table, a plot and ``--json``.

Scores come from the newest round's record in each run's history: its confusion matrix on the test split
(``Run.finish_round`` records it). A run trained before confusion matrices were recorded is scored once from
its newest checkpoint instead (``source: checkpoint``). A run and its no-feedback twin (``hitl run --twin``)
get the heading "Baseline F vs HITL F", F the train fraction.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer.app import plots
from trainer.core.scores import balanced_accuracy, confusion_matrix, macro_f1
from trainer.runs.run import Run

SCORES = {"accuracy": "acc", "balanced acc": "balanced_acc", "macro-F1": "macro_f1"}  # plot label -> field


@dataclass(frozen=True)
class RunScores:
    """One run's scores on its test split. ``arm``: baseline (a no-feedback twin), hitl (trained with masks)
    or no feedback; ``source``: where the confusion matrix came from (history or checkpoint)."""

    name: str
    directory: str
    arm: str
    twin_of: str | None
    train_fraction: float
    rounds: int
    annotated: int
    acc: float
    min_loss: float | None
    balanced_acc: float
    macro_f1: float
    irrelevant_share: float | None
    source: str


def score_run(run: Run) -> RunScores:
    """The newest round of ``run`` scored on its test split."""
    history = run.history()
    if not history or run.current_round() < 0:
        raise ValueError(f"run {run.directory} has no trained round yet: nothing to compare (train round 0 first)")
    last = max(history, key=lambda h: h["round"])
    confusion, source = last.get("confusion"), "history"
    if confusion is None:  # a run from before confusion matrices were recorded
        model, _, _ = run.load_model(device="cpu")
        confusion, source = confusion_matrix(model, run.datasets[1], len(run.classes)), "checkpoint"
    losses = [h["min_loss"] for h in history if h.get("min_loss") is not None]
    c = run.config
    arm = "baseline" if c.twin_of else ("hitl" if last["annotated"] else "no feedback")
    return RunScores(
        name=run.name, directory=str(run.directory), arm=arm, twin_of=c.twin_of, train_fraction=c.train_fraction,
        rounds=last["round"], annotated=last["annotated"], acc=last["acc"], min_loss=min(losses) if losses else None,
        balanced_acc=balanced_accuracy(confusion), macro_f1=macro_f1(confusion),
        irrelevant_share=last.get("irrelevant_share"), source=source,
    )  # fmt: skip


def percent(fraction: float) -> str:
    """0.1 -> '10%', 0.005 -> '0.5%'."""
    return f"{100 * fraction:g}%"


def headings(scores: list[RunScores]) -> list[str]:
    """'Baseline F vs HITL F' for each run compared with its own no-feedback twin."""
    by_name = {s.name: s for s in scores}
    return [f"Baseline {percent(s.train_fraction)} vs HITL {percent(by_name[s.twin_of].train_fraction)}"
            for s in scores if s.twin_of in by_name]  # fmt: skip


def format_table(scores: list[RunScores]) -> str:
    """The headings, then one row per run."""
    width = max(12, *(len(s.name) for s in scores))
    rows = headings(scores)
    rows.append(f"{'run':<{width}} {'arm':<11} {'train':>6} {'round':>5} {'annotated':>9} {'accuracy':>8} "
                f"{'min loss':>8} {'balanced acc':>12} {'macro-F1':>8} {'irrelevant share':>16}")  # fmt: skip
    for s in scores:
        loss = "-" if s.min_loss is None else f"{s.min_loss:.3f}"
        share = "-" if s.irrelevant_share is None else f"{s.irrelevant_share:.3f}"
        rows.append(f"{s.name:<{width}} {s.arm:<11} {percent(s.train_fraction):>6} {s.rounds:>5} {s.annotated:>9} "
                    f"{s.acc:>8.1%} {loss:>8} {s.balanced_acc:>12.1%} {s.macro_f1:>8.3f} {share:>16}")  # fmt: skip
    return "\n".join(rows)


def as_text(label: str) -> str:
    """``label`` shown as written in a plot: matplotlib reads text between two ``$`` as mathtext (a run named
    ``run-$\\frac$`` would not parse), and ``\\$`` is its literal dollar sign."""
    return label.replace("$", r"\$")


def compare(directories: list[Path], out: Path) -> tuple[list[RunScores], Path]:
    """Score every run and draw the plot to ``out``."""
    if len(directories) < 2:
        raise ValueError(f"compare needs at least two runs, got {len(directories)}")
    scores = [score_run(Run.open(d)) for d in directories]
    title = "; ".join(headings(scores)) or "Runs side by side"
    values = {label: [getattr(s, f) for s in scores] for label, f in SCORES.items()}
    path = plots.plot_compare([as_text(s.name) for s in scores], values, [s.min_loss for s in scores], out,
                              title=title)  # fmt: skip
    return scores, path


# --- Command line ------------------------------------------------------------------------------------------


def register(sub) -> None:
    p = sub.add_parser("compare", help="runs side by side: accuracy, min loss, balanced accuracy, macro-F1")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN")
    p.add_argument("--out", type=Path, default=Path("compare.png"), help="the plot (default: ./compare.png)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=_compare)


def _compare(args) -> int:
    scores, path = compare(args.run_dirs, args.out)
    if args.json:
        print(json.dumps({"headings": headings(scores), "runs": [asdict(s) for s in scores], "plot": str(path)}))
        return 0
    print(format_table(scores))
    print(f"plot: {path}")
    return 0
