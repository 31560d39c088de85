"""``hitl bench team``: the feedback loop through a team's own Label Studio project, against ``hitl experiment``.

Shape legend: N images, H x W pixels.

A built-in confounder set becomes a team's project: its images written as local files, a project from Label
Studio's stock image-classification template with the feedback tools of ``hitl config --snippet`` (polygon and
brush), every train and test image imported as a task with its class as an annotation (test tasks with ``split:
test``, so the snapshot's test set is the built-in one; ``SOURCE_KEY`` keeps each task's built-in sample id, so
``write_truth`` can put each snapshot image's true mask beside it, where the simulated annotator and the metrics
find it). Then ``hitl init --dataset labelstudio:ID`` (the same code,
``init_project_run``) with ``hitl experiment``'s hitl settings, and ``rounds`` rounds of push (predictions on the
team's tasks) -> the simulated annotator through the REST API -> pull -> train (``run_loop``). Against it, at the
same seed: ``experiment`` (``hitl experiment --arms hitl``'s ``run_arm``), ``clean`` (its clean arm) and
``no-feedback`` (the run's no-feedback twin, round for round).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from label_config.interface import choices_result, parse_project_config
from label_config.snippet import starter_config
from trainer.app.experiment import ExperimentConfig, round_budgets, run_arm, run_clean
from trainer.app.lsserver import LabelStudioServer
from trainer.core.loop import TrainConfig
from trainer.core.sampling import SamplingConfig
from trainer.data.files import mask_path, write_folder
from trainer.data.registry import CONFOUNDED, load_dataset
from trainer.data.snapshot import read_manifest, snapshot_dir
from trainer.labelstudio.annotator import parse_kinds
from trainer.labelstudio.client import connect, ensure_local_storage, import_tasks, local_file_url
from trainer.labelstudio.link import read_link
from trainer.labelstudio.loop import run_loop
from trainer.labelstudio.project_run import init_project_run
from trainer.runs.run import Run

SOURCE_KEY = "source_sample_id"  # a task's sample id in the built-in dataset it was made from
AGAINST = ("experiment", "clean", "no-feedback")
TOOLS = ("polygon", "brush")


@dataclass(frozen=True)
class TeamBench:
    """One measurement. ``limit_train`` / ``limit_test``: the first images of each split only (a smoke test; the
    experiment arms then see other data, so they are left out); ``per_round``: images asked each round (default:
    ``budget`` of the training images over ``rounds``, which must divide evenly, as ``hitl experiment`` spreads
    them)."""

    dataset: str = "texture-mnist"
    seed: int = 0
    annotator: str = "polygon,brush"
    rounds: int = 5
    budget: float = 0.01
    model: str = "small-cnn"
    against: tuple[str, ...] = ("experiment", "clean")
    epochs: int | None = None
    batch_size: int | None = None
    per_round: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None

    def __post_init__(self) -> None:
        if self.dataset not in CONFOUNDED:
            raise ValueError(
                f"dataset must be a built-in confounder set ({', '.join(CONFOUNDED)}), got {self.dataset!r}"
            )
        parse_kinds(self.annotator)
        unknown = sorted(set(self.against) - set(AGAINST))
        if unknown:
            raise ValueError(f"unknown --against {unknown}: choose from {list(AGAINST)}")
        if (self.limit_train or self.limit_test) and {"experiment", "clean"} & set(self.against):
            raise ValueError("--limit-train/--limit-test make a smaller set than hitl experiment's: use --against "
                             "no-feedback (or nothing)")  # fmt: skip

    def train_config(self) -> TrainConfig:
        return replace(TrainConfig(), **{k: v for k, v in (("epochs", self.epochs), ("batch_size", self.batch_size))
                                         if v is not None})  # fmt: skip


def builtin_parts(dataset: str, seed: int, *, limit_train: int | None = None,
                  limit_test: int | None = None) -> dict[str, Dataset]:  # fmt: skip
    """``{"train": ..., "test": ...}`` of a built-in set at ``seed``, each cut to its first ``limit`` images."""
    train, test = load_dataset(dataset, seed=seed)
    return {"train": _first(train, limit_train), "test": _first(test, limit_test)}


def import_builtin(client, document_root: Path, parts: dict[str, Dataset], *, title: str,
                   tools=TOOLS) -> tuple[int, dict[int, int]]:  # fmt: skip
    """A team's project made from a built-in set: (project id, task id -> built-in sample id in its split).

    Images under ``document_root/<title>/`` (Label Studio's LOCAL_FILES_DOCUMENT_ROOT) as ``hitl datasets --export``
    writes them (with their true masks beside), served by one Local Files storage; tasks imported in batches, in
    sample order, train then test, each with its class as an annotation."""
    xml = starter_config(parts["train"].classes, tool=tools)
    project = client.projects.create(title=title[:50], label_config=xml).id
    config = parse_project_config(xml)
    folder = Path(document_root).resolve() / f"project-{project}"
    tasks = []
    for split, data in parts.items():
        write_folder(data, folder / split)
        for i in range(len(data)):
            label = int(data.labels[i])
            url = local_file_url(folder / split / data.classes[label] / f"{i:05d}.png", document_root)
            tasks.append({"data": {config.image.data_key: url, "split": split, SOURCE_KEY: i},
                          "annotations": [{"result": [choices_result(config, label)]}]})  # fmt: skip
    ensure_local_storage(client, project, folder, document_root)
    ids = import_tasks(client, project, tasks, batch_size=500)
    return project, {t: task["data"][SOURCE_KEY] for t, task in zip(ids, tasks)}


def _first(data, limit: int | None):
    return data if limit is None or limit >= len(data) else data.subset(list(range(limit)))


def write_truth(run: Run, source_of: dict[int, int], parts: dict[str, Dataset]) -> int:
    """Put each snapshot image's true mask beside it (``<task id>.mask.png``, the layout ``hitl datasets --export``
    writes), from the built-in image its task came from, and reload the run's data; how many were written. The run
    then knows its truth as a built-in run does (``decoy_masks``): the simulated annotator marks it and the history
    reports the irrelevant share. ``source_of``: task id -> built-in sample id in its split."""
    written = 0
    for task in read_manifest(run.data_root)["tasks"]:
        mask = parts[task["split"]].decoy_masks[source_of[int(task["task_id"])]].numpy()  # (H, W) bool
        if mask.any():
            path = mask_path(snapshot_dir(run.data_root) / task["file"])
            Image.fromarray(mask.astype(np.uint8) * 255).save(path)
            written += 1
    run.reload_datasets()
    return written


def bench_team(cfg: TeamBench, *, workdir: Path | None = None, url: str | None = None, api_key: str | None = None,
               document_root: Path | None = None, log=print) -> dict:  # fmt: skip
    """Run the measurement (a local Label Studio in ``workdir`` unless ``url``, ``api_key`` and ``document_root``
    name one); the figures."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="hitl-bench-team-") as tmp:
            root = Path(workdir or tmp).resolve()
            if url:
                return _bench(cfg, connect(url, api_key), url, Path(document_root or root / "documents"), root, log)
            with LabelStudioServer(root / "label-studio", document_root=root / "documents",
                                   startup_timeout=300) as server:  # fmt: skip
                log(f"Label Studio {server.url} up in {server.startup_seconds:.0f} s")
                return _bench(cfg, connect(server.url, server.token), server.url, server.document_root, root, log)
    finally:
        torch.set_num_threads(threads)


def _bench(cfg: TeamBench, client, url: str, document_root: Path, root: Path, log) -> dict:
    began = time.perf_counter()
    title = f"team {cfg.dataset} s{cfg.seed} {time.strftime('%m%d-%H%M%S')}"
    parts = builtin_parts(cfg.dataset, cfg.seed, limit_train=cfg.limit_train, limit_test=cfg.limit_test)
    project, source_of = import_builtin(client, document_root, parts, title=title)
    imported = time.perf_counter()
    n_train = len(parts["train"])
    per_round = cfg.per_round or _per_round(cfg.budget, n_train, cfg.rounds)
    training = {f"train.{k}": v for k, v in asdict(cfg.train_config()).items() if k in ("epochs", "batch_size")}
    defaults = {"model": cfg.model, "seed": cfg.seed, "sampling.per_round": per_round, **training}
    run, report = init_project_run(root / "runs" / f"project-{project}", client, url, project, defaults)
    log(f"project {project}: {n_train} train tasks imported in {imported - began:.0f} s; "
        f"{report.lines()[0] if report else 'run reopened'}; run {run.directory}")  # fmt: skip
    write_truth(run, source_of, parts)
    twin = run.twin() if "no-feedback" in cfg.against else None
    run_loop(run, client, read_link(run), rounds=cfg.rounds, simulate=cfg.annotator, twin=twin,
             progress=False, log=lambda line: log(f"[team] {line}"))  # fmt: skip
    looped = time.perf_counter()
    out = {"bench": "team", **asdict(cfg), "label_studio": url, "project_id": project, "run": str(run.directory),
           "train_images": n_train, "test_images": len(run.datasets[1]), "per_round": per_round,
           "team": _arm(run), "import_s": round(imported - began, 1),
           "loop_s": round(looped - imported, 1)}  # fmt: skip
    if twin is not None:
        out["no_feedback"] = _arm(twin)
    experiment = ExperimentConfig(datasets=(cfg.dataset,), model=cfg.model, seeds=(cfg.seed,), budgets=(cfg.budget,),
                                  rounds=cfg.rounds, arms=("hitl",), train=cfg.train_config(), workers=1)  # fmt: skip
    if "experiment" in cfg.against:
        arm = run_arm(experiment, cfg.dataset, "hitl", cfg.seed, cfg.budget, SamplingConfig().strategy)
        out["experiment"] = {"acc": arm["acc"], "accuracy_per_round": [h["acc"] for h in arm["history"]],
                             "annotated": arm["history"][-1]["annotated"]}  # fmt: skip
    if "clean" in cfg.against:
        out["clean"] = {"acc": run_clean(experiment, (cfg.dataset,), cfg.seed)[cfg.dataset]["acc"]}
    out["seconds"] = round(time.perf_counter() - began, 1)
    return out


def _per_round(budget: float, n_train: int, rounds: int) -> int:
    spread = round_budgets(budget, n_train, rounds)
    if len(set(spread)) != 1 or not spread[0]:
        raise ValueError(
            f"a budget of {budget} x {n_train} images over {rounds} rounds is {spread} a round; a "
            "run asks the same number each round: choose a budget that divides evenly, or --per-round"
        )
    return spread[0]


def _arm(run: Run) -> dict:
    history = run.history()
    return {"acc": history[-1]["acc"], "accuracy_per_round": [h["acc"] for h in history],
            "annotated": history[-1]["annotated"], "label_fixes": history[-1]["label_fixes"]}  # fmt: skip


def format_result(r: dict) -> str:
    """The figures as lines: each arm's final accuracy and its rounds, then the differences."""
    lines = [f"{r['dataset']} seed {r['seed']}, annotator {r['annotator']}, {r['rounds']} rounds of {r['per_round']} "
             f"of {r['train_images']} images, {r['test_images']} test images ({r['seconds']:.0f} s)"]  # fmt: skip
    for name in ("team", "no_feedback", "experiment", "clean"):
        if name in r:
            rounds = ", ".join(f"{a:.3f}" for a in r[name].get("accuracy_per_round", []))
            lines.append(f"  {name:<12} acc {r[name]['acc']:.3f}" + (f"  (rounds: {rounds})" if rounds else ""))
    for name in ("no_feedback", "experiment", "clean"):
        if name in r:
            lines.append(f"  team - {name}: {r['team']['acc'] - r[name]['acc']:+.3f}")
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("team", help="the loop through a team's own project (stock template), against hitl experiment")
    p.add_argument("--dataset", default=TeamBench.dataset, help=f"a built-in confounder set: {', '.join(CONFOUNDED)}")
    p.add_argument("--seed", type=int, default=TeamBench.seed)
    p.add_argument("--annotator", default=TeamBench.annotator,
                   help="simulated annotator kind(s), comma-separated: polygon, brush, accept")  # fmt: skip
    p.add_argument("--rounds", type=int, default=TeamBench.rounds)
    p.add_argument("--budget", type=float, default=TeamBench.budget, help="share of training images asked in all")
    p.add_argument("--model", default=TeamBench.model)
    p.add_argument("--against", nargs="*", choices=AGAINST, default=None,
                   help="arms at the same seed (default: experiment clean; for accept: no-feedback)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--per-round", type=int, default=None)
    p.add_argument("--limit-train", type=int, default=None, help="only the first N training images (a smoke test)")
    p.add_argument("--limit-test", type=int, default=None, help="only the first N test images")
    p.add_argument("--workdir", type=Path, default=None, help="Label Studio's data, the images and the runs (kept)")
    p.add_argument("--label-studio-url", default=None, help="a running Label Studio instead of a new one")
    p.add_argument("--api-key", default=None)
    p.add_argument("--document-root", type=Path, default=None, help="its LOCAL_FILES_DOCUMENT_ROOT")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_main)


def _main(args) -> int:
    against = args.against if args.against is not None else (
        ("no-feedback",) if args.annotator == "accept" else ("experiment", "clean"))  # fmt: skip
    cfg = TeamBench(dataset=args.dataset, seed=args.seed, annotator=args.annotator, rounds=args.rounds,
                    budget=args.budget, model=args.model, against=tuple(against), epochs=args.epochs,
                    batch_size=args.batch_size, per_round=args.per_round, limit_train=args.limit_train,
                    limit_test=args.limit_test)  # fmt: skip
    out = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the one object

    def log(line: str) -> None:
        print(line, file=out, flush=True)

    result = bench_team(cfg, workdir=args.workdir, url=args.label_studio_url, api_key=args.api_key,
                        document_root=args.document_root, log=log)  # fmt: skip
    print(json.dumps(result) if args.json else format_result(result))
    return 0
