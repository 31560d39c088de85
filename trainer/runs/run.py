"""A run directory: the config, one checkpoint per round, the ledger and the history.

    RUN/config.json         RunConfig, written once
    RUN/checkpoints/round-NNN.pt
    RUN/ledger.sqlite       what was pushed, pulled and used (trainer.runs.ledger)
    RUN/history.json        per-round metrics
    RUN/train.lock          held while a round trains (one trainer at a time)
    RUN-twin/               the no-feedback twin (``Run.twin``): same config, data, schedule and seeds, no masks

Round 0 trains without feedback; round r > 0 continues from round r-1's checkpoint with the feedback the
ledger holds. A crash inside a round loses only that round: the next call starts it again from the last
checkpoint, with the same feedback. A newest checkpoint that cannot be used (truncated, a directory, another
run's file) stops the next round with an error naming it: training never skips or overwrites a round's file.
"""

from __future__ import annotations

import fcntl
import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from label_config.grid import Grid
from trainer.core.feedback import Feedback
from trainer.core.loop import (
    RoundResult,
    TrainConfig,
    make_optimizer,
    round_seed,
    train_round,
)
from trainer.core.models import build_model
from trainer.core.sampling import SamplingConfig, predict_probs, select
from trainer.core.scores import confusion_matrix
from trainer.data.registry import load_dataset, train_fraction
from trainer.data.snapshot import SNAPSHOT_PREFIX
from trainer.explain.metrics import test_irrelevant_share
from trainer.runs.atomic import write_json
from trainer.runs.checkpoint import (
    CheckpointError,
    check_meta,
    checkpoint_path,
    list_checkpoints,
    model_from_state,
    read_checkpoint,
    read_train_probs,
    save_checkpoint,
    shown,
)
from trainer.runs.ledger import Ledger
from trainer.runs.locks import pid_lock

LOCK_FILE = "train.lock"
TWIN_SUFFIX = "-twin"  # RUN-twin: the no-feedback twin beside RUN


class RunBusy(RuntimeError):
    """Another process or thread is training this run's next round."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs to rebuild its data, model and grid. ``cell_px`` is in model-input pixels;
    ``train_fraction`` keeps a seeded, class-stratified share of the training split (the paper's protocol);
    ``twin_of`` names the run whose no-feedback twin this is (None for any other run)."""

    dataset: str = "decoy-mnist"
    model: str = "small-cnn"
    image_size: int | None = None
    channels: int | None = None
    cell_px: int = 4
    seed: int = 0
    saliency: str = "deeplift"
    top_k: int = 3
    weights: str | None = None
    train_fraction: float = 1.0
    twin_of: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        f = self.train_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {f!r}")

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown run config keys: {', '.join(sorted(unknown))}")
        data = dict(data)
        data["train"] = TrainConfig(**data.get("train", {}))
        data["sampling"] = SamplingConfig(**data.get("sampling", {}))
        return cls(**data)


class Run:
    """A run directory. Create it once with ``Run.create``; every later process uses ``Run.open``."""

    def __init__(self, directory: str | Path, config: RunConfig) -> None:
        self.directory = Path(directory)
        self.config = config

    @classmethod
    def create(cls, directory: str | Path, config: RunConfig) -> Run:
        """Make the directory; an existing run is reopened if its config is the same, else refused."""
        directory = Path(directory)
        path = directory / "config.json"
        if path.exists():
            run = cls.open(directory)
            if run.config != config:
                raise ValueError(f"{directory} already holds a run with another config; open it or use a new directory")
            return run
        directory.mkdir(parents=True, exist_ok=True)
        write_json(path, asdict(config))
        return cls(directory, config)

    @classmethod
    def open(cls, directory: str | Path) -> Run:
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a run directory (no config.json); create one with `hitl init`")
        return cls(directory, RunConfig.from_dict(json.loads(path.read_text())))

    @property
    def name(self) -> str:
        return self.directory.resolve().name

    @property
    def checkpoint_dir(self) -> Path:
        return self.directory / "checkpoints"

    @cached_property
    def datasets(self):
        """(train, test) datasets, loaded once per process (``reload_datasets`` drops them); train is the config's
        ``train_fraction`` of the split."""
        c = self.config
        train, test = load_dataset(c.dataset, size=c.image_size, seed=c.seed, channels=c.channels, root=self.data_root)
        return train_fraction(train, c.train_fraction, seed=c.seed), test

    @property
    def data_root(self) -> Path:
        """Where a dataset kept in a run directory lives (``labelstudio:``): this run's, or its twin's original."""
        return self.directory.parent / self.config.twin_of if self.config.twin_of else self.directory

    def reload_datasets(self) -> None:
        """Forget the loaded datasets: the next use reads them again (a snapshot synced by a pull)."""
        self.__dict__.pop("datasets", None)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.datasets[0].image_shape)  # type: ignore[return-value]

    @property
    def classes(self) -> list[str]:
        return list(self.datasets[0].classes)

    @property
    def grid(self) -> Grid:
        _, h, w = self.image_shape
        return Grid.from_cell_px(h, w, self.config.cell_px)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.directory / "ledger.sqlite")

    def checkpoints(self) -> list[tuple[int, Path]]:
        """``(round, path)`` of every entry named as a checkpoint, oldest first (not yet read or verified)."""
        return list_checkpoints(self.checkpoint_dir)

    def current_round(self) -> int:
        """The round of the newest checkpoint, -1 before round 0 finished."""
        found = self.checkpoints()
        return found[-1][0] if found else -1

    def expected_meta(self) -> dict:
        """What every checkpoint of this run must say about its model (``check_meta``)."""
        c = self.config
        if "datasets" in self.__dict__:  # already loaded (training): no second load
            classes, shape = tuple(self.classes), self.image_shape
        else:  # the backend: the dataset's facts, loaded once per process
            # Only a snapshot lives in the run: other datasets share one cache entry across runs (a backend test
            # suite makes hundreds of runs of one dataset; each miss loads it again).
            root = str(self.data_root) if c.dataset.startswith(SNAPSHOT_PREFIX) else ""
            classes, shape = _data_facts(c.dataset, c.image_size, c.channels, c.seed, root)
        return {"model": c.model, "num_classes": len(classes), "in_channels": shape[0], "image_size": shape[1],
                "classes": list(classes)}  # fmt: skip

    def checkpoint_state(self, round_: int) -> dict:
        """Round ``round_``'s checkpoint, read and verified: a regular file inside the run directory whose
        meta matches this run and names this round. CheckpointError names the file relative to the run."""
        path = checkpoint_path(self.checkpoint_dir, round_)
        state = read_checkpoint(path, root=self.directory)
        check_meta(state["meta"], round_, self.expected_meta(), shown(path, self.directory))
        return state

    def load_checkpoint(self, round_: int) -> tuple[nn.Module, dict]:
        """(model in eval mode, meta) of round ``round_``, verified as ``checkpoint_state`` does."""
        return model_from_state(self.checkpoint_state(round_), shown(checkpoint_path(self.checkpoint_dir, round_),
                                                                     self.directory))  # fmt: skip

    def model_version(self, round_: int) -> str:
        return f"{self.name}-r{round_:03d}"

    def load_model(
        self, device: str | torch.device | None = None
    ) -> tuple[nn.Module, torch.optim.Optimizer, dict | None]:
        """(model, optimizer, meta) of the newest checkpoint, or a fresh model and meta None; on ``device``
        (default: the config's training device)."""
        c = self.config
        ch, h, _ = self.image_shape
        torch.manual_seed(c.seed)
        found = self.checkpoints()
        latest = found[-1][0] if found else None
        state = None if latest is None else self._resume_state(latest)
        # The local weights file only seeds round 0: a later round starts from its checkpoint, file or no file.
        model = build_model(c.model, len(self.classes), ch, h, weights_path=c.weights if latest is None else None)
        # On the training device before the optimizer exists: load_state_dict then puts Adam's state there too.
        model.to(device or c.train.device)
        optimizer = make_optimizer(model, c.train)
        if state is None:
            return model, optimizer, None
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:  # the meta matched but the weights do not fit
            name = shown(checkpoint_path(self.checkpoint_dir, latest), self.directory)
            raise CheckpointError(f"{name} does not fit this run's model: {str(exc)[:200]}") from exc
        if state.get("optimizer"):
            optimizer.load_state_dict(state["optimizer"])
        return model, optimizer, state["meta"]

    def _resume_state(self, round_: int) -> dict:
        """The newest checkpoint's state, which the next round continues from. One that cannot be used stops
        training (rather than skipping it and overwriting or renumbering a round): the error says what to do."""
        try:
            return self.checkpoint_state(round_)
        except (CheckpointError, FileNotFoundError) as exc:
            older = [r for r, _ in self.checkpoints() if r < round_]
            after = f"continue from round {older[-1]}" if older else "train round 0 again"
            raise CheckpointError(f"cannot continue run {self.directory}: {exc}. Restore that file, or move it out "
                                  f"of {shown(self.checkpoint_dir, self.directory)}/ to {after}") from exc  # fmt: skip

    def feedback(self) -> Feedback:
        """The feedback the ledger holds (an empty one before anything was pulled)."""
        if not (self.directory / "ledger.sqlite").exists():
            return Feedback()
        return self.ledger.feedback(self.grid)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run's training lock (``RUN/train.lock``) for a whole round: one trainer at a time, so the
        backend's "Start Training" and ``hitl train``/``hitl run`` never both take round N + 1. A second
        trainer gets RunBusy at once, naming the process that holds it."""

        def busy(holder: str) -> RunBusy:
            return RunBusy(f"run {self.directory} is training a round in another process or thread (pid {holder}): "
                           "wait for it to finish, or stop it")  # fmt: skip

        with pid_lock(self.directory / LOCK_FILE, busy):
            yield

    def training_pid(self) -> int | None:
        """The id of the process training a round of this run now (holding ``RUN/train.lock``), else None;
        0 when the holder wrote no id. Takes the lock for an instant if it is free (flock has no query), so a
        trainer starting in that instant gets RunBusy."""
        path = self.directory / LOCK_FILE
        if not path.is_file():
            return None
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = handle.read().strip()
                return int(holder) if holder.isdigit() else 0
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None

    def train_next_round(self, feedback: Feedback | None = None, *, progress: bool = False) -> dict:
        """Train the next round from the newest checkpoint, holding the run's lock; save its checkpoint and
        history entry."""
        with self.exclusive():
            return self._train_next_round(feedback, progress=progress)

    def _train_next_round(self, feedback: Feedback | None, *, progress: bool) -> dict:
        started_at = datetime.now(timezone.utc)
        round_ = self.current_round() + 1
        checkpoint_path(self.checkpoint_dir, round_)  # past MAX_ROUND: refused before the round is trained
        model, optimizer, _ = self.load_model()
        feedback = self.feedback() if feedback is None else feedback
        train, test = self.datasets
        cfg = self.config.train
        result = train_round(
            model, train, feedback, self.grid, cfg, optimizer=optimizer, val_set=test,
            seed=round_seed(self.config.seed, round_), progress=progress, score=True,
        )  # fmt: skip
        return self.finish_round(round_, model, optimizer, feedback, result, started_at=started_at)

    def finish_round(self, round_: int, model: nn.Module, optimizer, feedback: Feedback, result: RoundResult, *,
                     started_at=None,
                     **extra) -> dict:  # fmt: skip
        """The round's record (metrics on the test set), then the ledger (the feedback it trained with), the
        checkpoint and the history entry. The ledger comes first and is keyed by round: a crash before the
        checkpoint retrains the round and rewrites the same rows."""
        train, test = self.datasets
        # A snapshot of a Label Studio project says which sync of its labels the round trained on.
        revision = getattr(getattr(train, "base", train), "revision", None)
        data = {} if revision is None else {"data_revision": revision, "train_images": len(train)}
        record = {
            "round": round_,
            "model_version": self.model_version(round_),
            "annotated": len(feedback.annotated_ids()),
            "label_fixes": len(feedback.labels),
            "acc": result.epochs[-1].val_acc if result.epochs else None,
            "min_loss": min((e.val_loss for e in result.epochs if e.val_loss is not None), default=None),
            "irrelevant_share": test_irrelevant_share(model, test, method=self.config.saliency, limit=200),
            # rows true, columns predicted: what `hitl compare` reads balanced accuracy and macro-F1 from
            "confusion": confusion_matrix(
                model, test, len(self.classes), device=next(model.parameters()).device
            ).tolist(),
            **data,
            **extra,
            **result.to_dict(),
        }
        summary = {k: record[k] for k in ("annotated", "label_fixes", "acc", "min_loss", "irrelevant_share")}
        with self.ledger.transaction():
            self.ledger.record_feedback(round_, feedback)
            self.ledger.record_round(round_, record["model_version"], started_at=started_at,
                                     finished_at=datetime.now(timezone.utc), metrics=summary)  # fmt: skip
        save_checkpoint(checkpoint_path(self.checkpoint_dir, round_), model, self.meta(round_), optimizer,
                        train_probs=result.train_probs)  # fmt: skip
        self._append_history(record)
        return record

    def meta(self, round_: int) -> dict:
        ch, h, _ = self.image_shape
        g = self.grid
        return {
            "model": self.config.model, "num_classes": len(self.classes), "in_channels": ch, "image_size": h,
            "classes": self.classes, "round": round_, "model_version": self.model_version(round_),
            "grid": {"rows": g.rows, "cols": g.cols}, "dataset": self.config.dataset,
        }  # fmt: skip

    def choose_samples(self, model: nn.Module, round_: int, n: int, exclude: set[int]) -> list[int]:
        """The ``n`` training images to ask about after round ``round_``, by the configured strategy (seeded
        by that round, so the same round picks the same images whenever it is asked). The scores are those
        the round's last epoch saw, saved in its checkpoint (no second pass over the training set); a
        checkpoint without them (an older one, a DDP round) is scored by ``model`` in eval mode."""
        train, _ = self.datasets
        path = checkpoint_path(self.checkpoint_dir, round_)
        probs = read_train_probs(path) if path.is_file() else None
        if probs is None or probs.shape[0] != len(train) or bool(torch.isnan(probs).any()):
            probs = predict_probs(model, train, device=self.config.train.device)
        return [int(i) for i in select(probs, train.labels, n, strategy=self.config.sampling.strategy,
                                       exclude=exclude, seed=round_seed(self.config.seed, round_))]  # fmt: skip

    def train_to(self, round_: int, feedback: Feedback | None = None, *, progress: bool = False) -> list[dict]:
        """Train rounds until the newest checkpoint is ``round_`` (each with ``feedback``, default the ledger's);
        the records of the rounds trained now."""
        records = []
        while self.current_round() < round_:
            records.append(self.train_next_round(feedback, progress=progress))
        return records

    def twin(self) -> Run:
        """The no-feedback twin, ``RUN-twin`` beside this run (created on first use): the same config, so the
        same data, schedule and seeds; train it with ``twin.train_to(r, Feedback())``."""
        if self.config.twin_of is not None:
            raise ValueError(f"run {self.directory} is itself the no-feedback twin of {self.config.twin_of!r}")
        return Run.create(self.directory.parent / f"{self.name}{TWIN_SUFFIX}", replace(self.config, twin_of=self.name))

    def history(self) -> list[dict]:
        path = self.directory / "history.json"
        return json.loads(path.read_text()) if path.exists() else []

    def _append_history(self, record: dict) -> None:
        history = [h for h in self.history() if h["round"] != record["round"]] + [record]
        write_json(self.directory / "history.json", history)


@functools.lru_cache(maxsize=16)
def _data_facts(dataset: str, image_size: int | None, channels: int | None, seed: int,
                root: str) -> tuple[tuple, tuple]:  # fmt: skip
    """(classes, (C, H, W)) of a dataset as a run loads it; cached so a backend loads it once per process (a
    snapshot's classes and shape are fixed at init; a sync changes only tasks and labels)."""
    train, _ = load_dataset(dataset, size=image_size, seed=seed, channels=channels, root=root or None)
    return tuple(train.classes), tuple(train.image_shape)


def with_overrides(config: RunConfig, **overrides) -> RunConfig:
    """A copy with top-level or ``train.X`` / ``sampling.X`` overrides (None values ignored)."""
    top, train, sampling = {}, {}, {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key.startswith("train."):
            train[key[6:]] = value
        elif key.startswith("sampling."):
            sampling[key[9:]] = value
        else:
            top[key] = value
    return replace(config, train=replace(config.train, **train), sampling=replace(config.sampling, **sampling), **top)
