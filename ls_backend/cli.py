"""``hitl serve``: the backend on Flask's development server (gunicorn for production, see wsgi.py)."""

from __future__ import annotations

import argparse
import dataclasses

from ls_backend.bench import add_parser as add_bench_serve_parser


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``serve`` on an argparse subparsers object; the command runs ``serve(args)``."""
    parser = subparsers.add_parser(
        "serve",
        help="run the Label Studio ML backend for a run directory (development server)",
        description="Serve /health, /setup, /predict, /webhook, /versions, /metrics. Configuration from "
        "MODEL_DIR, LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, BASIC_AUTH_USER/BASIC_AUTH_PASS, AUTO_TRAIN_AFTER; "
        "options override them. Production: gunicorn --workers 1 --threads 4 'ls_backend.wsgi:create()'.",
    )
    parser.add_argument("--model-dir", default=None, help="run directory (default: $MODEL_DIR)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument(
        "--auto-train-after",
        type=int,
        default=None,
        help="start a round after this many annotation events (default: $AUTO_TRAIN_AFTER or 0)",
    )
    parser.set_defaults(func=serve)
    return parser


def serve(args: argparse.Namespace) -> int:
    import os

    from ls_backend.app import create_app
    from ls_backend.config import BackendConfig

    env = dict(os.environ)
    if args.model_dir:
        env["MODEL_DIR"] = args.model_dir
    config = BackendConfig.from_env(env)
    if args.auto_train_after is not None:
        config = dataclasses.replace(config, auto_train_after=args.auto_train_after)
    if not args.host.startswith(("127.", "localhost", "::1")) and not config.open_to_others:
        raise ValueError(
            f"refusing to listen on {args.host} without credentials: set BASIC_AUTH_USER and "
            "BASIC_AUTH_PASS, or ALLOW_UNAUTHENTICATED=true on a trusted network"
        )
    app = create_app(config, preload=True)
    app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)
    return 0


def register(sub, bench) -> None:
    """What ``trainer.app.cli`` calls through the ``hitl.commands`` entry point: ``hitl serve`` and
    ``hitl bench serve``."""
    add_serve_parser(sub)
    add_bench_serve_parser(bench)
