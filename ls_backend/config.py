"""The backend's settings, from the environment names the Label Studio ecosystem uses.

Read when a server starts (``BackendConfig.from_env()``), never at import.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class BackendConfig:
    """How the backend runs.

    model_dir: a run directory made by ``hitl init`` (its checkpoints are the models served to every project that
    connects), or an existing folder that is not a run: then each project connected gets its own run in it
    (``MODEL_DIR/project-<id>/``, made from the project's labels at its first "Start Training", with the settings in
    ``MODEL_DIR/run-defaults.json`` when present). max_models: runs whose models stay loaded at once (``MAX_MODELS``;
    the least recently used is unloaded first).
    label_studio_url / api_key: where relative task URLs (``/data/upload/...``) are fetched, with the key (a
    personal access token or a legacy token: ``trainer.labelstudio.auth``); the key is also how a training round
    pulls annotations.
    basic_auth_user / basic_auth_pass: when set, every route asks for them (Label Studio sends them
    when the backend is connected with basic auth); without them the backend answers only requests from this
    machine unless ``allow_unauthenticated`` (``ALLOW_UNAUTHENTICATED=true``). auto_train_after: start a round
    after this many ANNOTATION_* events (0: only on START_TRAINING). device: where predictions run. image_hosts:
    hosts other than Label Studio that task images may be fetched from (``IMAGE_HOSTS``, comma-separated; none by
    default), and image_networks the internal networks they may resolve to (``IMAGE_NETWORKS``, CIDR; only public
    addresses if none).
    predict_batch: tasks decoded and explained together (``PREDICT_BATCH``), so a /predict's memory stays flat in its
    number of tasks; max_predict_tasks: more tasks in one /predict are refused with 413 (``MAX_PREDICT_TASKS``).
    overlay_queue / overlay_queue_bytes: overlays waiting to be written into Label Studio (``OVERLAY_QUEUE``,
    ``OVERLAY_QUEUE_BYTES``, PNG bytes); beyond either, new ones are dropped and counted.
    """

    model_dir: Path
    label_studio_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # secrets never in repr, logs or errors
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = field(default=None, repr=False)
    auto_train_after: int = 0
    device: str = "cpu"
    image_timeout: float = 10.0
    max_image_bytes: int = 50 * 2**20
    max_request_bytes: int = 8 * 2**20  # a /predict of 100 tasks with URLs is a few kB; data URIs need more
    image_hosts: tuple[str, ...] = ()  # hosts besides Label Studio that task images may come from
    image_networks: tuple[str, ...] = ()  # internal networks (CIDR) those hosts may resolve to; public only if none
    allow_unauthenticated: bool = False  # without credentials, answer other machines too (say so explicitly)
    # resnet18 at 224 px adds about 48 MiB per task explained together (measured): 16 keep a chunk under 1 GiB
    predict_batch: int = 16
    # memory is flat in tasks, so this bounds time: ~0.2 s a task (resnet18, 224 px, one CPU thread) against
    # Label Studio's 100 s ML_TIMEOUT_PREDICT; the small CNN at 28 px does 1000 in a few seconds
    max_predict_tasks: int = 1000
    overlay_queue: int = 1000  # overlays waiting for Label Studio (about 60-130 kB of PNG each at 224 px)
    overlay_queue_bytes: int = 64 * 2**20
    max_models: int = 4  # resnet18 is ~45 MB of weights plus its DeepLIFT twin; a small CNN far less

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", Path(self.model_dir))
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        if self.auto_train_after < 0:
            raise ValueError(f"auto_train_after must be >= 0, got {self.auto_train_after}")
        if self.label_studio_url is not None and not self.label_studio_url.startswith(("http://", "https://")):
            raise ValueError(f"LABEL_STUDIO_URL must start with http:// or https://, got {self.label_studio_url!r}")
        for name in ("predict_batch", "max_predict_tasks", "overlay_queue", "overlay_queue_bytes", "max_models"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for network in self.image_networks:
            try:
                ipaddress.ip_network(network)
            except ValueError:
                raise ValueError(
                    f"IMAGE_NETWORKS holds {network!r}, which is not a network such as 10.0.0.0/8 or fd00::/8"
                ) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BackendConfig:
        """From ``MODEL_DIR``, ``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``, ``BASIC_AUTH_USER``,
        ``BASIC_AUTH_PASS``, ``AUTO_TRAIN_AFTER``, ``DEVICE``, ``PREDICT_BATCH``, ``MAX_PREDICT_TASKS``,
        ``OVERLAY_QUEUE``, ``OVERLAY_QUEUE_BYTES`` and ``MAX_MODELS``; ``environ`` defaults to ``os.environ``."""
        env = os.environ if environ is None else environ
        model_dir = env.get("MODEL_DIR")
        if not model_dir:
            raise ValueError(
                "MODEL_DIR is not set: point it at a run directory (`hitl init`) or at a folder that "
                "will hold a run per project"
            )
        after = env.get("AUTO_TRAIN_AFTER", "0")
        try:
            auto_train_after = int(after)
        except ValueError:
            raise ValueError(f"AUTO_TRAIN_AFTER must be an integer, got {after!r}") from None
        return cls(
            model_dir=Path(model_dir),
            label_studio_url=(env.get("LABEL_STUDIO_URL") or None),
            api_key=env.get("LABEL_STUDIO_API_KEY") or None,
            basic_auth_user=env.get("BASIC_AUTH_USER") or None,
            basic_auth_pass=env.get("BASIC_AUTH_PASS") or None,
            auto_train_after=auto_train_after,
            device=env.get("DEVICE") or "cpu",
            allow_unauthenticated=_flag(env, "ALLOW_UNAUTHENTICATED"),
            image_hosts=_names(env, "IMAGE_HOSTS"),
            image_networks=_names(env, "IMAGE_NETWORKS"),
            **{name.lower(): _int(env, name) for name in LIMITS if env.get(name)},
        )

    @property
    def open_to_others(self) -> bool:
        """Whether machines other than this one may call it: with credentials, or when explicitly allowed."""
        return bool(self.basic_auth_user) or self.allow_unauthenticated


LIMITS = ("PREDICT_BATCH", "MAX_PREDICT_TASKS", "OVERLAY_QUEUE", "OVERLAY_QUEUE_BYTES", "MAX_MODELS")


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {env[name]!r}") from None


def _names(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(h.strip() for h in env.get(name, "").split(",") if h.strip())


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value not in ("", "0", "false", "no", "1", "true", "yes"):
        raise ValueError(f"{name} must be true or false, got {env[name]!r}")
    return value in ("1", "true", "yes")
