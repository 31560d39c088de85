"""Training on several processes: two CPU ranks over gloo must equal one process on the same batches.

Tolerance: parameters agree within 1e-5 (max abs diff) after a round of 4 SGD steps. DDP sums the ranks'
float32 gradients in another order than one process summing the same terms, so the two runs differ by
rounding only (1.5e-8 measured); the penalty's share of the update is > 3e-3 here (checked: > 100 x the
tolerance), so a penalty gradient lost in the sync, or a rank skipping its rows, fails the test.
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
from trainer.data import TensorDataset
from trainer.distributed import DistEnv, replay_pool, setup, shard_loader, teardown, train_round_ddp
from trainer.feedback import Feedback
from trainer.loop import RoundResult, TrainConfig, step_loss

WORLD = 2
N, SIZE, CLASSES = 16, 8, 3
GRID = Grid.from_cell_px(SIZE, SIZE, 4)  # 2 x 2 cells
TOLERANCE = 1e-5
REPO = Path(__file__).resolve().parents[1]


def tiny_data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(N, 1, SIZE, SIZE, generator=g), torch.arange(N) % CLASSES, ["a", "b", "c"])


def tiny_model() -> nn.Module:
    torch.manual_seed(0)  # smooth activations: the penalty's double backward has non-zero second derivatives
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * SIZE * SIZE, CLASSES))


def tiny_feedback(annotated: list[int]) -> Feedback:
    cells = {i: np.array([[True, False], [False, i % 2 == 0]]) for i in annotated}
    return Feedback(cells=cells, labels={annotated[0]: 2})  # one label correction, keyed by sample id


CASES = {  # replay 0: some steps have a rank without annotated rows (the zero-row penalty pass)
    "replay": (TrainConfig(epochs=2, batch_size=4, lam=1.0, replay=2), [1, 6, 11]),
    "in-batch only": (TrainConfig(epochs=2, batch_size=4, lam=1.0, replay=0), [0, 3, 5, 9, 12, 14]),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, case: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env = DistEnv(rank, WORLD, rank)
    device = setup(env, "cpu")
    try:
        cfg, annotated = CASES[case]
        model = tiny_model()
        sgd = torch.optim.SGD(model.parameters(), lr=0.1)
        result = train_round_ddp(model, tiny_data(), tiny_feedback(annotated), GRID, cfg, env=env, device=device,
                                 optimizer=sgd, seed=7)  # fmt: skip
        torch.save({"params": [p.detach() for p in model.parameters()], "result": result.to_dict()},
                   Path(out) / f"rank{rank}.pt")  # fmt: skip
    finally:
        teardown()


def _reference(case: str, cfg: TrainConfig | None = None) -> tuple[list[torch.Tensor], list[list[float]]]:
    """One process: each step, the mean over ranks of train_round's own step_loss on that rank's rows.
    Returns the parameters and, per epoch and rank, (penalised rows, penalty sum)."""
    cfg, annotated = (cfg or CASES[case][0]), CASES[case][1]
    data, feedback, model = tiny_data(), tiny_feedback(annotated), tiny_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    envs = [DistEnv(r, WORLD, r) for r in range(WORLD)]
    loaders = [shard_loader(data, feedback, cfg, env=e, seed=7) for e in envs]
    pools = [replay_pool(data, feedback, GRID, env=e, seed=7, counterexamples=cfg.counterexamples) for e in envs]
    per_epoch = []
    for epoch in range(cfg.epochs):
        stats = [[0, 0.0] for _ in envs]
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        for batches in zip(*loaders):
            losses = []
            for r, (x, y, ids) in enumerate(batches):
                xa, ya, wa, n_drawn = pools[r].rows(ids, cfg.replay)
                x, y = torch.cat([x, xa[:n_drawn]]), torch.cat([torch.as_tensor(y), ya[:n_drawn]])
                loss, _, pen = step_loss(model, x, y, xa, wa, RoundResult(lam=cfg.lam), first=False)
                losses.append(loss)
                stats[r][0] += len(xa)
                stats[r][1] += pen.item() * len(xa)
            sgd.zero_grad()
            (sum(losses) / WORLD).backward()  # DDP's gradient: the mean of the ranks' gradients
            sgd.step()
        per_epoch.append(stats)
    return [p.detach() for p in model.parameters()], per_epoch


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process_on_the_same_batches(case, tmp_path):
    mp.spawn(_rank_main, args=(_free_port(), case, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    expected, per_epoch = _reference(case)

    for got in ranks:
        diff = max((a - b).abs().max().item() for a, b in zip(got["params"], expected))
        assert diff < TOLERANCE, f"rank parameters differ from one process by {diff:.2e}"
    cfg, annotated = CASES[case]
    without_penalty, _ = _reference(case, dataclasses.replace(cfg, lam=0.0))
    penalty_effect = max((a - b).abs().max().item() for a, b in zip(expected, without_penalty))
    assert penalty_effect > 100 * TOLERANCE  # a penalty gradient lost in the sync would be caught

    result = ranks[0]["result"]
    assert result == ranks[1]["result"]  # every rank reports the same, gathered metrics
    for epoch, (reported, reference) in enumerate(zip(result["ranks"], per_epoch)):
        for (rows, mean_pen), (ref_rows, ref_sum) in zip(reported, reference):
            assert rows == ref_rows and rows > 0, f"epoch {epoch}: a rank penalised {rows} rows"
            assert mean_pen > 0 and mean_pen == pytest.approx(ref_sum / ref_rows, rel=1e-4)
        assert result["epochs"][epoch]["penalised_rows"] == sum(r for r, _ in reported)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_are_disjoint_cover_the_set_and_keep_corrections(world):
    data, feedback = tiny_data(), tiny_feedback([1, 6, 11])
    cfg = TrainConfig(batch_size=4)
    seen = []
    for r in range(world):
        for _, y, ids in shard_loader(data, feedback, cfg, env=DistEnv(r, world, r), seed=3):
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

    from trainer.run import Run, RunConfig

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
           str(_free_port()), "-m", "trainer.distributed", str(run.directory), "--rounds", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [p["round"] for p in printed] == [0, 1]  # rank 0 alone prints
    assert [h["world_size"] for h in run.history()] == [2, 2]
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == ["round-000.pt", "round-001.pt"]
    assert run.current_round() == 1
