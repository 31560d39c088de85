"""Plots of a run's results, written as PNG files with matplotlib's Agg backend (no display needed).

Shape legend: N images, C channels, H x W pixels.

Pure in, file out: each function takes numbers or arrays and writes one picture; nothing is trained or
loaded here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.explain.overlay import image_to_pil, overlay_image


def _figure(width: float, height: float):
    """A figure drawn by the Agg canvas: pyplot's global backend and state are never touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_accuracy(curves: dict[str, list[float]], path: str | Path, *, title: str = "Accuracy on the decoy test set",
                  first_feedback_round: int | None = 1) -> Path:
    """Accuracy per round, one line per arm. ``curves``: arm -> accuracy (0-1) of rounds 0, 1, ...

    A dotted line marks ``first_feedback_round`` (None: no mark).
    """
    if not curves or any(len(v) == 0 for v in curves.values()):
        counts = ", ".join(f"{k}: {len(v)}" for k, v in curves.items())
        raise ValueError(f"every arm needs at least one round, got rounds per arm {{{counts}}}")
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    for arm, values in curves.items():
        rounds = np.arange(len(values))
        ax.plot(rounds, 100 * np.asarray(values, dtype=float), marker="o", label=arm)
    if first_feedback_round is not None:
        ax.axvline(first_feedback_round - 0.5, color="grey", linestyle=":", label="feedback starts")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def plot_saliency_examples(images, maps: dict[str, np.ndarray], path: str | Path, *, masks=None,
                           captions: dict[str, list[str]] | None = None, display_px: int = 112) -> Path:
    """One row per image: the image, then its saliency overlay under each model in ``maps``.

    images: (N, C, H, W) in [0, 1]; maps: column title -> (N, H, W) non-negative saliency; masks: (N, H, W)
    bool, the true irrelevant region, outlined in every panel; captions: column title -> N strings
    (e.g. the predicted class) shown under the panels.
    """
    images = _numpy(images)
    n = images.shape[0]
    if images.ndim != 4 or n == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) array, got shape {images.shape}")
    for name, m in maps.items():
        if _numpy(m).shape != (n, *images.shape[2:]):
            raise ValueError(f"saliency {name!r} has shape {_numpy(m).shape}, expected {(n, *images.shape[2:])}")
    cols = 1 + len(maps)
    fig = _figure(2.1 * cols, 2.3 * n)
    axes = fig.subplots(n, cols, squeeze=False)
    scale = display_px / images.shape[-1]
    for i in range(n):
        panels = [("image", np.asarray(image_to_pil(images[i], display_px)))]
        panels += [(name, np.asarray(overlay_image(images[i], _numpy(m)[i], display_px=display_px)))
                   for name, m in maps.items()]
        for j, (name, picture) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(picture)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
            if captions and name in captions:
                ax.set_xlabel(captions[name][i], fontsize=8)
            if masks is not None:
                _outline(ax, _numpy(masks)[i], scale)
    fig.tight_layout()
    return _save(fig, path)


def _outline(ax, mask: np.ndarray, scale: float) -> None:
    """A dashed box around the mask's bounding box (the decoy patch is one rectangle)."""
    from matplotlib.patches import Rectangle

    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return
    x0, y0 = cols.min() * scale - 0.5, rows.min() * scale - 0.5
    w, h = (cols.max() + 1 - cols.min()) * scale, (rows.max() + 1 - rows.min()) * scale
    ax.add_patch(Rectangle((x0, y0), w, h, fill=False, edgecolor="cyan", linewidth=1.2, linestyle="--"))


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
