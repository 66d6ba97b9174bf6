"""POST/GET /v1/jobs: spec validation, references, idempotency, pagination, cancel, SSE, artifacts."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.db import repo
from service.dispatch import CeleryDispatcher
from service.storage import S3Storage, put_blob
from tests.service.payloads import image_tar, imagefolder, safetensors_bytes

pytestmark = pytest.mark.service

SPEC = {"model": {"architecture": "digits_vgg"}, "prune": {"rates": [0.0, 0.5]}}


def _create(api, headers, body=None, key=None):
    extra = {"Idempotency-Key": key} if key else {}
    return api.client.post(
        "/v1/jobs", headers={**headers, **extra}, json=body if body is not None else {"spec": SPEC}
    )


def _model(api, headers, architecture="digits_vgg") -> str:
    resp = api.client.post(
        "/v1/models",
        headers=headers,
        data={"architecture": architecture, "kwargs": json.dumps({"num_classes": 3})},
        files={"file": ("m.safetensors", safetensors_bytes())},
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def _dataset(api, headers) -> str:
    resp = api.client.post(
        "/v1/datasets", headers=headers, files={"file": ("d.tar", image_tar(imagefolder(3, 2)))}
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_create_job_with_uploaded_model_and_dataset(api, redis_client):
    headers = api.key()
    model_id, dataset_id = _model(api, headers), _dataset(api, headers)
    queue = api.settings.queue_name
    before = redis_client.llen(queue)
    resp = _create(
        api, headers, {"model_id": model_id, "dataset_id": dataset_id, "spec": {"prune": {"rates": [0.3]}}}
    )
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"] == 0.0 and job["error"] is None
    assert job["spec"]["model"] == {
        "architecture": "digits_vgg",
        "kwargs": {"num_classes": 3},
        "weights": f"model:{model_id}",
    }
    assert job["spec"]["data"]["source"] == f"dataset:{dataset_id}"
    assert job["spec"]["prune"]["rates"] == [0.0, 0.3]
    assert (job["model_id"], job["dataset_id"]) == (model_id, dataset_id)
    # The task went to the real broker carrying only the job id, and the marker is set.
    assert redis_client.llen(queue) == before + 1
    message = json.loads(redis_client.lindex(queue, 0))
    assert message["headers"]["task"] == "pxp.run_job" and job["id"] in message["headers"]["argsrepr"]
    assert redis_client.exists(f"{api.settings.redis_key_prefix}enqueued:{job['id']}")
    assert api.client.get(f"/v1/jobs/{job['id']}", headers=headers).json()["id"] == job["id"]


@pytest.mark.parametrize(
    ("body", "error", "needle"),
    [
        (
            {"spec": {"model": {"architecture": "digits_vgg"}, "prune": {"rates": [1.5]}}},
            "invalid_spec",
            "rates",
        ),
        (
            {"spec": {"model": {"architecture": "digits_vgg"}, "unknown_field": 1}},
            "invalid_spec",
            "unknown_field",
        ),
        ({"spec": {"model": {"architecture": "digits_vgg"}, "criteria": []}}, "invalid_spec", "criterion"),
        ({"spec": {"data": {"source": "digits"}}}, "invalid_spec", "model"),
        ({"spec": {"model": "digits_vgg"}}, "invalid_spec", "model"),
        ({"spec": {"model": {"architecture": "resnet_9000"}}}, "unsupported_architecture", "resnet_9000"),
        (
            {"spec": {"model": {"architecture": "digits_vgg", "weights": "/etc/passwd"}}},
            "invalid_spec",
            "weights",
        ),
        (
            {"spec": {"model": {"architecture": "digits_vgg"}, "data": {"source": "/srv/data"}}},
            "invalid_spec",
            "source",
        ),
        (
            {"spec": {"model": {"architecture": "digits_vgg"}, "search": {"storage": "sqlite:////tmp/x.db"}}},
            "invalid_spec",
            "storage",
        ),
        ({"spec": SPEC, "extra": True}, "invalid_request", "extra"),
        ({"spec": "not an object"}, "invalid_request", "spec"),
    ],
    ids=[
        "bad-rate",
        "unknown-field",
        "no-criteria",
        "no-model",
        "model-not-object",
        "unknown-arch",
        "local-weights-path",
        "local-data-path",
        "search-storage",
        "extra-top-level",
        "spec-not-object",
    ],
)
def test_malformed_job_is_refused_and_not_created(api, body, error, needle):
    headers = api.key()
    resp = _create(api, headers, body)
    assert resp.status_code == 422, resp.text
    out = resp.json()
    assert set(out) == {"error", "detail"} and out["error"] == error and needle in out["detail"]
    assert api.client.get("/v1/jobs", headers=headers).json()["items"] == []


@pytest.mark.parametrize(
    "architecture",
    [
        "convnext_tiny",
        "swin_t",
        "swin_v2_t",
        "timm/swin_tiny_patch4_window7_224",
        "timm/eva02_tiny_patch14_224",
    ],
)
def test_convnext_swin_and_eva_names_are_accepted(api, architecture):
    resp = _create(
        api,
        api.key(),
        {"spec": {"model": {"architecture": architecture}, "criteria": [{"criterion": "gradient"}]}},
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["spec"]["model"]["architecture"] == architecture


def test_invalid_json_body_is_refused(api):
    resp = api.client.post(
        "/v1/jobs", headers={**api.key(), "Content-Type": "application/json"}, content=b"{not json"
    )
    assert resp.status_code == 422 and resp.json()["error"] == "invalid_request"


def test_model_id_contradicting_spec_is_refused(api):
    headers = api.key()
    model_id = _model(api, headers)
    resp = _create(api, headers, {"model_id": model_id, "spec": {"model": {"architecture": "resnet18"}}})
    assert resp.status_code == 422 and "contradicts" in resp.json()["detail"]
    resp = _create(
        api, headers, {"spec": {"model": {"architecture": "resnet18", "weights": f"model:{model_id}"}}}
    )
    assert resp.status_code == 422 and "digits_vgg" in resp.json()["detail"]


def test_unknown_dataset_is_404(api):
    resp = _create(api, api.key(), {"dataset_id": "nope", "spec": SPEC})
    assert resp.status_code == 404 and resp.json() == {
        "error": "not_found",
        "detail": "dataset 'nope' not found",
    }


def test_idempotency_key_returns_the_same_job(api, redis_client):
    headers = api.key()
    first = _create(api, headers, key="build-42")
    assert first.status_code == 202
    before = redis_client.llen(api.settings.queue_name)
    again = _create(api, headers, key="build-42")
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert redis_client.llen(api.settings.queue_name) == before, "a replay must not enqueue twice"
    other = _create(api, headers, {"spec": {**SPEC, "prune": {"rates": [0.1]}}}, key="build-42")
    assert other.status_code == 409 and other.json()["error"] == "idempotency_conflict"
    # Keys are per tenant.
    assert _create(api, api.key(), key="build-42").json()["id"] != first.json()["id"]
    assert len(api.client.get("/v1/jobs", headers=headers).json()["items"]) == 1


def test_concurrent_requests_with_one_idempotency_key_make_one_job(
    prod_settings, committed_factory, s3_server
):
    """Real concurrency needs committed transactions: a fresh tenant, its rows left in the test database."""
    settings = prod_settings.model_copy(update={"queue_name": f"{prod_settings.queue_name}-unconsumed"})
    app = create_app(settings, session_factory=committed_factory, dispatcher=CeleryDispatcher(settings))
    with committed_factory() as s:
        _row, key = repo.create_api_key(s, f"t-{secrets.token_hex(4)}")
        s.commit()
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "same"}
    ids: list[str] = []
    with TestClient(app) as client:
        barrier = threading.Barrier(6)

        def submit() -> None:
            barrier.wait()
            resp = client.post("/v1/jobs", headers=headers, json={"spec": SPEC})
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])

        threads = [threading.Thread(target=submit) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(ids) == 6 and len(set(ids)) == 1
        assert len(client.get("/v1/jobs", headers=headers).json()["items"]) == 1


def test_pagination_is_newest_first_and_stable(api):
    headers = api.key()
    created = [_create(api, headers).json()["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.client.get("/v1/jobs", headers=headers, params=params).json()
        pages += 1
        assert len(page["items"]) <= 2
        assert all(item["spec"] is None for item in page["items"]), "listings omit the full spec"
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        _create(api, headers)  # a job created mid-pagination must not shift later pages
    assert pages == 3
    assert seen == list(reversed(created))


def test_page_size_is_capped_and_cursor_validated(make_api):
    api = make_api(page_size_max=3)
    headers = api.key()
    for _ in range(4):
        _create(api, headers)
    assert len(api.client.get("/v1/jobs", headers=headers, params={"limit": 50}).json()["items"]) == 3
    resp = api.client.get("/v1/jobs", headers=headers, params={"cursor": "garbage"})
    assert resp.status_code == 422 and resp.json()["error"] == "invalid_request"
    resp = api.client.get("/v1/jobs", headers=headers, params={"limit": 0})
    assert resp.status_code == 422


def test_status_filter(api):
    headers = api.key()
    a, b = _create(api, headers).json()["id"], _create(api, headers).json()["id"]
    api.client.post(f"/v1/jobs/{a}/cancel", headers=headers)
    cancelled = api.client.get("/v1/jobs", headers=headers, params={"status": "cancelled"}).json()["items"]
    queued = api.client.get("/v1/jobs", headers=headers, params={"status": "queued"}).json()["items"]
    assert [j["id"] for j in cancelled] == [a] and [j["id"] for j in queued] == [b]
    assert api.client.get("/v1/jobs", headers=headers, params={"status": "bogus"}).status_code == 422


def test_cancel_queued_job_is_immediate_and_idempotent(api):
    headers = api.key()
    job_id = _create(api, headers).json()["id"]
    resp = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert resp.status_code == 202
    assert resp.json()["status"] == "cancelled" and resp.json()["cancel_requested"] is True
    assert api.client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).json()["status"] == "cancelled"


def test_cancel_running_job_sets_the_flag_and_finished_job_conflicts(api):
    headers = api.key()
    job_id = _create(api, headers).json()["id"]
    with api.factory() as s:
        from datetime import UTC, datetime

        assert repo.claim_job(s, job_id, "w1", datetime.now(UTC))
        s.commit()
    resp = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert resp.json()["status"] == "running" and resp.json()["cancel_requested"] is True
    with api.factory() as s:
        owned, cancel = repo.update_progress(s, job_id, "w1", stage="score", fraction=0.5)
        assert owned and cancel
        assert repo.finish_job(
            s, job_id, "w1", "failed", error={"type": "X", "message": "m", "kind": "internal"}
        )
        s.commit()
    resp = api.client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert resp.status_code == 409 and resp.json()["error"] == "conflict"


def _finished_job_with_artifact(api, headers, tmp_path: Path) -> tuple[str, bytes]:
    job_id = _create(api, headers).json()["id"]
    payload = b"compressed-weights" * 100
    path = tmp_path / "model.safetensors"
    path.write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    storage = S3Storage.from_settings(api.settings)
    with api.factory() as s:
        from datetime import UTC, datetime

        assert repo.claim_job(s, job_id, "w1", datetime.now(UTC))
        repo.update_progress(s, job_id, "w1", stage="export", fraction=0.9, message="exporting")
        key = put_blob(storage, path, sha)
        repo.put_artifact(
            s,
            job_id,
            name="model.safetensors",
            filename="model.safetensors",
            storage_key=key,
            sha256=sha,
            size_bytes=len(payload),
            content_type="application/octet-stream",
        )
        assert repo.finish_job(
            s, job_id, "w1", "succeeded", result={"chosen_rate": 0.5}, metrics={"test_apr": 0.9}
        )
        s.commit()
    return job_id, payload


def test_artifacts_are_listed_and_downloaded_with_sha256(api, tmp_path):
    headers = api.key()
    job_id, payload = _finished_job_with_artifact(api, headers, tmp_path)
    listing = api.client.get(f"/v1/jobs/{job_id}/artifacts", headers=headers).json()
    sha = hashlib.sha256(payload).hexdigest()
    assert listing == [
        {
            "name": "model.safetensors",
            "filename": "model.safetensors",
            "sha256": sha,
            "size_bytes": len(payload),
            "content_type": "application/octet-stream",
            "url": f"/v1/jobs/{job_id}/artifacts/model.safetensors",
        }
    ]
    resp = api.client.get(f"/v1/jobs/{job_id}/artifacts/model.safetensors", headers=headers)
    assert resp.status_code == 200 and resp.content == payload
    assert resp.headers["x-checksum-sha256"] == sha and resp.headers["etag"] == f'"{sha}"'
    assert "attachment" in resp.headers["content-disposition"]
    missing = api.client.get(f"/v1/jobs/{job_id}/artifacts/nope", headers=headers)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    job = api.client.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["metrics"] == {"test_apr": 0.9}


def test_events_stream_ends_with_the_final_state(api, tmp_path):
    headers = api.key()
    job_id, _ = _finished_job_with_artifact(api, headers, tmp_path)
    with api.client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = "".join(resp.iter_text())
    assert "event: end" in text
    data = json.loads(next(line[6:] for line in text.splitlines() if line.startswith("data: ")))
    assert data["id"] == job_id and data["status"] == "succeeded" and data["result"] == {"chosen_rate": 0.5}


def test_reproduce_of_copies_the_earlier_jobs_spec_and_inputs(api, tmp_path):
    headers = api.key()
    earlier, _ = _finished_job_with_artifact(api, headers, tmp_path)
    resp = _create(api, headers, {"reproduce_of": earlier})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["reproduces_job_id"] == earlier and job["id"] != earlier
    original = api.client.get(f"/v1/jobs/{earlier}", headers=headers).json()
    assert job["spec"] == original["spec"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"reproduce_of": "0" * 32}, 404, "not_found"),
        ({"reproduce_of": "EARLIER", "spec": SPEC}, 422, "invalid_spec"),
        ({"reproduce_of": "QUEUED"}, 409, "not_reproducible"),
    ],
)
def test_reproduce_of_refusals(api, tmp_path, body, status, error):
    headers = api.key()
    earlier, _ = _finished_job_with_artifact(api, headers, tmp_path)
    queued = _create(api, headers).json()["id"]
    body = {
        k: {"EARLIER": earlier, "QUEUED": queued}.get(v, v) if k == "reproduce_of" else v
        for k, v in body.items()
    }
    resp = _create(api, headers, body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == error


def test_another_tenants_job_cannot_be_reproduced(api, tmp_path):
    earlier, _ = _finished_job_with_artifact(api, api.key(), tmp_path)
    resp = _create(api, api.key(), {"reproduce_of": earlier})
    assert resp.status_code == 404
