"""DeepLIFT (Shrikumar et al. 2017, https://arxiv.org/abs/1704.02685; the paper's choice), in one place.

Shape legend: N images, C channels, H x W pixels, K classes.

captum's ``DeepLift`` stores each nonlinearity's input and output on the module itself, so a module called
twice per forward (torchvision's BasicBlock/Bottleneck call self.relu two or three times) breaks it, and
in-place activations hide the input it needs. ``DeepLiftTwin`` is a twin of the model whose every call site has
its own non-inplace module. It shares the original's parameters and buffers (same tensor objects), so training
the original updates the twin for free. Whoever attributes many times with one model (the ML backend) keeps one
twin; nothing is cached at module level.

Two ways through the twin, the same rule: ``attribute`` runs captum's DeepLift (any baseline, any target);
``zero_baseline`` is the fast path for the zero baseline and the predicted class. captum runs the N images and N
copies of the baseline through the model (forward and backward of 2N rows) after a separate forward for the
prediction; the baseline is the same for every image, so the fast path runs it once (one row, cached until a
parameter changes), and one forward of the N images with the rescale rule in the backward (the multiplier
(f(x) - f(x_0)) / (x - x_0) at every ReLU, captum's rule at every MaxPool2d) gives both the prediction and the
attribution: about 2N rows instead of 5N. ``tests/explain/test_deeplift.py`` checks one against the other.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from captum.attr import DeepLift
from torch import nn

from trainer.core.models import eval_mode

# The modules DeepLIFT gives its own rule; each keeps per-call state on itself. captum's own table
# (captum.attr._core.deep_lift.SUPPORTED_NON_LINEAR) is private, so we name them: a module missing here is
# only left shared in the twin, where captum then refuses a reused one with a clear error
# (tests/explain/test_deeplift.py checks the two lists agree).
NONLINEAR: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softmax, nn.MaxPool1d, nn.MaxPool2d,
    nn.MaxPool3d,
)  # fmt: skip
_FAST = (nn.ReLU, nn.MaxPool2d)  # the nonlinearities the fast path has a rule for
_EPS = 1e-10  # captum's DeepLift eps: below it a difference counts as zero and the plain gradient is used


class DeepLiftTwin:
    """DeepLIFT for one model: the twin (built with one forward of ``example`` (1, C, H, W)) and the fast path's
    cached baseline pass. ``stale()`` says when the model's structure or tensors were swapped (a new head,
    ``.to(device)`` replacing buffers): build a new twin then."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        self.model = model
        self._signature = _signature(model)
        shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
        self.module = copy.deepcopy(model, memo=shared)  # new modules around the very same tensors
        sites = _one_module_per_call(self.module, _count_calls(self.module, example))
        if sites:
            self.module.register_forward_pre_hook(_rewind(sites))
        self.module.eval()
        self._sites = [m for m in self.module.modules() if isinstance(m, NONLINEAR)]
        self._reference: tuple[tuple, dict] | None = None

    def stale(self) -> bool:
        return _signature(self.model) != self._signature

    def attribute(self, images: torch.Tensor, target: torch.Tensor, baselines=None) -> torch.Tensor:
        """captum's DeepLift through the twin: signed attributions (N, C, H, W)."""
        return DeepLift(self.module).attribute(images, target=target, baselines=baselines)

    @property
    def fast(self) -> bool:
        """Whether ``zero_baseline`` has a rule for every nonlinearity of the model."""
        return all(type(m) in _FAST for m in self._sites)

    def zero_baseline(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(logits (N, K), saliency (N, H, W))``: DeepLIFT (rescale rule, zero baseline) of the predicted
        class, as ``attribute(..., method="deeplift")`` computes it; None when the model has a nonlinearity
        other than ReLU and MaxPool2d (use captum then)."""
        if not self.fast:
            return None
        device = next(self.module.parameters()).device
        x = images.detach().to(device)
        with eval_mode(self.module):
            reference = self._reference_for(torch.zeros_like(x[:1]))
            handles = [m.register_forward_hook(_rescale_hook(reference[m])) for m in self._sites if m in reference]
            try:
                x = x.clone().requires_grad_(True)
                with torch.enable_grad():
                    logits = self.module(x)
                    chosen = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
                    (grad,) = torch.autograd.grad(chosen, x)
            finally:
                for handle in handles:
                    handle.remove()
        return logits.detach(), (x.detach() * grad).abs().sum(dim=1).float().cpu()

    def _reference_for(self, baseline: torch.Tensor) -> dict:
        """The baseline's activations, kept until a parameter or buffer of the model changes (in-place
        updates such as optimizer steps and load_state_dict bump a tensor's version counter)."""
        tensors = itertools.chain(self.module.parameters(), self.module.buffers())
        key = (tuple(baseline.shape), baseline.device, tuple((id(t), t._version) for t in tensors))
        if self._reference is None or self._reference[0] != key:
            self._reference = (key, _reference_pass(self.module, self._sites, baseline))
        return self._reference[1]


def _signature(model: nn.Module) -> tuple[int, ...]:
    return tuple(id(x) for x in itertools.chain(model.modules(), model.parameters(), model.buffers()))


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


def _one_module_per_call(twin: nn.Module, calls: dict[nn.Module, int]) -> list[_CallSites]:
    """Swap, in place, each reused or in-place nonlinearity of ``twin`` for fresh non-inplace copies."""
    paths: dict[nn.Module, list[str]] = {}
    for name, module in twin.named_modules(remove_duplicate=False):
        if isinstance(module, NONLINEAR):
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

    handles = [m.register_forward_pre_hook(count) for m in model.modules() if isinstance(m, NONLINEAR)]
    try:
        with eval_mode(model), torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return counts


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
