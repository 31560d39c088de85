"""Saliency maps: captum behind one call, ``attribute(model, images, target) -> (N, H, W)``.

Shape legend: N images, C channels, H x W pixels, G_h x G_w grid cells.

Methods: DeepLIFT (Shrikumar et al. 2017, https://arxiv.org/abs/1704.02685; the paper's choice),
Integrated Gradients (Sundararajan et al. 2017), plain gradients (Simonyan et al. 2013) and Grad-CAM
(Selvaraju et al. 2017). Every map is non-negative: the absolute attribution summed over channels.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency
from torch import nn

from label_config.grid import Grid
from trainer.core.checks import check_choice, check_int
from trainer.core.models import eval_mode
from trainer.explain.deeplift import DeepLiftTwin


def attribute(
    model: nn.Module,
    images: torch.Tensor,
    target,
    *,
    method: str = "deeplift",
    baselines=None,
    ig_steps: int = 32,
    batch_size: int = 16,
    gradcam_layer: nn.Module | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Saliency of ``target`` for each image: (N, H, W) float32 on CPU, non-negative, detached.

    images: (N, C, H, W), moved to the model's device batch by batch. target: class index, int or (N,).
    baselines: None (zeros), a number, (C, H, W) or (N, C, H, W); used by deeplift and integrated_gradients.
    gradcam_layer: the layer Grad-CAM reads; by default the model's last ``nn.Conv2d``.
    progress: called with the number of images of each batch once it is explained (for a progress bar).
    The model runs in eval mode; every submodule gets its previous mode back afterwards. Not thread-safe:
    do not attribute while another thread trains the same model object.
    """
    make_explainer = METHODS[check_choice(method, "saliency method", METHODS)]
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    check_int(batch_size, "batch_size", minimum=1)
    check_int(ig_steps, "ig_steps", minimum=1)
    n = images.shape[0]
    targets = _targets(target, n)
    if n == 0:
        return torch.zeros((0, *images.shape[-2:]), dtype=torch.float32)
    device = next(itertools.chain(model.parameters(), model.buffers()), images).device
    maps = []
    with eval_mode(model), warnings.catch_warnings():
        # captum announces its DeepLIFT hooks on every call, and warns that inputs get requires_grad.
        warnings.filterwarnings("ignore", message=r"Setting forward, backward hooks", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*required_grads has been set", category=UserWarning)
        explain = make_explainer(model, images[:1].to(device), gradcam_layer)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = images[start:stop].detach().to(device)
            kwargs = {"target": targets[start:stop].to(device)}
            if method in ("deeplift", "integrated_gradients"):
                kwargs["baselines"] = _baseline_batch(baselines, images.shape, start, stop, device)
            if method == "integrated_gradients":
                kwargs.update(n_steps=ig_steps, internal_batch_size=batch_size)
            maps.append(_to_map(explain(x, kwargs), images.shape[-2:]))
            if progress is not None:
                progress(stop - start)
    return torch.cat(maps)


# A method maps (model, example (1, C, H, W), Grad-CAM layer) to a callable ``(x, kwargs) -> raw attribution``.
# The dict is the registry: it names the methods, validates them (``check_choice``) and dispatches.
Explainer = Callable[[torch.Tensor, dict], torch.Tensor]


def _deeplift(model: nn.Module, example: torch.Tensor, layer) -> Explainer:
    twin = DeepLiftTwin(model, example)  # one module per call site, sharing the model's tensors
    return lambda x, kw: twin.attribute(x, kw["target"], kw.get("baselines"))


def _integrated_gradients(model: nn.Module, example: torch.Tensor, layer) -> Explainer:
    engine = IntegratedGradients(model)
    return lambda x, kw: engine.attribute(x, **kw)


def _saliency(model: nn.Module, example: torch.Tensor, layer) -> Explainer:
    engine = Saliency(model)
    return lambda x, kw: engine.attribute(x, abs=True, **kw)


def _gradcam(model: nn.Module, example: torch.Tensor, layer) -> Explainer:
    engine = LayerGradCam(model, layer if layer is not None else last_conv(model))
    return lambda x, kw: LayerAttribution.interpolate(
        engine.attribute(x, relu_attributions=True, **kw), tuple(x.shape[-2:]), interpolate_mode="bilinear"
    )


METHODS: dict[str, Callable[..., Explainer]] = {
    "deeplift": _deeplift,
    "integrated_gradients": _integrated_gradients,
    "saliency": _saliency,
    "gradcam": _gradcam,
}


def _to_map(raw: torch.Tensor, size) -> torch.Tensor:
    """(n, C', H, W) attribution -> (n, H, W) float32 CPU: absolute value summed over channels."""
    if raw.shape[-2:] != tuple(size):
        raise RuntimeError(f"attribution has spatial shape {tuple(raw.shape[-2:])}, expected {tuple(size)}")
    return raw.detach().abs().sum(dim=1).float().cpu()


def _targets(target, n: int) -> torch.Tensor:
    t = torch.as_tensor(target).long().reshape(-1)
    if t.numel() == 1:
        return t.expand(n)
    if t.numel() != n:
        raise ValueError(f"target must be one class or one per image ({n}), got {t.numel()} entries")
    return t


def _baseline_batch(baselines, shape, start: int, stop: int, device):
    if baselines is None or isinstance(baselines, (int, float)):
        return baselines
    b = torch.as_tensor(baselines)
    if b.shape == shape:
        return b[start:stop].to(device)
    if b.shape == shape[1:]:
        return b.to(device).unsqueeze(0).expand(stop - start, *shape[1:])
    raise ValueError(f"baselines of shape {tuple(b.shape)} fit neither {tuple(shape)} nor {tuple(shape[1:])}")


def last_conv(model: nn.Module) -> nn.Module:
    """The last ``nn.Conv2d`` in registration order (torchvision ResNets: layer4's last conv)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d for Grad-CAM: pass gradcam_layer")
    return convs[-1]


# --- From pixels to cells ------------------------------------------------------------------------------


def cell_scores(saliency, grid: Grid) -> np.ndarray:
    """Mean saliency per cell. saliency: (N, H, W). Returns (N, G_h, G_w) float64."""
    values = saliency.detach().cpu().numpy() if isinstance(saliency, torch.Tensor) else np.asarray(saliency)
    if values.ndim != 3:
        raise ValueError(f"saliency must be (N, H, W), got shape {values.shape}")
    return grid.pool(values)


def top_cells(scores, k: int) -> list[tuple[int, int]]:
    """The ``k`` most salient cells ``(row, col)``, highest first; ties go to the earlier cell in row-major
    order. scores: (G_h, G_w). ``k`` larger than the grid returns every cell."""
    s = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be (G_h, G_w), got shape {s.shape}")
    check_int(k, "k")
    flat = s.reshape(-1)
    order = np.lexsort((np.arange(flat.size), -flat))[:k]
    return [(int(i) // s.shape[1], int(i) % s.shape[1]) for i in order]


def irrelevant_share(saliency, masks) -> torch.Tensor:
    """Share of each map's saliency mass that falls inside its mask (the irrelevant region).

    saliency: (N, H, W) non-negative; masks: (N, H, W) bool. Returns (N,) float32 in [0, 1], 0 for an
    all-zero map.
    """
    s = torch.as_tensor(saliency).detach().double().cpu()
    m = torch.as_tensor(masks).cpu().bool()
    if s.ndim != 3 or s.shape != m.shape:
        raise ValueError(f"saliency {tuple(s.shape)} and masks {tuple(m.shape)} must both be (N, H, W)")
    total = s.sum(dim=(1, 2))
    inside = (s * m).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.zeros_like(total)).float()
