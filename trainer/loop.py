"""One training round: epochs of cross-entropy plus the feedback penalty on annotated rows.

Shape legend: N images, C channels, H x W pixels, K classes, B batch rows, M annotated rows in a step.

The annotated images are few (a budget of 1% is 40 of 4,000), so each step appends ``replay`` of them to
the batch, as the paper's code does ('oversample'); without replay an annotated image is seen once per
epoch and its penalty is drowned by the other 99% of the steps.

The input-gradient penalty only flattens the model *at* the annotated image: a decoy whose value differs
elsewhere (another grey level, another ruler) is not covered. So a share ``counterexamples`` of the drawn
rows have their masked region refilled with a random level (CAIPI's counterexamples, Teso & Kersting 2019):
the annotation says the prediction must not depend on what is there, so any content there keeps the label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from label_config.grid import Grid
from trainer.feedback import Feedback
from trainer.loss import auto_lambda, rrr_penalty


@dataclass(frozen=True)
class TrainConfig:
    """How one round trains. ``lam`` < 0 means automatic: set so the penalty equals CE at the round's first
    penalised step (Ross et al. chose lambda so both terms have the same order of magnitude).
    ``warmup_steps`` ramps lambda linearly from 0 over a round's first penalised steps: a model that leans
    on a decoy starts with a huge penalty, and taking it at full weight at once can collapse the model to
    uniform predictions (whose input gradient is zero everywhere)."""

    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    lam: float = 10.0
    warmup_steps: int = 60
    replay: int = 16
    counterexamples: float = 1.0
    device: str = "cpu"
    num_workers: int = 0


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
    epochs: list[EpochMetrics] = field(default_factory=list)
    lam: float = 0.0

    def to_dict(self) -> dict:
        return {"lam": self.lam, "epochs": [asdict(e) for e in self.epochs]}


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


class _Labelled(Dataset):
    """The training set with the annotators' label corrections applied."""

    def __init__(self, base: Dataset, fixes: dict[int, int]) -> None:
        self.base, self.fixes = base, fixes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y, sid = self.base[i]
        return x, self.fixes.get(int(sid), y), sid


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
) -> RoundResult:
    """Train ``cfg.epochs`` epochs in place. Returns per-epoch metrics and the lambda used."""
    device = torch.device(cfg.device)
    model.to(device)
    optimizer = optimizer or make_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        _Labelled(train_set, feedback.labels),
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=cfg.num_workers,
    )
    annotated = feedback.annotated_ids()
    replay = ReplayPool(train_set, feedback, grid, annotated, seed=seed, counterexamples=cfg.counterexamples)
    result = RoundResult(lam=cfg.lam)
    penalised_steps = 0
    iterator = _maybe_tqdm(range(cfg.epochs), progress, "epochs")
    for epoch in iterator:
        model.train()
        sums = np.zeros(5)  # loss * rows, ce * rows, penalty * penalised rows, penalised rows, rows
        for x, y, ids in loader:
            x, y = x.to(device), torch.as_tensor(y).to(device)
            xa, ya, wa, n_drawn = replay.rows(ids, cfg.replay)
            xa, wa = xa.to(device), wa.to(device)
            if n_drawn:  # drawn rows join the batch's CE too; the batch's own annotated rows are in it already
                x, y = torch.cat([x, xa[:n_drawn]]), torch.cat([y, ya[:n_drawn].to(device)])
            ramp = min(1.0, (penalised_steps + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
            loss, ce, pen = step_loss(model, x, y, xa, wa, result, first=penalised_steps == 0, scale=ramp)
            penalised_steps += len(xa) > 0
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += [loss.item() * len(y), ce.item() * len(y), pen.item() * len(xa), len(xa), len(y)]
        n_rows = sums[4]  # batch rows plus replayed rows: what the losses were averaged over
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=sums[0] / max(1, n_rows),
            train_ce=sums[1] / max(1, n_rows),
            penalty=sums[2] / max(1, sums[3]),
            penalised_rows=int(sums[3]),
        )
        if val_set is not None:
            metrics.val_acc, metrics.val_loss = evaluate(model, val_set, device=device)
        result.epochs.append(metrics)
    return result


def step_loss(model, x, y, xa, wa, result: RoundResult, *, first: bool, scale: float = 1.0):
    """(loss, ce, mean penalty) for one step. x: (B, C, H, W); xa: (M, C, H, W) annotated rows; wa: (M, H, W)."""
    ce = F.cross_entropy(model(x), y)
    if len(xa) == 0:
        return ce, ce, torch.zeros((), device=x.device)
    pen = rrr_penalty(model, xa, wa).mean()
    if result.lam < 0 and first:
        result.lam = auto_lambda(ce, pen)
    return ce + scale * abs(result.lam) * pen, ce, pen


class ReplayPool:
    """Annotated rows for each step: those already in the batch plus ``k`` drawn from all annotated images."""

    def __init__(
        self, dataset: Dataset, feedback: Feedback, grid: Grid, annotated: list[int], *, seed, counterexamples: float = 0.0
    ) -> None:
        if not 0 <= counterexamples <= 1:
            raise ValueError(f"counterexamples must be a share in [0, 1], got {counterexamples}")
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

    def rows(self, batch_ids: torch.Tensor, k: int):
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
        x, y, w = zip(*rows)
        x, w = torch.stack(x), torch.stack(w)
        if drawn and self.counterexamples > 0:
            x[: len(drawn)] = counterexample(x[: len(drawn)], w[: len(drawn)], self.counterexamples, self.rng)
        return x, torch.as_tensor(y), w, len(drawn)


def counterexample(x: torch.Tensor, w: torch.Tensor, share: float, rng: np.random.Generator) -> torch.Tensor:
    """Refill the masked region of a random ``share`` of rows with one random level per row and channel.

    x: (M, C, H, W) in [0, 1]; w: (M, H, W) mask W. Returns a new (M, C, H, W) tensor.
    """
    m, c = x.shape[:2]
    pick = torch.from_numpy(rng.random(m) < share)
    level = torch.from_numpy(rng.random((m, c)).astype(np.float32))[:, :, None, None]
    inside = (w[:, None] > 0) & pick[:, None, None, None]
    return torch.where(inside, level.expand_as(x), x)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, *, device="cpu", batch_size: int = 512) -> tuple[float, float]:
    """(accuracy in 0-1, mean cross-entropy) on a dataset."""
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for x, y, _ in DataLoader(dataset, batch_size=batch_size):
        x, y = x.to(device), torch.as_tensor(y).to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    model.train(was_training)
    return correct / max(1, n), loss_sum / max(1, n)


def _maybe_tqdm(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, leave=False)
