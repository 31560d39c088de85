"""Saliency maps: captum behind one call, ``attribute(model, images, target) -> (N, H, W)``.

Shape legend: N images, C channels, H x W pixels, G_h x G_w grid cells.

Methods: DeepLIFT (Shrikumar et al. 2017, https://arxiv.org/abs/1704.02685; the paper's choice),
Integrated Gradients (Sundararajan et al. 2017), plain gradients (Simonyan et al. 2013) and Grad-CAM
(Selvaraju et al. 2017). Every map is non-negative: the absolute attribution summed over channels.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import warnings
import weakref

import numpy as np
import torch
from captum.attr import DeepLift, IntegratedGradients, LayerAttribution, LayerGradCam, Saliency
from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR
from torch import nn

from label_config.grid import Grid
from trainer.sampling import eval_mode

METHODS = ("deeplift", "integrated_gradients", "saliency", "gradcam")

# The modules DeepLIFT gives its own rule; each keeps per-call state on itself (captum's private table,
# imported so the two lists cannot drift apart).
_NONLINEAR = tuple(SUPPORTED_NON_LINEAR)


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
) -> torch.Tensor:
    """Saliency of ``target`` for each image: (N, H, W) float32 on CPU, non-negative, detached.

    images: (N, C, H, W), moved to the model's device batch by batch. target: class index, int or (N,).
    baselines: None (zeros), a number, (C, H, W) or (N, C, H, W); used by deeplift and integrated_gradients.
    gradcam_layer: the layer Grad-CAM reads; by default the model's last ``nn.Conv2d``.
    The model runs in eval mode; every submodule gets its previous mode back afterwards. Not thread-safe:
    do not attribute while another thread trains the same model object.
    """
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}: use one of {', '.join(METHODS)}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(
            f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}"
        )
    if batch_size < 1 or ig_steps < 1:
        raise ValueError(f"batch_size and ig_steps must be >= 1, got {batch_size} and {ig_steps}")
    n = images.shape[0]
    targets = _targets(target, n)
    if n == 0:
        return torch.zeros((0, *images.shape[-2:]), dtype=torch.float32)
    device = next(itertools.chain(model.parameters(), model.buffers()), images).device
    maps = []
    # DeepLIFT runs on an eval-mode twin, so the original's mode flags are left alone there.
    mode = contextlib.nullcontext() if method == "deeplift" else eval_mode(model)
    with mode, warnings.catch_warnings():
        # captum announces its DeepLIFT hooks on every call, and warns that inputs get requires_grad.
        warnings.filterwarnings("ignore", message=r"Setting forward, backward hooks", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*required_grads has been set", category=UserWarning)
        explain = _explainer(model, method, images[:1].to(device), gradcam_layer)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = images[start:stop].detach().to(device)
            kwargs = {"target": targets[start:stop].to(device)}
            if method in ("deeplift", "integrated_gradients"):
                kwargs["baselines"] = _baseline_batch(baselines, images.shape, start, stop, device)
            if method == "integrated_gradients":
                kwargs.update(n_steps=ig_steps, internal_batch_size=batch_size)
            maps.append(_to_map(explain(x, kwargs), images.shape[-2:]))
    return torch.cat(maps)


def _explainer(model: nn.Module, method: str, example: torch.Tensor, layer: nn.Module | None):
    """A callable ``(x, kwargs) -> raw attribution`` for one method."""
    if method == "deeplift":
        twin = deeplift_ready(model, example)
        twin.eval()
        engine = DeepLift(twin)
        return lambda x, kw: engine.attribute(x, **kw)
    if method == "integrated_gradients":
        engine = IntegratedGradients(model)
        return lambda x, kw: engine.attribute(x, **kw)
    if method == "saliency":
        engine = Saliency(model)
        return lambda x, kw: engine.attribute(x, abs=True, **kw)
    layer = layer if layer is not None else last_conv(model)
    engine = LayerGradCam(model, layer)
    return lambda x, kw: LayerAttribution.interpolate(
        engine.attribute(x, relu_attributions=True, **kw), tuple(x.shape[-2:]), interpolate_mode="bilinear"
    )


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


# --- DeepLIFT on models that reuse an activation module ---------------------------------------------
# captum's DeepLift stores each nonlinearity's input and output on the module itself, so a module called
# twice per forward (torchvision's BasicBlock/Bottleneck call self.relu two or three times) breaks it, and
# in-place activations hide the input it needs. We attribute through a twin of the model whose every call
# site has its own non-inplace module. The twin shares the original's parameters and buffers (same tensor
# objects), so training the original updates the twin for free; it is rebuilt only when the original's
# structure or tensors are swapped (e.g. a new head, or .to(device) replacing buffers).

_TWINS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], nn.Module]]" = (
    weakref.WeakKeyDictionary()
)


class _CallSites(nn.Module):
    """Stands in for a reused activation: the k-th call of a forward goes to its own copy ``sites[k]``."""

    def __init__(self, sites: list[nn.Module]) -> None:
        super().__init__()
        self.sites = nn.ModuleList(sites)
        self.calls = 0

    def forward(self, *args, **kwargs):
        site = self.sites[self.calls % len(self.sites)]
        self.calls += 1
        return site(*args, **kwargs)


def deeplift_ready(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The cached DeepLIFT twin of ``model`` (built on first use with one forward of ``example`` (1, C, H, W))."""
    signature = tuple(id(x) for x in itertools.chain(model.modules(), model.parameters(), model.buffers()))
    cached = _TWINS.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    twin = copy.deepcopy(model, memo=shared)  # new modules around the very same tensors
    sites = _one_module_per_call(twin, _count_calls(twin, example))
    if sites:
        twin.register_forward_pre_hook(_rewind(sites))
    _TWINS[model] = (signature, twin)
    return twin


def _one_module_per_call(twin: nn.Module, calls: dict[nn.Module, int]) -> list[_CallSites]:
    """Swap, in place, each reused or in-place nonlinearity of ``twin`` for fresh non-inplace copies."""
    paths: dict[nn.Module, list[str]] = {}
    for name, module in twin.named_modules(remove_duplicate=False):
        if isinstance(module, _NONLINEAR):
            paths.setdefault(module, []).append(name)
    sites = []
    for module, names in paths.items():
        count = calls.get(module, 0)
        if count > 1:
            replacement: nn.Module = _CallSites([_separate(module) for _ in range(count)])
            sites.append(replacement)
        elif getattr(module, "inplace", False):
            replacement = _separate(module)
        else:
            continue
        for name in names:  # a module registered under several names is replaced under each
            parent, _, leaf = name.rpartition(".")
            setattr(twin.get_submodule(parent), leaf, replacement)
    return sites


def _rewind(sites: list[_CallSites]):
    """A root pre-hook: every forward starts from the first call site again."""

    def hook(module, args) -> None:
        for site in sites:
            site.calls = 0

    return hook


def _separate(module: nn.Module) -> nn.Module:
    """A fresh, non-inplace copy of a parameter-free activation or pooling module."""
    fresh = copy.deepcopy(module)
    if hasattr(fresh, "inplace"):
        fresh.inplace = False
    return fresh


def _count_calls(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, int]:
    counts: dict[nn.Module, int] = {}

    def count(module, *_):
        counts[module] = counts.get(module, 0) + 1

    handles = [m.register_forward_pre_hook(count) for m in model.modules() if isinstance(m, _NONLINEAR)]
    try:
        with eval_mode(model), torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return counts


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
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
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
