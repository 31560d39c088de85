"""One batch of images -> predictions, saliency maps and the most salient cells.

Shape legend: N images, C channels, H x W pixels, K classes, G_h x G_w grid cells.

The ML backend's ``/predict`` and ``hitl bench predict`` both run this, so the benchmark measures what the
backend does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from label_config.grid import Grid
from trainer.core.models import eval_mode
from trainer.explain.attribute import attribute, cell_scores, top_cells
from trainer.explain.deeplift import DeepLiftTwin


@dataclass(frozen=True)
class Explanation:
    """probs: (N, K); predicted: (N,) class indices; saliency: (N, H, W); scores: (N, G_h, G_w) mean
    saliency per cell; top: for each image its ``top_k`` cells ``(row, col)``, most salient first."""

    probs: torch.Tensor
    predicted: torch.Tensor
    saliency: torch.Tensor
    scores: np.ndarray
    top: list[list[tuple[int, int]]]


def explain_batch(
    model: nn.Module,
    images: torch.Tensor,
    grid: Grid,
    *,
    method: str = "deeplift",
    top_k: int = 3,
    twin: DeepLiftTwin | None = None,
) -> Explanation:
    """Predict ``images`` (N, C, H, W) in [0, 1] and explain each prediction, all in one batch.

    The saliency explains the predicted class. DeepLIFT takes the fast zero-baseline path when the model allows
    it; ``twin`` is a ``DeepLiftTwin`` of ``model`` to reuse (a caller that explains many batches keeps one),
    else one is built. Not thread-safe for one model object (captum hooks it).
    """
    if images.ndim != 4 or tuple(images.shape[-2:]) != (grid.height, grid.width):
        raise ValueError(f"images must be (N, C, {grid.height}, {grid.width}), got {tuple(images.shape)}")
    fast = None
    if method == "deeplift":
        twin = twin if twin is not None and not twin.stale() else DeepLiftTwin(model, images[:1].to(_device(model)))
        fast = twin.zero_baseline(images)
    if fast is not None:
        logits, saliency = fast
        probs = torch.softmax(logits.float(), dim=1).cpu()
        predicted = probs.argmax(dim=1)
    else:
        with eval_mode(model), torch.no_grad():
            probs = torch.softmax(model(images.to(_device(model))).float(), dim=1).cpu()
        predicted = probs.argmax(dim=1)
        saliency = attribute(model, images, predicted, method=method, batch_size=max(1, len(images)))
    scores = cell_scores(saliency, grid)
    top = [top_cells(s, top_k) for s in scores]
    return Explanation(probs, predicted, saliency, scores, top)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
