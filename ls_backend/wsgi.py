"""The WSGI entry for gunicorn; nothing is read or loaded when this module is imported.

    gunicorn --workers 1 --threads 4 --bind 0.0.0.0:9090 'ls_backend.wsgi:create()'

or ``ls_backend.wsgi:app`` (built on first access). One worker: the training job and its coalescing
live in the worker's process, and each worker would hold its own copy of the model.
"""

from __future__ import annotations

from flask import Flask

from ls_backend.app import create_app
from ls_backend.config import BackendConfig


def create() -> Flask:
    """The app, configured from the environment now (``MODEL_DIR``, ``LABEL_STUDIO_URL``, ...)."""
    return create_app(BackendConfig.from_env(), preload=True)


_app: Flask | None = None


def __getattr__(name: str):
    # PEP 562: `gunicorn ls_backend.wsgi:app` builds the app on first access, not at import.
    global _app
    if name == "app":
        if _app is None:
            _app = create()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
