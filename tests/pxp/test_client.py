"""pxp.client against a real gateway and worker: the functions ``pxp submit/status/download`` call.

It mirrors pxp/client.py; the gateway, the Celery worker (scripted pipeline) and the
services come from the fixtures of tests/conftest.py."""

from __future__ import annotations

import io

import pytest

from pxp import client as pxp_client
from pxp.client import PxpApiError, PxpClient
from tests.service.payloads import image_tar, imagefolder, safetensors_bytes

pytestmark = pytest.mark.service


@pytest.fixture
def env(celery_worker, live_gateway, tenant_key, tmp_path):
    (tmp_path / "m.safetensors").write_bytes(safetensors_bytes())
    (tmp_path / "d.tar").write_bytes(image_tar(imagefolder(2, 2)))
    return live_gateway, tenant_key, tmp_path


def test_submit_watch_status_download(env):
    url, key, tmp = env
    out = io.StringIO()
    job = pxp_client.submit(
        {"prune": {"rates": [0.0, 0.5]}},
        model=tmp / "m.safetensors",
        architecture="digits_vgg",
        kwargs={"script": "succeed", "steps": 2},
        data=tmp / "d.tar",
        follow=True,
        url=url,
        api_key=key,
        stream=out,
    )
    assert job["status"] == "succeeded" and job["model_id"] and job["dataset_id"]
    assert "100.0% succeeded" in out.getvalue()
    assert pxp_client.status(job["id"], url=url, api_key=key)["status"] == "succeeded"
    listed = pxp_client.status(url=url, api_key=key)
    assert [j["id"] for j in listed] == [job["id"]]
    paths = pxp_client.download(job["id"], tmp / "out", names=["model.safetensors"], url=url, api_key=key)
    assert (
        list(paths) == ["model.safetensors"]
        and paths["model.safetensors"].read_bytes() == b"weights-digits_vgg"
    )


def test_errors_surface_as_api_errors(env):
    url, key, _tmp = env
    with PxpClient(url, key) as client:
        with pytest.raises(PxpApiError) as err:
            client.submit({"model": {"architecture": "resnet_9000"}})
        assert err.value.status == 422 and err.value.error == "unsupported_architecture"
    with PxpClient(url, "pxp_0123456789abcdef_nope") as client, pytest.raises(PxpApiError) as err:
        client.jobs()
    assert err.value.status == 401


def test_idempotent_submit_and_paging(env):
    url, key, _tmp = env
    spec = {"model": {"architecture": "digits_vgg", "kwargs": {"script": "succeed", "steps": 1}}}
    with PxpClient(url, key) as client:
        first = client.submit(spec, idempotency_key="retry-me")
        assert client.submit(spec, idempotency_key="retry-me")["id"] == first["id"]
        ids = {first["id"]} | {client.submit(spec)["id"] for _ in range(4)}
        assert {j["id"] for j in client.iter_jobs(page_size=2)} == ids
        for job_id in ids:
            client.wait(job_id, timeout=60, poll_interval=0.1)
