"""``hitl demo``: the whole product on the built-in Decoy-MNIST, end to end, on one machine.

Shape legend: N images, C channels, H x W pixels.

Starts a local Label Studio (SQLite) and the ML backend, connects the backend to a new project, then trains
two arms for the same rounds and epochs:
- feedback: round 0 without feedback, then ``rounds`` rounds of push -> a simulated annotator that works only
  through Label Studio's REST API -> pull -> training with the penalty (``trainer.labelstudio.loop.run_loop``);
- baseline: the same data, model and epochs without feedback, trained meanwhile in a second process.
It ends with the table (accuracy, min loss, irrelevant share on the decoy test set, annotated fraction),
``DIR/results.json`` and ``DIR/plots/*.png``, and leaves Label Studio running (Ctrl-C stops it) unless
``--stop``. Running it again with the same DIR continues where it stopped.

    DIR/feedback/  DIR/baseline/    the two arms' run directories (trainer.runs.run)
    DIR/label-studio/               Label Studio's data: SQLite, log, credentials (hitl-credentials.json)
    DIR/documents/                  the images Label Studio serves (its LOCAL_FILES_DOCUMENT_ROOT)
    DIR/ml-backend.log              the backend's log
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from trainer.app import plots
from trainer.app.lsserver import LabelStudioServer, free_port, port_free
from trainer.app.services import BackendProcess, connect_backend, link_project
from trainer.app.workers import exit_on_sigterm, job_result, worker_pool
from trainer.core.checks import check_int
from trainer.core.feedback import Feedback
from trainer.core.loop import evaluate
from trainer.explain.attribute import attribute
from trainer.explain.metrics import test_irrelevant_share
from trainer.labelstudio.client import connect
from trainer.labelstudio.link import read_link
from trainer.labelstudio.loop import run_loop
from trainer.runs.atomic import write_json
from trainer.runs.checkpoint import checkpoint_path, load_checkpoint
from trainer.runs.run import Run, RunConfig, with_overrides

# The penalty's settings (lambda, warm-up, replay, counterexamples) are trainer.core.loop.TrainConfig's calibrated
# defaults, kept in that one place. With them and 5 rounds of 20 images (2.5% of the 4,000), `hitl experiment`
# gave feedback 95.9 / 96.5 / 96.0% against the baseline's 74.3 / 71.6 / 70.7% on the decoy test set (seeds 0-2)
# at lambda 10, and 96.5 / 97.2 / 97.1% at lambda 1; with the cosine learning rate within each round (the default
# now, with lambda 1) 97.2 / 96.9 / 97.2% against the baseline's 75.4 / 72.2 / 72.6%.
EXAMPLES = 4  # test images in the saliency plot


@dataclass(frozen=True)
class DemoConfig:
    """What ``hitl demo`` runs. ``label_studio_url`` / ``api_key`` / ``document_root`` use a server that is
    already running instead of starting one; ``port`` is the port of the one it starts."""

    directory: Path = Path("demo-run")
    rounds: int = 5
    per_round: int = 20
    epochs: int = 3
    batch_size: int = 64
    seed: int = 0
    stop: bool = False
    port: int | None = None
    label_studio_url: str | None = None
    api_key: str | None = None
    document_root: Path | None = None

    def __post_init__(self) -> None:
        for name in ("rounds", "per_round", "epochs", "batch_size"):
            check_int(getattr(self, name), name, minimum=1)
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port!r}")
        external = (self.label_studio_url, self.api_key, self.document_root)
        if any(v is not None for v in external) and any(v is None for v in external):
            raise ValueError(
                "an existing Label Studio needs all three: --label-studio-url, --api-key and "
                "--document-root (its LOCAL_FILES_DOCUMENT_ROOT)"
            )
        if self.label_studio_url is not None and self.port is not None:
            raise ValueError("--port is for the Label Studio the demo starts; it does not go with --label-studio-url")

    @property
    def external(self) -> bool:
        return self.label_studio_url is not None

    def run_config(self) -> RunConfig:
        """Both arms' run config: the same data, model, grid, epochs and seed."""
        return with_overrides(RunConfig(), seed=self.seed, **{
            "train.epochs": self.epochs, "train.batch_size": self.batch_size, "sampling.per_round": self.per_round,
        })  # fmt: skip


def run_demo(cfg: DemoConfig, *, log=print) -> dict:
    """Run the demo; the results (also written to ``DIR/results.json``). Blocks at the end until Ctrl-C
    unless ``cfg.stop``; Label Studio and the backend are stopped when it returns or raises."""
    began = time.monotonic()
    directory = cfg.directory.resolve()
    feedback = Run.create(directory / "feedback", cfg.run_config())
    baseline = Run.create(directory / "baseline", cfg.run_config())
    services: list = []  # what to stop, in the order started
    try:
        client, link, backend_url = _start_services(cfg, feedback, services, log)
        results = _train_arms(cfg, feedback, baseline, client, link, log)
        results.update(label_studio={"url": link.url, "project_id": link.project_id,
                                     "project_url": f"{link.url}/projects/{link.project_id}"},
                       backend_url=backend_url, seconds=time.monotonic() - began)  # fmt: skip
        write_json(directory / "results.json", results)
        log(format_table(results))
        log(
            f"plots: {', '.join(results['plots'].values())}\nresults: {directory / 'results.json'}\n"
            f"demo took {results['seconds']:.0f} s"
        )
        if not cfg.stop:
            _wait_for_ctrl_c(services, results, log)
        return results
    finally:
        for service in reversed(services):
            service.stop()


def _start_services(cfg: DemoConfig, feedback: Run, services: list, log):
    """Label Studio (unless external) and the backend, connected to the feedback arm's project:
    (client, link, backend URL). Appends each started service to ``services``."""
    directory = cfg.directory.resolve()
    server = None if cfg.external else LabelStudioServer(
        directory / "label-studio", document_root=directory / "documents", port=_ls_port(cfg, feedback),
        startup_timeout=300)  # fmt: skip
    url, token = (cfg.label_studio_url.rstrip("/"), cfg.api_key) if server is None else (server.url, server.token)
    # The backend imports torch while Label Studio migrates its database: both start at once.
    backend = BackendProcess(
        feedback.directory, label_studio_url=url, api_key=token, log_path=directory / "ml-backend.log"
    )
    services.append(backend.start())
    if server is not None:
        log(f"starting Label Studio on {url} (data in {server.data_dir}; a first start takes 30-80 s)")
        services.append(server)
        server.start()
        log(
            f"Label Studio {url} is up ({server.startup_seconds:.0f} s)\n  login: {server.username}\n"
            f"  password: {server.password}\n  API token (LABEL_STUDIO_API_KEY): {server.token}"
        )
    client = connect(url, token)
    link = link_project(
        feedback,
        client,
        url,
        document_root=cfg.document_root or server.document_root,
        own_server=server is not None,
        title=f"hitl demo {directory.name}"[:50],
    )
    backend.wait_healthy()
    connect_backend(client, link.project_id, backend.url)
    log(f"ML backend {backend.url} connected to project {link.project_id} (log: {backend.log_path})")
    return client, link, backend.url


def _train_arms(cfg: DemoConfig, feedback: Run, baseline: Run, client, link, log) -> dict:
    """Both arms to round ``cfg.rounds`` (the baseline in another process meanwhile); their summaries and plots."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models on few busy cores: one thread per process is several times faster
    try:
        # worker_pool: leaving the block early (Ctrl-C, a kill) terminates the worker rather than waiting for the
        # baseline's remaining rounds (its checkpoints let the next run resume); a worker that dies is an error.
        # Not a multiprocessing.Pool: one whose worker was killed waits forever, in get() and in terminate().
        with worker_pool(1, threads=1) as pool:
            pending = pool.submit(train_baseline, str(baseline.directory), cfg.rounds)
            run_loop(
                feedback,
                client,
                link,
                rounds=cfg.rounds,
                simulate="rect",
                progress=sys.stderr.isatty(),
                log=lambda line: log(f"[feedback] {line}"),
            )
            if not pending.done():
                log("[baseline] waiting for the baseline arm to finish")
            history = job_result(
                pending,
                "the baseline arm's worker process died (killed, or out of memory?); the "
                "same command resumes both arms from their last checkpoints",
            )
            curve = ", ".join(f"{h['acc']:.3f}" for h in history)
            log(f"[baseline] accuracy per round: {curve}")
        arms = {"baseline": summarise(baseline), "feedback": summarise(feedback)}
        paths = make_plots(feedback, baseline, cfg.rounds, cfg.directory.resolve() / "plots")
    finally:
        torch.set_num_threads(threads)
    return {
        "dataset": feedback.config.dataset, "settings": _settings(cfg), "run_config": asdict(feedback.config),
        "arms": arms, "margin_points": 100 * (arms["feedback"]["acc"] - arms["baseline"]["acc"]),
        "test_images": len(feedback.datasets[1]), "plots": {k: str(p) for k, p in paths.items()},
    }  # fmt: skip


def train_baseline(directory: str, rounds: int) -> list[dict]:
    """Train a run without feedback until round ``rounds``; its history. Runs in a worker process."""
    run = Run.open(directory)
    while run.current_round() < rounds:
        run.train_next_round(Feedback())
    return run.history()


def summarise(run: Run) -> dict:
    """The newest model of an arm on the decoy test set: acc, min loss, irrelevant share, annotated fraction."""
    train, test = run.datasets
    model, _, _ = run.load_model()
    acc, _ = evaluate(model, test)
    history = run.history()
    losses = [h["min_loss"] for h in history if h.get("min_loss") is not None]
    share = test_irrelevant_share(model, test, method=run.config.saliency)
    return {
        "acc": acc, "min_loss": min(losses) if losses else None, "irrelevant_share": share,
        "annotated_fraction": len(run.feedback().annotated_ids()) / len(train),
        "rounds": run.current_round(), "accuracy_per_round": [h["acc"] for h in history],
    }  # fmt: skip


def make_plots(feedback: Run, baseline: Run, rounds: int, folder: Path) -> dict[str, Path]:
    """accuracy.png (per round, both arms) and saliency.png (test images before and after feedback)."""
    curves = {name: [h["acc"] for h in run.history()] for name, run in (("baseline", baseline), ("feedback", feedback))}
    _, test = feedback.datasets
    before, base, fed = "round 0 (no feedback yet)", f"baseline, round {rounds}", f"feedback, round {rounds}"
    models = {
        before: load_checkpoint(checkpoint_path(feedback.checkpoint_dir, 0))[0],
        base: baseline.load_model()[0].eval(),
        fed: feedback.load_model()[0].eval(),
    }
    with torch.no_grad():
        preds = {name: m(test.images).argmax(1) for name, m in models.items()}  # (N,) each
    ids = example_ids(test.labels, preds[base], preds[fed], EXAMPLES)
    images = test.images[ids]  # (EXAMPLES, C, H, W)
    maps = {name: attribute(m, images, preds[name][ids], method=feedback.config.saliency) for name, m in models.items()}
    captions = {name: [f"says {int(p)} (is {int(y)})" for p, y in zip(preds[name][ids], test.labels[ids])]
                for name in models}  # fmt: skip
    return {
        "accuracy": plots.plot_accuracy(curves, folder / "accuracy.png"),
        "saliency": plots.plot_saliency_examples(images, maps, folder / "saliency.png", masks=test.decoy_masks[ids],
                                                 captions=captions),
    }  # fmt: skip


def example_ids(labels: torch.Tensor, baseline: torch.Tensor, feedback: torch.Tensor, n: int) -> list[int]:
    """``n`` test images to show: first those the baseline gets wrong and the feedback arm right, then others.

    labels, baseline, feedback: (N,) class indices (the truth and each arm's predictions).
    """
    telling = ((baseline != labels) & (feedback == labels)).nonzero().flatten().tolist()
    chosen = set(telling)
    return (telling + [i for i in range(len(labels)) if i not in chosen])[:n]


def format_table(results: dict) -> str:
    """The demo's table: one row per arm, then the margin."""
    rows = [f"{'arm':<10} {'accuracy':>9} {'min loss':>9} {'irrelevant share':>17} {'annotated':>10}"]
    for name, arm in results["arms"].items():
        loss = "-" if arm["min_loss"] is None else f"{arm['min_loss']:.3f}"
        rows.append(
            f"{name:<10} {arm['acc']:>9.1%} {loss:>9} {arm['irrelevant_share']:>17.3f} "
            f"{arm['annotated_fraction']:>10.1%}"
        )
    rows.append(
        f"feedback - baseline: {results['margin_points']:+.1f} accuracy points on the decoy test set "
        f"({results['test_images']} images; irrelevant share = saliency inside the decoy patch)"
    )
    return "\n".join(rows)


def _settings(cfg: DemoConfig) -> dict:
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    settings.pop("api_key")  # a secret: never written to results.json
    return settings


def _wait_for_ctrl_c(services: list, results: dict, log) -> None:
    ls = results["label_studio"]
    server = next((s for s in services if isinstance(s, LabelStudioServer)), None)
    owner = "" if server is None else f" (login: {server.username} / {server.password})"
    log(
        f"\nLabel Studio keeps running: open {ls['project_url']}{owner} to see the tasks, the saliency and the "
        f"annotations.\nPress Ctrl-C to stop Label Studio and the ML backend."
    )
    try:
        while all(s.running for s in services):
            time.sleep(1.0)
        log("Label Studio or the ML backend stopped; see their logs")
    except KeyboardInterrupt:
        log("stopping")


# --- Label Studio and the ML backend: trainer/services.py ---------------------------------------------


def _ls_port(cfg: DemoConfig, run: Run) -> int:
    """--port, else the port of the last demo on this data (so its links stay valid), else 8080, else any."""
    if cfg.port is not None:
        return cfg.port
    link = read_link(run)
    for port in ([urlparse(link.url).port] if link else []) + [8080]:
        if port and port_free("127.0.0.1", port):
            return port
    return free_port()


# --- Command line ------------------------------------------------------------------------------------------


def register(sub) -> None:
    d = DemoConfig()
    p = sub.add_parser("demo", help="the whole loop on Decoy-MNIST with a local Label Studio and the ML backend")
    p.add_argument("--dir", type=Path, default=d.directory, help=f"where everything goes (default {d.directory})")
    p.add_argument("--rounds", type=int, default=d.rounds, help=f"feedback rounds (default {d.rounds})")
    p.add_argument(
        "--per-round",
        type=int,
        default=d.per_round,
        help=f"images annotated per round (default {d.per_round}: 2.5%% of the 4,000 over 5 rounds)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs per round (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--stop", action="store_true", help="stop Label Studio at the end instead of leaving it running")
    p.add_argument("--port", type=int, default=None, help="port of the Label Studio it starts (default: 8080 if free)")
    p.add_argument("--label-studio-url", default=None, help="use this running Label Studio instead of starting one")
    p.add_argument("--api-key", default=None, help="its legacy API token (with --label-studio-url)")
    p.add_argument(
        "--document-root", type=Path, default=None, help="its LOCAL_FILES_DOCUMENT_ROOT (with --label-studio-url)"
    )
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    cfg = DemoConfig(
        directory=args.dir,
        rounds=args.rounds,
        per_round=args.per_round,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        stop=args.stop,
        port=args.port,
        label_studio_url=args.label_studio_url,
        api_key=args.api_key,
        document_root=args.document_root,
    )
    # A plain `kill` must also unwind run_demo's finally, which stops Label Studio and the backend.
    try:
        with exit_on_sigterm():
            run_demo(cfg)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; the same command (`hitl demo --dir {args.dir} ...`) continues where this stopped",
            file=sys.stderr,
        )
        return 130
    return 0
