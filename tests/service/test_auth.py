"""API keys: bearer auth, hashed storage, revocation, tenant isolation."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from service.db import repo
from service.db.models import ApiKey
from tests.service.payloads import safetensors_bytes

pytestmark = pytest.mark.service


def _job(api, headers) -> str:
    resp = api.client.post(
        "/v1/jobs", headers=headers, json={"spec": {"model": {"architecture": "digits_vgg"}}}
    )
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer not-a-pxp-key"},
        {"Authorization": "Bearer pxp_0123456789abcdef_wrongsecret"},
    ],
    ids=["missing", "empty", "basic", "malformed", "unknown"],
)
def test_missing_or_invalid_key_is_401(api, headers):
    resp = api.client.get("/v1/jobs", headers=headers)
    assert resp.status_code == 401
    body = resp.json()
    assert body["error"] == "unauthorized" and body["detail"]
    assert resp.headers["www-authenticate"] == "Bearer"


def test_wrong_secret_for_existing_key_id_is_401(api):
    good = api.key()["Authorization"].removeprefix("Bearer ")
    prefix, key_id, _secret = good.split("_", 2)
    resp = api.client.get("/v1/jobs", headers={"Authorization": f"Bearer {prefix}_{key_id}_x{_secret}"})
    assert resp.status_code == 401


def test_key_is_stored_hashed(api):
    headers = api.key("hash-check")
    plaintext = headers["Authorization"].removeprefix("Bearer ")
    with api.factory() as s:
        rows = s.scalars(select(ApiKey)).all()
    assert rows
    assert all(plaintext not in (r.secret_hash, r.id) for r in rows)
    assert all(len(r.secret_hash) == 64 for r in rows)


def test_revoked_key_is_rejected(api):
    headers = api.key()
    assert api.client.get("/v1/jobs", headers=headers).status_code == 200
    key_id = headers["Authorization"].split("_")[1]
    with api.factory() as s:
        assert repo.revoke_api_key(s, key_id)
        s.commit()
    resp = api.client.get("/v1/jobs", headers=headers)
    assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"


def test_upload_without_key_is_refused_before_the_body_is_stored(api):
    before = api.s3.object_keys()
    resp = api.client.post(
        "/v1/models",
        data={"architecture": "digits_vgg"},
        files={"file": ("m.safetensors", safetensors_bytes())},
    )
    assert resp.status_code == 401
    assert api.s3.object_keys() == before


def test_other_tenants_job_is_not_found(api):
    alice, bob = api.key("alice"), api.key("bob")
    job_id = _job(api, alice)
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/artifacts"),
        ("GET", f"/v1/jobs/{job_id}/artifacts/model.safetensors"),
        ("GET", f"/v1/jobs/{job_id}/events"),
    ]:
        resp = api.client.request(method, path, headers=bob)
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.json() == {"error": "not_found", "detail": f"job {job_id!r} not found"}
    assert api.client.get("/v1/jobs", headers=bob).json()["items"] == []
    assert api.client.get(f"/v1/jobs/{job_id}", headers=alice).json()["status"] == "queued"


def test_other_tenants_model_cannot_be_used(api):
    alice, bob = api.key(), api.key()
    model = api.client.post(
        "/v1/models",
        headers=alice,
        data={"architecture": "digits_vgg"},
        files={"file": ("m.safetensors", safetensors_bytes())},
    ).json()
    assert api.client.get(f"/v1/models/{model['id']}", headers=bob).status_code == 404
    resp = api.client.post("/v1/jobs", headers=bob, json={"model_id": model["id"]})
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    resp = api.client.post(
        "/v1/jobs",
        headers=bob,
        json={"spec": {"model": {"architecture": "digits_vgg", "weights": f"model:{model['id']}"}}},
    )
    assert resp.status_code == 404
