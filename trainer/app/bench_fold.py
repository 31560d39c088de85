"""``hitl bench fold``: can the penalty's parameter gradient be folded into the CE pass by finite differences?

Shape legend: N rows, C channels, H x W pixels, P parameters.

The penalty's parameter gradient is a directional derivative. With g(x) = d sum_k log p_k / dx (the input
gradient the penalty squares) and u = 2 W * g(x) held fixed,

    d/dtheta sum W * g(x)^2  =  d/dtheta <g(x), u>  =  d/dtheta  lim_{eps -> 0} [S(x + eps u) - S(x - eps u)] / 2 eps

where S = sum_k log p_k. So two extra rows x +- eps u in the CE pass (or one, x + eps u, beside the row itself:
one-sided) would give it without a double backward, after one input-gradient pass for u. This benchmark
measures, on one batch of a built-in dataset with its true masks as W, the cosine between that
finite-difference gradient and the exact double backpropagation of ``trainer.core.loss.rrr_penalty``, for
several eps (relative: eps * |u| = eps_rel * |x| on average). ``--smooth`` swaps every ReLU for a GELU and every
max pool for an average pool first: the same measurement on a network whose input gradient is smooth.

What it shows (docs/speed.md): on ReLU networks the fold is biased at every eps, because a row's parameter
gradient jumps wherever a ReLU or a max pool switches, and the difference quotient divides each jump by eps
while the number of switches within eps of x shrinks only in proportion to eps. Exact double backpropagation
takes the ReLU's second derivative as zero, as training does. Only the smooth network reaches cosine 0.99.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

from trainer.core.loop import REPLAY_CE_ROWS
from trainer.core.loss import penalty_and_logits, penalty_batchnorm
from trainer.core.models import build_model
from trainer.data.registry import load_dataset

EPS_REL = (0.1, 0.03, 0.01, 0.003, 0.001, 0.0001)


def smooth_activations(model: nn.Module) -> nn.Module:
    """Swap every ``nn.ReLU`` for ``nn.GELU`` and every ``nn.MaxPool2d`` for an ``nn.AvgPool2d`` of the same
    window, in place; returns ``model``."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.ReLU):
            setattr(model, name, nn.GELU())
        elif isinstance(child, nn.MaxPool2d):
            setattr(model, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
        else:
            smooth_activations(child)
    return model


def fold_cosines(model: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                 eps_rel: tuple[float, ...] = EPS_REL) -> list[dict]:  # fmt: skip
    """Cosine of the finite-difference parameter gradient with the exact one, per relative eps.

    images: (N, C, H, W); masks: (N, H, W). Every pass runs as the penalty pass does (``penalty_batchnorm``: the
    rows' own batch statistics). Returns ``[{"eps_rel", "two_sided", "one_sided", "norm_ratio"}]``, where
    ``norm_ratio`` is |two-sided| / |exact|.
    """
    if masks.ndim != 3 or masks.shape[0] != images.shape[0] or masks.shape[1:] != images.shape[2:]:
        raise ValueError(f"masks must be (N, H, W) for images {tuple(images.shape)}, got {tuple(masks.shape)}")
    params = [p for p in model.parameters() if p.requires_grad]

    def flat(grads) -> torch.Tensor:  # (P,)
        return torch.cat([g.reshape(-1) for g in grads])

    def s(x: torch.Tensor) -> torch.Tensor:
        with penalty_batchnorm(model):
            return F.log_softmax(model(x), dim=1).sum()

    exact = flat(torch.autograd.grad(penalty_and_logits(model, images, masks)[0].sum(), params))
    x = images.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(s(x), x)
    u = 2 * masks[:, None].to(g.dtype) * g  # (N, C, H, W), held fixed
    scale = float(images.flatten(1).norm(dim=1).mean() / u.flatten(1).norm(dim=1).mean().clamp_min(1e-30))
    rows = []
    for rel in eps_rel:
        eps = rel * scale
        plus, minus, here = s(images + eps * u), s(images - eps * u), s(images)
        two = flat(torch.autograd.grad((plus - minus) / (2 * eps), params, retain_graph=True))
        one = flat(torch.autograd.grad((plus - here) / eps, params))
        rows.append({
            "eps_rel": rel,
            "two_sided": round(float(F.cosine_similarity(two.double(), exact.double(), dim=0)), 5),
            "one_sided": round(float(F.cosine_similarity(one.double(), exact.double(), dim=0)), 5),
            "norm_ratio": round(float(two.norm() / exact.norm()), 4),
        })  # fmt: skip
    return rows


def bench_fold(*, model: str = "small-cnn", dataset: str | None = None, size: int | None = None,
               rows: int | None = None, smooth: bool = False, steps: int = 20, seed: int = 0,
               eps_rel: tuple[float, ...] = EPS_REL) -> dict:  # fmt: skip
    """Train ``model`` for ``steps`` CE steps of 64 images (so it is not at its initialisation), then
    ``fold_cosines`` on ``rows`` other training images with their true masks."""
    dataset = dataset or ("decoy-mnist" if model == "small-cnn" else "decoy-mnist-rgb")
    torch.manual_seed(seed)
    train, _ = load_dataset(dataset, size=size, seed=seed)
    if train.decoy_masks is None:
        raise ValueError(f"{dataset} has no true masks: choose a confounded built-in dataset")
    c, h, _ = train.image_shape
    net = build_model(model, len(train.classes), c, h)
    rows = REPLAY_CE_ROWS if rows is None else rows  # a test batch of 16, whatever the model's replay plan
    if smooth:
        smooth_activations(net)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    order = torch.randperm(len(train))
    for i in range(steps):
        ids = order[(i * 64) % (len(train) - 64) :][:64]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(train.images[ids]), train.labels[ids]).backward()
        opt.step()
    ids = order[-rows:]
    table = fold_cosines(net, train.images[ids], train.decoy_masks[ids].float(), eps_rel)
    return {
        "model": model, "dataset": dataset, "size": h, "rows": rows, "smooth": smooth, "steps": steps,
        "seed": seed, "cosines": table, "best_two_sided": max(r["two_sided"] for r in table),
        "best_one_sided": max(r["one_sided"] for r in table),
    }  # fmt: skip


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("fold", help="cosine of a finite-difference penalty gradient with the exact one")
    p.add_argument("--model", default="small-cnn")
    p.add_argument("--dataset", default=None, help="default: decoy-mnist (small-cnn) or decoy-mnist-rgb")
    p.add_argument("--size", type=int, default=None, help="image size (default: the dataset's)")
    p.add_argument("--rows", type=int, default=None, help=f"penalised rows (default {REPLAY_CE_ROWS})")
    p.add_argument("--smooth", action="store_true", help="GELU for ReLU, average for max pooling")
    p.add_argument("--steps", type=int, default=20, help="CE steps before measuring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    r = bench_fold(model=args.model, dataset=args.dataset, size=args.size, rows=args.rows, smooth=args.smooth,
                   steps=args.steps, seed=args.seed)  # fmt: skip
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['model']}{' (smooth)' if r['smooth'] else ''} on {r['dataset']} at {r['size']} px, {r['rows']} rows: "
          "cosine of the finite-difference penalty gradient with exact double backpropagation")  # fmt: skip
    for row in r["cosines"]:
        print(f"  eps {row['eps_rel']:<7g} two-sided {row['two_sided']:.5f} (norm x{row['norm_ratio']}), "
              f"one-sided {row['one_sided']:.5f}")  # fmt: skip
    return 0
