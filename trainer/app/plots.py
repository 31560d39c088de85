"""Plots of a run's results, written as PNG files with matplotlib's Agg backend (no display needed).

Shape legend: N images, C channels, H x W pixels.

Pure in, file out: each function takes numbers or arrays and writes one picture (to a path, or to a binary
stream such as ``io.BytesIO`` for a report's data URI); nothing is trained or loaded here.
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


def plot_accuracy(
    curves: dict[str, list[float]],
    path: str | Path,
    *,
    title: str = "Accuracy on the decoy test set",
    first_feedback_round: int | None = 1,
) -> Path:
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


def plot_epochs(rounds: list[dict], path, *, title: str = "Test accuracy and loss per epoch"):
    """Accuracy and loss on the test set per epoch, with the rounds that trained with feedback shaded and a
    line at each round's start; a second panel with the irrelevant share per round when any is known.

    rounds: one dict per round, oldest first: ``round``, ``annotated`` (images with a mask W),
    ``val_acc`` and ``val_loss`` (one value per epoch, None where not evaluated), ``irrelevant_share`` or None.
    """
    if not rounds:
        raise ValueError("no rounds to plot: the run has no history yet (train round 0 first)")
    shares = [(r["round"], r["irrelevant_share"]) for r in rounds if r.get("irrelevant_share") is not None]
    fig = _figure(9 if shares else 7, 3.6)
    ax = fig.add_subplot(1, 2, 1) if shares else fig.add_subplot()
    loss_ax = ax.twinx()
    start, xs, accs, losses = 0, [], [], []
    for r in rounds:
        n = len(r["val_acc"])
        if r["annotated"]:
            ax.axvspan(start + 0.5, start + n + 0.5, color="tab:green", alpha=0.08, linewidth=0)
        ax.axvline(start + 0.5, color="grey", linestyle=":", linewidth=0.8)
        ax.text(
            start + 0.6,
            1.0,
            f"r{r['round']}" + (f" ({r['annotated']})" if r["annotated"] else ""),
            transform=ax.get_xaxis_transform(),
            fontsize=7,
            va="bottom",
        )
        xs += list(range(start + 1, start + n + 1))
        accs += [np.nan if a is None else 100 * a for a in r["val_acc"]]
        losses += [np.nan if v is None else v for v in r["val_loss"]]
        start += n
    ax.plot(xs, accs, marker="o", markersize=3, color="tab:blue", label="accuracy (%)")
    loss_ax.plot(xs, losses, marker="s", markersize=3, color="tab:orange", label="loss")
    ax.set_xlabel("epoch (shaded: rounds trained with feedback, images with a mask in brackets)", fontsize=8)
    ax.set_ylabel("accuracy (%)", color="tab:blue")
    loss_ax.set_ylabel("cross-entropy", color="tab:orange")
    ax.set_title(title, fontsize=10, pad=14)
    ax.grid(alpha=0.3)
    if shares:
        share_ax = fig.add_subplot(1, 2, 2)
        share_ax.plot([r for r, _ in shares], [v for _, v in shares], marker="o", color="tab:red")
        share_ax.set_xlabel("round")
        share_ax.set_ylabel("share of saliency in the true mask")
        share_ax.set_title("Irrelevant share per round", fontsize=10, pad=14)
        share_ax.set_ylim(bottom=0)
        share_ax.grid(alpha=0.3)
        share_ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return _save(fig, path)


def plot_compare(
    names: list[str],
    scores: dict[str, list[float]],
    min_losses: list[float | None],
    path,
    *,
    title: str = "Runs side by side",
):
    """Grouped bars: each score in ``scores`` (name -> one value in [0, 1] per run) for every run, and the
    runs' minimum test loss beside them (None: not known)."""
    if not names or any(len(v) != len(names) for v in scores.values()) or len(min_losses) != len(names):
        raise ValueError(f"every score needs one value per run ({len(names)} runs)")
    fig = _figure(4 + 1.2 * len(names), 3.6)
    ax, loss_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(names)
    centres = np.arange(len(scores))
    for i, name in enumerate(names):
        values = [100 * scores[k][i] for k in scores]
        bars = ax.bar(centres + (i - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(centres, list(scores))
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    loss_ax.bar(
        range(len(names)), [np.nan if v is None else v for v in min_losses], color=[f"C{i}" for i in range(len(names))]
    )
    loss_ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    loss_ax.set_title("min test loss", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_saliency_examples(
    images,
    maps: dict[str, np.ndarray],
    path: str | Path,
    *,
    masks=None,
    captions: dict[str, list[str]] | None = None,
    display_px: int = 112,
) -> Path:
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
        panels += [
            (name, np.asarray(overlay_image(images[i], _numpy(m)[i], display_px=display_px)))
            for name, m in maps.items()
        ]
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


def _save(fig, path):
    """Write the figure as PNG to ``path`` (a file path, made with its folders) or a binary stream."""
    if hasattr(path, "write"):
        fig.savefig(path, format="png")
        return path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
