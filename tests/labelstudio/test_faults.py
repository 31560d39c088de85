"""Faults with the real Label Studio: the server stops during a push and before a pull.

The client retries (``trainer.labelstudio.retry``), then gives up with an error that names the server and what
was being done; the next run, with the server back on the same data, pushes only what is missing and pulls
every annotation exactly once. A server of its own, since these tests stop it.
"""

from __future__ import annotations

import pytest

import trainer.labelstudio.push as push_module
from trainer.app.lsserver import LabelStudioServer, default_ls_venv, port_free
from trainer.labelstudio.annotator import simulate_annotator
from trainer.labelstudio.client import connect, list_task_data
from trainer.labelstudio.link import connect_project
from trainer.labelstudio.pull import pull
from trainer.labelstudio.push import push
from trainer.labelstudio.retry import LabelStudioUnavailable, RetryPolicy

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
POLICY = RetryPolicy(tries=4, base_s=0.5)
N = 4  # tasks in the round, imported two at a time


@pytest.fixture
def own_server(tmp_path):
    venv = default_ls_venv()
    if not (venv / "bin" / "label-studio").exists():
        pytest.fail(f"Label Studio venv not found at {venv}: set HITL_LS_VENV", pytrace=False)
    server = LabelStudioServer(tmp_path / "ls-data", document_root=tmp_path / "ls-documents", venv=venv,
                               startup_timeout=240)  # fmt: skip
    server.start()
    yield server
    server.stop()


def restart(server: LabelStudioServer) -> None:
    """Start the stopped server again on its data; on its port unless a closing socket still holds it."""
    if not port_free(server.host, server.port):
        server.port = None
    server.start()


def test_label_studio_stopped_during_a_push_and_a_pull(fresh_run, own_server, monkeypatch):
    run, server = fresh_run, own_server
    client = connect(server.url, server.token, retry=POLICY)
    project = connect_project(run, client, server.url, document_root=server.document_root).project_id
    real_import = push_module.import_tasks

    def import_and_stop_after_the_first_batch(*args, on_batch, **kwargs):
        def recorded_then_stop(ids, batch):
            on_batch(ids, batch)
            server.stop()  # the next batch meets a closed port

        return real_import(*args, on_batch=recorded_then_stop, batch_size=2, **kwargs)

    monkeypatch.setattr(push_module, "import_tasks", import_and_stop_after_the_first_batch)
    with pytest.raises(LabelStudioUnavailable) as err:
        push(run, client, project, n=N, document_root=server.document_root)
    message = str(err.value)
    for part in (server.url, f"POST /api/projects/{project}/import", f"push of round 0 to project {project}",
                 "ConnectError", "after 4 tries"):  # fmt: skip
        assert part in message, message
    assert len(run.ledger.pushed_tasks(project)) == 2  # the batch that landed is recorded
    monkeypatch.undo()

    restart(server)
    client = connect(server.url, server.token, retry=POLICY)
    task_ids = push(run, client, project, n=N, document_root=server.document_root)
    tasks = list_task_data(client, project)
    assert sorted(task_ids) == sorted(tasks) and len(tasks) == N  # only the missing two were imported
    assert len({d["sample_id"] for d in tasks.values()}) == N
    assert {t.sample_id for t in run.ledger.pushed_tasks(project)} == {d["sample_id"] for d in tasks.values()}

    answered = simulate_annotator(run, client, project, kind="rect")
    assert len(answered) == N
    server.stop()
    with pytest.raises(LabelStudioUnavailable, match=rf"{server.url} .*pull of project {project}'s annotations"):
        pull(run, client, project)
    assert run.ledger.annotation_versions() == {}  # nothing half-pulled

    restart(server)
    client = connect(server.url, server.token, retry=POLICY)
    first = pull(run, client, project)
    assert (first.new, first.updated, first.unchanged) == (N, 0, 0)
    assert sorted(run.ledger.annotation_versions()) == sorted(answered)
    again = pull(run, client, project)
    assert (again.new, again.updated, again.unchanged) == (0, 0, N)
    assert len(again.feedback.cells) == N
