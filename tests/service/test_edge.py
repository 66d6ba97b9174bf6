"""The gateway's edge: unstorable text and non-JSON numbers are 422 everywhere (defect 3),
a database outage is 503 with Retry-After (defect 1), an unexpected error is a 500 on a
connection the client keeps (defect 4), OPTIONS/405 list every method of a path (defect 9)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.dispatch import EmbeddedDispatcher
from service.keys import generate
from service.settings import Settings
from tests.conftest import free_port, wait_for
from tests.service.payloads import safetensors_bytes

pytestmark = pytest.mark.service

SPEC = {"model": {"architecture": "digits_vgg"}}


def _cursor(row_id: str) -> str:
    raw = json.dumps(["2026-01-01T00:00:00+00:00", row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/%00",
        "/v1/jobs/%00/cancel",
        "/v1/jobs/%00/artifacts",
        "/v1/jobs/x/artifacts/a%00b",
        "/v1/models/%00",
        "/v1/datasets/%00",
        "/v1/jobs?cursor=%00",
        "/v1/jobs?status=%00",
        f"/v1/jobs?cursor={_cursor('a' + chr(0))}",
        f"/v1/models?cursor={_cursor('a' + chr(0))}",
        "/v1/jobs?cursor=%ED%A0%80",
    ],
)
def test_unstorable_text_in_paths_and_queries_is_422(api, path):
    headers = api.key()
    method = "POST" if path.endswith("/cancel") else "GET"
    resp = api.client.request(method, path, headers=headers)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"} and body["error"] == "invalid_request"


RAW_BODIES = [
    # NUL and lone surrogates anywhere: ids, spec strings, kwargs keys and values.
    '{"model_id": "\\u0000"}',
    '{"dataset_id": "a\\u0000b", "spec": {"model": {"architecture": "digits_vgg"}}}',
    '{"spec": {"model": {"architecture": "digits_vgg"}, "device": "cpu\\u0000"}}',
    '{"spec": {"model": {"architecture": "digits_vgg", "kwargs": {"a": "\\ud800"}}}}',
    '{"spec": {"model": {"architecture": "digits_vgg", "kwargs": {"\\u0000": 1}}}}',
    '{"spec": {"model": {"architecture": "\\udfff"}}}',
    # NaN / Infinity are not JSON.
    '{"spec": {"model": {"architecture": "digits_vgg", "kwargs": {"a": NaN}}}}',
    '{"spec": {"model": {"architecture": "digits_vgg"}, "data": {"mean": [Infinity]}}}',
    '{"spec": {"model": {"architecture": "digits_vgg"}, "prune": {"rates": [-Infinity]}}}',
    '{"spec": {"model": {"architecture": "digits_vgg"}, "splits": {"search_fraction": NaN}}}',
]


@pytest.mark.parametrize("raw", RAW_BODIES)
@pytest.mark.parametrize("content_type", ["application/json", None])
def test_unstorable_text_and_nan_in_json_bodies_are_422(api, raw, content_type):
    headers = api.key()
    if content_type:
        headers["Content-Type"] = content_type
    resp = api.client.post("/v1/jobs", headers=headers, content=raw.encode())
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"} and body["error"] == "invalid_request"
    # Nothing was stored (NaN used to become null in spec.model.kwargs).
    assert api.client.get("/v1/jobs", headers=api.key()).json()["items"] == []


@pytest.mark.parametrize(
    "form",
    [
        {"architecture": "digits_vgg", "kwargs": '{"a": NaN}'},
        {"architecture": "digits_vgg", "kwargs": '{"a": Infinity}'},
        {"architecture": "digits_vgg", "kwargs": '{"a": "\\u0000"}'},
        {"architecture": "digits_vgg", "kwargs": '{"a": "\\ud800"}'},
        {"architecture": "digits\x00vgg"},
    ],
)
def test_unstorable_text_and_nan_in_upload_forms_are_422(api, form):
    headers = api.key()
    resp = api.client.post(
        "/v1/models", headers=headers, data=form, files={"file": ("m.safetensors", safetensors_bytes())}
    )
    assert resp.status_code == 422, resp.text
    assert set(resp.json()) == {"error", "detail"}


def test_uri_forms_with_nul_are_422(api):
    headers = api.key()
    resp = api.client.post("/v1/datasets", headers=headers, data={"uri": "https://example.com/\x00"})
    assert resp.status_code == 422, resp.text
    resp = api.client.post(
        "/v1/models", headers=headers, data={"architecture": "digits_vgg", "uri": "https://e.com/\x00"}
    )
    assert resp.status_code == 422, resp.text


def test_a_valid_job_still_goes_through(api):
    resp = api.client.post("/v1/jobs", headers=api.key(), json={"spec": SPEC})
    assert resp.status_code == 202, resp.text


def test_options_and_405_list_every_method_of_the_path(api):
    resp = api.client.options("/v1/jobs")
    assert resp.status_code == 204
    assert set(resp.headers["allow"].split(", ")) == {"GET", "HEAD", "POST", "OPTIONS"}
    resp = api.client.delete("/v1/jobs")
    assert resp.status_code == 405
    assert set(resp.headers["allow"].split(", ")) == {"GET", "HEAD", "POST", "OPTIONS"}
    assert resp.json()["error"] == "method_not_allowed"


# Database outage: 503 with Retry-After ---------------------------------------------------


@pytest.fixture
def dead_db_app(tmp_path: Path) -> Any:
    from service.db.session import make_session_factory

    dead = Settings(
        data_dir=tmp_path, database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"
    )
    return create_app(dead, session_factory=make_session_factory(dead), dispatcher=EmbeddedDispatcher())


def _bearer() -> dict[str, str]:
    _key_id, plaintext, _hash = generate()
    return {"Authorization": f"Bearer {plaintext}"}


def test_requests_during_a_database_outage_get_503_with_retry_after(dead_db_app):
    from fastapi.testclient import TestClient

    with TestClient(dead_db_app) as client:
        for method, path, kwargs in [
            ("POST", "/v1/jobs", {"json": {"spec": SPEC}}),
            ("GET", "/v1/jobs", {}),
            ("GET", "/v1/jobs/abc", {}),
            ("POST", "/v1/models", {"data": {"architecture": "digits_vgg", "uri": "https://e.com/m"}}),
        ]:
            resp = client.request(method, path, headers=_bearer(), **kwargs)
            assert resp.status_code == 503, (path, resp.text)
            assert resp.headers["retry-after"].isdigit()
            assert resp.json()["error"] == "unavailable"


# Unexpected errors keep the connection -----------------------------------------------------


class _Broken:
    """A session factory whose sessions blow up with an error nobody expects."""

    def __call__(self) -> Any:
        raise RuntimeError("boom: not a database outage")


@pytest.fixture
def live_broken_gateway(tmp_path: Path) -> Iterator[str]:
    import uvicorn

    app = create_app(Settings(data_dir=tmp_path), session_factory=_Broken(), dispatcher=EmbeddedDispatcher())  # type: ignore[arg-type]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: server.started, 20, 0.05, "uvicorn")
    yield url
    server.should_exit = True
    thread.join(10)


def test_an_unexpected_error_is_a_500_json_on_a_connection_the_client_keeps(live_broken_gateway):
    local_ports = []
    with httpx.Client(base_url=live_broken_gateway, limits=httpx.Limits(max_connections=1)) as client:
        for _ in range(3):
            resp = client.get("/v1/jobs", headers=_bearer())
            assert resp.status_code == 500
            assert resp.json() == {"error": "internal", "detail": "internal server error"}
            assert resp.headers.get("connection", "").lower() != "close"
            stream = resp.extensions["network_stream"]
            local_ports.append(stream.get_extra_info("client_addr")[1])
            time.sleep(0.05)
        assert client.get("/healthz").status_code == 200
    # One connection served every request.
    assert len(set(local_ports)) == 1, local_ports


@pytest.mark.parametrize(
    "patch",
    [
        {"splits": {"seed": 1e30}},
        {"device": "meta"},
        {"data": {"std": [0]}},
    ],
)
def test_bad_spec_fields_are_422_at_the_gateway_not_internal_in_the_worker(api, patch):
    resp = api.client.post("/v1/jobs", headers=api.key(), json={"spec": {**SPEC, **patch}})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "invalid_spec"
