"""A new run's config from its dataset: the shape read from the data, the model and the grid that fit it.

One owner for what ``hitl init`` decides when a flag is not given, so a run the backend makes for a team's project
(``ls_backend.round``) is the run ``hitl init --dataset labelstudio:ID`` would make.
"""

from __future__ import annotations

from pathlib import Path

from trainer.data.registry import native_shape
from trainer.runs.run import RunConfig, with_overrides

GRID_CELLS = 7  # cells per side when --cell-px is not given (4 px cells at 28 px, as Decoy-MNIST is tuned)


def default_model(channels: int, size: int) -> str:
    """A small CNN for MNIST-sized grey images, torchvision's resnet18 for RGB or larger images."""
    return "small-cnn" if channels == 1 and size <= 32 else "resnet18"


def new_run_config(dataset: str, root: str | Path, *, channels: int | None = None, image_size: int | None = None,
                   model: str | None = None, cell_px: int | None = None, **overrides) -> RunConfig:  # fmt: skip
    """The config ``hitl init`` writes for ``dataset``: channels and size read from the data when not given (a
    snapshot's from run directory ``root``), the model and a 7 x 7 grid that fit them, then ``overrides``
    (``with_overrides``: top-level or ``train.X`` / ``sampling.X`` keys; None values ignored)."""
    if channels is None or image_size is None:  # read from the data (a user's files: their headers)
        native_channels, native_size = native_shape(dataset, root=root)
        channels, image_size = channels or native_channels, image_size or native_size
    return with_overrides(
        RunConfig(), dataset=dataset, model=model or default_model(channels, image_size), image_size=image_size,
        channels=channels, cell_px=cell_px or max(1, image_size // GRID_CELLS), **overrides,
    )  # fmt: skip
