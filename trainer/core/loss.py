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
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    if masks.ndim == 3:
        masks = masks[:, None]
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks of shape {tuple(masks.shape)} do not fit images of shape {tuple(images.shape)}")
    x = images.detach().requires_grad_(True)
    with frozen_batchnorm(model):
        log_probs = F.log_softmax(model(x), dim=1)  # (N, K)
    (grads,) = torch.autograd.grad(log_probs.sum(), x, create_graph=True)  # (N, C, H, W)
    return (masks.to(grads.dtype) * grads.square()).flatten(1).sum(1)


@contextlib.contextmanager
def frozen_batchnorm(model: nn.Module) -> Iterator[None]:
    """Batch norm in eval mode for the penalty pass.

    The penalty pass sees only the few annotated rows: their batch statistics would be noise (or an error for
    one row), would couple the rows' input gradients, and would pollute the running statistics.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in bns:
        m.eval()
    try:
        yield
    finally:
        for m in bns:
            m.train()


def auto_lambda(ce: torch.Tensor, penalty: torch.Tensor, *, scale: float = 1.0, eps: float = 1e-12) -> float:
    """Lambda that makes ``lambda * penalty == scale * CE`` for the given (first) step's values."""
    return float(scale * ce.detach() / penalty.detach().clamp_min(eps))
