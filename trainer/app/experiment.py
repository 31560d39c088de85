"""``hitl experiment``: the offline benchmark with a simulated annotator.

Arms, each trained for the same number of epochs, ``(rounds + 1) * epochs``:
- ``baseline``: cross-entropy only, on the decoy data;
- ``clean``: cross-entropy only, on the same digits without the decoy (the upper bound);
- ``rrr_all``: the penalty with the true mask on every training image (Ross et al.'s setting);
- ``hitl``: round 0 without feedback, then ``rounds`` feedback rounds; each round the sampler picks
  ``budget * N_train / rounds`` new images, the simulated annotator marks the grid cells that overlap the true
  decoy, and training continues with every mask given so far.

The clean arm of datasets that share a clean twin (the whole built-in family) trains the same model for each, so
it is trained once per twin and seed and scored on every dataset's test set (``run_clean``).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from label_config.grid import Grid
from trainer.app.workers import exit_on_sigterm, job_result, worker_pool
from trainer.core.checks import check_int
from trainer.core.feedback import AnnotatorConfig, Feedback, simulated_cells
from trainer.core.loop import (
    LR_SCHEDULES,
    Parallel,
    TrainConfig,
    evaluate,
    make_optimizer,
    round_seed,
    train_round,
)
from trainer.core.models import build_model
from trainer.core.sampling import SamplingConfig, predict_probs, select
from trainer.data.registry import CONFOUNDED, clean_twin, load_dataset, train_fraction
from trainer.explain.metrics import test_irrelevant_share
from trainer.runs.atomic import write_json

ARMS = ("baseline", "clean", "rrr_all", "hitl")


@dataclass(frozen=True)
class ExperimentConfig:
    """One benchmark: datasets x arms x seeds (x budgets x strategies for the hitl arm). ``image_size`` None
    keeps each dataset's own size; ``cell_px`` None gives a 7 x 7 grid at any size."""

    datasets: tuple[str, ...] = ("decoy-mnist",)
    model: str = "small-cnn"
    image_size: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    budgets: tuple[float, ...] = (0.01,)
    strategies: tuple[str, ...] = (SamplingConfig().strategy,)
    rounds: int = 5
    cell_px: int | None = None
    train_fraction: float = 1.0
    arms: tuple[str, ...] = ARMS
    saliency: str = "deeplift"
    share_images: int = 500
    train: TrainConfig = field(default_factory=TrainConfig)
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    workers: int = 2

    def __post_init__(self) -> None:
        for name in self.datasets:
            if clean_twin(name) is None:
                raise ValueError(
                    f"experiments need built-in datasets with a known decoy (confounder): "
                    f"{', '.join(CONFOUNDED)}; got {name!r}"
                )
        unknown = set(self.arms) - set(ARMS)
        if unknown:
            raise ValueError(f"unknown arms {sorted(unknown)}: use {', '.join(ARMS)}")
        if any(not 0 <= b <= 1 for b in self.budgets):
            raise ValueError(f"budgets must be shares of the training set in [0, 1], got {self.budgets}")
        check_int(self.rounds, "rounds", minimum=1)


def arm_names(cfg: ExperimentConfig) -> list[tuple[str, str, float, str]]:
    """(arm name, kind, budget, strategy) for every arm; hitl arms get a suffix when several are swept."""
    out = []
    for arm in cfg.arms:
        if arm != "hitl":
            out.append((arm, arm, 0.0, ""))
            continue
        many = len(cfg.budgets) * len(cfg.strategies) > 1
        for b in cfg.budgets:
            for s in cfg.strategies:
                out.append((f"hitl[{s}@{b:g}]" if many else "hitl", "hitl", b, s))
    return out


def round_budgets(budget: float, n_train: int, rounds: int) -> list[int]:
    """New images asked about in each feedback round: ``budget * n_train`` spread as evenly as whole images
    allow (``hitl init --per-round`` is the user's side of it)."""
    total = round(budget * n_train)
    return [total * r // rounds - total * (r - 1) // rounds for r in range(1, rounds + 1)]


def run_arm(cfg: ExperimentConfig, dataset: str, kind: str, seed: int, budget: float, strategy: str) -> dict:
    """Train one arm for one seed; returns acc, min_loss, irrelevant_share, annotated_fraction, history."""
    started = time.perf_counter()
    size = cfg.image_size
    if kind == "clean":  # the same digits without the confounder, judged on the decoy test set
        return run_clean(cfg, (dataset,), seed)[dataset]
    decoy_train, test = load_dataset(dataset, seed=seed, size=size)  # every arm is judged on the decoy test set
    train = train_fraction(decoy_train, cfg.train_fraction, seed=seed)
    truth = train.decoy_masks.numpy()
    _, h, w = train.image_shape
    grid = Grid.from_cell_px(h, w, cfg.cell_px or max(1, h // 7))
    torch.manual_seed(seed)
    model = build_model(cfg.model, len(train.classes), train.image_shape[0], h)
    optimizer = make_optimizer(model, cfg.train)
    rng = np.random.default_rng(seed)
    feedback = Feedback()
    if kind == "rrr_all":
        feedback.cells = {i: simulated_cells(truth[i], grid, cfg.annotator, rng) for i in range(len(train))}
    per_round = round_budgets(budget, len(train), cfg.rounds)
    history, losses = [], []
    result = None
    for round_ in range(cfg.rounds + 1):
        ids = []
        if kind == "hitl" and round_ > 0:
            n_new = per_round[round_ - 1]
            probs = result.train_probs  # as `hitl run` picks: the scores of round_ - 1's last epoch
            if probs is None or bool(torch.isnan(probs).any()):
                probs = predict_probs(model, train)
            ids = select(
                probs,
                train.labels,
                n_new,
                strategy=strategy,
                exclude=feedback.given_ids(),
                seed=round_seed(seed, round_ - 1),
            )  # the model of round_ - 1 picks, as in `hitl run`
            for i in ids:
                feedback.cells[int(i)] = simulated_cells(truth[i], grid, cfg.annotator, rng)
        result = train_round(
            model,
            train,
            feedback,
            grid,
            cfg.train,
            optimizer=optimizer,
            val_set=test,
            seed=round_seed(seed, round_),
            score=kind == "hitl",
        )
        losses += [e.val_loss for e in result.epochs]
        history.append({"round": round_, "acc": result.epochs[-1].val_acc, "annotated": len(feedback.annotated_ids()),
                        "epoch_acc": [e.val_acc for e in result.epochs], "asked": [int(i) for i in ids]})  # fmt: skip
    return {
        "acc": history[-1]["acc"],  # the last epoch's accuracy on the test set
        "min_loss": float(min(losses)),
        "irrelevant_share": test_irrelevant_share(model, test, method=cfg.saliency, limit=cfg.share_images),
        "annotated_fraction": len(feedback.annotated_ids()) / len(train),
        "history": history,
        "seconds": time.perf_counter() - started,
    }


class _EveryTestSet(Parallel):
    """One process, but each evaluation scores the model on several test sets (``tests``: dataset name -> test
    set) and keeps every (accuracy, loss) in ``scores``; ``train_round`` sees the first set's."""

    def __init__(self, tests: dict[str, Dataset]) -> None:
        self.tests = tests
        self.scores: dict[str, list[tuple[float, float]]] = {name: [] for name in tests}

    def evaluate(self, model, dataset, device, *, progress: bool = False) -> tuple[float, float]:
        for name, test in self.tests.items():
            self.scores[name].append(evaluate(model, test, device=device, progress=progress))
        return next(iter(self.scores.values()))[-1]


def run_clean(cfg: ExperimentConfig, datasets: tuple[str, ...], seed: int) -> dict[str, dict]:
    """The ``clean`` arm of several datasets that share one clean twin: the model trains once (the same data,
    seed and schedule as ``run_arm(cfg, d, "clean", seed, ...)`` would train for each ``d``) and is scored on
    every dataset's confounded test set after each epoch. Returns ``run_arm``'s dict per dataset."""
    started = time.perf_counter()
    twins = {clean_twin(d) for d in datasets}
    if len(twins) != 1:
        raise ValueError(f"run_clean needs datasets with one clean twin, got {sorted(map(str, twins))}")
    size = cfg.image_size
    train = train_fraction(load_dataset(twins.pop(), seed=seed, size=size)[0], cfg.train_fraction, seed=seed)
    tests = {d: load_dataset(d, seed=seed, size=size)[1] for d in datasets}
    _, h, w = train.image_shape
    grid = Grid.from_cell_px(h, w, cfg.cell_px or max(1, h // 7))
    torch.manual_seed(seed)
    model = build_model(cfg.model, len(train.classes), train.image_shape[0], h)
    optimizer = make_optimizer(model, cfg.train)
    every = _EveryTestSet(tests)
    ends = []  # per round: how many evaluations had been made when it ended
    for round_ in range(cfg.rounds + 1):
        train_round(model, train, Feedback(), grid, cfg.train, optimizer=optimizer, val_set=next(iter(tests.values())),
                    seed=round_seed(seed, round_), parallel=every)  # fmt: skip
        ends.append(len(next(iter(every.scores.values()))))
    seconds = time.perf_counter() - started
    out = {}
    for d, test in tests.items():
        scores = every.scores[d]
        history = [{"round": r, "acc": scores[end - 1][0], "annotated": 0, "asked": [],
                    "epoch_acc": [acc for acc, _ in scores[start:end]]}
                   for r, (start, end) in enumerate(zip([0, *ends], ends))]  # fmt: skip
        out[d] = {"acc": history[-1]["acc"], "min_loss": float(min(loss for _, loss in scores)),
                  "irrelevant_share": test_irrelevant_share(model, test, method=cfg.saliency, limit=cfg.share_images),
                  "annotated_fraction": 0.0, "history": history, "seconds": seconds}  # fmt: skip
    return out


def run_experiment(cfg: ExperimentConfig, out: Path | None = None, *, log=print) -> dict:
    """Every dataset x arm x seed, ``cfg.workers`` processes at a time. Writes ``out/results.json`` when given:
    one table per dataset under ``datasets``, rewritten as each arm finishes (``finished`` false until the last).
    Arms are recorded as they finish, whatever their order; the file lists them in job order, each arm with the
    ``seeds`` its lists hold, so a run cut short keeps every arm it finished."""
    # Seed by seed: a run cut short has every dataset and arm at its first seeds.
    jobs = [(d, name, kind, seed, b, s) for seed in cfg.seeds for d in cfg.datasets
            for name, kind, b, s in arm_names(cfg)]  # fmt: skip
    started = time.perf_counter()
    # The clean arm trains the same model for every dataset with the same clean twin: once per (twin, seed).
    sharing: dict[tuple, list[str]] = {}
    for d in cfg.datasets:
        for seed in cfg.seeds:
            sharing.setdefault((clean_twin(d), seed), []).append(d)
    done: dict[tuple, dict] = {}  # job -> run_arm's dict
    with worker_pool(cfg.workers, threads=1) as pool:  # one thread per worker
        waiting: dict = {}  # future -> the jobs it answers
        shared: dict[tuple, object] = {}
        for job in jobs:
            dataset, _, kind, seed = job[:4]
            if kind != "clean":
                waiting[pool.submit(run_arm, cfg, *job[:1], *job[2:])] = [job]
                continue
            key = (clean_twin(dataset), seed)
            if key not in shared:
                shared[key] = pool.submit(run_clean, cfg, tuple(sharing[key]), seed)
                waiting[shared[key]] = []
            waiting[shared[key]].append(job)
        for fut in as_completed(waiting):
            for job in waiting[fut]:
                dataset, name, kind, seed = job[:4]
                answer = job_result(
                    fut,
                    f"a worker process died while training {dataset} {name} seed {seed} (killed, "
                    f"or out of memory?); the arms finished before it are in results.json",
                )
                r = done[job] = answer[dataset] if kind == "clean" else answer
                log(f"{dataset:<22} {name:<28} seed {seed}: acc {r['acc']:.3f}  min loss {r['min_loss']:.3f}  "
                    f"irrelevant share {r['irrelevant_share']:.3f}  ({r['seconds']:.0f} s)")  # fmt: skip
            if out is not None:  # every finished arm is on disk at once: a long run cut short keeps what it did
                write_json(out / "results.json", {**_results(cfg, jobs, done), "finished": False})
    results = _results(cfg, jobs, done)
    results["seconds"] = time.perf_counter() - started
    if out is not None:
        write_json(out / "results.json", {**results, "finished": True})
    return results


def _results(cfg: ExperimentConfig, jobs: list[tuple], done: dict[tuple, dict]) -> dict:
    """The results object from the finished jobs, in job order: per dataset, per arm, lists over its seeds."""
    results: dict = {"config": _jsonable(asdict(cfg)), "datasets": {d: {"arms": {}} for d in cfg.datasets}}
    for job in jobs:
        if job not in done:
            continue
        (dataset, name, kind, seed), r = job[:4], done[job]
        arm = results["datasets"][dataset]["arms"].setdefault(
            name, {"seeds": [], "acc": [], "min_loss": [], "irrelevant_share": [], "history": []}
        )
        arm["seeds"].append(seed)
        for key in ("acc", "min_loss", "irrelevant_share", "history"):
            arm[key].append(r[key])
        if kind == "hitl":
            arm.setdefault("annotated_fraction", []).append(r["annotated_fraction"])
    return results


def format_table(results: dict) -> str:
    """Plain-text tables, one per dataset: mean +- std over seeds for each arm."""
    rows = []
    for dataset, table in results["datasets"].items():
        rows += [f"{dataset}", f"{'arm':<28} {'acc':>14} {'min loss':>14} {'irrelevant share':>18} {'annotated':>10}"]
        for name, arm in table["arms"].items():
            cells = [_mean_std(arm[k]) for k in ("acc", "min_loss", "irrelevant_share")]
            ann = f"{np.mean(arm['annotated_fraction']):.3%}" if "annotated_fraction" in arm else "-"
            rows.append(f"{name:<28} {cells[0]:>14} {cells[1]:>14} {cells[2]:>18} {ann:>10}")
        rows.append("")
    return "\n".join(rows).rstrip()


def _mean_std(values) -> str:
    return f"{np.mean(values):.3f}+-{np.std(values):.3f}"


def _jsonable(d):
    return json.loads(json.dumps(d, default=list))


def config_from_args(args) -> ExperimentConfig:
    train = replace(TrainConfig(), **{k: v for k, v in {
        "epochs": args.epochs, "lam": args.lam, "replay": args.replay, "batch_size": args.batch_size, "lr": args.lr,
        "device": args.device, "warmup_steps": args.warmup, "counterexamples": args.counterexamples,
        "donors": args.donors, "penalty_every": args.penalty_every, "replay_weight": args.replay_weight,
        "precision": args.precision, "lr_schedule": args.lr_schedule,
    }.items() if v is not None})  # fmt: skip
    return ExperimentConfig(
        datasets=tuple(args.dataset), model=args.model, image_size=args.image_size, seeds=tuple(args.seeds),
        budgets=tuple(args.budget),
        strategies=tuple(args.strategy), rounds=args.rounds, cell_px=args.cell_px, train_fraction=args.train_fraction,
        arms=tuple(args.arms), saliency=args.saliency, train=train, workers=args.workers,
        annotator=AnnotatorConfig(miss_rate=args.miss_rate, wrong_rate=args.wrong_rate),
    )  # fmt: skip


# --- Command line ------------------------------------------------------------------------------------------


def register(sub) -> None:
    """``hitl experiment``."""
    d = TrainConfig()
    p = sub.add_parser("experiment", help="offline benchmark with a simulated annotator (built-in confounders)")
    p.add_argument(
        "--dataset",
        nargs="+",
        default=["decoy-mnist"],
        help=f"built-in dataset(s) with a confounder (`hitl datasets`): {', '.join(CONFOUNDED)}",
    )
    p.add_argument("--model", default="small-cnn")
    p.add_argument("--image-size", type=int, default=None, help="resize the data (default: the dataset's size)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"), help="forward passes (default fp32)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--budget",
        type=float,
        nargs="+",
        default=[0.01],
        help="share of training images that may receive feedback over all rounds (several: a sweep)",
    )
    p.add_argument(
        "--strategy",
        nargs="+",
        default=[SamplingConfig().strategy],
        help="sampler(s): entropy, confident_mistakes, margin, random",
    )
    p.add_argument("--rounds", type=int, default=5, help="feedback rounds after the initial round")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs per round (default {d.epochs})")
    p.add_argument("--lam", type=float, default=None, help=f"penalty weight (default {d.lam}; < 0: automatic)")
    p.add_argument("--replay", type=int, default=None,
                   help="annotated rows appended to a penalised step's batch (default: the model's plan, 6 without "
                        "batch norm, 16 with)")  # fmt: skip
    p.add_argument("--replay-weight", type=float, default=None,
                   help="CE weight of each appended annotated row, in batch rows (default: 16 x penalty-every / "
                        "replay)")  # fmt: skip
    p.add_argument(
        "--penalty-every",
        type=int,
        default=None,
        help="penalise every k-th step at k times the weight (default: the model's plan, 1)",
    )
    p.add_argument("--warmup", type=int, default=None, help=f"lambda warm-up steps (default {d.warmup_steps})")
    p.add_argument(
        "--counterexamples",
        type=float,
        default=None,
        help=f"share of replayed rows refilled in their mask (default {d.counterexamples})",
    )
    p.add_argument(
        "--donors",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"refill from other images of the batch, not a random level (default {d.donors})",
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument(
        "--lr-schedule",
        default=None,
        choices=LR_SCHEDULES,
        help=f"learning rate within each round (default {d.lr_schedule}; cosine: from --lr to 0)",
    )
    p.add_argument("--cell-px", type=int, default=None, help="grid cell side in pixels (default: a 7 x 7 grid)")
    p.add_argument("--train-fraction", type=float, default=1.0)
    p.add_argument("--arms", nargs="+", default=["baseline", "clean", "rrr_all", "hitl"])
    p.add_argument("--saliency", default="deeplift", help="method for the irrelevant-share metric")
    p.add_argument("--miss-rate", type=float, default=0.0, help="simulated annotator misses a decoy cell")
    p.add_argument("--wrong-rate", type=float, default=0.0, help="simulated annotator adds a wrong cell")
    p.add_argument("--workers", type=int, default=2, help="parallel processes")
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=_experiment)


def _experiment(args) -> int:
    # Each arm's line as it finishes, also when stdout is a file or a pipe (a long run under nohup or tee). A kill
    # ends the workers too; the arms that finished are in results.json already.
    with exit_on_sigterm():
        results = run_experiment(config_from_args(args), args.out, log=lambda line: print(line, flush=True))
    print(format_table(results))
    print(f"wall time {results['seconds']:.0f} s" + (f"; results in {args.out / 'results.json'}" if args.out else ""))
    return 0
