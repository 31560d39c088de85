"""Training a round on several processes (one per GPU) with torchrun and DistributedDataParallel: a wrapper
around ``trainer.core.loop.train_round`` (the loader's sampler, the DDP wrapper, a sum over ranks), not a
second loop.

    torchrun --nproc-per-node 4 -m trainer.runs.distributed RUN_DIR [--rounds N]

Shape legend: N images, C channels, H x W pixels, B batch rows, M annotated rows in a step, R ranks.

Every rank (process) trains the same model on its shard of the training set: a DistributedSampler with the
same seed on every rank, reshuffled each epoch. Masks and label corrections follow their rows because both
are keyed by sample id, which the shard keeps. Each rank draws replay rows from all annotated images with its
own seed, and penalises the annotated rows of its batch plus those. Each rank weighs its terms by its share of
the step's rows (``train_round``), so one step equals one process stepping on the R batches joined, with the
lambda warm-up and automatic lambda computed over all ranks (checked against ``train_round`` in one process in
tests/runs/test_distributed.py). ``cfg.batch_size`` is per rank: the global batch is R times larger.

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
import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from label_config.grid import Grid
from trainer.core.feedback import Feedback
from trainer.core.loop import Parallel, TrainConfig, evaluate, round_seed, train_round
from trainer.runs.run import Run

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
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DistEnv | None:
        """From torchrun's RANK, WORLD_SIZE, LOCAL_RANK; None when not started by torchrun."""
        env = os.environ if environ is None else environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        try:
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])))
        except ValueError:
            values = {k: env.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
            raise ValueError(f"torchrun environment is not integers: {values}") from None


@contextmanager
def process_group(env: DistEnv, device: str = "cpu") -> Iterator[torch.device]:
    """Join the process group (nccl on CUDA, gloo on CPU) and yield the device this rank trains on; leave it
    on the way out. After a normal finish the ranks first meet at a barrier, so no rank closes its connections
    while another still uses them; after an error there is no barrier (the other ranks may never reach it)."""
    if device.startswith("cuda"):
        torch.cuda.set_device(env.local_rank)
        backend, dev = "nccl", torch.device("cuda", env.local_rank)
    else:
        backend, dev = "gloo", torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
    try:
        yield dev
        dist.barrier()
    finally:
        dist.destroy_process_group()


class DdpParallel(Parallel):
    """``train_round`` on this rank: a DistributedSampler shard, the DDP wrapper, this rank's own replay
    stream, and sums over ranks (all_reduce) for the loss weights and metrics."""

    def __init__(self, env: DistEnv, device: torch.device) -> None:
        self.env, self.device = env, torch.device(device)
        self.world_size = env.world_size

    def loader(self, data: Dataset, cfg: TrainConfig, seed: int) -> DataLoader:
        """This rank's batches. Shards are disjoint and cover the set; the sampler repeats a few rows so all
        ranks take the same number of steps (DDP needs one backward per step on every rank)."""
        sampler = DistributedSampler(data, num_replicas=self.env.world_size, rank=self.env.rank, shuffle=True,
                                     seed=seed)  # fmt: skip
        return DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers)

    def replay(self, train_set: Dataset, feedback: Feedback, grid: Grid, *, seed: int, counterexamples: float):
        """This rank's replay draws: its own stream, so ranks do not all replay the same annotated images."""
        return super().replay(train_set, feedback, grid, seed=[seed, self.env.rank], counterexamples=counterexamples)

    def wrap(self, model: nn.Module) -> nn.Module:
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    def evaluate(self, model: nn.Module, dataset: Dataset, device, *, progress: bool = False) -> tuple[float, float]:
        """(accuracy, mean CE) over the whole set, each rank scoring every R-th image with the unwrapped model
        (no DDP forward, so ranks may run different numbers of batches); rank 0 shows the bar."""
        part = Subset(dataset, range(self.env.rank, len(dataset), self.env.world_size))
        shown = progress and self.env.rank == 0
        acc, loss = evaluate(model, part, device=device, progress=shown) if len(part) else (0.0, 0.0)
        n = float(len(part))
        t = self.all_reduce(torch.tensor([acc * n, loss * n, n], dtype=torch.float64, device=device)).tolist()
        return t[0] / max(1.0, t[2]), t[1] / max(1.0, t[2])


def broadcast_object(obj, env: DistEnv):
    """Rank 0's ``obj`` on every rank (pickled; for small things like Feedback)."""
    box = [obj if env.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def train_next_round(run: Run, env: DistEnv, device: torch.device) -> dict:
    """``Run.train_next_round`` across ranks: rank 0 reads the feedback and writes checkpoint and history.
    Returns the round's record on every rank."""
    model, optimizer, _ = run.load_model(device)
    round_ = run.current_round() + 1
    feedback = broadcast_object(run.feedback() if env.rank == 0 else None, env)
    train, test = run.datasets
    cfg = replace(run.config.train, device=str(device))
    result = train_round(model, train, feedback, run.grid, cfg, optimizer=optimizer, val_set=test,
                         seed=round_seed(run.config.seed, round_), parallel=DdpParallel(env, device))  # fmt: skip
    record = {"world_size": env.world_size}
    if env.rank == 0:
        record = run.finish_round(round_, model, optimizer, feedback, result, world_size=env.world_size)
    record = broadcast_object(record, env)
    # The checkpoint is complete before any rank reads it for the next round.
    dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)
    return record


def main(argv: list[str] | None = None) -> int:
    """Entry for ``torchrun ... -m trainer.runs.distributed RUN_DIR [--rounds N]``."""
    parser = argparse.ArgumentParser(prog="python -m trainer.runs.distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    env = DistEnv.from_environ()
    if env is None:
        parser.error("not started by torchrun (RANK and WORLD_SIZE are unset); use `hitl train` for one process")
    return train_rounds(args.run_dir, args.rounds, env)


def train_rounds(run_dir: Path, rounds: int, env: DistEnv) -> int:
    """Train ``rounds`` rounds of a run directory in a torchrun job; rank 0 prints one JSON line per round."""
    run = Run.open(run_dir)
    with process_group(env, run.config.train.device) as device:
        for _ in range(rounds):
            record = train_next_round(run, env, device)
            if env.rank == 0:
                print(json.dumps({k: record[k] for k in ("round", "model_version", "annotated", "acc", "world_size")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
