"""Training a round on several processes (one per GPU) with torchrun and DistributedDataParallel.

    torchrun --nproc-per-node 4 -m trainer.distributed RUN_DIR [--rounds N]

Shape legend: N images, C channels, H x W pixels, B batch rows, M annotated rows in a step, R ranks.

Every rank (process) trains the same model on its shard of the training set: a DistributedSampler with the
same seed on every rank, reshuffled each epoch. Masks and label corrections follow their rows because both
are keyed by sample id, which the shard keeps. Each rank draws replay rows from all annotated images with its
own seed, and penalises the annotated rows of its batch plus those. DDP averages the gradients over ranks, so
one step equals one process stepping on the R batches with the loss mean_r(CE_r + lambda * penalty_r)
(checked in tests/test_distributed.py). ``cfg.batch_size`` is per rank: the global batch is R times larger.

The penalty's forward pass goes through the DDP wrapper too. Its input gradient (``autograd.grad`` with
respect to the images) accumulates nothing into ``.grad``, so DDP's gradient hooks fire once per parameter, in
the step's single ``loss.backward()``, which syncs the CE and penalty gradients together. Every rank runs the
same number of DDP forwards per step (a rank without annotated rows runs the penalty pass on zero rows),
because each DDP forward may broadcast buffers (batch-norm statistics): a collective all ranks must join.

Rank 0 alone reads the ledger (its feedback is broadcast) and writes checkpoints and history; a barrier
follows, so no rank reads a checkpoint before it is complete.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from label_config.grid import Grid
from trainer.feedback import Feedback
from trainer.loop import EpochMetrics, ReplayPool, RoundResult, TrainConfig, _Labelled, evaluate, make_optimizer
from trainer.loss import auto_lambda, rrr_penalty

ENV_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # set by torchrun


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: ``rank`` in 0..world_size-1, ``local_rank`` on its machine."""

    rank: int
    world_size: int
    local_rank: int

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1} (WORLD_SIZE {self.world_size})")
        if self.local_rank < 0:
            raise ValueError(f"LOCAL_RANK must be >= 0, got {self.local_rank}")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "DistEnv | None":
        """From torchrun's RANK, WORLD_SIZE, LOCAL_RANK; None when not started by torchrun."""
        env = os.environ if environ is None else environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        try:
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])))
        except ValueError:
            values = {k: env.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
            raise ValueError(f"torchrun environment is not integers: {values}") from None


def setup(env: DistEnv, device: str = "cpu") -> torch.device:
    """Join the process group (nccl on CUDA, gloo on CPU); the device this rank trains on."""
    if device.startswith("cuda"):
        torch.cuda.set_device(env.local_rank)
        backend, dev = "nccl", torch.device("cuda", env.local_rank)
    else:
        backend, dev = "gloo", torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
    return dev


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_loader(train_set: Dataset, feedback: Feedback, cfg: TrainConfig, *, env: DistEnv, seed: int) -> DataLoader:
    """This rank's batches, label corrections applied; call ``loader.sampler.set_epoch(e)`` each epoch.

    Shards are disjoint and cover the set; the sampler repeats a few rows so all ranks take the same number of
    steps (DDP needs one backward per step on every rank)."""
    data = _Labelled(train_set, feedback.labels)
    sampler = DistributedSampler(data, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed)
    return DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers)


def replay_pool(
    train_set: Dataset, feedback: Feedback, grid: Grid, *, env: DistEnv, seed: int, counterexamples: float = 0.0
) -> ReplayPool:
    """This rank's replay draws: its own stream, so ranks do not all replay the same annotated images."""
    seeds = [seed, env.rank]  # numpy's default_rng takes a sequence: one independent stream per rank
    return ReplayPool(train_set, feedback, grid, feedback.annotated_ids(), seed=seeds, counterexamples=counterexamples)


@dataclass
class DistRoundResult(RoundResult):
    """RoundResult (metrics over all ranks) plus, per epoch, each rank's (penalised rows, mean penalty)."""

    ranks: list[list[tuple[int, float]]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "ranks": [[list(r) for r in epoch] for epoch in self.ranks]}


def train_round_ddp(
    model: nn.Module,
    train_set: Dataset,
    feedback: Feedback,
    grid: Grid,
    cfg: TrainConfig,
    *,
    env: DistEnv,
    device: torch.device | str = "cpu",
    optimizer: torch.optim.Optimizer | None = None,
    val_set: Dataset | None = None,
    seed: int = 0,
) -> DistRoundResult:
    """``train_round`` on this rank's shard, in a joined process group. Trains ``model`` in place; every rank
    returns the same metrics."""
    device = torch.device(device)
    model.to(device)
    optimizer = optimizer or make_optimizer(model, cfg)
    if optimizer.state:  # state loaded before the model moved: load_state_dict recasts it to the params' device
        optimizer.load_state_dict(optimizer.state_dict())
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = shard_loader(train_set, feedback, cfg, env=env, seed=seed)
    replay = replay_pool(train_set, feedback, grid, env=env, seed=seed, counterexamples=cfg.counterexamples)
    penalise = bool(feedback.annotated_ids())  # the same on every rank: the same number of DDP forwards
    result = DistRoundResult(lam=cfg.lam)
    for epoch in range(cfg.epochs):
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        ddp.train()
        sums = torch.zeros(5, dtype=torch.float64)  # loss, ce, penalty, penalised rows, CE rows
        for x, y, ids in loader:
            x, y = x.to(device), torch.as_tensor(y).to(device)
            xa, ya, wa, n_drawn = replay.rows(ids, cfg.replay)
            if n_drawn:  # drawn rows join the CE batch, as in train_round
                x, y = torch.cat([x, xa[:n_drawn].to(device)]), torch.cat([y, ya[:n_drawn].to(device)])
            loss, ce, pen_sum, m = _step_loss(ddp, x, y, xa, wa, result, penalise=penalise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.tensor([loss.item() * len(y), ce.item() * len(y), pen_sum.item(), m, len(y)])
        result.epochs.append(_epoch_metrics(epoch, sums, result, env, device))
        if val_set is not None:
            result.epochs[-1].val_acc, result.epochs[-1].val_loss = _evaluate_sharded(model, val_set, env, device)
    return result


def _step_loss(ddp: nn.Module, x, y, xa, wa, result: RoundResult, *, penalise: bool):
    """(loss, ce, penalty sum, M) for one step; the loss is CE + lambda * mean penalty over this rank's rows."""
    ce = F.cross_entropy(ddp(x), y)
    m = len(xa)
    if not penalise:
        return ce, ce, torch.zeros((), device=x.device), 0
    if m == 0:  # zero rows, so this rank still joins the forward's collectives
        xa, wa = x[:0], torch.zeros(0, *x.shape[-2:])
    pen_sum = rrr_penalty(ddp, xa.to(x.device), wa.to(x.device)).sum()
    if result.lam < 0:
        lam = _sync_auto_lambda(ce, pen_sum, m)
        if lam is None:  # no rank had an annotated row yet
            return ce, ce, pen_sum.detach(), m
        result.lam = lam
    return ce + abs(result.lam) * pen_sum / max(1, m), ce, pen_sum.detach(), m


def _sync_auto_lambda(ce: torch.Tensor, pen_sum: torch.Tensor, m: int) -> float | None:
    """auto_lambda from the mean CE over ranks and the mean penalty over all ranks' rows (one value for all)."""
    t = _all_reduce([ce.item(), pen_sum.item(), float(m)], ce.device)
    if t[2] == 0:
        return None
    return auto_lambda(t[0] / dist.get_world_size(), t[1] / t[2])


def _all_reduce(values: list[float], device) -> torch.Tensor:
    """Sum over ranks, as a float64 CPU tensor (the collective runs on ``device``: nccl needs CUDA tensors)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu()


def _epoch_metrics(epoch: int, sums: torch.Tensor, result: DistRoundResult, env: DistEnv, device) -> EpochMetrics:
    """Metrics over all ranks; each rank's own (penalised rows, mean penalty) go to ``result.ranks``."""
    mine = torch.tensor([sums[3].item(), sums[2].item()], dtype=torch.float64, device=device)
    gathered = [torch.zeros_like(mine) for _ in range(env.world_size)]
    dist.all_gather(gathered, mine)
    result.ranks.append([(int(m), float(p / max(1.0, m))) for m, p in (g.tolist() for g in gathered)])
    loss, ce, pen, m, rows = _all_reduce(sums.tolist(), device).tolist()
    return EpochMetrics(epoch=epoch, train_loss=loss / max(1, rows), train_ce=ce / max(1, rows),
                        penalty=pen / max(1, m), penalised_rows=int(m))  # fmt: skip


def _evaluate_sharded(model: nn.Module, val_set: Dataset, env: DistEnv, device) -> tuple[float, float]:
    """(accuracy, mean CE) over the whole set, each rank scoring every R-th image with the unwrapped model
    (no DDP forward, so ranks may run different numbers of batches)."""
    part = Subset(val_set, range(env.rank, len(val_set), env.world_size))
    acc, loss = evaluate(model, part, device=device) if len(part) else (0.0, 0.0)
    t = _all_reduce([acc * len(part), loss * len(part), float(len(part))], device)
    return float(t[0] / max(1, t[2])), float(t[1] / max(1, t[2]))


def broadcast_object(obj, env: DistEnv):
    """Rank 0's ``obj`` on every rank (pickled; for small things like Feedback)."""
    box = [obj if env.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def train_next_round(run, env: DistEnv, device: torch.device) -> dict:
    """``Run.train_next_round`` across ranks: rank 0 reads the feedback and writes checkpoint and history.
    Returns the round's record on every rank."""
    model, optimizer, _ = run.load_model(device)
    round_ = run.current_round() + 1
    feedback = broadcast_object(run.feedback() if env.rank == 0 else None, env)
    train, test = run.datasets
    result = train_round_ddp(model, train, feedback, run.grid, run.config.train, env=env, device=device,
                             optimizer=optimizer, val_set=test, seed=run.config.seed * 1000 + round_)  # fmt: skip
    record = {"world_size": env.world_size}
    if env.rank == 0:
        record = run.finish_round(round_, model, optimizer, feedback, result, world_size=env.world_size)
    record = broadcast_object(record, env)
    # The checkpoint is complete before any rank reads it for the next round.
    dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)
    return record


def main(argv: list[str] | None = None) -> int:
    """Entry for ``torchrun ... -m trainer.distributed RUN_DIR [--rounds N]``."""
    parser = argparse.ArgumentParser(prog="python -m trainer.distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    env = DistEnv.from_environ()
    if env is None:
        parser.error("not started by torchrun (RANK and WORLD_SIZE are unset); use `hitl train` for one process")
    return train_rounds(args.run_dir, args.rounds, env)


def train_rounds(run_dir: Path, rounds: int, env: DistEnv) -> int:
    """Train ``rounds`` rounds of a run directory in a torchrun job; rank 0 prints one JSON line per round."""
    import json

    from trainer.run import Run

    run = Run.open(run_dir)
    device = setup(env, run.config.train.device)
    try:
        for _ in range(rounds):
            record = train_next_round(run, env, device)
            if env.rank == 0:
                print(json.dumps({k: record[k] for k in ("round", "model_version", "annotated", "acc", "world_size")}))
    finally:
        teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
