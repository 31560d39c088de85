"""``hitl init`` reads a user's files before choosing a model; ``hitl datasets`` lists the built-ins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.app.cli import main
from trainer.runs.create import default_model
from trainer.runs.run import Run


def _folder(root, size, mode, n=6):
    rng = np.random.default_rng(0)
    for k in ("cat", "dog"):
        (root / k).mkdir(parents=True)
        for i in range(n):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / k / f"{i}.png")
    return root


@pytest.mark.parametrize("size, mode, expected", [
    ((28, 28), "L", ("small-cnn", 28, 1, 4)),  # MNIST-like grey files: the small CNN at their own size
    ((300, 260), "RGB", ("resnet18", 224, 3, 32)),  # photos: resnet18, at most 224 px, a 7 x 7 grid
    ((48, 40), "RGB", ("resnet18", 40, 3, 5)),
])  # fmt: skip
def test_init_reads_size_and_channels_from_the_files(tmp_path, capsys, size, mode, expected):
    data = _folder(tmp_path / "images", size, mode)
    assert main(["init", str(tmp_path / "run"), "--dataset", f"folder:{data}"]) == 0
    c = Run.open(tmp_path / "run").config
    assert (c.model, c.image_size, c.channels, c.cell_px) == expected


def test_init_keeps_what_the_user_gives(tmp_path):
    data = _folder(tmp_path / "images", (28, 28), "L")
    assert main(["init", str(tmp_path / "run"), "--dataset", f"folder:{data}", "--image-size", "56",
                 "--channels", "3", "--model", "small-cnn", "--cell-px", "8"]) == 0  # fmt: skip
    c = Run.open(tmp_path / "run").config
    assert (c.model, c.image_size, c.channels, c.cell_px) == ("small-cnn", 56, 3, 8)


def test_datasets_lists_the_family(capsys):
    assert main(["datasets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ruler-mnist-rgb"] == {"name": "ruler-mnist-rgb", "confounder": "ruler", "image_shape": [3, 112, 112],
                                       "true_mask": True, "clean_twin": "decoy-mnist-rgb-clean"}  # fmt: skip
    kinds = {r["confounder"] for r in rows.values()}
    assert {"corner", "frame", "texture", "watermark", "ruler"} <= kinds
    assert main(["datasets"]) == 0
    assert "watermark-mnist" in capsys.readouterr().out


@pytest.mark.parametrize("channels, size, expect", [(1, 28, "small-cnn"), (3, 112, "resnet18"), (1, 64, "resnet18"),
                                                    (3, 28, "resnet18")])  # fmt: skip
def test_default_model_follows_the_images(channels, size, expect):
    assert default_model(channels, size) == expect


@pytest.mark.parametrize("dataset, expected", [("decoy-mnist", ("small-cnn", 28, 1)),
                                               ("decoy-mnist-rgb", ("resnet18", 112, 3))])  # fmt: skip
def test_init_on_a_built_in_dataset_takes_its_shape(tmp_path, dataset, expected):
    assert main(["init", str(tmp_path / "run"), "--dataset", dataset]) == 0
    c = Run.open(tmp_path / "run").config
    assert (c.model, c.image_size, c.channels) == expected


@pytest.fixture(scope="module")
def frame_folder(tmp_path_factory):
    """frame-mnist at seed 1 written to disk by ``hitl datasets --export`` (5,000 PNGs and their masks)."""
    root = tmp_path_factory.mktemp("frame") / "frame-mnist"
    assert main(["datasets", "--export", "frame-mnist", str(root), "--seed", "1"]) == 0
    return root


def _by_sample_id(part):
    """A folder split's images, labels and true masks back in the exported dataset's order (files are <id>.png)."""
    ids = [int(p.stem) for p in part.paths]
    order = np.argsort(ids)
    images = torch.stack([part[int(i)][0] for i in order])
    return sorted(ids), images, part.labels[order], part.decoy_masks[order]


@pytest.mark.slow
def test_folder_export_and_init_reproduce_the_experiment(frame_folder, tmp_path):
    """``hitl experiment --dataset frame-mnist --seeds 1 --budget 0.01 --rounds 5`` against ``hitl datasets --export
    ... --seed 1`` + ``hitl init --dataset folder:DIR --seed 1 --per-round 8``: the same training and test images
    (only their order differs: class folders), labels, true masks, grid, model, training settings and seeds, and
    the same images asked per round."""
    from trainer.app.experiment import ExperimentConfig, round_budgets
    from trainer.data.registry import load_dataset

    cfg = ExperimentConfig(datasets=("frame-mnist",), seeds=(1,), budgets=(0.01,), rounds=5)
    assert main(["init", str(tmp_path / "run"), "--dataset", f"folder:{frame_folder}", "--seed", "1",
                 "--per-round", "8"]) == 0  # fmt: skip
    run = Run.open(tmp_path / "run")
    for ours, theirs in zip(run.datasets, load_dataset("frame-mnist", seed=1)):  # train, then test: no new split
        ids, images, labels, masks = _by_sample_id(ours)
        assert ids == list(range(len(theirs)))
        assert torch.equal(images, theirs.images) and torch.equal(labels, theirs.labels)
        assert torch.equal(masks, theirs.decoy_masks)
    c = run.config
    assert (c.model, c.image_size, c.channels, c.seed, c.train, c.sampling.strategy) == (
        cfg.model,
        28,
        1,
        1,
        cfg.train,
        cfg.strategies[0],
    )
    assert run.grid.shape == (7, 7) and c.cell_px == 28 // 7  # the experiment's grid: cell_px None is 7 x 7
    assert round_budgets(cfg.budgets[0], len(run.datasets[0]), cfg.rounds) == [c.sampling.per_round] * cfg.rounds
