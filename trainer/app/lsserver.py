"""A real, local Label Studio server, started headless for tests and the demo.

Label Studio lives in its own virtual environment (it pins Django, rq and its own SDK), by default the
repository's ``.venv-ls``; ``HITL_LS_VENV`` or the ``venv`` argument points elsewhere. The server gets a
fresh data directory (SQLite), a free port, a fixed admin user and a legacy API token, and the
environment that lets it serve local files and reach an ML backend on localhost (see
``/work/shared/LABEL-STUDIO.md``).
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

LABEL_STUDIO_VERSION = "1.23.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS_FILE = "hitl-credentials.json"
DEFAULT_USERNAME = "admin@example.com"

# Label Studio falls back to these bare names when the LABEL_STUDIO_* ones are missing: never pass them.
_STRIPPED_ENV = ("USERNAME", "PASSWORD")


def default_ls_venv() -> Path:
    """The Label Studio venv: ``$HITL_LS_VENV`` if set, else ``<repo>/.venv-ls``."""
    return Path(os.environ.get("HITL_LS_VENV") or REPO_ROOT / ".venv-ls")


def ensure_ls_venv(path: str | os.PathLike | None = None, *, version: str = LABEL_STUDIO_VERSION) -> Path:
    """Create the venv at ``path`` and install ``label-studio==version`` unless it is already there.

    Idempotent: an existing venv whose ``label-studio`` reports ``version`` is left alone.
    """
    venv = Path(path) if path is not None else default_ls_venv()
    python = venv / "bin" / "python"
    if _installed_version(python) == version:
        return venv
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", f"label-studio=={version}"], check=True)
    return venv


def _installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import label_studio; print(label_studio.__version__)"],
        capture_output=True,
        text=True,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (bind to port 0); the caller still checks who answers on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the whole group is already gone
        pass


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class LabelStudioServer:
    """One headless Label Studio process with its own SQLite data directory.

    Use as a context manager, or call ``start()`` / ``stop()``. Attributes: ``url`` (after start),
    ``token`` (legacy API token, 40 hex chars), ``username``, ``password``, ``document_root``,
    ``data_dir``, ``log_path``, ``port``, ``startup_seconds``. Credentials not given are generated on
    the first start of a data dir and kept there (``hitl-credentials.json``, mode 600) for restarts.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        document_root: str | os.PathLike | None = None,
        venv: str | os.PathLike | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        startup_timeout: float = 120.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.document_root = Path(document_root or self.data_dir / "files").resolve()
        self.venv = Path(venv) if venv is not None else default_ls_venv()
        self.host = host
        self.port = port
        self.credentials_path = self.data_dir / CREDENTIALS_FILE
        stored = self._stored_credentials()
        self.username = stored.get("username") or username or DEFAULT_USERNAME
        self.password = stored.get("password") or password or secrets.token_hex(12)
        self.token = stored.get("token") or token or secrets.token_hex(20)
        self.secret_key = stored.get("secret_key") or secrets.token_hex(32)
        if len(self.token) != 40 or any(ch not in "0123456789abcdef" for ch in self.token):
            raise ValueError(f"token must be 40 lowercase hex characters, got {self.token!r}")
        for name, given in (("username", username), ("password", password), ("token", token)):
            if given is not None and stored.get(name, given) != given:
                raise ValueError(
                    f"{self.data_dir} already holds a Label Studio user with another {name}; Label Studio "
                    f"never changes an existing user's {name} on start: use a fresh data_dir"
                )
        self.startup_timeout = startup_timeout
        self.extra_env = dict(extra_env or {})
        self.log_path = self.data_dir / "label-studio.log"
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._log = None

    def _stored_credentials(self) -> dict:
        # Label Studio creates its user (password, token) only on the first start of a data dir and
        # ignores LABEL_STUDIO_* credentials later, so a restart must reuse what the first start used.
        try:
            return json.loads(self.credentials_path.read_text())
        except FileNotFoundError:
            return {}

    def _store_credentials(self, **extra: str) -> None:
        payload = {
            "username": self.username,
            "password": self.password,
            "token": self.token,
            "secret_key": self.secret_key,
        }
        pat = extra.get("pat") or self._stored_credentials().get("pat")
        if pat:
            payload["pat"] = pat
        fd = os.open(self.credentials_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("Label Studio server has not been started")
        return f"http://{self.host}:{self.port}"

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "label-studio"

    def environment(self) -> dict[str, str]:
        """The environment the server runs with (the caller's, minus bare USERNAME/PASSWORD)."""
        env = {k: v for k, v in os.environ.items() if k not in _STRIPPED_ENV}
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            LABEL_STUDIO_USERNAME=self.username,
            LABEL_STUDIO_PASSWORD=self.password,
            LABEL_STUDIO_USER_TOKEN=self.token,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            SECRET_KEY=self.secret_key,  # kept with the data dir so browser sessions survive a restart
            ML_BLOCK_LOCAL_IP="false",
            SSRF_PROTECTION_ENABLED="false",
            LOCAL_FILES_SERVING_ENABLED="true",
            LOCAL_FILES_DOCUMENT_ROOT=str(self.document_root),
            # SQLite even if the caller's environment names another database.
            DJANGO_DB="sqlite",
            # No calls home from a test or demo server: version check, analytics, Sentry.
            LATEST_VERSION_CHECK="false",
            COLLECT_ANALYTICS="false",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> LabelStudioServer:
        if self._proc is not None:
            raise RuntimeError("Label Studio server already started")
        if not self.executable.exists():
            raise FileNotFoundError(
                f"Label Studio is not installed at {self.venv} (no {self.executable}); create it with "
                f"`python -m trainer.app.lsserver ensure-venv` (ensure_ls_venv), "
                f"or point HITL_LS_VENV at a venv with label-studio=={LABEL_STUDIO_VERSION}"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.document_root.mkdir(parents=True, exist_ok=True)
        self._store_credentials()
        if self.port is None:
            self.port = free_port(self.host)
        elif not port_free(self.host, self.port):
            # Label Studio would move to another port silently and /health here would ask someone else.
            raise OSError(f"port {self.port} on {self.host} is taken; pass port=None to pick a free one")
        # --internal-host is the bind address; LS's --host is the public URL prefix, which we leave empty.
        cmd = [
            str(self.executable),
            "start",
            "--no-browser",
            "--internal-host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        self._log = open(self.log_path, "ab")
        began = time.monotonic()
        self._proc = subprocess.Popen(
            cmd,
            env=self.environment(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: stop() kills workers too
        )
        atexit.register(self.stop)  # an interpreter that exits normally takes its server along
        try:
            self._wait_healthy(began)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_healthy(self, began: float) -> None:
        deadline = began + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"Label Studio exited with code {self._proc.returncode} before answering /health on "
                    f"{self.url}; last log lines ({self.log_path}):\n{self.log_tail()}"
                )
            if self.healthy():
                self._check_token()
                return
            time.sleep(0.5)
        raise TimeoutError(
            f"Label Studio did not answer {self.url}/health within {self.startup_timeout:.0f} s; "
            f"last log lines ({self.log_path}):\n{self.log_tail()}"
        )

    def healthy(self) -> bool:
        """True when *this* server answers /health on its port (LS moves silently if a port is taken)."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return resp.status == 200 and b"UP" in resp.read()
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def _check_token(self) -> None:
        """Our token must open the API: proves this is our server and the legacy token is enabled."""
        request = urllib.request.Request(
            f"{self.url}/api/current-user/whoami", headers={"Authorization": f"Token {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                email = json.loads(resp.read()).get("email")
        except urllib.error.HTTPError as err:
            raise RuntimeError(
                f"Label Studio on {self.url} refused the API token ({err.code}); if {self.data_dir} was "
                f"created by another tool, its user has other credentials: use a fresh data dir"
            ) from None
        if email != self.username:
            raise RuntimeError(
                f"Label Studio on {self.url} says the token belongs to {email!r}, expected {self.username!r}"
            )

    def personal_access_token(self) -> str:
        """The admin's personal access token (a JWT refresh token), created on first use and kept with the data dir.

        Label Studio 1.23 creates one per user (``POST /api/token/``; a second create answers 409 while one is
        valid) and shows it only once, so it is stored beside the other credentials.
        """
        stored = self._stored_credentials().get("pat")
        if stored:
            return stored
        request = urllib.request.Request(
            f"{self.url}/api/token/",
            data=b"{}",
            method="POST",
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                token = json.loads(resp.read())["token"]
        except urllib.error.HTTPError as err:
            raise RuntimeError(
                f"Label Studio on {self.url} did not create a personal access token "
                f"(HTTP {err.code}); one may exist already outside {self.credentials_path}"
            ) from None
        self._store_credentials(pat=token)
        return token

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after ``timeout`` s)."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is not None:
            # start_new_session made the server the leader of group proc.pid; signal the whole group.
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LabelStudioServer:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m trainer.app.lsserver ensure-venv [--venv P]`` or ``serve --data-dir D [--document-root R]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trainer.app.lsserver")
    parser.add_argument("command", choices=["ensure-venv", "serve"])
    parser.add_argument("--venv", default=None)
    parser.add_argument("--data-dir", default="demo-run/label-studio")
    parser.add_argument("--document-root", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "ensure-venv":
        print(ensure_ls_venv(args.venv))
        return
    with LabelStudioServer(args.data_dir, document_root=args.document_root, venv=args.venv, port=args.port) as server:
        print(
            f"LABEL_STUDIO_URL={server.url}\nLABEL_STUDIO_API_KEY={server.token}\n"
            f"login: {server.username} / {server.password}\nlog: {server.log_path}",
            flush=True,
        )
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwind the with-block: stop LS too
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
