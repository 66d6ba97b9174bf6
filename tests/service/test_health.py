"""/healthz, /readyz (database, broker, storage), /metrics and the OpenAPI docs."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.service


def test_healthz(api):
    assert api.client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_every_dependency(api):
    resp = api.client.get("/readyz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}


def test_readyz_reports_an_unreachable_broker_and_bucket(make_api):
    from service.dispatch import CeleryDispatcher
    from service.storage import S3Storage

    api = make_api()
    dead = api.settings.model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0", "s3_bucket": "no-such-bucket"}
    )
    api.app.state.dispatcher = CeleryDispatcher(dead)
    api.app.state.storage = S3Storage.from_settings(dead)
    resp = api.client.get("/readyz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["status"] == "unavailable" and body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("error") and body["checks"]["storage"].startswith("error")


def test_metrics_expose_requests_and_jobs(api):
    headers = api.key()
    api.client.get("/v1/jobs", headers=headers)
    api.client.post("/v1/jobs", headers=headers, json={"spec": {"model": {"architecture": "digits_vgg"}}})
    text = api.client.get("/metrics").text
    assert 'pxp_http_requests_total{method="GET",route="/v1/jobs",status="200"}' in text
    assert 'pxp_http_request_duration_seconds_bucket{le="0.05",method="GET",route="/v1/jobs"}' in text
    assert 'pxp_jobs{status="queued"}' in text
    assert "process_resident_memory_bytes" in text


def test_openapi_documents_the_resources(api):
    assert api.client.get("/docs").status_code == 200
    schema = api.client.get("/openapi.json").json()
    paths = set(schema["paths"])
    for path in [
        "/v1/models",
        "/v1/datasets",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/artifacts",
        "/v1/jobs/{job_id}/artifacts/{name}",
        "/v1/jobs/{job_id}/cancel",
        "/healthz",
        "/readyz",
        "/metrics",
    ]:
        assert path in paths
    params = schema["paths"]["/v1/jobs"]["post"]["parameters"]
    assert any(p["name"] == "Idempotency-Key" for p in params)
    assert "ErrorOut" in schema["components"]["schemas"]
