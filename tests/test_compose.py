"""docker-compose.yml against the code: Docker does not run here, so the file is parsed and every name in it
is checked against what the code (ours, and Label Studio's own settings) actually reads."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from trainer.app.lsserver import default_ls_venv

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
SERVICES = {"label-studio", "postgres", "ml-backend", "trainer"}
# What this project needs from Label Studio (LABEL-STUDIO.md): Postgres, the admin user and its legacy token,
# local files, and a backend on a private address.
LABEL_STUDIO_NEEDS = {
    "DJANGO_DB", "POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "POSTGRE_PORT", "POSTGRE_HOST",
    "LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN",
    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN", "LOCAL_FILES_SERVING_ENABLED", "LOCAL_FILES_DOCUMENT_ROOT",
    "ML_BLOCK_LOCAL_IP", "SSRF_PROTECTION_ENABLED",
}  # fmt: skip
_ENV_READ = re.compile(r"""(?:environ|\benv|getenv)(?:\.get\(|\[|\()\s*["']([A-Z][A-Z0-9_]+)["']""")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service_env(compose: dict, name: str) -> dict[str, str]:
    env = compose["services"][name].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


class RecordingEnviron(dict):
    """A mapping that remembers every name asked for, present or not."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.asked.add(key)
        return super().__contains__(key)


def names_read_in(paths: list[Path]) -> set[str]:
    """Environment names read literally (``os.environ.get("X")``, ``env["X"]``, ``os.getenv("X")``)."""
    return {m for p in paths for m in _ENV_READ.findall(p.read_text())}


def backend_names() -> set[str]:
    from ls_backend.config import BackendConfig

    env = RecordingEnviron({"MODEL_DIR": "/runs/demo"})
    BackendConfig.from_env(env)
    return env.asked | names_read_in(sorted((REPO / "ls_backend").glob("*.py")))


def trainer_names(monkeypatch) -> set[str]:
    from trainer.labelstudio import client as ls_client

    env = RecordingEnviron({"LABEL_STUDIO_URL": "http://label-studio:8080", "LABEL_STUDIO_API_KEY": "0" * 40})
    monkeypatch.setattr(os, "environ", env)
    ls_client.connect()
    monkeypatch.undo()
    entrypoint = (REPO / "docker" / "trainer-entrypoint.sh").read_text()
    shell_names = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", entrypoint))
    return env.asked | names_read_in(sorted((REPO / "trainer").rglob("*.py"))) | shell_names


def label_studio_names() -> set[str]:
    """Names Label Studio's settings and server read: ``get_env('X')`` answers to X and LABEL_STUDIO_X."""
    sources = list(default_ls_venv().glob("lib/python*/site-packages/label_studio"))
    assert sources, f"Label Studio is not installed in {default_ls_venv()} (python -m trainer.app.lsserver ensure-venv)"
    files = [*sources[0].glob("core/settings/*.py"), sources[0] / "server.py"]
    found = {m for f in files for m in re.findall(r"get_(?:bool_)?env\(\s*'([A-Z][A-Z0-9_]+)'", f.read_text())}
    return found | {"LABEL_STUDIO_" + n for n in found}


def test_services_images_and_ports(compose):
    services = compose["services"]
    assert set(services) == SERVICES
    assert services["label-studio"]["ports"] == ["8080:8080"]
    assert services["ml-backend"]["ports"] == ["127.0.0.1:9090:9090"]  # the convention's port, this machine only
    backend_env = services["ml-backend"]["environment"]
    assert all(":?" in backend_env[k] for k in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS"))  # credentials required
    assert services["postgres"]["image"] == "postgres:16"
    assert services["ml-backend"]["build"]["dockerfile"] == "docker/backend.Dockerfile"
    assert services["trainer"]["build"]["dockerfile"] == "docker/trainer.Dockerfile"


def test_label_studio_image_is_the_version_the_tests_run_against(compose):
    installed = [p.name for p in default_ls_venv().glob("lib/python*/site-packages/label_studio-*.dist-info")]
    assert len(installed) == 1, installed
    version = installed[0].removeprefix("label_studio-").removesuffix(".dist-info")
    assert compose["services"]["label-studio"]["image"] == f"heartexlabs/label-studio:{version}"


def test_label_studio_environment_names_are_ones_it_reads(compose):
    env = service_env(compose, "label-studio")
    assert LABEL_STUDIO_NEEDS <= set(env), LABEL_STUDIO_NEEDS - set(env)
    assert set(env) <= label_studio_names(), set(env) - label_studio_names()
    for flag in ("ML_BLOCK_LOCAL_IP", "SSRF_PROTECTION_ENABLED"):
        assert env[flag] == "false"
    for flag in ("LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN", "LOCAL_FILES_SERVING_ENABLED"):
        assert env[flag] == "true"


def test_label_studio_reaches_postgres_with_its_credentials(compose):
    ls, pg = service_env(compose, "label-studio"), service_env(compose, "postgres")
    assert ls["DJANGO_DB"] == "default"  # Label Studio's name for its Postgres settings
    assert ls["POSTGRE_HOST"] == "postgres" and ls["POSTGRE_PORT"] == "5432"
    assert (ls["POSTGRE_NAME"], ls["POSTGRE_USER"], ls["POSTGRE_PASSWORD"]) == (
        pg["POSTGRES_DB"], pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])  # fmt: skip
    assert "/var/lib/postgresql/data" in {v.split(":")[1] for v in compose["services"]["postgres"]["volumes"]}


def test_backend_environment_is_exactly_what_the_backend_reads(compose):
    env = service_env(compose, "ml-backend")
    assert set(env) == backend_names(), set(env) ^ backend_names()


def test_trainer_environment_names_are_read_by_the_trainer(compose, monkeypatch):
    env, read = service_env(compose, "trainer"), trainer_names(monkeypatch)
    assert {"LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"} <= set(env)
    assert set(env) <= read, f"set in compose but read by no trainer code: {sorted(set(env) - read)}"


def test_backend_and_trainer_use_label_studios_token_and_address(compose):
    ls = service_env(compose, "label-studio")
    for name in ("ml-backend", "trainer"):
        env = service_env(compose, name)
        assert env["LABEL_STUDIO_API_KEY"] == ls["LABEL_STUDIO_USER_TOKEN"]
        assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080"  # service name, container port


def mounts(compose: dict, service: str) -> dict[str, str]:
    """Container path -> named volume."""
    return {v.split(":")[1]: v.split(":")[0] for v in compose["services"][service].get("volumes", [])}


def test_volumes_share_runs_and_images(compose):
    declared = set(compose["volumes"])
    for service in SERVICES:
        assert set(mounts(compose, service).values()) <= declared, service
    model_dir = service_env(compose, "ml-backend")["MODEL_DIR"]
    assert service_env(compose, "trainer")["HITL_RUN_DIR"] == model_dir  # the backend serves the trainer's run
    runs = {path: vol for path, vol in mounts(compose, "ml-backend").items() if model_dir.startswith(path + "/")}
    assert runs and mounts(compose, "trainer")[next(iter(runs))] == next(iter(runs.values()))
    # Images the trainer writes under the document root are the files Label Studio serves.
    root = service_env(compose, "label-studio")["LOCAL_FILES_DOCUMENT_ROOT"]
    assert service_env(compose, "trainer")["LOCAL_FILES_DOCUMENT_ROOT"] == root
    assert mounts(compose, "label-studio")[root] == mounts(compose, "trainer")[root]


def test_every_required_variable_is_in_the_env_example(compose):
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", text))
    optional = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):-", text))
    example = REPO / "docker" / "env.example"
    listed = {line.split("=", 1)[0] for line in example.read_text().splitlines() if re.match(r"[A-Z_]+=", line)}
    assert required <= listed, required - listed
    assert listed <= required | optional, listed - required - optional


def test_backend_image_serves_the_wsgi_factory_on_9090():
    text = (REPO / "docker" / "backend.Dockerfile").read_text()
    cmd = yaml.safe_load(re.search(r"^CMD (\[.*?\])\s*$", text.replace("\\\n", " "), re.M).group(1))
    assert cmd[0] == "gunicorn" and cmd[cmd.index("--bind") + 1] == "0.0.0.0:9090"
    module, _, call = cmd[-1].partition(":")
    assert call == "create()"
    import importlib

    assert callable(importlib.import_module(module).create)


@pytest.mark.parametrize("dockerfile", ["backend.Dockerfile", "trainer.Dockerfile"])
def test_dockerfile_copies_files_that_exist(dockerfile):
    text = (REPO / "docker" / dockerfile).read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for source in shlex.split(line)[:-1]:
            assert (REPO / source).exists(), f"{dockerfile} copies {source}, which is not in the repository"


def test_trainer_command_is_a_hitl_command(compose):
    from trainer.app.cli import build_parser

    defaults = re.compile(r"\$\{[A-Z0-9_]+:-([^}]*)\}")  # compose substitutes the default when unset
    command = [defaults.sub(r"\1", c) for c in compose["services"]["trainer"]["command"]]
    assert command[0] == "hitl"
    build_parser().parse_args(command[1:])  # exits (SystemExit 2) on an unknown command or option
