"""The Celery task end to end through a real gateway, worker, Redis, Postgres and S3.

The worker runs tests/worker/scripted_pipeline.py (same signature as pxp.pipeline.run)
so the plumbing's paths - progress, cancel, error kinds, artifacts, worker loss and
resume, lost messages - run in seconds; tests/e2e runs the real pipeline.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from pxp.client import PxpApiError, PxpClient
from service.db import repo
from tests.conftest import wait_for
from tests.service.payloads import image_tar, imagefolder, safetensors_bytes

pytestmark = pytest.mark.service


@pytest.fixture
def client(celery_worker, live_gateway, tenant_key):
    with PxpClient(live_gateway, tenant_key, timeout=30) as c:
        yield c


def _spec(script: str = "succeed", **kwargs) -> dict:
    return {"model": {"architecture": "digits_vgg", "kwargs": {"script": script, **kwargs}}}


def _wait(client: PxpClient, job_id: str, timeout: float = 60) -> dict:
    return client.wait(job_id, timeout=timeout, poll_interval=0.1)


def test_job_succeeds_with_inputs_progress_and_artifacts(client, tmp_path, worker_settings):
    model_bytes = safetensors_bytes()
    data_bytes = image_tar(imagefolder(2, 2))
    (tmp_path / "m.safetensors").write_bytes(model_bytes)
    (tmp_path / "d.tar").write_bytes(data_bytes)
    # Steps outlast the SSE poll interval, so each one is seen; the stream sends snapshots
    # of the job's state, so a stage shorter than the poll interval may be coalesced away.
    model = client.upload_model(
        tmp_path / "m.safetensors", "digits_vgg", {"script": "succeed", "steps": 3, "delay": 0.5}
    )
    data = client.upload_dataset(tmp_path / "d.tar")
    job = client.submit(
        {"search": {"trials": 2, "study_name": "someone-elses-study"}},
        model_id=model["id"],
        dataset_id=data["id"],
    )
    events = list(client.events(job["id"], timeout=60))
    final = events[-1]
    assert final["status"] == "succeeded", final
    stages = [e["stage"] for e in events]
    assert {"stage0", "stage1", "stage2"} <= set(stages), stages
    assert stages[-1] == "succeeded"
    assert [e["progress"] for e in events] == sorted(e["progress"] for e in events)
    assert final["metrics"]["chosen_rate"] == 0.5 and final["metrics"]["test_apr"] == 0.85
    assert final["result"]["artifacts"] == {
        "model.safetensors": "model.safetensors",
        "results.json": "results.json",
    }
    assert final["attempts"] == 1

    artifacts = {a["name"]: a for a in client.artifacts(job["id"])}
    assert set(artifacts) == {"model.safetensors", "results.json"}
    paths = client.download_all(job["id"], tmp_path / "out")
    for name, path in paths.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == artifacts[name]["sha256"]
    seen = json.loads(paths["results.json"].read_text())
    # The worker fetched the uploads to local files and pointed the spec at them.
    assert seen["weights_sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert seen["data_sha256"] == hashlib.sha256(data_bytes).hexdigest()
    assert seen["weights"].endswith("model.safetensors") and seen["data"].endswith("data.tar")
    # Optuna gets the service database's own schema, and a per-job study name.
    assert (
        seen["study_storage"] == worker_settings.optuna_url
        and "search_path%3Doptuna" in seen["study_storage"]
    )
    assert seen["study_name"] == f"pxp-job-{job['id']}"


def test_user_error_fails_the_job_as_a_user_error(client):
    job = client.submit(_spec("user_error"))
    final = _wait(client, job["id"])
    assert final["status"] == "failed"
    assert final["error"]["type"] == "InvalidModelError" and final["error"]["kind"] == "user"
    assert "does not fit" in final["error"]["message"]
    assert client.artifacts(job["id"]) == [] and final["attempts"] == 1


def test_internal_error_fails_the_job_as_internal(client):
    final = _wait(client, client.submit(_spec("crash"))["id"])
    assert final["status"] == "failed"
    assert final["error"] == {
        "type": "RuntimeError",
        "message": "scripted internal failure",
        "kind": "internal",
    }


def test_cancel_is_honoured_between_stages(client):
    job = client.submit(_spec("succeed", steps=100, delay=0.1))
    wait_for(
        lambda: client.job(job["id"])["stage"] in {f"stage{i}" for i in range(2, 100)}, 30, what="stage 2"
    )
    assert client.cancel(job["id"])["cancel_requested"] is True
    final = _wait(client, job["id"], timeout=30)
    assert final["status"] == "cancelled" and final["error"] is None
    assert client.artifacts(job["id"]) == []
    assert client.cancel(job["id"])["status"] == "cancelled"
    with pytest.raises(PxpApiError) as err:
        client.cancel("no-such-job")
    assert err.value.status == 404 and err.value.error == "not_found"


def test_lost_worker_is_reconciled_and_the_job_resumes(client):
    """The pipeline kills its worker process mid-job: late ack + reject-on-worker-lost and
    the heartbeat reconciler bring it back, and the retry reuses the finished stage."""
    job = client.submit(_spec("exit_once", steps=3, delay=0.2))
    final = _wait(client, job["id"], timeout=90)
    assert final["status"] == "succeeded", final
    assert final["attempts"] == 2
    seen = json.loads(client._http.get(f"/v1/jobs/{job['id']}/artifacts/results.json").content)
    assert seen["attempts"] == 2 and seen["resumed"] == ["stage0"]


def test_message_lost_in_a_redis_restart_is_resent(client, redis_client, committed_factory, tenant_key):
    """Redis keeps nothing on disk: flushing its database while a job waits behind a busy
    worker loses the job's message; the reconciler sends it again."""
    busy = client.submit(_spec("succeed", steps=20, delay=0.1))
    wait_for(lambda: client.job(busy["id"])["status"] == "running", 30, what="the busy job to start")
    waiting = client.submit(_spec("succeed"))
    time.sleep(0.2)
    assert client.job(waiting["id"])["status"] == "queued"
    redis_client.flushdb()
    assert _wait(client, busy["id"])["status"] == "succeeded"
    final = _wait(client, waiting["id"], timeout=60)
    assert final["status"] == "succeeded"
    with committed_factory() as s:
        assert repo.load_job(s, waiting["id"]).attempts == 1
