"""``s3://bucket/key`` inputs against the real moto S3 server: the per-tenant allow-list at
the gateway, and the fetch by the worker (in-process ``execute_job``, scripted pipeline)
with the service's own credentials, size limits and user errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.db import repo
from service.dispatch import EmbeddedDispatcher
from service.storage import make_storage
from tests.conftest import RUN_ID
from tests.service.payloads import image_tar, imagefolder, safetensors_bytes
from tests.worker import scripted_pipeline
from worker.jobbody import WorkerContext, execute_job

pytestmark = pytest.mark.service

A = f"in-a-{RUN_ID}"
B = f"in-b-{RUN_ID}"
TENANT = f"s3-tenant-{RUN_ID}"
MODEL = safetensors_bytes()
DATA = image_tar(imagefolder(2, 2))


@pytest.fixture(scope="module")
def buckets(s3_server):
    client = s3_server.client()
    for bucket in (A, B):
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=A, Key="models/m.safetensors", Body=MODEL)
    client.put_object(Bucket=A, Key="data/d.tar", Body=DATA)
    client.put_object(Bucket=A, Key="models/big.safetensors", Body=b"x" * 5000)
    client.put_object(Bucket=A, Key="other/m.safetensors", Body=MODEL)
    client.put_object(Bucket=B, Key="models/m.safetensors", Body=MODEL)
    return client


@pytest.fixture
def s3api(make_api, buckets):
    return make_api(
        allowed_uri_schemes=["https", "s3"], s3_input_allow={TENANT: [f"{A}/models/", f"{A}/data"]}
    )


def _register(api, headers, uri):
    data = {"architecture": "digits_vgg", "uri": uri, "kwargs": '{"steps": 1, "delay": 0}'}
    return api.client.post("/v1/models", headers=headers, data=data)


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        (f"s3://{B}/models/m.safetensors", "not in this tenant's allowed"),
        (f"s3://{A}/other/m.safetensors", "not in this tenant's allowed"),
        (f"s3://{A}/modelsX/m.safetensors", "not in this tenant's allowed"),
        (f"s3://{A}/models/../other/m.safetensors", "plain path"),
        (f"s3://{A}/models//m.safetensors", "plain path"),
        (f"s3://{A}", "not s3://bucket/key"),
        ("s3://pxp-artifacts-placeholder/blobs/x", "not in this tenant's allowed"),
    ],
)
def test_s3_uris_outside_the_allow_list_are_refused(s3api, uri, needle):
    resp = _register(s3api, s3api.key(TENANT), uri)
    assert resp.status_code == 422 and resp.json()["error"] == "uri_not_allowed", resp.text
    assert needle in resp.json()["detail"]


def test_the_artifact_bucket_and_other_tenants_are_refused(make_api, buckets, s3_server):
    api = make_api(
        allowed_uri_schemes=["https", "s3"], s3_input_allow={TENANT: [s3_server.bucket, f"{A}/models/"]}
    )
    resp = _register(api, api.key(TENANT), f"s3://{s3_server.bucket}/blobs/whatever")
    assert resp.status_code == 422 and "service's own artifacts" in resp.json()["detail"]
    resp = _register(api, api.key(), f"s3://{A}/models/m.safetensors")  # another tenant
    assert resp.status_code == 422 and resp.json()["error"] == "uri_not_allowed"
    no_s3 = make_api(s3_input_allow={TENANT: [f"{A}/models/"]})
    resp = _register(no_s3, no_s3.key(TENANT), f"s3://{A}/models/m.safetensors")
    assert resp.status_code == 422 and "scheme 's3'" in resp.json()["detail"]


def _ctx(api, **overrides) -> WorkerContext:
    settings = api.settings.model_copy(update=overrides)
    return WorkerContext(
        settings=settings,
        session_factory=api.factory,
        storage=make_storage(settings),
        dispatcher=EmbeddedDispatcher(),
    )


def _run(api, job_id, **overrides):
    seen: dict[str, str | None] = {}

    def pipeline(spec, out_dir, progress=None, **kw):
        for name, value in (("weights", spec.model.weights), ("data", spec.data.source)):
            seen[name] = hashlib.sha256(Path(value).read_bytes()).hexdigest() if value else None
        return scripted_pipeline.run(spec, out_dir, progress, **kw)

    status = execute_job(job_id, _ctx(api, **overrides), pipeline=pipeline)
    with api.factory() as s:
        return status, repo.load_job(s, job_id), seen


def test_a_job_reads_its_model_and_data_from_s3(s3api):
    headers = s3api.key(TENANT)
    model = _register(s3api, headers, f"s3://{A}/models/m.safetensors")
    assert model.status_code == 201, model.text
    spec = {"data": {"source": f"s3://{A}/data/d.tar"}}
    job = s3api.client.post("/v1/jobs", headers=headers, json={"spec": spec, "model_id": model.json()["id"]})
    assert job.status_code == 202, job.text
    status, row, seen = _run(s3api, job.json()["id"])
    assert status == "succeeded", row.error
    assert seen == {"weights": hashlib.sha256(MODEL).hexdigest(), "data": hashlib.sha256(DATA).hexdigest()}


@pytest.mark.parametrize(
    ("key", "overrides", "needle"),
    [
        ("models/missing.safetensors", {}, "NoSuchKey"),
        ("models/big.safetensors", {"max_model_bytes": 1000}, "the limit is 1000"),
        # The worker checks the allow-list again: a tenant removed from it since cannot read.
        ("models/m.safetensors", {"s3_input_allow": {}}, "not in this tenant's allowed"),
    ],
)
def test_s3_fetch_failures_are_user_errors(s3api, key, overrides, needle):
    headers = s3api.key(TENANT)
    spec = {
        "model": {
            "architecture": "digits_vgg",
            "weights": f"s3://{A}/{key}",
            "kwargs": {"steps": 1, "delay": 0},
        }
    }
    job = s3api.client.post("/v1/jobs", headers=headers, json={"spec": spec})
    assert job.status_code == 202, job.text
    status, row, _ = _run(s3api, job.json()["id"], **overrides)
    assert status == "failed"
    assert row.error["kind"] == "user" and needle in row.error["message"], row.error
