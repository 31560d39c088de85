"""``hitl bench step``: the cost of a training step with the feedback penalty, as a ratio to a plain CE step.

Both are timed in one process on the same model and batch. By default the step is the training default's
penalised step: the model's replay rows (``TrainConfig.for_model``) join the batch (CE over batch + rows, the
rows' from the penalty pass's forward as in ``train_round`` when the model has no batch norm) and each is
penalised; ``mean_ratio`` spreads it over the plan's ``penalty_every`` steps, the others plain CE steps. With
``annotated`` a share of the batch's own rows carries a mask instead (nothing joins the batch).
"""

from __future__ import annotations

import json
import statistics
import time

import torch
import torch.nn.functional as F

from trainer.core.loop import TrainConfig
from trainer.core.loss import has_batchnorm, penalty_and_logits
from trainer.core.models import autocast, build_model


def bench_step(*, model: str = "resnet18", batch: int = 64, size: int = 112, annotated: float | None = None,
               rows: int | None = None, steps: int = 10, warmup: int = 2, device: str = "cpu", classes: int = 10,
               lam: float = 1.0, precision: str = "fp32") -> dict:  # fmt: skip
    """Median step times (ms) of CE alone and CE + penalty; ratio = reg_ms / ce_ms."""
    torch.manual_seed(0)
    dev = torch.device(device)
    channels = 1 if model == "small-cnn" else 3
    net = build_model(model, classes, channels, size).to(dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    joined = annotated is None
    plan = TrainConfig().for_model(net)
    m = (plan.replay if rows is None else rows) if joined else max(1, round(annotated * batch))
    every = plan.penalty_every if joined else 1
    x = torch.rand(batch + (m if joined else 0), channels, size, size, device=dev)
    y = torch.randint(0, classes, (len(x),), device=dev)
    xa = x[batch:] if joined else x[:m]
    masks = (torch.rand(m, size, size, device=dev) < 0.1).float()

    def ce_step() -> None:
        with autocast(precision, dev):
            loss = F.cross_entropy(net(x[:batch]).float(), y[:batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fold = joined and not has_batchnorm(net)  # as train_round: then joined rows' CE from the penalty pass

    def reg_step() -> None:
        with autocast(precision, dev):
            pen, logits_a = penalty_and_logits(net, xa, masks)
            ce_sum = F.cross_entropy(net(x[:batch] if fold else x).float(), y[:batch] if fold else y, reduction="sum")
            if fold:
                ce_sum = ce_sum + F.cross_entropy(logits_a.float(), y[batch:], reduction="sum")
            loss = ce_sum / len(x) + lam * pen.float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = {"ce": [], "reg": []}
    for i in range(warmup + steps):  # interleaved, so drift in machine load hits both alike
        for name, fn in (("ce", ce_step), ("reg", reg_step)):
            _sync(dev)
            t = time.perf_counter()
            fn()
            _sync(dev)
            if i >= warmup:
                times[name].append((time.perf_counter() - t) * 1000)
    ce_ms, reg_ms = statistics.median(times["ce"]), statistics.median(times["reg"])
    return {
        "ce_ms": round(ce_ms, 2), "reg_ms": round(reg_ms, 2), "ratio": round(reg_ms / ce_ms, 3),
        "penalty_every": every, "mean_ratio": round((reg_ms + (every - 1) * ce_ms) / (every * ce_ms), 3),
        "model": model, "batch": batch, "size": size, "annotated_rows": m, "joined": joined, "steps": steps,
        "precision": precision,
        "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
    }  # fmt: skip


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def add_parser(sub) -> None:
    p = sub.add_parser("step", help="time a training step with and without the feedback penalty")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=112)
    p.add_argument(
        "--rows",
        type=int,
        default=None,
        help="annotated rows joining each batch, each penalised (default: the model's replay)",
    )
    p.add_argument(
        "--annotated", type=float, default=None, help="instead: this share of the batch's own rows carries a mask"
    )
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_main)


def _main(args) -> int:
    r = bench_step(model=args.model, batch=args.batch, size=args.size, annotated=args.annotated, rows=args.rows,
                   steps=args.steps, device=args.device, precision=args.precision)  # fmt: skip
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['model']} batch {r['batch']} at {r['size']} px on {r['device']}: CE step {r['ce_ms']} ms, "
              f"with penalty on {r['annotated_rows']} rows{' joining the batch' if r['joined'] else ''} "
              f"{r['reg_ms']} ms, ratio {r['ratio']}; "
              f"penalised every {r['penalty_every']} steps, mean ratio {r['mean_ratio']}")  # fmt: skip
    return 0
