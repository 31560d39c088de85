"""The ML backend: Label Studio's ML-backend protocol (label-studio-ml 2.x routes and JSON) on Flask 3.

Nothing is read from the environment or loaded at import: ``create_app(BackendConfig.from_env())`` does both
when a server starts (``hitl serve``, or gunicorn with ``'ls_backend.wsgi:create()'``). Thin routes (``app``)
over the served model (``model``: runs, explain, labelstudio), its background training job (``jobs``), image
fetching (``images``) and its settings (``config``). The top layer: nothing in ``trainer`` or ``label_config``
imports it.
"""
