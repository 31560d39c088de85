"""The ML backend: Label Studio's ML-backend protocol (label-studio-ml 2.x routes and JSON) on Flask 3.

Nothing is read from the environment or loaded at import: ``create_app(BackendConfig.from_env())`` does both
when a server starts (``hitl serve``, or gunicorn with ``'ls_backend.wsgi:create()'``).
"""

from ls_backend.app import create_app
from ls_backend.config import BackendConfig

__all__ = ["BackendConfig", "create_app"]
