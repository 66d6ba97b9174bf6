"""Structured logs: X-Request-ID accepted or generated and echoed, stored on the job it
creates, and carried (with job id, tenant and stage) by JSON log lines of the gateway and
of a real Celery worker."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re

import httpx
import pytest

from pxp import jsonlog
from pxp.client import PxpClient
from service.db import repo
from tests.conftest import wait_for

pytestmark = pytest.mark.service

SPEC = {"model": {"architecture": "digits_vgg", "kwargs": {"script": "succeed", "steps": 2, "delay": 0.1}}}


def _lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


@pytest.fixture
def log_buffer():
    buf = io.StringIO()
    handler = jsonlog.configure("json", "INFO", stream=buf)
    yield buf
    logging.getLogger().removeHandler(handler)


def test_request_id_is_echoed_generated_or_replaced(api):
    assert api.client.get("/healthz", headers={"X-Request-ID": "abc-123.x:y_z"}).headers["x-request-id"] == (
        "abc-123.x:y_z"
    )
    generated = api.client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    for bad in ("has space", "x" * 129, 'quote"d'):
        echoed = api.client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert echoed != bad and re.fullmatch(r"[0-9a-f]{32}", echoed)
    # Error responses carry it too.
    resp = api.client.get("/v1/jobs", headers={"X-Request-ID": "unauth-1"})
    assert resp.status_code == 401 and resp.headers["x-request-id"] == "unauth-1"


def test_gateway_lines_and_the_job_row_carry_the_request_id(api, log_buffer):
    headers = {**api.key(), "X-Request-ID": "req-create-1"}
    resp = api.client.post("/v1/jobs", json={"spec": SPEC}, headers=headers)
    assert resp.status_code == 202 and resp.headers["x-request-id"] == "req-create-1"
    job = resp.json()
    assert job["request_id"] == "req-create-1"
    with api.factory() as s:
        row = repo.load_job(s, job["id"])
        assert row is not None and row.request_id == "req-create-1"
        tenant_id = row.tenant_id
    lines = [line for line in _lines(log_buffer.getvalue()) if line.get("request_id") == "req-create-1"]
    access = [line for line in lines if line["logger"] == "pxp.access"]
    assert access and access[0]["path"] == "/v1/jobs" and access[0]["status"] == 202
    assert access[0]["method"] == "POST" and access[0]["tenant"] == tenant_id
    assert access[0]["duration_ms"] >= 0 and {"ts", "level", "msg", "pid"} <= set(access[0])
    created = [line for line in lines if line["msg"] == "job created"]
    assert created and created[0]["job_id"] == job["id"] and created[0]["tenant"] == tenant_id


def test_worker_lines_carry_job_tenant_stage_and_request_id(
    celery_worker, live_gateway, tenant_key, committed_factory
):
    resp = httpx.post(
        f"{live_gateway}/v1/jobs",
        json={"spec": SPEC},
        headers={"Authorization": f"Bearer {tenant_key}", "X-Request-ID": "req-worker-7"},
        timeout=30,
    )
    assert resp.status_code == 202 and resp.headers["x-request-id"] == "req-worker-7"
    job_id = resp.json()["id"]
    with PxpClient(live_gateway, tenant_key, timeout=30) as client:
        assert client.wait(job_id, timeout=60, poll_interval=0.1)["status"] == "succeeded"

    def job_lines() -> list[dict]:
        lines = [
            line
            for line in _lines(celery_worker.log.read_text(errors="replace"))
            if line.get("job_id") == job_id
        ]
        return lines if any(line["msg"].endswith(": succeeded") for line in lines) else []

    lines = wait_for(job_lines, 10, what="the worker's log lines of the job")
    with committed_factory() as s:
        row = repo.load_job(s, job_id)
        assert row is not None
        tenant_id = row.tenant_id
    claimed = [line for line in lines if "claimed" in line["msg"]]
    assert claimed, lines
    after = lines[lines.index(claimed[0]) :]
    assert all(line["request_id"] == "req-worker-7" and line["tenant"] == tenant_id for line in after), after
    assert all(line["logger"].startswith("pxp.") and line["level"] in ("INFO", "WARNING") for line in after)
    stages = {line.get("stage") for line in lines}
    assert {"stage0", "stage1"} <= stages, stages
