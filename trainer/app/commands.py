"""The run commands: ``hitl init`` and ``hitl train`` (a run directory and its next round), ``hitl push``,
``hitl pull`` and ``hitl run`` (the loop against your Label Studio, from LABEL_STUDIO_URL /
LABEL_STUDIO_API_KEY), and ``hitl status`` (where a run stands)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from trainer.app.status import RunStatus, gather
from trainer.core.checks import check_choice, check_int
from trainer.data.files import write_folder
from trainer.data.registry import DATASETS, load_dataset
from trainer.data.snapshot import SNAPSHOT_PREFIX
from trainer.labelstudio.annotator import SIMULATED_KINDS, parse_kinds
from trainer.labelstudio.client import connect, export_tasks
from trainer.labelstudio.link import connect_project, read_link
from trainer.labelstudio.loop import run_loop
from trainer.labelstudio.pull import pull
from trainer.labelstudio.push import push
from trainer.labelstudio.snapshot import create_snapshot, parse_project_ref
from trainer.runs.create import GRID_CELLS, new_run_config
from trainer.runs.distributed import DistEnv, train_rounds
from trainer.runs.ledger import FEEDBACK_MODES
from trainer.runs.run import Run, RunConfig


def register(sub) -> None:
    p = sub.add_parser("init", help="create a run directory (dataset, model, grid, training settings)")
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--dataset",
        default=RunConfig.dataset,
        help="a built-in dataset (`hitl datasets`), folder:PATH (one folder per class), csv:PATH, or "
        "labelstudio:PROJECT (a project id or URL: its labelled tasks, snapshotted into the run)",
    )
    p.add_argument(
        "--label-studio-url",
        default=None,
        help="with labelstudio:PROJECT: the server (default: LABEL_STUDIO_URL; the key is LABEL_STUDIO_API_KEY)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="with labelstudio:PROJECT: the seeded stratified test share, unless tasks carry split in their data",
    )
    p.add_argument(
        "--model",
        default=None,
        help="small-cnn, resnet18, resnet50 (default: small-cnn for 1-channel images up to 32 px, else resnet18)",
    )
    p.add_argument("--image-size", type=int, default=None, help="default: the data's own (files: median side, <= 224)")
    p.add_argument("--channels", type=int, default=None, help="default: the data's own (1 for greyscale files)")
    p.add_argument(
        "--cell-px",
        type=int,
        default=None,
        help=f"grid cell side in model-input pixels (default: a {GRID_CELLS} x {GRID_CELLS} grid)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--train-fraction",
        type=float,
        default=RunConfig.train_fraction,
        help="train on a seeded, class-stratified share of the training split, in (0, 1] (the test split stays whole)",
    )
    p.add_argument("--saliency", default=RunConfig.saliency)
    p.add_argument("--top-k", type=int, default=RunConfig.top_k, help="salient cells pre-filled as suggestions")
    p.add_argument("--weights", default=None, help="local state-dict file to start from")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lam", type=float, default=None)
    p.add_argument("--replay", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--strategy", default=None)
    p.add_argument("--per-round", type=int, default=None, help="images pushed for feedback each round")
    p.set_defaults(func=_init)

    p = sub.add_parser("train", help="train the next round from the last checkpoint with the ledger's feedback")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument(
        "--distributed",
        action="store_true",
        help="under torchrun: DistributedDataParallel, one process per GPU (gloo on CPU)",
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("datasets", help="list the built-in datasets and their confounders")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.add_argument(
        "--export",
        nargs=2,
        metavar=("NAME", "DIR"),
        default=None,
        help="write a built-in dataset as image folders (DIR/train, DIR/test; true masks as "
        "<id>.mask.png), to try the folder:PATH path with it",
    )
    p.add_argument("--image-size", type=int, default=None, help="with --export: the size to write")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="with --export: the seed of the confounder's draws (`hitl experiment --seeds`)",
    )
    p.set_defaults(func=_datasets)
    _register_label_studio(sub)


def _init(args) -> int:
    if args.dataset.startswith(SNAPSHOT_PREFIX):
        args.dataset = _snapshot(args)
    config = new_run_config(
        args.dataset, args.run_dir, channels=args.channels, image_size=args.image_size, model=args.model,
        cell_px=args.cell_px, seed=args.seed, saliency=args.saliency, top_k=args.top_k, weights=args.weights,
        train_fraction=args.train_fraction,
        **{"train.epochs": args.epochs, "train.lam": args.lam, "train.replay": args.replay,
           "train.device": args.device, "sampling.strategy": args.strategy, "sampling.per_round": args.per_round},
    )  # fmt: skip
    run = Run.create(args.run_dir, config)
    print(f"run {run.directory}: {len(run.datasets[0])} training images, classes {run.classes}, grid {run.grid.shape}")
    return 0


def _snapshot(args) -> str:
    """Snapshot the team's project into the run directory (``trainer.labelstudio.snapshot``); the dataset name."""
    if args.train_fraction != 1:
        raise ValueError("--train-fraction is not for a labelstudio: dataset: label fewer tasks instead")
    project_id, url = parse_project_ref(args.dataset, args.label_studio_url)
    url = url or os.environ.get("LABEL_STUDIO_URL")
    client = connect(url)
    config_path = args.run_dir / "config.json"
    if config_path.is_file() and json.loads(config_path.read_text()).get("dataset") != f"{SNAPSHOT_PREFIX}{project_id}":
        raise ValueError(f"{args.run_dir} already holds a run with another dataset; use a new directory")
    report = create_snapshot(args.run_dir, client, url.rstrip("/"), project_id, export_tasks(client, project_id),
                             seed=args.seed, test_fraction=args.test_fraction)  # fmt: skip
    head, *details = report.lines()
    print(f"project {project_id} on {url}: {head}")
    for line in details:
        print(line, file=sys.stderr)
    return f"{SNAPSHOT_PREFIX}{project_id}"


def _datasets(args) -> int:
    if args.export:
        name, directory = args.export
        check_choice(name, "built-in dataset", DATASETS)
        train, test = load_dataset(name, size=args.image_size, seed=args.seed)
        for part, data in (("train", train), ("test", test)):
            write_folder(data, Path(directory) / part)
        print(f"wrote {len(train)} + {len(test)} images of {name} to {directory}: use --dataset folder:{directory}")
        return 0
    rows = [{"name": name, "confounder": e.confounder, "image_shape": list(e.shape), "true_mask": e.clean is not None,
             "clean_twin": e.clean} for name, e in DATASETS.items()]  # fmt: skip
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'name':<24} {'confounder':<11} {'image shape':<13} {'true mask':<9} clean twin")
    for r in rows:
        shape = " x ".join(map(str, r["image_shape"]))
        print(
            f"{r['name']:<24} {r['confounder']:<11} {shape:<13} {'yes' if r['true_mask'] else 'no':<9} "
            f"{r['clean_twin'] or '-'}"
        )
    print("user data: folder:PATH (one folder per class) or csv:PATH (ISIC-2017, APTOS-2019, image,label)")
    return 0


def _train(args) -> int:
    if args.distributed:
        env = DistEnv.from_environ()
        if env is None:
            raise ValueError(
                "--distributed needs torchrun (RANK and WORLD_SIZE are unset): "
                "torchrun --nproc-per-node N $(which hitl) train RUN --distributed"
            )
        return train_rounds(args.run_dir, args.rounds, env)
    run = Run.open(args.run_dir)
    for _ in range(args.rounds):
        record = run.train_next_round(progress=True)
        print(json.dumps({k: record[k] for k in ("round", "model_version", "annotated", "acc", "min_loss")}))
    return 0


def _register_label_studio(sub) -> None:
    """``hitl push``, ``hitl pull`` and ``hitl run`` (Label Studio from LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY)."""
    p = sub.add_parser("push", help="push the newest round's images to Label Studio")
    _link_args(p)
    p.set_defaults(func=_push)

    p = sub.add_parser("pull", help="pull the project's annotations into the run's ledger")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--mode", choices=FEEDBACK_MODES, default="union", help="how several annotators combine")
    p.set_defaults(func=_pull)

    p = sub.add_parser("run", help="the loop: push, wait for annotators, pull, train; resumable")
    _link_args(p)
    p.add_argument("--rounds", type=int, required=True, help="feedback rounds: stop when round R is trained")
    p.add_argument("--min-annotations", type=int, default=None, help="annotated tasks to wait for (default: all)")
    p.add_argument("--deadline-minutes", type=float, default=None, help="stop waiting after this long")
    p.add_argument("--poll-seconds", type=float, default=10.0)
    p.add_argument("--mode", choices=FEEDBACK_MODES, default="union")
    p.add_argument(
        "--simulate",
        nargs="?",
        const="rect",
        type=_kinds,
        default=None,
        help=f"annotate with a simulated annotator: {', '.join(SIMULATED_KINDS)}, or several comma-separated, taking "
        "turns (rect/point: our config's cell tools; polygon/brush: a team project's feedback tools; accept: the "
        "round's prediction unread)",
    )
    p.add_argument("--miss-rate", type=float, default=0.0, help="simulated annotator misses a decoy cell")
    p.add_argument(
        "--twin",
        action="store_true",
        help="also train RUN-twin: the same data, schedule and seeds with no feedback, round for round "
        "(compare them with `hitl compare RUN RUN-twin`)",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser("status", help="per round: tasks pushed, annotated, skipped, pending; annotators; budget")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="feedback rounds planned (`hitl run --rounds`), for the budget (default: rounds pushed)",
    )
    p.add_argument(
        "--backend-url",
        default=None,
        help="the ML backend whose /health gives model_version (default: the project's connected one)",
    )
    p.set_defaults(func=_status)


def _kinds(text: str) -> str:
    try:
        parse_kinds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _link_args(p) -> None:
    p.add_argument("run_dir", type=Path)
    p.add_argument("--project-title", default=None, help="default: 'hitl <run name>'")
    p.add_argument("--document-root", default=None, help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT")
    p.add_argument("--data-uri", action="store_true", default=None, help="inline images instead of local files")
    p.add_argument(
        "--force",
        action="store_true",
        help="use a project found by title that this run did not create: its config is replaced and tasks added "
        "(without it the command refuses and says what would change)",
    )


def _open(args, *, linking: bool = True):
    run = Run.open(args.run_dir)
    client = connect()
    url = os.environ["LABEL_STUDIO_URL"]  # connect() has checked it is set
    if linking:
        return (
            run,
            client,
            connect_project(
                run,
                client,
                url,
                title=args.project_title,
                document_root=args.document_root,
                data_uri=args.data_uri,
                force=args.force,
                adding=run.config.sampling.per_round,
            ),
        )
    link = read_link(run)
    if link is None:
        raise ValueError(f"run {args.run_dir} is not linked to a Label Studio project yet: run `hitl push` first")
    return run, client, link


def _push(args) -> int:
    run, client, link = _open(args)
    task_ids = push(
        run, client, link.project_id, document_root=link.document_root, data_uri=link.data_uri, progress=True
    )
    print(f"round {run.current_round()}: {len(task_ids)} tasks in {link.url}/projects/{link.project_id}")
    return 0


def _pull(args) -> int:
    run, client, link = _open(args, linking=False)
    report = pull(run, client, link.project_id, mode=args.mode, progress=True)
    summary, *details = report.lines()
    print(f"{summary}; {len(report.feedback.annotated_ids())} images with a mask W")
    for line in details:
        print(line, file=sys.stderr)
    return 0


def _run(args) -> int:
    run, client, link = _open(args)
    twin = run.twin() if args.twin else None
    try:
        run_loop(
            run,
            client,
            link,
            rounds=args.rounds,
            min_annotations=args.min_annotations,
            deadline_minutes=args.deadline_minutes,
            poll_seconds=args.poll_seconds,
            simulate=args.simulate,
            miss_rate=args.miss_rate,
            mode=args.mode,
            twin=twin,
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; `hitl run {args.run_dir} --rounds {args.rounds}` resumes where this stopped",
            file=sys.stderr,
        )
        return 130
    print(f"done: round {run.current_round()} trained ({run.model_version(run.current_round())})")
    if twin is not None:
        print(
            f"no-feedback twin: {twin.directory} (round {twin.current_round()}); "
            f"compare: hitl compare {args.run_dir} {twin.directory}"
        )
    return 0


def _status(args) -> int:
    if args.rounds is not None:
        check_int(args.rounds, "--rounds", minimum=1)
    status = gather(Run.open(args.run_dir), backend_url=args.backend_url, budget_rounds=args.rounds)
    print(json.dumps(status.to_dict(), indent=2) if args.json else render_status(status))
    return 0


def render_status(s: RunStatus) -> str:
    """The status as plain-text tables (times in seconds)."""
    ls = s.label_studio
    lines = [
        f"run {s.run}: newest model_version {s.model_version or '- (round 0 not trained)'}; training now: "
        + (f"yes (pid {s.training_pid})" if s.training else "no")
    ]
    if ls.reachable:
        lines.append(
            f"Label Studio: {ls.url}/projects/{ls.project_id} (live counts; {ls.not_pulled} annotations not pulled yet)"
        )
    else:
        lines.append(f"Label Studio: {ls.message}")
    head = ("round", "pushed", "annotated", "skipped", "pending", "label fixes", "model_version", "acc")
    rows = [(r.round, r.pushed, r.annotated, r.skipped, r.pending, r.label_corrections, r.model_version or "-",
             "-" if r.acc is None else f"{r.acc:.3f}") for r in s.rounds]  # fmt: skip
    totals = [sum(r[i] for r in rows) for i in range(1, 6)]
    lines += _table(head, rows + [("total", *totals, "", "")])
    if s.annotators:
        rows = [(f"{a.name or 'user'} ({a.annotator})" if a.annotator is not None else "unknown", a.annotations,
                 a.skipped, a.label_corrections,
                 "-" if a.median_lead_time_s is None else f"{a.median_lead_time_s:.1f} s")
                for a in s.annotators]  # fmt: skip
        lines += _table(("annotator", "answers", "skipped", "label fixes", "median time"), rows)
    else:
        lines.append("annotators: no answers yet")
    b = s.budget
    lines.append(
        f"budget: {b.annotated_images} of {b.images} images annotated ({b.spent:.0%}): {b.per_round} per "
        f"round x {b.rounds} round{'s' if b.rounds != 1 else ''}"
    )
    if s.backend is not None:
        k = s.backend
        lines.append(f"backend {k.url}: " + (k.error or f"model_version {k.model_version}, training {k.training}"))
    return "\n".join(lines + render_last_pull(s.last_pull))


def render_last_pull(last: dict | None) -> list[str]:
    """``Ledger.last_pull`` as lines: when, the counts, then each invalid annotation and warning kept."""
    if last is None:
        return ["last pull: none yet"]
    counts = last["counts"]
    head = ", ".join(f"{counts[k]} {k}" for k in ("new", "updated", "unchanged", "deleted", "invalid", "warnings"))
    lines = [f"last pull {last['finished_at']} (project {last['project_id']}): {head}"]
    lines += [f"  invalid annotation: {i['reason']}" for i in last["invalid"]]  # the reason names task and annotation
    lines += [f"  warning: {w}" for w in last["warnings"]]
    hidden = counts["invalid"] - len(last["invalid"]) + counts["warnings"] - len(last["warnings"])
    return lines + ([f"  ... and {hidden} more (hitl pull lists them all)"] if hidden else [])


def _table(head: tuple, rows: list[tuple]) -> list[str]:
    """Left-aligned first column, the others right-aligned, each as wide as its widest cell."""
    cells = [tuple(str(c) for c in row) for row in [head, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in cells
    ]
