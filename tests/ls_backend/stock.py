"""Label Studio's stock image-classification template and a run whose classes are its Choices: a folder dataset of
small generated PNGs (one subfolder per Choice) and an untrained round-0 small CNN over it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainer.core.loop import TrainConfig
from trainer.core.models import build_model
from trainer.runs.checkpoint import checkpoint_path, save_checkpoint
from trainer.runs.run import Run, RunConfig

# Label Studio 1.23's "Image Classification" template, as the project creation page fills it in
STOCK_CLASSES = ["Adult content", "Weapons", "Violence"]
STOCK = """<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image">
    <Choice value="Adult content"/>
    <Choice value="Weapons" />
    <Choice value="Violence" />
  </Choices>
</View>"""
STOCK_IMAGE = '  <Image name="image" value="$image"/>\n'


def stock_template(classes: list[str]) -> str:
    """The same template over ``classes`` (a team's own): what a team's project holds before it adds anything."""
    choices = "".join(f'    <Choice value="{c}"/>\n' for c in classes)
    return f'<View>\n{STOCK_IMAGE}  <Choices name="choice" toName="image">\n{choices}  </Choices>\n</View>'


def picture(seed: int, size: int = 28) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8), "L")


def stock_folder(root: Path, per_class: int = 4) -> Path:
    """ROOT/<Choice value>/<n>.png for every class of the stock template."""
    for k, name in enumerate(STOCK_CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            picture(100 * k + n).save(root / name / f"{n}.png")
    return root


def stock_run(directory: Path, top_k: int = 3) -> Run:
    """A run on ``stock_folder`` (28 px grey) with an untrained round-0 checkpoint, as ``hitl init`` and a first
    round leave one (the folder must stay: the backend reads the dataset's classes from it)."""
    folder = stock_folder(directory.parent / f"{directory.name}-images")
    config = RunConfig(dataset=f"folder:{folder}", image_size=28, channels=1, top_k=top_k,
                       train=TrainConfig(epochs=1, batch_size=128))  # fmt: skip
    run = Run.create(directory, config)
    classes = run.classes  # sorted folder names: not the template's order
    torch.manual_seed(0)
    meta = {"model": "small-cnn", "num_classes": len(classes), "in_channels": 1, "image_size": 28,
            "classes": classes, "round": 0, "model_version": run.model_version(0),
            "grid": {"rows": run.grid.rows, "cols": run.grid.cols}, "dataset": config.dataset}  # fmt: skip
    save_checkpoint(checkpoint_path(run.checkpoint_dir, 0), build_model("small-cnn", len(classes), 1, 28), meta)
    return run
