"""The services a demo or a user's machine runs beside the trainer: the ML backend process, and linking the
run's Label Studio project to it.

I/O at the edge: processes, ports, Label Studio's REST API.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from trainer.app.lsserver import REPO_ROOT, free_port
from trainer.labelstudio.link import LINK_FILE, connect_project, read_link
from trainer.runs.run import Run

BACKEND_TITLE = "hitl saliency backend"


class BackendProcess:
    """The ML backend (``ls_backend`` under gunicorn, one worker) for a run directory, in its own process group.

    A process of its own, started as a user would start it: ``trainer`` never imports ``ls_backend``.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        label_studio_url: str,
        api_key: str,
        log_path: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        self.model_dir, self.log_path, self.host = Path(model_dir), Path(log_path), host
        self.port = port or free_port(host)
        self.env = {k: v for k, v in os.environ.items() if k not in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS")}
        self.env.update(
            MODEL_DIR=str(self.model_dir),
            LABEL_STUDIO_URL=label_studio_url,
            LABEL_STUDIO_API_KEY=api_key,
            AUTO_TRAIN_AFTER="0",
            OMP_NUM_THREADS="1",
        )
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> BackendProcess:
        import gunicorn

        # gunicorn 27 opens a control socket at one fixed path per user: two backends would share it.
        quiet = ["--no-control-socket"] if gunicorn.version_info >= (27,) else []
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            "1",
            "--threads",
            "4",
            "--timeout",
            "300",
            *quiet,
            "--bind",
            f"{self.host}:{self.port}",
            "ls_backend.wsgi:create()",
        ]
        with open(self.log_path, "ab") as log:  # the child keeps its own handle
            self._proc = subprocess.Popen(cmd, env=self.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        atexit.register(self.stop)
        return self

    def wait_healthy(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"the ML backend exited before answering {self.url}/health; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"the ML backend did not answer {self.url}/health within {timeout:.0f} s; see {self.log_path}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)  # gunicorn's arbiter and its worker
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                continue


def link_project(run: Run, client, url: str, *, document_root, own_server: bool, title: str):
    """The feedback arm's project (``trainer.labelstudio.loop.connect_project``), found again after a restart."""
    link = read_link(run)
    if own_server and link is not None and link.url != url:
        # Our own data dir, so the same project, only on another port: find it again by its title.
        (run.directory / LINK_FILE).unlink()
    return connect_project(run, client, url, title=link.title if link else title, document_root=document_root)


def connect_backend(client, project_id: int, url: str) -> int:
    """Connect the ML backend at ``url`` to the project (Label Studio calls /health and /setup); its id.

    A backend a previous demo connected on another port is removed first, with the webhook Label Studio
    made for it (deleting the backend leaves that webhook behind).
    """
    for ml in client.ml.list(project=project_id):
        old = (ml.url or "").rstrip("/")
        if old == url:
            return ml.id
        if ml.title == BACKEND_TITLE:
            client.ml.delete(id=ml.id)
            for hook in client.webhooks.list(project=str(project_id)):
                if (hook.url or "").rstrip("/") == f"{old}/webhook":
                    client.webhooks.delete(id=hook.id)
    return client.ml.create(project=project_id, url=url, title=BACKEND_TITLE).id
