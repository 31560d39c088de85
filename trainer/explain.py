"""One batch of images -> predictions, saliency maps and the most salient cells.

Shape legend: N images, C channels, H x W pixels, K classes, G_h x G_w grid cells.

The ML backend's ``/predict`` and ``hitl bench predict`` both run this, so the benchmark measures what
the backend does.

DeepLIFT with the zero baseline has a fast path here: captum's ``DeepLift`` runs the N images and N copies
of the baseline through the model (forward and backward of 2N rows), after a separate forward for the
prediction. The baseline is the same for every image, so we run it once (one row), and one forward of the
N images with the rescale rule in the backward (the multiplier (f(x) - f(x_0)) / (x - x_0) at every ReLU,
captum's rule at every MaxPool2d) gives both the prediction and the attribution: about 2N rows instead of
5N. Models with other nonlinearities go through captum. ``tests/test_backend.py`` checks it against captum.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from label_config.grid import Grid
from trainer.sampling import eval_mode
from trainer.saliency import _NONLINEAR, attribute, cell_scores, deeplift_ready, top_cells


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
    model: nn.Module, images: torch.Tensor, grid: Grid, *, method: str = "deeplift", top_k: int = 3
) -> Explanation:
    """Predict ``images`` (N, C, H, W) in [0, 1] and explain each prediction, all in one batch.

    The saliency explains the predicted class. Not thread-safe for one model object (captum hooks it).
    """
    if images.ndim != 4 or tuple(images.shape[-2:]) != (grid.height, grid.width):
        raise ValueError(f"images must be (N, C, {grid.height}, {grid.width}), got {tuple(images.shape)}")
    fast = deeplift_zero_baseline(model, images) if method == "deeplift" else None
    if fast is not None:
        logits, saliency = fast
        probs = torch.softmax(logits.float(), dim=1).cpu()
        predicted = probs.argmax(dim=1)
    else:
        device = next(model.parameters()).device
        with eval_mode(model), torch.no_grad():
            probs = torch.softmax(model(images.to(device)).float(), dim=1).cpu()
        predicted = probs.argmax(dim=1)
        saliency = attribute(model, images, predicted, method=method, batch_size=max(1, len(images)))
    scores = cell_scores(saliency, grid)
    top = [top_cells(s, top_k) for s in scores]
    return Explanation(probs, predicted, saliency, scores, top)


_EPS = 1e-10  # captum's DeepLift eps: below it a difference counts as zero and the plain gradient is used


def deeplift_zero_baseline(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(logits (N, K), saliency (N, H, W))``: DeepLIFT (rescale rule, zero baseline) of the predicted
    class, as ``trainer.saliency.attribute(method="deeplift")`` computes it; None when the model has a
    nonlinearity other than ReLU and MaxPool2d (use captum then)."""
    device = next(model.parameters()).device
    x = images.detach().to(device)
    twin = deeplift_ready(model, x[:1])  # one module per call site, sharing the model's tensors
    sites = [m for m in twin.modules() if isinstance(m, _NONLINEAR)]
    if any(type(m) not in (nn.ReLU, nn.MaxPool2d) for m in sites):
        return None
    with eval_mode(twin):
        reference = _reference(twin, sites, torch.zeros_like(x[:1]))
        handles = [m.register_forward_hook(_rescale_hook(reference[m])) for m in sites if m in reference]
        try:
            x = x.clone().requires_grad_(True)
            with torch.enable_grad():
                logits = twin(x)
                chosen = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
                (grad,) = torch.autograd.grad(chosen, x)
        finally:
            for handle in handles:
                handle.remove()
    return logits.detach(), (x.detach() * grad).abs().sum(dim=1).float().cpu()


_REFERENCES: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, dict]]" = weakref.WeakKeyDictionary()


def _reference(twin: nn.Module, sites: list[nn.Module], baseline: torch.Tensor) -> dict:
    """The baseline's activations, cached until a parameter or buffer of the model changes (in-place
    updates such as optimizer steps and load_state_dict bump a tensor's version counter)."""
    tensors = itertools.chain(twin.parameters(), twin.buffers())
    key = (tuple(baseline.shape), baseline.device, tuple((id(t), t._version) for t in tensors))
    cached = _REFERENCES.get(twin)
    if cached is not None and cached[0] == key:
        return cached[1]
    reference = _reference_pass(twin, sites, baseline)
    _REFERENCES[twin] = (key, reference)
    return reference


def _reference_pass(twin: nn.Module, sites: list[nn.Module], baseline: torch.Tensor) -> dict:
    """Each nonlinearity's (input, output) on the baseline, (1, ...) each."""
    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module, inputs, output):
        seen[module] = (inputs[0].detach(), output.detach())

    handles = [m.register_forward_hook(record) for m in sites]
    try:
        with torch.no_grad():
            twin(baseline)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _rescale_hook(reference: tuple[torch.Tensor, torch.Tensor]):
    x_ref, y_ref = reference

    def hook(module, inputs, output):
        x = inputs[0]
        if isinstance(module, nn.MaxPool2d):
            return _MaxPoolRescale.apply(x, x_ref, y_ref, module)
        with torch.no_grad():
            dx = x - x_ref
            multiplier = (output - y_ref).div_(dx)
            multiplier = torch.where(dx.abs_() < _EPS, (x > 0).to(x.dtype), multiplier)
        return _Rescaled.apply(x, output, multiplier)

    return hook


class _Rescaled(torch.autograd.Function):
    """The ReLU's output forward; backward the DeepLIFT multiplier (f(x) - f(x_0)) / (x - x_0) in place of
    the ReLU's derivative (its plain gradient where x - x_0 is below eps, as captum does)."""

    @staticmethod
    def forward(ctx, x, output, multiplier):
        ctx.save_for_backward(multiplier)
        return output.view_as(output)

    @staticmethod
    def backward(ctx, g):
        (multiplier,) = ctx.saved_tensors
        return g * multiplier, None, None


class _MaxPoolRescale(torch.autograd.Function):
    """MaxPool2d forward; backward by captum's DeepLIFT maxpool rule against a (1, C, H, W) reference."""

    @staticmethod
    def forward(ctx, x, x_ref, y_ref, module):
        args = (module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode, True)
        y, idx = F.max_pool2d(x, *args)
        _, idx_ref = F.max_pool2d(x_ref, *args)
        ctx.save_for_backward(x, x_ref, y, y_ref, idx, idx_ref)
        ctx.module = module
        return y

    @staticmethod
    def backward(ctx, g):
        x, x_ref, y, y_ref, idx, idx_ref = ctx.saved_tensors
        m = ctx.module

        def unpool(values, indices):
            return F.max_unpool2d(values, indices, m.kernel_size, m.stride, m.padding, output_size=x.shape[-2:])

        y_max = torch.max(y, y_ref)
        summed = unpool(g * (y_max - y_ref), idx) + unpool(g * (y - y_max), idx_ref.expand_as(idx))
        dx = x - x_ref
        return torch.where(dx.abs() < _EPS, unpool(g, idx), summed / dx), None, None, None
