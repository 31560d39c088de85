"""One training round: epochs of cross-entropy plus the feedback penalty on annotated rows.

Shape legend: N images, C channels, H x W pixels, K classes, B batch rows, M annotated rows in a step.

The annotated images are few (a budget of 1% is 40 of 4,000), so each step appends ``replay`` of them to
the batch, as the paper's code does ('oversample'); without replay an annotated image is seen once per
epoch and its penalty is drowned by the other 99% of the steps.

The input-gradient penalty only flattens the model *at* the annotated image: a decoy whose value differs
elsewhere (another grey level, another ruler) is not covered. So a share ``counterexamples`` of the drawn
rows have their masked region refilled (CAIPI's counterexamples, Teso & Kersting 2019) with the same region of
another image of the batch (``donors``) or a random level: the annotation says the prediction must not depend
on what is there, so any content there keeps the label.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from label_config.grid import Grid
from trainer.core.checks import check_choice, check_int, check_positive, check_share
from trainer.core.feedback import Feedback
from trainer.core.loss import auto_lambda, has_batchnorm, penalty_and_logits
from trainer.core.models import PRECISIONS, autocast
from trainer.core.progress import progress_bar


@dataclass(frozen=True)
class TrainConfig:
    """How one round trains. ``lam`` < 0: set so the penalty equals CE at the round's first penalised step.
    ``warmup_steps`` ramps lambda from 0 over a round's first penalised steps (at full weight at once a model
    that leans on a decoy can collapse to uniform predictions). ``donors``: counterexamples take the marked
    region from another image of the batch (``counterexample``). ``penalty_every`` k > 1: replay and penalty on
    every k-th step at k times the weight. ``replay_weight``: each drawn row's CE counts as that many batch
    rows. ``replay``, ``penalty_every``, ``replay_weight`` left None come from ``REPLAY_PLANS`` (``for_model``).
    ``precision``: fp32 or bf16 autocast. ``lr_schedule``: ``cosine`` within each round (a round ends settled)
    or ``constant``. Why each default (lambda 1, the cosine, the plans): docs/design.md and docs/history.md."""

    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    lam: float = 1.0
    warmup_steps: int = 60
    replay: int | None = None
    penalty_every: int | None = None
    replay_weight: float | None = None
    counterexamples: float = 1.0
    donors: bool = True
    device: str = "cpu"
    num_workers: int = 0
    precision: str = "fp32"
    lr_schedule: str = "cosine"

    def __post_init__(self) -> None:
        check_choice(self.precision, "train.precision", PRECISIONS)
        check_choice(self.lr_schedule, "train.lr_schedule", LR_SCHEDULES)
        if self.replay is not None:
            check_int(self.replay, "train.replay", minimum=0)
        if self.penalty_every is not None:
            check_int(self.penalty_every, "train.penalty_every", minimum=1)
        if self.replay_weight is not None:
            check_positive(self.replay_weight, "train.replay_weight")

    def for_model(self, model: nn.Module) -> TrainConfig:
        """This config with ``replay``, ``penalty_every`` and ``replay_weight`` set where they are None: the
        model's plan in ``REPLAY_PLANS``, and a weight that gives the replayed rows the CE of
        ``REPLAY_CE_ROWS`` batch rows a step on average (``REPLAY_CE_ROWS * penalty_every / replay``)."""
        replay, every = REPLAY_PLANS[has_batchnorm(model)]
        replay = replay if self.replay is None else self.replay
        every = every if self.penalty_every is None else self.penalty_every
        weight = self.replay_weight
        if weight is None:
            weight = REPLAY_CE_ROWS * every / replay if replay else 1.0
        return replace(self, replay=replay, penalty_every=every, replay_weight=weight)


LR_SCHEDULES = ("constant", "cosine")

# The replayed rows carry the CE of this many batch rows a step, on average, whatever their number: replay 16
# at weight 1 was the default before the plans below, and fewer rows at a larger weight keep its expected step.
REPLAY_CE_ROWS = 16
# has batch norm -> (replay, penalty_every). Without batch norm 6 rows on every step cost a round 1.25x a plain
# one against 1.53x for 16, for 0.004 of accuracy; with batch norm fewer rows or fewer penalised steps lost the
# texture over five rounds, so those models keep 16 (docs/speed.md, "The replay plans").
REPLAY_PLANS = {False: (6, 1), True: (16, 1)}


def round_lr(lr: float, schedule: str, step: int, steps: int) -> float:
    """The learning rate of a round's ``step`` (0-based) of ``steps``: ``lr`` throughout (constant), or a half
    cosine from ``lr`` at the first step to 0 after the last (cosine)."""
    if schedule == "constant":
        return lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / max(1, steps)))


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_ce: float
    penalty: float
    penalised_rows: int
    val_acc: float | None = None
    val_loss: float | None = None


@dataclass
class RoundResult:
    """``train_probs``: (N, K) softmax of each training image as the last epoch's forward pass saw it (train
    mode, the weights of its step), float32 on CPU, when ``train_round`` was asked to score; NaN rows for
    images that pass did not see. The sampler ranks these instead of a second pass over the training set."""

    epochs: list[EpochMetrics] = field(default_factory=list)
    lam: float = 0.0
    train_probs: torch.Tensor | None = None

    def to_dict(self) -> dict:
        return {"lam": self.lam, "epochs": [asdict(e) for e in self.epochs]}


def round_seed(seed: int, round_: int) -> int:
    """The seed of one round of a run or an experiment arm (shuffling, replay draws, sampling): one formula."""
    return seed * 1000 + round_


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


class Labelled(Dataset):
    """The training set with the annotators' label corrections applied."""

    def __init__(self, base: Dataset, fixes: dict[int, int]) -> None:
        self.base, self.fixes = base, fixes

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]  # a map-style dataset has __len__

    def __getitem__(self, i: int):
        x, y, sid = self.base[i]
        return x, self.fixes.get(int(sid), y), sid


class Parallel:
    """What differs when ``train_round`` runs on several processes, as nanoGPT does it: the loader's sampler,
    the model wrapper, the replay stream and a sum over processes. This base is one process;
    ``trainer.runs.distributed.DdpParallel`` is the DistributedDataParallel one."""

    world_size = 1

    def loader(self, data: Dataset, cfg: TrainConfig, seed: int) -> DataLoader:
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                          num_workers=cfg.num_workers)  # fmt: skip

    def replay(self, train_set: Dataset, feedback: Feedback, grid: Grid, *, seed: int, counterexamples: float):
        return ReplayPool(train_set, feedback, grid, feedback.annotated_ids(), seed=seed,
                          counterexamples=counterexamples)  # fmt: skip

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over processes (here: ``t``)."""
        return t

    def evaluate(self, model: nn.Module, dataset: Dataset, device, *, progress: bool = False) -> tuple[float, float]:
        return evaluate(model, dataset, device=device, progress=progress)


def train_round(
    model: nn.Module,
    train_set: Dataset,
    feedback: Feedback,
    grid: Grid,
    cfg: TrainConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    val_set: Dataset | None = None,
    seed: int = 0,
    progress: bool = False,
    parallel: Parallel | None = None,
    score: bool = False,
) -> RoundResult:
    """Train ``cfg.epochs`` epochs in place. Returns per-epoch metrics and the lambda used.

    Each step minimises CE over the step's rows plus ``ramp * lambda`` times the mean penalty over its
    annotated rows, where ``ramp`` rises linearly over the round's first ``warmup_steps`` steps that had
    annotated rows. Under ``parallel`` with R processes the rows are all processes' rows: each process
    weighs its CE by R * B_r / B and its penalty by R * M_r / M, so DDP's gradient mean is the gradient of
    that one loss. Nothing waits on the host inside a step (metrics stay on the device until the epoch ends).
    ``score``: keep the last epoch's softmax of every training image (``RoundResult.train_probs``).
    """
    parallel = parallel or Parallel()
    cfg = cfg.for_model(model)
    device = torch.device(cfg.device)
    model.to(device)
    optimizer = optimizer or make_optimizer(model, cfg)
    if optimizer.state:  # state loaded before the model moved: load_state_dict recasts it to the params' device
        optimizer.load_state_dict(optimizer.state_dict())
    net = parallel.wrap(model)
    loader = parallel.loader(Labelled(train_set, feedback.labels), cfg, seed)
    replay = parallel.replay(train_set, feedback, grid, seed=seed, counterexamples=cfg.counterexamples)
    penalise = bool(feedback.annotated_ids())  # the same on every process: the same number of forwards
    world = parallel.world_size
    lam = cfg.lam if cfg.lam >= 0 else None  # None: set at the first step with annotated rows
    ramped = torch.zeros((), dtype=torch.float64, device=device)  # steps since the first with annotated rows
    every, replay_weight = cfg.penalty_every, cfg.replay_weight
    assert every is not None and replay_weight is not None  # for_model set them
    # Without batch norm a row's logits do not depend on the other rows, so the drawn rows' CE can come from
    # the penalty pass's forward (the same function: saves a forward and backward over them). With batch norm
    # that pass normalises them by their own few rows' statistics; taking their CE there measured worse (the
    # collapse test's first feedback round fell 0.59 -> 0.43), so they join the batch's pass as before.
    fold = not has_batchnorm(model)
    steps = cfg.epochs * len(loader)  # the round's steps, for the learning-rate schedule

    def drawn_ce(logits_d: torch.Tensor, y_d: torch.Tensor) -> torch.Tensor:
        """The drawn rows' summed CE, each row counted as ``replay_weight`` batch rows."""
        return replay_weight * F.cross_entropy(logits_d.float(), y_d, reduction="sum")

    step = 0
    probs = None
    result = RoundResult(lam=cfg.lam)
    for epoch in progress_bar(range(cfg.epochs), enabled=progress, desc="epochs", leave=False):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        net.train()
        sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss * B, ce * B, penalty sum, M, B
        for x, y, ids in loader:
            x, y = x.to(device), torch.as_tensor(y).to(device)
            n_batch = len(y)
            on_step = step % every == 0
            step += 1
            if on_step:
                xa, ya, wa, n_drawn = replay.rows(ids, cfg.replay, donors=x if cfg.donors else None)
            else:
                xa, ya, wa, n_drawn = x[:0], y[:0], torch.zeros(0, *x.shape[-2:]), 0
            # drawn rows join the batch's CE, each as replay_weight rows; its own annotated rows are in it already
            n_rows = n_batch + replay_weight * n_drawn
            if n_drawn and not fold:  # batch norm: the drawn rows' CE in the batch, under the batch's statistics
                x, y = torch.cat([x, xa[:n_drawn].to(device)]), torch.cat([y, ya[:n_drawn].to(device)])
            counts = parallel.all_reduce(torch.tensor([n_rows, len(xa)], dtype=torch.float64, device=device))
            with autocast(cfg.precision, device):
                logits = net(x).float()
            ce_sum = F.cross_entropy(logits[:n_batch], y[:n_batch], reduction="sum")
            if len(y) > n_batch:  # the drawn rows, in the batch's pass
                ce_sum = ce_sum + drawn_ce(logits[n_batch:], y[n_batch:])
            if score and epoch == cfg.epochs - 1:
                if probs is None:
                    n_train = len(train_set)  # type: ignore[arg-type]  # a map-style dataset has __len__
                    probs = torch.full((n_train, logits.shape[1]), float("nan"), device=device)
                probs.index_copy_(0, torch.as_tensor(ids).to(device), torch.softmax(logits[:n_batch].detach(), 1))
            pen_sum = torch.zeros((), device=device)
            scale = torch.zeros((), dtype=torch.float64, device=device)  # ramp * lambda / M
            penalty_step = penalise and on_step and (len(xa) or world > 1)  # a process without rows joins DDP's forward
            if penalty_step:
                if not len(xa):
                    xa, ya, wa = x[:0], y[:0], torch.zeros(0, *x.shape[-2:])
                with autocast(cfg.precision, device):
                    pen, logits_a = penalty_and_logits(net, xa.to(device), wa.to(device))
                pen_sum = pen.float().sum()
                if fold:  # the drawn rows' CE from the penalty pass's forward: no second forward over them
                    ce_sum = ce_sum + drawn_ce(logits_a[:n_drawn], ya[:n_drawn].to(device))
            ce = ce_sum / n_rows
            loss = ce_sum * (world / counts[0])
            if penalty_step:
                if lam is None:
                    lam = _first_lambda(parallel, ce, n_rows, pen_sum, counts)
                    result.lam = cfg.lam if lam is None else lam
                ramped = ramped + (counts[1] > 0) * every  # every step since the first penalised one
                ramp = (ramped / cfg.warmup_steps).clamp(max=1.0) if cfg.warmup_steps else 1.0
                scale = ramp * (every * (lam or 0.0)) / counts[1].clamp(min=1.0)
                loss = loss + (world * scale).to(pen_sum.dtype) * pen_sum
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lr = round_lr(cfg.lr, cfg.lr_schedule, step - 1, steps)
            for group in optimizer.param_groups:  # the config's rate, also when a resumed state dict carries another
                group["lr"] = lr
            optimizer.step()
            ce_b = ce_sum.detach().double()
            sums += torch.stack(
                [
                    ce_b + scale * pen_sum.detach().double() * counts[0],
                    ce_b,
                    pen_sum.detach().double(),
                    counts.new_tensor(len(xa)),
                    counts.new_tensor(n_rows),
                ]
            )
        result.epochs.append(_epoch_metrics(epoch, parallel.all_reduce(sums).tolist()))
        if probs is not None:
            result.train_probs = probs.cpu()
        if val_set is not None:
            scores = parallel.evaluate(model, val_set, device, progress=progress)
            result.epochs[-1].val_acc, result.epochs[-1].val_loss = scores
    return result


def _first_lambda(
    parallel: Parallel, ce: torch.Tensor, rows: int, pen_sum: torch.Tensor, counts: torch.Tensor
) -> float | None:
    """Automatic lambda (penalty = CE) from the first step with annotated rows over all processes; None
    before one. ce: this process's mean CE over its ``rows``; counts: (B, M) over all processes."""
    t = parallel.all_reduce(torch.stack([ce.detach().double() * rows, pen_sum.detach().double()]))
    total_rows, m = counts.tolist()  # lambda < 0 only: one host sync per step until it is set
    return None if m == 0 else auto_lambda(t[0] / total_rows, t[1] / m)


def _epoch_metrics(epoch: int, sums: list[float]) -> EpochMetrics:
    loss, ce, pen, m, rows = sums
    return EpochMetrics(epoch=epoch, train_loss=loss / max(1, rows), train_ce=ce / max(1, rows),
                        penalty=pen / max(1, m), penalised_rows=int(m))  # fmt: skip


class ReplayPool:
    """Annotated rows for each step: those already in the batch plus ``k`` drawn from all annotated images."""

    def __init__(
        self,
        dataset: Dataset,
        feedback: Feedback,
        grid: Grid,
        annotated: list[int],
        *,
        seed,
        counterexamples: float = 0.0,
    ) -> None:
        check_share(counterexamples, "counterexamples")
        self.dataset, self.feedback, self.grid = dataset, feedback, grid
        self.counterexamples = counterexamples
        self.annotated = set(annotated)
        self.pool = np.asarray(annotated, dtype=np.int64)
        self.rng = np.random.default_rng(seed)
        self._cache: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def _row(self, sid: int):
        if sid not in self._cache:
            x, y, _ = self.dataset[sid]
            y = self.feedback.labels.get(sid, y)
            self._cache[sid] = (x, int(y), self.feedback.masks([sid], self.grid)[0])
        return self._cache[sid]

    def rows(self, batch_ids: torch.Tensor, k: int, donors: torch.Tensor | None = None):
        """Penalty rows (x (M, C, H, W), y (M,), W (M, H, W), n_drawn): first up to ``k`` annotated images
        drawn from outside the batch, then the batch's own annotated images."""
        in_batch = [int(i) for i in batch_ids if int(i) in self.annotated]
        drawn: list[int] = []
        candidates = self.pool[~np.isin(self.pool, in_batch)] if in_batch else self.pool
        if k > 0 and len(candidates):
            drawn = [int(i) for i in self.rng.choice(candidates, size=min(k, len(candidates)), replace=False)]
        rows = [self._row(i) for i in drawn + in_batch]
        if not rows:
            return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0), 0
        xs, ys, ws = zip(*rows)
        x, w = torch.stack(xs), torch.stack(ws)
        if drawn and self.counterexamples > 0:
            x[: len(drawn)] = counterexample(x[: len(drawn)], w[: len(drawn)], self.counterexamples, self.rng,
                                             donors=donors)  # fmt: skip
        return x, torch.as_tensor(ys), w, len(drawn)


def counterexample(
    x: torch.Tensor, w: torch.Tensor, share: float, rng: np.random.Generator, *, donors: torch.Tensor | None = None
) -> torch.Tensor:
    """Refill the masked region of a random ``share`` of rows: with the same region of a random donor image
    (``donors`` (D, C, H, W), e.g. the step's batch: whatever that region holds in other images, the annotation
    says the label must not depend on it), or with one random level per row and channel without donors.

    x: (M, C, H, W) in [0, 1]; w: (M, H, W) mask W. Returns a new (M, C, H, W) tensor.
    """
    m, c = x.shape[:2]
    pick = torch.from_numpy(rng.random(m) < share)
    if donors is not None and len(donors):
        fill = donors[torch.from_numpy(rng.integers(0, len(donors), size=m))].to(x.device, x.dtype)
    else:
        fill = torch.from_numpy(rng.random((m, c)).astype(np.float32))[:, :, None, None].expand_as(x)
    inside = (w[:, None] > 0) & pick[:, None, None, None]
    return torch.where(inside.to(x.device), fill, x)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, *, device="cpu", batch_size: int = 512,
             progress: bool = False) -> tuple[float, float]:  # fmt: skip
    """(accuracy in 0-1, mean cross-entropy) on a dataset; ``progress``: a bar over its batches."""
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    batches = DataLoader(dataset, batch_size=batch_size)
    for x, y, _ in progress_bar(batches, enabled=progress, desc="evaluate", unit="batch", leave=False):
        x, y = x.to(device), torch.as_tensor(y).to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    model.train(was_training)
    return correct / max(1, n), loss_sum / max(1, n)
