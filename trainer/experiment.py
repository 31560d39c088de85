"""``hitl experiment``: the offline benchmark with a simulated annotator.

Arms, each trained for the same number of epochs, ``(rounds + 1) * epochs``:
- ``baseline``: cross-entropy only, on the decoy data;
- ``clean``: cross-entropy only, on the same digits without the decoy (the upper bound);
- ``rrr_all``: the penalty with the true mask on every training image (Ross et al.'s setting);
- ``hitl``: round 0 without feedback, then ``rounds`` feedback rounds; each round the sampler picks
  ``budget * N_train / rounds`` new images, the simulated annotator marks the grid cells that overlap the true
  decoy, and training continues with every mask given so far.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
import multiprocessing as mp

import numpy as np
import torch

from label_config.grid import Grid
from trainer.data import load_dataset, train_fraction
from trainer.feedback import Feedback
from trainer.loop import TrainConfig, make_optimizer, train_round
from trainer.metrics import test_irrelevant_share
from trainer.models import build_model
from trainer.sampling import predict_probs, select

ARMS = ("baseline", "clean", "rrr_all", "hitl")
CLEAN = {"decoy-mnist": "decoy-mnist-clean", "decoy-mnist-rgb": "decoy-mnist-rgb-clean"}


@dataclass(frozen=True)
class AnnotatorConfig:
    """The simulated annotator: marks the cells overlapping the true decoy, misses each with ``miss_rate``
    and adds ``wrong_cells`` random cells outside it with probability ``wrong_rate`` per image."""

    miss_rate: float = 0.0
    wrong_rate: float = 0.0
    wrong_cells: int = 1


@dataclass(frozen=True)
class ExperimentConfig:
    """One benchmark: arms x seeds (x budgets x strategies for the hitl arm)."""

    dataset: str = "decoy-mnist"
    model: str = "small-cnn"
    seeds: tuple[int, ...] = (0, 1, 2)
    budgets: tuple[float, ...] = (0.01,)
    strategies: tuple[str, ...] = ("entropy",)
    rounds: int = 5
    cell_px: int = 4
    train_fraction: float = 1.0
    arms: tuple[str, ...] = ARMS
    saliency: str = "deeplift"
    share_images: int = 500
    train: TrainConfig = field(default_factory=TrainConfig)
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    workers: int = 2

    def __post_init__(self) -> None:
        if self.dataset not in CLEAN:
            raise ValueError(f"experiments need a dataset with a known decoy: {', '.join(CLEAN)}; got {self.dataset!r}")
        unknown = set(self.arms) - set(ARMS)
        if unknown:
            raise ValueError(f"unknown arms {sorted(unknown)}: use {', '.join(ARMS)}")
        if any(not 0 <= b <= 1 for b in self.budgets):
            raise ValueError(f"budgets must be shares of the training set in [0, 1], got {self.budgets}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")


def simulated_cells(decoy_mask: np.ndarray, grid: Grid, cfg: AnnotatorConfig, rng: np.random.Generator) -> np.ndarray:
    """What the simulated annotator marks for one image. decoy_mask: (H, W) bool. Returns (G_h, G_w) bool."""
    cells = grid.mask_to_cells(decoy_mask)
    if cfg.miss_rate > 0:
        cells &= rng.random(cells.shape) >= cfg.miss_rate
    if cfg.wrong_rate > 0 and rng.random() < cfg.wrong_rate:
        free = np.flatnonzero(~grid.mask_to_cells(decoy_mask).ravel())
        for flat in rng.choice(free, size=min(cfg.wrong_cells, len(free)), replace=False):
            cells.flat[flat] = True
    return cells


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


def run_arm(cfg: ExperimentConfig, kind: str, seed: int, budget: float, strategy: str) -> dict:
    """Train one arm for one seed; returns acc, min_loss, irrelevant_share, annotated_fraction, history."""
    torch.set_num_threads(1)  # small models: one thread per process, processes in parallel, is fastest here
    started = time.perf_counter()
    decoy_train, test = load_dataset(cfg.dataset, seed=seed)  # every arm is judged on the decoy test set
    decoy_train = train_fraction(decoy_train, cfg.train_fraction, seed=seed)
    train = decoy_train
    if kind == "clean":  # the same digits without the patch
        train = train_fraction(load_dataset(CLEAN[cfg.dataset], seed=seed)[0], cfg.train_fraction, seed=seed)
    truth = decoy_train.decoy_masks.numpy()
    _, h, w = train.image_shape
    grid = Grid.from_cell_px(h, w, cfg.cell_px)
    torch.manual_seed(seed)
    model = build_model(cfg.model, len(train.classes), train.image_shape[0], h)
    optimizer = make_optimizer(model, cfg.train)
    rng = np.random.default_rng(seed)
    feedback = Feedback()
    if kind == "rrr_all":
        feedback.cells = {i: simulated_cells(truth[i], grid, cfg.annotator, rng) for i in range(len(train))}
    total = int(round(budget * len(train)))
    history, losses = [], []
    for round_ in range(cfg.rounds + 1):
        if kind == "hitl" and round_ > 0:
            n_new = total * round_ // cfg.rounds - total * (round_ - 1) // cfg.rounds
            probs = predict_probs(model, train)
            ids = select(probs, train.labels, n_new, strategy=strategy, exclude=feedback.given_ids(), seed=seed + round_)
            for i in ids:
                feedback.cells[int(i)] = simulated_cells(truth[i], grid, cfg.annotator, rng)
        result = train_round(model, train, feedback, grid, cfg.train, optimizer=optimizer, val_set=test, seed=seed * 100 + round_)
        losses += [e.val_loss for e in result.epochs]
        history.append({"round": round_, "acc": result.epochs[-1].val_acc, "annotated": len(feedback.annotated_ids())})
    return {
        "acc": history[-1]["acc"],  # the last epoch's accuracy on the test set
        "min_loss": float(min(losses)),
        "irrelevant_share": test_irrelevant_share(model, test, method=cfg.saliency, limit=cfg.share_images),
        "annotated_fraction": len(feedback.annotated_ids()) / len(train),
        "history": history,
        "seconds": time.perf_counter() - started,
    }


def run_experiment(cfg: ExperimentConfig, out: Path | None = None, *, log=print) -> dict:
    """Every arm x seed, ``cfg.workers`` processes at a time. Writes ``out/results.json`` when given."""
    jobs = [(name, kind, seed, b, s) for name, kind, b, s in arm_names(cfg) for seed in cfg.seeds]
    results: dict = {"dataset": cfg.dataset, "config": _jsonable(asdict(cfg)), "arms": {}}
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [(job, pool.submit(run_arm, cfg, job[1], job[2], job[3], job[4])) for job in jobs]
        for (name, kind, seed, _, _), fut in futures:
            r = fut.result()
            log(f"{name:<28} seed {seed}: acc {r['acc']:.3f}  min loss {r['min_loss']:.3f}  "
                f"irrelevant share {r['irrelevant_share']:.3f}  ({r['seconds']:.0f} s)")  # fmt: skip
            arm = results["arms"].setdefault(name, {"acc": [], "min_loss": [], "irrelevant_share": []})
            for key in ("acc", "min_loss", "irrelevant_share"):
                arm[key].append(r[key])
            if kind == "hitl":
                arm.setdefault("annotated_fraction", []).append(r["annotated_fraction"])
                arm.setdefault("history", []).append(r["history"])
    results["seconds"] = time.perf_counter() - started
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def format_table(results: dict) -> str:
    """A plain-text table: mean +- std over seeds for each arm."""
    rows = [f"{'arm':<28} {'acc':>14} {'min loss':>14} {'irrelevant share':>18} {'annotated':>10}"]
    for name, arm in results["arms"].items():
        cells = [_mean_std(arm[k]) for k in ("acc", "min_loss", "irrelevant_share")]
        ann = f"{np.mean(arm['annotated_fraction']):.3%}" if "annotated_fraction" in arm else "-"
        rows.append(f"{name:<28} {cells[0]:>14} {cells[1]:>14} {cells[2]:>18} {ann:>10}")
    return "\n".join(rows)


def _mean_std(values) -> str:
    return f"{np.mean(values):.3f}+-{np.std(values):.3f}"


def _jsonable(d):
    return json.loads(json.dumps(d, default=list))


def config_from_args(args) -> ExperimentConfig:
    train = replace(TrainConfig(), **{k: v for k, v in {
        "epochs": args.epochs, "lam": args.lam, "replay": args.replay, "batch_size": args.batch_size, "lr": args.lr,
    }.items() if v is not None})  # fmt: skip
    return ExperimentConfig(
        dataset=args.dataset, model=args.model, seeds=tuple(args.seeds), budgets=tuple(args.budget),
        strategies=tuple(args.strategy), rounds=args.rounds, cell_px=args.cell_px, train_fraction=args.train_fraction,
        arms=tuple(args.arms), saliency=args.saliency, train=train, workers=args.workers,
        annotator=AnnotatorConfig(miss_rate=args.miss_rate, wrong_rate=args.wrong_rate),
    )  # fmt: skip
