"""Shared fixtures: ONE real Label Studio server for the whole test session."""

from __future__ import annotations

import contextlib
import itertools

import pytest

from trainer.app.lsserver import LabelStudioServer, default_ls_venv


def pytest_collection_modifyitems(items):
    """A test that reaches the real server through a fixture is a ``labelstudio`` test, marked or not, so that
    ``make check`` (``-m "not labelstudio ..."``) never starts Label Studio."""
    for item in items:
        if "label_studio" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("labelstudio"):
            item.add_marker(pytest.mark.labelstudio)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A running Label Studio (SQLite in a fresh data dir, local files served from a tmp root).

    Fails, never skips, when the Label Studio venv is missing: the suite needs the real server.
    """
    venv = default_ls_venv()
    if not (venv / "bin" / "label-studio").exists():
        pytest.fail(
            f"Label Studio venv not found at {venv}: run "
            f"`python -m trainer.app.lsserver ensure-venv`, "
            f"or set HITL_LS_VENV to a venv with label-studio installed",
            pytrace=False,
        )
    base = tmp_path_factory.mktemp("label-studio")
    # A first start migrates a fresh SQLite database: ~30 s alone, 80 s seen on 2 busy cores.
    server = LabelStudioServer(base / "data", document_root=base / "documents", venv=venv, startup_timeout=240)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's standalone S3 server on 127.0.0.1 behind a recording reverse proxy (``tests.s3``), with the bucket
    ``tests.s3.BUCKET``. Fails, never skips, when moto's venv is missing (``make moto-env``)."""
    from tests.s3 import BUCKET, S3Server, start_moto, start_proxy, stop_moto

    try:
        proc, moto_url = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    seen: list = []
    proxy = start_proxy(moto_url, seen)
    server = S3Server(moto_url, f"http://127.0.0.1:{proxy.server_port}", seen)
    server.create_bucket(BUCKET)
    yield server
    proxy.shutdown()
    proxy.server_close()
    stop_moto(proc)


@pytest.fixture(scope="session")
def ls_client(label_studio):
    """A label-studio-sdk client logged in to the session's server with its legacy token."""
    from label_studio_sdk.client import LabelStudio

    return LabelStudio(base_url=label_studio.url, api_key=label_studio.token)


KEY_KINDS = ["legacy", "pat"]


@pytest.fixture(params=KEY_KINDS)
def ls_key(request, label_studio):
    """Each kind of key a user may hold: the legacy token, and a personal access token (a JWT refresh token,
    what Label Studio 1.23 hands out by default)."""
    return label_studio.token if request.param == "legacy" else label_studio.personal_access_token()


# --- Runs for the Label Studio loop tests (tests/labelstudio/: test_loop, test_browser, test_run_command) ------

_RUN_NAMES = itertools.count()
# decoy-mnist, small-cnn: about 3 s a round on 1 thread, with or without the penalty
TINY_RUN = {"train.epochs": 1, "train.batch_size": 128, "train.replay": 4, "sampling.per_round": 3}


@pytest.fixture(scope="session")
def round0_run(tmp_path_factory):
    """A tiny decoy-mnist run with round 0 trained. A template: copy it with ``fresh_run``, never change it."""
    from trainer.runs.run import Run, RunConfig, with_overrides

    run = Run.create(tmp_path_factory.mktemp("round0") / "template", with_overrides(RunConfig(), **TINY_RUN))
    with _one_torch_thread():
        run.train_next_round()
    return run


@contextlib.contextmanager
def _one_torch_thread():
    """Small models on a busy 2-core machine train several times faster on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def fresh_run(round0_run, tmp_path):
    """A copy of ``round0_run`` under a session-unique name (the name reaches model_version, the project
    title and the image folder, all shared by the one Label Studio server)."""
    import shutil

    from trainer.runs.run import Run

    directory = tmp_path / f"run-{next(_RUN_NAMES):03d}"
    shutil.copytree(
        round0_run.directory, directory, ignore=shutil.ignore_patterns("ledger.sqlite*", "label-studio.json")
    )
    run = Run.open(directory)
    run.__dict__["datasets"] = round0_run.datasets  # same config, same data: skip reloading (cached_property)
    with _one_torch_thread():
        yield run


@pytest.fixture
def one_torch_thread():
    """Train on one torch thread for the test (see ``_one_torch_thread``)."""
    with _one_torch_thread():
        yield
