"""The feedback penalty: "right for the right reasons" (Ross, Hughes & Doshi-Velez, IJCAI 2017,
https://arxiv.org/abs/1703.03717), as used for human feedback by Serrano e Silva et al. (IbPRIA 2023).

Shape legend: N images, C channels, H x W pixels, K classes.

    loss = CE + lambda * sum_{i, c, h, w} W[i, h, w] * (d sum_k log p_k(x_i) / d x_i[c, h, w])^2

The input gradient is taken with ``create_graph=True``, so the penalty has a gradient with respect to the
parameters (double backpropagation). The paper's published code called ``torch.autograd.grad`` without it,
so its penalty never reached the weights; ``tests/core/test_loss.py`` proves ours does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def rrr_penalty(model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-row penalty sum W * (d sum_k log p_k / dx)^2, differentiable w.r.t. the parameters.

    images: (N, C, H, W); masks: (N, H, W) (broadcast over channels) or (N, C, H, W). Returns (N,).
    Call it on the annotated rows only: rows with an all-zero mask contribute exactly zero anyway.
    """
    return penalty_and_logits(model, images, masks)[0]


def penalty_and_logits(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rrr_penalty`` (N,) and the logits (N, K) of the same forward pass, so a loss can take the rows' CE
    from it instead of a second forward (``trainer.core.loop.train_round`` does: the replayed rows)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    if masks.ndim == 3:
        masks = masks[:, None]
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks of shape {tuple(masks.shape)} do not fit images of shape {tuple(images.shape)}")
    x = images.detach().requires_grad_(True)
    with penalty_batchnorm(model):
        logits = model(x)
    log_probs = F.log_softmax(logits, dim=1)  # (N, K)
    (grads,) = torch.autograd.grad(log_probs.sum(), x, create_graph=True)  # (N, C, H, W)
    return (masks.to(grads.dtype) * grads.square()).flatten(1).sum(1), logits


@contextlib.contextmanager
def penalty_batchnorm(model: nn.Module) -> Iterator[None]:
    """Batch norm for the penalty pass: the penalised rows' own batch statistics (as the CE pass uses its
    batch's), with the running statistics left untouched (momentum 0 for the pass).

    Why not eval mode: the penalty would be taken on another function than the one CE trains, along
    directions (a per-channel shift or scale) CE cannot see, and the served eval-mode model collapses (toy ResNet,
    four rounds: 0.59 -> 0.11 in eval mode, 0.59 -> 0.82 with batch statistics; docs/design.md). A layer that
    would see one value per channel (a BatchNorm1d on one row) falls back to its running statistics.
    """
    bns = batchnorms(model)
    saved = [(m, m.training, m.momentum) for m in bns]
    handles = []
    for m in bns:
        m.train()
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
        handles.append(m.register_forward_pre_hook(_single_value_falls_back))
        handles.append(m.register_forward_hook(_restore_train))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m, training, momentum in saved:
            m.train(training)
            m.momentum = momentum


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of ``model`` (a row's output depends on the other rows through them)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(batchnorms(model))


def _single_value_falls_back(module: nn.Module, args) -> None:
    x = args[0]
    if x.numel() // max(1, x.shape[1]) <= 1:
        module.training = False


def _restore_train(module: nn.Module, args, output) -> None:
    module.training = True


def auto_lambda(ce: torch.Tensor, penalty: torch.Tensor, *, scale: float = 1.0, eps: float = 1e-12) -> float:
    """Lambda that makes ``lambda * penalty == scale * CE`` for the given (first) step's values."""
    return float(scale * ce.detach() / penalty.detach().clamp_min(eps))
