"""Training on several processes: two CPU ranks over gloo must equal ``train_round`` itself in one process,
stepping on the two ranks' batches and replay rows joined (warm-up and automatic lambda included).

Tolerance: parameters agree within 1e-5 (max abs diff) after a round of 8 SGD steps. DDP sums the ranks'
float32 gradients in another order than one process summing the same terms, so the two runs differ by
rounding only; the penalty's share of the update is checked to be > 100 x the tolerance, so a penalty gradient
lost in the sync, a rank skipping its rows or a warm-up applied on one side only fails the test.
SGD, not Adam: Adam divides by sqrt(v) and turns a rounding difference in a near-zero gradient into a full step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from label_config.grid import Grid
from trainer.core.feedback import Feedback
from trainer.core.loop import Labelled, Parallel, TrainConfig, train_round
from trainer.data.benchmarks import TensorDataset
from trainer.runs.distributed import DdpParallel, DistEnv, process_group

WORLD = 2
N, SIZE, CLASSES = 16, 8, 3
GRID = Grid.from_cell_px(SIZE, SIZE, 4)  # 2 x 2 cells
TOLERANCE = 1e-5
REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def tiny_data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(N, 1, SIZE, SIZE, generator=g), torch.arange(N) % CLASSES, ["a", "b", "c"])


def tiny_model() -> nn.Module:
    torch.manual_seed(0)  # smooth activations: the penalty's double backward has non-zero second derivatives
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * SIZE * SIZE, CLASSES))


def tiny_feedback(annotated: list[int]) -> Feedback:
    cells = {i: np.array([[True, False], [False, i % 2 == 0]]) for i in annotated}
    return Feedback(cells=cells, labels={annotated[0]: 2})  # one label correction, keyed by sample id


# replay 0: some steps have a rank without annotated rows (the zero-row penalty pass). ``lr`` is SGD's here;
# automatic lambda is about 900 on this data, so its case steps more gently.
CASES = {
    "replay, warm-up": (TrainConfig(epochs=2, batch_size=4, lr=0.1, lam=1.0, replay=2, warmup_steps=5), [1, 6, 11]),
    "in-batch only": (
        TrainConfig(epochs=2, batch_size=4, lr=0.1, lam=3.0, replay=0, warmup_steps=6),
        [0, 3, 5, 9, 12, 14],
    ),
    "automatic lambda": (TrainConfig(epochs=2, batch_size=4, lr=0.002, lam=-1.0, replay=2, warmup_steps=3), [1, 6, 11]),
    "replay weight": (
        TrainConfig(epochs=2, batch_size=4, lr=0.1, lam=1.0, replay=2, warmup_steps=5, replay_weight=3.0),
        [1, 6, 11],
    ),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, case: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env = DistEnv(rank, WORLD, rank)
    with process_group(env, "cpu") as device:
        cfg, annotated = CASES[case]
        model = tiny_model()
        sgd = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        result = train_round(model, tiny_data(), tiny_feedback(annotated), GRID, cfg, optimizer=sgd, seed=7,
                             parallel=DdpParallel(env, device))  # fmt: skip
        torch.save({"params": [p.detach() for p in model.parameters()], "result": result.to_dict()},
                   Path(out) / f"rank{rank}.pt")  # fmt: skip
    # A rank once died with SIGABRT in CI and once in ~330 runs here ("terminate called without an active
    # exception": a C++ thread destroyed while running; no Python traceback, so where is not known). The
    # barrier in process_group keeps a rank from closing connections another still uses; leaving with os._exit
    # skips the interpreter's own teardown of gloo's threads. An abort before the save still fails the test.
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


class JoinedRanks(Parallel):
    """One process stepping on what the ranks see, joined: each rank's shard batch and replay rows, as
    ``DdpParallel`` builds them (no process group is needed to build them)."""

    def __init__(self) -> None:
        self.ranks = [DdpParallel(DistEnv(r, WORLD, r), CPU) for r in range(WORLD)]
        self.sizes: list[int] = []

    def loader(self, data, cfg, seed):
        return _JoinedLoader([p.loader(data, cfg, seed) for p in self.ranks], self)

    def replay(self, train_set, feedback, grid, *, seed, counterexamples):
        return _JoinedReplay([p.replay(train_set, feedback, grid, seed=seed, counterexamples=counterexamples)
                              for p in self.ranks], self)  # fmt: skip


class _JoinedLoader:
    def __init__(self, loaders, joined: JoinedRanks) -> None:
        self.loaders, self.joined, self.sampler = loaders, joined, self

    def set_epoch(self, epoch: int) -> None:
        for loader in self.loaders:
            loader.sampler.set_epoch(epoch)

    def __len__(self) -> int:  # steps per epoch, as a DataLoader gives them (the learning-rate schedule reads it)
        return min(len(loader) for loader in self.loaders)

    def __iter__(self):
        for batches in zip(*self.loaders):
            self.joined.sizes = [len(ids) for _, _, ids in batches]
            yield (torch.cat([b[0] for b in batches]), torch.cat([torch.as_tensor(b[1]) for b in batches]),
                   torch.cat([b[2] for b in batches]))  # fmt: skip


class _JoinedReplay:
    def __init__(self, pools, joined: JoinedRanks) -> None:
        self.pools, self.joined = pools, joined

    def rows(self, ids, k, donors=None):
        donor_parts = donors.split(self.joined.sizes) if donors is not None else [None] * len(self.pools)
        parts = [
            pool.rows(part, k, donors=d) for pool, part, d in zip(self.pools, ids.split(self.joined.sizes), donor_parts)
        ]
        drawn = [(x[:n], y[:n], w[:n]) for x, y, w, n in parts if len(x)]
        own = [(x[n:], y[n:], w[n:]) for x, y, w, n in parts if len(x)]
        rows = drawn + own
        if not rows:
            return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0), 0
        x, y, w = (torch.cat([r[i] for r in rows]) for i in range(3))
        return x, y, w, sum(n for *_, n in parts)


def _reference(case: str, cfg: TrainConfig | None = None):
    """``train_round`` in one process on the ranks' rows joined: (parameters, result dict)."""
    cfg, annotated = (cfg or CASES[case][0]), CASES[case][1]
    model = tiny_model()
    sgd = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    result = train_round(model, tiny_data(), tiny_feedback(annotated), GRID, cfg, optimizer=sgd, seed=7,
                         parallel=JoinedRanks())  # fmt: skip
    return [p.detach() for p in model.parameters()], result.to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_train_round_on_their_rows_joined(case, tmp_path):
    mp.spawn(_rank_main, args=(_free_port(), case, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    expected, reference = _reference(case)

    for got in ranks:
        diff = max((a - b).abs().max().item() for a, b in zip(got["params"], expected))
        assert diff < TOLERANCE, f"rank parameters differ from one process by {diff:.2e}"
    cfg, _ = CASES[case]
    for other in (dataclasses.replace(cfg, lam=0.0), dataclasses.replace(cfg, warmup_steps=0)):
        changed, _ = _reference(case, other)
        effect = max((a - b).abs().max().item() for a, b in zip(expected, changed))
        assert effect > 100 * TOLERANCE  # a lost penalty gradient or a skipped warm-up would be caught

    result = ranks[0]["result"]
    assert result == ranks[1]["result"]  # every rank reports the same, reduced metrics
    assert result["lam"] == pytest.approx(reference["lam"], rel=1e-4)
    for got, want in zip(result["epochs"], reference["epochs"]):
        assert got["penalised_rows"] == want["penalised_rows"] > 0
        for key in ("train_loss", "train_ce", "penalty"):
            assert got[key] == pytest.approx(want[key], rel=1e-4), key


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_are_disjoint_cover_the_set_and_keep_corrections(world):
    data, feedback = tiny_data(), tiny_feedback([1, 6, 11])
    cfg = TrainConfig(batch_size=4)
    seen = []
    for r in range(world):
        loader = DdpParallel(DistEnv(r, world, r), CPU).loader(Labelled(data, feedback.labels), cfg, seed=3)
        for _, y, ids in loader:
            for label, sid in zip(y.tolist(), ids.tolist()):
                assert label == feedback.labels.get(sid, int(data.labels[sid]))
                seen.append(sid)
    # DistributedSampler pads with repeats so every rank takes the same number of steps
    assert set(seen) == set(range(N)) and len(seen) == world * -(-N // world)


@pytest.mark.parametrize(
    "environ, expected",
    [({}, None), ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, DistEnv(1, 2, 1)),
     ({"RANK": "0", "WORLD_SIZE": "1"}, DistEnv(0, 1, 0))],
)  # fmt: skip
def test_dist_env_from_torchrun_environment(environ, expected):
    assert DistEnv.from_environ(environ) == expected


@pytest.mark.parametrize("environ", [{"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}])
def test_dist_env_refuses_bad_values(environ):
    with pytest.raises(ValueError, match="RANK|rank"):
        DistEnv.from_environ(environ)


@pytest.mark.slow
def test_torchrun_trains_rounds_and_rank_zero_writes_checkpoints(tmp_path):
    """The whole path: torchrun, two ranks, two rounds of a run directory; round 1 starts from round 0's
    checkpoint, which rank 0 wrote and every rank read after the barrier."""
    from PIL import Image

    from trainer.runs.run import Run, RunConfig

    rng = np.random.default_rng(0)
    for k, name in enumerate(["cats", "dogs"]):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(10):
            pixels = (rng.random((16, 16)) * 255).astype(np.uint8) // (k + 1)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    config = RunConfig(dataset=f"folder:{tmp_path / 'images'}", image_size=16, channels=1, cell_px=4,
                       train=TrainConfig(epochs=1, batch_size=4))  # fmt: skip
    run = Run.create(tmp_path / "run", config)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), "--master-port",
           str(_free_port()), "-m", "trainer.runs.distributed", str(run.directory), "--rounds", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [p["round"] for p in printed] == [0, 1]  # rank 0 alone prints
    assert [h["world_size"] for h in run.history()] == [2, 2]
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == ["round-000.pt", "round-001.pt"]
    assert run.current_round() == 1
