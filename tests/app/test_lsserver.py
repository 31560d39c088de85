"""The Label Studio harness: the real server answers, the environment is right, failures are clear."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from trainer.app import lsserver
from trainer.app.lsserver import LabelStudioServer, ensure_ls_venv, free_port


@pytest.mark.labelstudio
def test_real_server_answers_health_and_the_token(label_studio, ls_client):
    assert label_studio.running and label_studio.healthy()
    assert label_studio.url.endswith(f":{label_studio.port}")
    with urllib.request.urlopen(f"{label_studio.url}/health", timeout=5) as resp:
        assert b"UP" in resp.read()
    assert ls_client.users.whoami().email == label_studio.username
    assert label_studio.log_path.exists()
    with urllib.request.urlopen(f"{label_studio.url}/user/login/", timeout=10) as resp:
        assert resp.status == 200 and b"password" in resp.read()
    assert label_studio.startup_seconds < label_studio.startup_timeout


def test_environment_is_exactly_what_label_studio_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("USERNAME", "someone-else")
    monkeypatch.setenv("PASSWORD", "not-this")
    server = LabelStudioServer(tmp_path / "data", document_root=tmp_path / "docs")
    env = server.environment()
    assert "USERNAME" not in env and "PASSWORD" not in env
    assert env["LABEL_STUDIO_USERNAME"] == server.username
    assert env["LABEL_STUDIO_PASSWORD"] == server.password
    assert len(env["LABEL_STUDIO_USER_TOKEN"]) == 40
    int(env["LABEL_STUDIO_USER_TOKEN"], 16)
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["ML_BLOCK_LOCAL_IP"] == "false" and env["SSRF_PROTECTION_ENABLED"] == "false"
    assert env["LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert env["LOCAL_FILES_DOCUMENT_ROOT"] == str((tmp_path / "docs").resolve())
    assert env["LABEL_STUDIO_BASE_DATA_DIR"] == str((tmp_path / "data").resolve())
    assert env["LATEST_VERSION_CHECK"] == "false" and env["COLLECT_ANALYTICS"] == "false"


@pytest.mark.parametrize("token", ["abc", "G" * 40, "A" * 40])
def test_a_bad_token_is_refused(tmp_path, token):
    with pytest.raises(ValueError, match="40 lowercase hex"):
        LabelStudioServer(tmp_path, token=token)


def test_venv_comes_from_the_environment_when_not_given(tmp_path, monkeypatch):
    monkeypatch.setenv("HITL_LS_VENV", str(tmp_path / "elsewhere"))
    assert LabelStudioServer(tmp_path).venv == tmp_path / "elsewhere"
    assert LabelStudioServer(tmp_path, venv=tmp_path / "given").venv == tmp_path / "given"


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_missing_venv_says_how_to_make_one(tmp_path):
    server = LabelStudioServer(tmp_path / "data", venv=tmp_path / "no-venv")
    with pytest.raises(FileNotFoundError, match="ensure-venv"):
        server.start()


def fake_venv(tmp_path, body: str):
    """A venv whose ``label-studio`` is a small Python script (to exercise start/stop quickly)."""
    exe = tmp_path / "venv" / "bin" / "label-studio"
    exe.parent.mkdir(parents=True)
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    exe.chmod(0o755)
    return exe.parent.parent


def test_a_server_that_dies_reports_its_log(tmp_path):
    venv = fake_venv(
        tmp_path,
        """
        import sys
        print("django.db.utils.OperationalError: planted failure", flush=True)
        sys.exit(3)
    """,
    )
    server = LabelStudioServer(tmp_path / "data", venv=venv, startup_timeout=30)
    with pytest.raises(RuntimeError, match="(?s)exited with code 3.*planted failure"):
        server.start()
    assert not server.running


def test_a_server_that_never_answers_times_out_with_its_log(tmp_path):
    venv = fake_venv(
        tmp_path,
        """
        import time
        print("still migrating", flush=True)
        time.sleep(60)
    """,
    )
    server = LabelStudioServer(tmp_path / "data", venv=venv, startup_timeout=2)
    with pytest.raises(TimeoutError, match="(?s)did not answer.*still migrating"):
        server.start()
    assert not server.running


# Answers /health and whoami on the port it is given and spawns a child, like a server's workers.
FAKE_SERVER = """
        import http.server, subprocess, sys
        port = int(sys.argv[sys.argv.index("--port") + 1])
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open(sys.argv[sys.argv.index("--data-dir") + 1] + "/child.pid", "w").write(str(child.pid))
        class Health(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers()
                self.wfile.write(b'{"status": "UP", "email": "admin@example.com"}')
        http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def test_stop_ends_the_whole_process_group(tmp_path):
    venv = fake_venv(tmp_path, FAKE_SERVER)
    with LabelStudioServer(tmp_path / "data", venv=venv, startup_timeout=30) as server:
        assert server.healthy()
        child = int((tmp_path / "data" / "child.pid").read_text())
    assert not server.running
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def test_a_data_dir_keeps_its_credentials(tmp_path):
    venv = fake_venv(tmp_path, FAKE_SERVER)
    with LabelStudioServer(tmp_path / "data", venv=venv) as first:
        pass
    assert oct((tmp_path / "data" / "hitl-credentials.json").stat().st_mode & 0o777) == "0o600"
    again = LabelStudioServer(tmp_path / "data", venv=venv)
    assert (again.token, again.password, again.secret_key) == (first.token, first.password, first.secret_key)
    with pytest.raises(ValueError, match="another token"):
        LabelStudioServer(tmp_path / "data", venv=venv, token="0" * 40)


def test_a_taken_port_is_refused_before_start(tmp_path):
    venv = fake_venv(tmp_path, FAKE_SERVER)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = LabelStudioServer(tmp_path / "data", venv=venv, port=sock.getsockname()[1])
        with pytest.raises(OSError, match="is taken"):
            server.start()


@pytest.mark.labelstudio
@pytest.mark.slow
def test_a_real_server_restarts_on_its_data_dir(tmp_path):
    # Label Studio keeps the user of a data dir's first start; the harness must log in again after a restart.
    with LabelStudioServer(tmp_path / "data", startup_timeout=240) as server:
        token = server.token
    with LabelStudioServer(tmp_path / "data", startup_timeout=240) as server:
        assert server.token == token and server.healthy()
        from label_studio_sdk.client import LabelStudio

        assert LabelStudio(base_url=server.url, api_key=token).users.whoami().email == server.username


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent's wait is missing.
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout
    return bool(state.strip()) and not state.strip().startswith("Z")


@pytest.mark.labelstudio
def test_ensure_ls_venv_leaves_an_installed_venv_alone(label_studio, monkeypatch):
    calls = []
    real_run = subprocess.run

    def recording_run(cmd, *args, **kwargs):
        calls.append(cmd)
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(lsserver.subprocess, "run", recording_run)
    assert ensure_ls_venv(label_studio.venv) == label_studio.venv
    assert not any("pip" in part for cmd in calls for part in cmd)
