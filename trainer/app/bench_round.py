"""``hitl bench round``: what a feedback round costs against a plain round, at the training defaults.

Per seed, one model is trained for a round without feedback (not timed), then copied twice:
- plain: one more round of CE only, then the test-set evaluation a round ends with;
- feedback: the budget's annotated images (picked by the round-0 model's entropy, marked by the simulated
  annotator from the true masks) trained in with the penalty, then what a feedback round adds before the
  next one: scoring the training set to pick the next images and their saliency maps for the tasks.
Both run on the same data, model, optimizer state and schedule in one process, interleaved seed by seed so
drift in machine load hits both alike. ``ratio`` = sum of feedback seconds / sum of plain seconds.
``--repeat N`` times every arm N times per seed, in alternating order (plain first, then last, ...), and takes
each arm's median: a small-CNN round lasts about 10 s, and one timing of it moved the ratio by 0.05 between
runs on this machine. The accuracy is that of the first repeat (one thread on a CPU repeats it exactly).

``--compare KEY=VALUE ...`` adds a copy trained with those ``TrainConfig`` overrides (for example ``replay=4``)
whose accuracy and seconds are reported beside; repeat ``--compare`` for several (arms ``compare``,
``compare-2``, ...), each timed beside the same plain and feedback arms.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
import typing

import numpy as np
import torch

from label_config.grid import Grid
from trainer.core.checks import check_int
from trainer.core.feedback import AnnotatorConfig, Feedback, simulated_cells
from trainer.core.loop import TrainConfig, make_optimizer, round_seed, train_round
from trainer.core.models import build_model
from trainer.core.sampling import SamplingConfig, predict_probs, select
from trainer.data.registry import load_dataset, train_fraction
from trainer.explain.batch import explain_batch


def bench_round(*, model: str = "small-cnn", size: int | None = None, dataset: str | None = None,
                seeds: tuple[int, ...] = (0,), budget: float = 0.01, fraction: float = 1.0,
                train: TrainConfig | None = None, compare: list[dict] | None = None,
                repeat: int = 1) -> dict:  # fmt: skip
    """Time one plain and one feedback round per seed (see the module docstring). Returns one dict.

    compare: ``TrainConfig`` overrides, one dict for each compared arm."""
    check_int(repeat, "repeat", minimum=1)
    cfg = train or TrainConfig()
    dataset = dataset or ("decoy-mnist" if model == "small-cnn" else "decoy-mnist-rgb")
    compares = compare or []
    arms = {"plain": cfg, "feedback": cfg}
    names = [compare_arm(i) for i in range(len(compares))]
    for name, overrides in zip(names, compares):
        arms[name] = dataclasses.replace(cfg, **overrides)
    per_seed = []
    for seed in seeds:
        per_seed.append(_one_seed(model, size, dataset, seed, budget, fraction, arms, repeat))
    total = {arm: sum(s[arm]["seconds"] for s in per_seed) for arm in arms}
    mean_acc = {arm: statistics.fmean(s[arm]["acc"] for s in per_seed) for arm in arms}
    first = per_seed[0]
    out = {
        "plain_s": round(total["plain"], 2), "feedback_s": round(total["feedback"], 2),
        "ratio": round(total["feedback"] / total["plain"], 3),
        "plain_acc": round(mean_acc["plain"], 4), "feedback_acc": round(mean_acc["feedback"], 4),
        "feedback_train_s": round(sum(s["feedback"]["train_s"] for s in per_seed), 2),
        "feedback_next_s": round(sum(s["feedback"]["next_s"] for s in per_seed), 2),
        "model": model, "size": first["size"], "dataset": dataset, "train_images": first["train_images"],
        "annotated": first["annotated"], "seeds": list(seeds), "device": cfg.device, "precision": cfg.precision,
        "penalised_rows_per_step": first["feedback"]["penalised_rows_per_step"], "repeat": repeat,
        "plan": first["plan"],
        "train": dataclasses.asdict(cfg), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "per_seed": per_seed,
    }  # fmt: skip
    for name, overrides in zip(names, compares):
        summary = {"overrides": overrides, "acc": round(mean_acc[name], 4), "seconds": round(total[name], 2),
                   "ratio": round(total[name] / total["plain"], 3),
                   "acc_diff": round(mean_acc["feedback"] - mean_acc[name], 4)}  # fmt: skip
        out[name] = summary
    return out


def compare_arm(i: int) -> str:
    """The name of the i-th (0-based) compared arm: ``compare``, ``compare-2``, ``compare-3``, ..."""
    return "compare" if i == 0 else f"compare-{i + 1}"


def _one_seed(model_name: str, size: int | None, dataset: str, seed: int, budget: float, fraction: float,
              arms: dict[str, TrainConfig], repeat: int = 1) -> dict:  # fmt: skip
    train_set, test_set = load_dataset(dataset, seed=seed, size=size)
    train_set = train_fraction(train_set, fraction, seed=seed)
    masks = getattr(train_set, "decoy_masks", None)
    if masks is None or not bool(masks.any()):
        raise ValueError(
            f"dataset {dataset!r} has no true masks (or only empty ones) for the simulated annotator: use a built-in "
            "confounded dataset (hitl datasets) or a folder with <stem>.mask.png files"
        )
    c, h, w = train_set.image_shape
    grid = Grid.from_cell_px(h, w, max(1, h // 7))
    cfg0 = arms["plain"]
    torch.manual_seed(seed)
    model = build_model(model_name, len(train_set.classes), c, h)
    optimizer = make_optimizer(model, cfg0)
    train_round(model, train_set, Feedback(), grid, cfg0, optimizer=optimizer, seed=round_seed(seed, 0))
    # The budget, asked all at once by the round-0 model: what several rounds of feedback add up to.
    n = max(1, int(round(budget * len(train_set))))
    probs = predict_probs(model, train_set, device=cfg0.device)
    asked = select(probs, train_set.labels, n, strategy=SamplingConfig().strategy, seed=round_seed(seed, 0))
    truth, rng = train_set.decoy_masks.numpy(), np.random.default_rng(seed)
    feedback = Feedback()
    for i in asked:
        feedback.cells[int(i)] = simulated_cells(truth[int(i)], grid, AnnotatorConfig(), rng)
    plan = arms["feedback"].for_model(model)
    result = {"size": h, "train_images": len(train_set), "annotated": len(feedback.annotated_ids()),
              "plan": {k: getattr(plan, k) for k in ("replay", "penalty_every", "replay_weight")}}  # fmt: skip
    timings: dict[str, list[tuple[float, float]]] = {arm: [] for arm in arms}
    for rep in range(repeat):
        for arm in list(arms) if rep % 2 == 0 else list(arms)[::-1]:
            timing, scores = _time_arm(model, optimizer, train_set, test_set, grid, feedback, arms[arm], arm, seed)
            timings[arm].append(timing)
            result.setdefault(arm, scores)
    for arm, runs in timings.items():
        train_s, next_s = statistics.median(t for t, _ in runs), statistics.median(n for _, n in runs)
        result[arm].update(seconds=round(statistics.median(t + n for t, n in runs), 3), train_s=round(train_s, 3),
                           next_s=round(next_s, 3), seconds_all=[round(t + n, 3) for t, n in runs])  # fmt: skip
    return result


def _time_arm(model, optimizer, train_set, test_set, grid, feedback, cfg: TrainConfig, arm: str,
              seed: int) -> tuple[tuple[float, float], dict]:  # fmt: skip
    """One timed round of ``arm`` on a copy of the round-0 model: ((train seconds, next-images seconds), scores)."""
    net = copy.deepcopy(model)
    opt = make_optimizer(net, cfg)
    # A copy: load_state_dict keeps the given tensors where dtype and device match, and Adam updates its moments
    # in place, so each arm would start from the moments the arms before it left.
    opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    given = Feedback() if arm == "plain" else feedback
    torch.manual_seed(round_seed(seed, 1))
    started = time.perf_counter()
    rr = train_round(net, train_set, given, grid, cfg, optimizer=opt, val_set=test_set, seed=round_seed(seed, 1),
                     score=arm != "plain")  # fmt: skip
    trained = time.perf_counter()
    if arm != "plain":  # what a feedback round adds before the next: pick images, explain them for the tasks
        sampling = SamplingConfig()
        nxt = select(rr.train_probs, train_set.labels, sampling.per_round, strategy=sampling.strategy,
                     exclude=feedback.given_ids(), seed=round_seed(seed, 1))  # fmt: skip
        images = torch.stack([train_set[int(i)][0] for i in nxt])
        explain_batch(net, images, grid)
    done = time.perf_counter()
    last = rr.epochs[-1]
    steps = -(-len(train_set) // cfg.batch_size) * cfg.epochs
    scores = {
        "acc": last.val_acc,
        "loss": last.val_loss,
        "penalised_rows_per_step": round(sum(e.penalised_rows for e in rr.epochs) / steps, 2),
    }
    return (trained - started, done - trained), scores


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    hints = typing.get_type_hints(TrainConfig)  # every field's declared type
    if not sep or key not in hints:
        raise argparse.ArgumentTypeError(f"--compare takes KEY=VALUE with KEY one of {sorted(hints)}, got {text!r}")
    kind = next(t for t in typing.get_args(hints[key]) or (hints[key],) if t is not type(None))
    if kind is bool:
        return key, value.lower() in ("1", "true", "yes", "on")
    try:
        return key, kind(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--compare {key}: {value!r} is not a {kind.__name__}") from e


def add_parser(subparsers) -> argparse.ArgumentParser:
    d = TrainConfig()
    p = subparsers.add_parser("round", help="time a feedback round against a plain round at the training defaults")
    p.add_argument("--model", default="small-cnn")
    p.add_argument("--size", type=int, default=None, help="image size (default: the dataset's)")
    p.add_argument("--dataset", default=None, help="default: decoy-mnist (small-cnn) or decoy-mnist-rgb")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--budget", type=float, default=0.01, help="share of the training images annotated")
    p.add_argument("--train-fraction", type=float, default=1.0, help="share of the training set used")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default=d.precision, choices=("fp32", "bf16"))
    p.add_argument("--compare", type=_override, nargs="+", action="append", default=None, metavar="KEY=VALUE",
                   help="an arm with these training overrides, e.g. replay=4; repeat for several arms")  # fmt: skip
    p.add_argument("--repeat", type=int, default=1, help="time each arm this many times per seed (median)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    cfg = dataclasses.replace(TrainConfig(), epochs=args.epochs, device=args.device, precision=args.precision)
    r = bench_round(model=args.model, size=args.size, dataset=args.dataset, seeds=tuple(args.seeds),
                    budget=args.budget, fraction=args.train_fraction, train=cfg,
                    compare=[dict(c) for c in args.compare or []], repeat=args.repeat)  # fmt: skip
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['model']} {r['size']} px, {r['train_images']} images, {r['annotated']} annotated, seeds {r['seeds']}, "
          f"{r['device']} {r['precision']}: plain round {r['plain_s']} s, feedback round {r['feedback_s']} s "
          f"(training {r['feedback_train_s']} s, next images {r['feedback_next_s']} s), ratio {r['ratio']}; "
          f"accuracy plain {r['plain_acc']}, feedback {r['feedback_acc']}")  # fmt: skip
    for i in range(len(args.compare or [])):
        c = r[compare_arm(i)]
        print(
            f"with {c['overrides']}: accuracy {c['acc']} ({c['seconds']} s, ratio {c['ratio']}); "
            f"feedback - it = {c['acc_diff']:+}"
        )
    return 0
