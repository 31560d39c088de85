"""``hitl init`` reads a user's files before choosing a model; ``hitl datasets`` lists the built-ins."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from trainer.app.cli import main
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
    from trainer.app.commands import default_model

    assert default_model(channels, size) == expect


@pytest.mark.parametrize("dataset, expected", [("decoy-mnist", ("small-cnn", 28, 1)),
                                               ("decoy-mnist-rgb", ("resnet18", 112, 3))])  # fmt: skip
def test_init_on_a_built_in_dataset_takes_its_shape(tmp_path, dataset, expected):
    assert main(["init", str(tmp_path / "run"), "--dataset", dataset]) == 0
    c = Run.open(tmp_path / "run").config
    assert (c.model, c.image_size, c.channels) == expected
