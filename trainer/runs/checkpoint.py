"""Checkpoints: state dicts plus the metadata needed to rebuild the model, loaded with ``weights_only=True``.

The one owner of checkpoint file names (``round-NNN.pt``: ``checkpoint_path``, ``checkpoint_round``,
``list_checkpoints``). Written atomically, so a crash never leaves half a checkpoint.

A name is a checkpoint's only when it is the canonical one for its round: ASCII digits, zero-padded to three,
at most ``MAX_ROUND`` (so ``round-٩.pt``, ``round-0009.pt`` and a 30-digit round are just other files).
Reading checks the rest: a regular file (no directory, no link out of the run directory), a torch file of
this project's shape, and, given what the run expects, meta that matches it (``check_meta``).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import torch
from torch import nn

from trainer.core.models import build_model
from trainer.runs.atomic import atomic_write

REQUIRED_META = ("model", "num_classes", "in_channels", "image_size", "classes", "round", "model_version")
# A round is one human feedback round: five digits is far more than anyone annotates, and keeps names short.
MAX_ROUND = 99_999
_ROUND_FILE = re.compile(r"round-([0-9]{3,5})\.pt")  # [0-9], not \d: \d also matches Arabic-Indic digits


class CheckpointError(ValueError):
    """A file named as a checkpoint that cannot be used: unreadable, not ours, or not this run's."""


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


def shown(path: str | Path, root: str | Path | None) -> str:
    """``path`` as an error names it: relative to ``root`` (the run directory) when it lies inside it."""
    path = Path(path)
    if root is not None:
        try:
            return str(path.relative_to(root))
        except ValueError:
            pass
    return str(path)


def read_checkpoint(path: str | Path, *, root: str | Path | None = None) -> dict:
    """The state dict saved at ``path``. With ``root`` (the run directory), ``path`` must resolve inside it:
    a link to another run's file is refused, and errors name the file relative to ``root``. Raises
    FileNotFoundError when nothing is there, CheckpointError for anything else that is not a checkpoint."""
    path, name = Path(path), shown(path, root)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"checkpoint {name} does not exist")
    if root is not None and not path.resolve().is_relative_to(Path(root).resolve()):
        # the target is not named: errors reach /health and /predict, which show no path outside the run
        raise CheckpointError(f"{name} links outside the run directory: a checkpoint must be this run's own file")
    try:
        with open(path, "rb") as handle:
            return _read_open(handle, name)
    except OSError as exc:  # a dangling link, a directory, no permission
        raise CheckpointError(f"{name} cannot be opened as a checkpoint file ({exc.strerror})") from exc


def _read_open(handle, name: str) -> dict:
    # fstat on the open file: what is checked is what is read
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        raise CheckpointError(f"{name} is not a regular file")
    try:
        state = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(f"{name} is not a readable checkpoint (truncated or not a torch file: "
                              f"{type(exc).__name__}: {str(exc)[:200]})") from exc  # fmt: skip
    if not isinstance(state, dict) or "model" not in state or not isinstance(state.get("meta"), dict):
        raise CheckpointError(f"{name} is not a checkpoint of this project (no 'model'/'meta' keys)")
    return state


def check_meta(meta: dict, round_: int, expected: dict, name: str) -> None:
    """Refuse meta saved for another round or another run: ``meta["round"]`` must be ``round_`` (the file
    name's) and every key of ``expected`` (model, classes, image size ...) must hold the same value."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{name} lacks checkpoint meta {', '.join(missing)}")
    if isinstance(meta["round"], bool) or meta["round"] != round_:
        raise CheckpointError(f"{name} holds round {meta['round']!r}, not round {round_} (a copy or a link of "
                              "another round's file?)")  # fmt: skip
    wrong = [f"{k} {meta.get(k)!r} (this run: {v!r})" for k, v in expected.items() if meta.get(k) != v]
    if wrong:
        raise CheckpointError(f"{name} was saved for another run: {'; '.join(wrong)}")


def read_train_probs(path: str | Path) -> torch.Tensor | None:
    """The (N, K) training-set scores a checkpoint was saved with, or None (older checkpoints, DDP rounds)."""
    probs = read_checkpoint(path).get("train_probs")
    return probs if isinstance(probs, torch.Tensor) else None


def model_from_state(state: dict, name: str = "checkpoint") -> tuple[nn.Module, dict]:
    """(model in eval mode, meta) from a state ``read_checkpoint`` returned; CheckpointError names ``name``
    when the weights do not fit the model the meta describes."""
    meta = state["meta"]
    try:
        model = build_model(meta["model"], meta["num_classes"], meta["in_channels"], meta["image_size"])
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{name}: its weights do not build its model ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from exc  # fmt: skip
    model.eval()
    return model, meta


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, meta) from a checkpoint file."""
    return model_from_state(read_checkpoint(path), str(path))


def checkpoint_path(directory: str | Path, round_: int) -> Path:
    if isinstance(round_, bool) or not isinstance(round_, int) or not 0 <= round_ <= MAX_ROUND:
        raise ValueError(f"a round is a whole number from 0 to {MAX_ROUND}, got {round_!r}")
    return Path(directory) / f"round-{round_:03d}.pt"


def parse_round(name: str) -> int | None:
    """The round a file name ``round-NNN.pt`` names, or None for any other name (only the canonical name
    counts: ``round-0009.pt`` is not round 9, so no round has two files)."""
    m = _ROUND_FILE.fullmatch(name)
    if m is None or f"round-{int(m.group(1)):03d}.pt" != name:
        return None
    return int(m.group(1))


def checkpoint_round(path: str | Path) -> int:
    """The round a checkpoint file holds, from its name ``round-NNN.pt`` (no need to read the file)."""
    round_ = parse_round(Path(path).name)
    if round_ is None:
        raise ValueError(f"{path} is not named round-NNN.pt (ASCII digits, rounds 0 to {MAX_ROUND})")
    return round_


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(round, path)`` of every entry named as a checkpoint, oldest round first (other names ignored). The
    entries are not opened: ``read_checkpoint`` says whether each is a usable file."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((r, p) for p in directory.iterdir() if (r := parse_round(p.name)) is not None)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint of the highest round in a directory, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None
