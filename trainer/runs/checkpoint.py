"""Checkpoints: state dicts plus the metadata needed to rebuild the model, loaded with ``weights_only=True``.

The one owner of checkpoint file names (``round-NNN.pt``: ``checkpoint_path``, ``checkpoint_round``,
``list_checkpoints``). Written atomically, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from trainer.core.models import build_model
from trainer.runs.atomic import atomic_write

REQUIRED_META = ("model", "num_classes", "in_channels", "image_size", "classes", "round", "model_version")
_ROUND_FILE = re.compile(r"round-(\d+)\.pt")


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict, optimizer: torch.optim.Optimizer | None = None,
                    train_probs: torch.Tensor | None = None) -> Path:  # fmt: skip
    """Write ``{"model": state_dict, "optimizer": state_dict | None, "meta": meta}`` atomically, plus
    ``"train_probs"`` (N, K) when given: the round's scores of the training images for the sampler."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {', '.join(missing)}")
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "meta": meta,
    }
    if train_probs is not None:
        state["train_probs"] = train_probs.detach().float().cpu()
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise ValueError(f"{path} is not a checkpoint of this project (no 'model'/'meta' keys)")
    return state


def read_train_probs(path: str | Path) -> torch.Tensor | None:
    """The (N, K) training-set scores a checkpoint was saved with, or None (older checkpoints, DDP rounds)."""
    probs = read_checkpoint(path).get("train_probs")
    return probs if isinstance(probs, torch.Tensor) else None


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, meta) from a checkpoint file."""
    state = read_checkpoint(path)
    meta = state["meta"]
    model = build_model(meta["model"], meta["num_classes"], meta["in_channels"], meta["image_size"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, meta


def checkpoint_path(directory: str | Path, round_: int) -> Path:
    return Path(directory) / f"round-{round_:03d}.pt"


def checkpoint_round(path: str | Path) -> int:
    """The round a checkpoint file holds, from its name ``round-NNN.pt`` (no need to read the file)."""
    m = _ROUND_FILE.fullmatch(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not named round-NNN.pt")
    return int(m.group(1))


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(round, path)`` of every checkpoint file in a directory, oldest round first (other files ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _ROUND_FILE.fullmatch(p.name)))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint of the highest round in a directory, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None
