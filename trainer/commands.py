"""``hitl init`` and ``hitl train``: create a run directory and train its next round."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.run import Run, RunConfig, with_overrides


def register(sub, bench) -> None:
    p = sub.add_parser("init", help="create a run directory (dataset, model, grid, training settings)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--dataset", default=RunConfig.dataset, help="decoy-mnist, decoy-mnist-rgb, folder:PATH or csv:PATH")
    p.add_argument("--model", default=None,
                   help="small-cnn, resnet18, resnet50 (default: small-cnn for 1-channel images up to 32 px, else resnet18)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--channels", type=int, default=None)
    p.add_argument("--cell-px", type=int, default=RunConfig.cell_px, help="grid cell side in model-input pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--saliency", default=RunConfig.saliency)
    p.add_argument("--top-k", type=int, default=RunConfig.top_k, help="salient cells pre-filled as suggestions")
    p.add_argument("--weights", default=None, help="local state-dict file to start from")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lam", type=float, default=None)
    p.add_argument("--replay", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--strategy", default=None)
    p.add_argument("--per-round", type=int, default=None, help="images pushed for feedback each round")
    p.set_defaults(func=_init)

    p = sub.add_parser("train", help="train the next round from the last checkpoint with the ledger's feedback")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--distributed", action="store_true",
                   help="under torchrun: DistributedDataParallel, one process per GPU (gloo on CPU)")
    p.set_defaults(func=_train)

    try:
        from trainer import demo, lsloop
    except ImportError:
        return
    lsloop.register(sub)
    demo.register(sub)


def _init(args) -> int:
    if args.model is None:
        args.model = default_model(args.dataset, args.image_size, args.channels)
    config = with_overrides(
        RunConfig(), dataset=args.dataset, model=args.model, image_size=args.image_size, channels=args.channels,
        cell_px=args.cell_px, seed=args.seed, saliency=args.saliency, top_k=args.top_k, weights=args.weights,
        **{"train.epochs": args.epochs, "train.lam": args.lam, "train.replay": args.replay,
           "train.device": args.device, "sampling.strategy": args.strategy, "sampling.per_round": args.per_round},
    )  # fmt: skip
    run = Run.create(args.run_dir, config)
    print(f"run {run.directory}: {len(run.datasets[0])} training images, classes {run.classes}, grid {run.grid.shape}")
    return 0


def default_model(dataset: str, image_size: int | None, channels: int | None) -> str:
    """A small CNN for MNIST-sized grey images, torchvision's resnet18 for RGB or larger images."""
    from trainer.data import load_dataset

    if dataset in ("decoy-mnist", "decoy-mnist-clean") and (image_size or 28) <= 32 and (channels or 1) == 1:
        return "small-cnn"
    if dataset.startswith("decoy-mnist"):
        return "resnet18"
    c, h, _ = load_dataset(dataset, size=image_size, channels=channels)[0].image_shape
    return "small-cnn" if c == 1 and h <= 32 else "resnet18"


def _train(args) -> int:
    if args.distributed:
        from trainer.distributed import DistEnv, train_rounds

        env = DistEnv.from_environ()
        if env is None:
            raise ValueError("--distributed needs torchrun (RANK and WORLD_SIZE are unset): "
                             "torchrun --nproc-per-node N $(which hitl) train RUN --distributed")
        return train_rounds(args.run_dir, args.rounds, env)
    run = Run.open(args.run_dir)
    for _ in range(args.rounds):
        record = run.train_next_round(progress=True)
        print(json.dumps({k: record[k] for k in ("round", "model_version", "annotated", "acc", "min_loss")}))
    return 0
