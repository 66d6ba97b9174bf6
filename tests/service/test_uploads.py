"""POST /v1/models and /v1/datasets: accepted formats and every refused input.

A refused upload must answer a clear 4xx ``{error, detail}`` and leave nothing behind:
no database row and no stored object.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import func, select

from service.db.models import DatasetObject, ModelObject
from service.storage import blob_key
from tests.service.payloads import (
    PICKLE_RCE,
    image_tar,
    image_zip,
    imagefolder,
    safetensors_bytes,
    torch_zip_bytes,
)

pytestmark = pytest.mark.service


def _counts(api) -> tuple[int, int, int]:
    with api.factory() as s:
        models = s.scalar(select(func.count()).select_from(ModelObject))
        datasets = s.scalar(select(func.count()).select_from(DatasetObject))
    return models or 0, datasets or 0, len(api.s3.object_keys())


def _post_model(api, headers, payload: bytes, architecture: str = "digits_vgg", **data):
    return api.client.post(
        "/v1/models",
        headers=headers,
        data={"architecture": architecture, **data},
        files={"file": ("checkpoint.bin", payload)},
    )


def _post_dataset(api, headers, payload: bytes, name: str = "data.tar"):
    return api.client.post("/v1/datasets", headers=headers, files={"file": (name, payload)})


def _refused(api, resp, status: int, error: str, before) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == error and body["detail"]
    assert _counts(api) == before, "a refused upload left a row or an object behind"
    return body["detail"]


# Models -------------------------------------------------------------------------------------


def test_safetensors_model_is_stored_content_addressed(api):
    headers = api.key()
    payload = safetensors_bytes()
    resp = _post_model(api, headers, payload, kwargs=json.dumps({"num_classes": 10}))
    assert resp.status_code == 201, resp.text
    body = resp.json()
    sha = hashlib.sha256(payload).hexdigest()
    assert body["sha256"] == sha and body["format"] == "safetensors" and body["kwargs"] == {"num_classes": 10}
    assert blob_key(sha) in api.s3.object_keys()
    assert api.client.get(f"/v1/models/{body['id']}", headers=headers).json() == body
    listed = api.client.get("/v1/models", headers=headers).json()
    assert [m["id"] for m in listed["items"]] == [body["id"]]


def test_real_torch_save_checkpoint_is_accepted(api, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.zeros(2, 3), "b": torch.ones(3, dtype=torch.int64)}, path)
    resp = _post_model(api, api.key(), path.read_bytes())
    assert resp.status_code == 201, resp.text
    assert resp.json()["format"] == "torch-zip"


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (PICKLE_RCE, "pickle"),
        (torch_zip_bytes(PICKLE_RCE), "posix.system"),
        (b"\x80\x02cbuiltins\neval\nq\x00.", "pickle"),
        (safetensors_bytes()[:-3], "safetensors"),
        (b"\x0e\x00\x00\x00\x00\x00\x00\x00{not json}    ", "JSON"),
        (b"hello world, not a checkpoint", "unrecognised"),
    ],
    ids=[
        "raw-pickle",
        "torch-zip-with-rce",
        "protocol2-pickle",
        "truncated-safetensors",
        "bad-header",
        "garbage",
    ],
)
def test_unsafe_or_unreadable_checkpoint_is_refused(api, payload, needle):
    before = _counts(api)
    detail = _refused(api, _post_model(api, api.key(), payload), 422, "invalid_model", before)
    assert needle in detail


def test_unknown_architecture_upload_is_refused(api):
    before = _counts(api)
    detail = _refused(
        api,
        _post_model(api, api.key(), safetensors_bytes(), "resnet_9000"),
        422,
        "unsupported_architecture",
        before,
    )
    assert "resnet_9000" in detail


def test_malformed_kwargs_are_refused(api):
    before = _counts(api)
    _refused(
        api, _post_model(api, api.key(), safetensors_bytes(), kwargs="{nope"), 422, "invalid_spec", before
    )
    _refused(
        api, _post_model(api, api.key(), safetensors_bytes(), kwargs="[1, 2]"), 422, "invalid_spec", before
    )


def test_file_and_uri_together_are_refused(api):
    before = _counts(api)
    resp = _post_model(api, api.key(), safetensors_bytes(), uri="https://example.com/m.safetensors")
    _refused(api, resp, 422, "invalid_request", before)


def test_oversize_model_upload_is_413(make_api):
    api = make_api(max_model_bytes=1024)
    before = _counts(api)
    payload = safetensors_bytes({"w": ("F32", [1024])})
    _refused(api, _post_model(api, api.key(), payload), 413, "payload_too_large", before)


def test_oversize_chunked_upload_is_413(make_api):
    """No Content-Length: the limit is enforced while the body streams in."""
    api = make_api(max_model_bytes=1024)
    headers = api.key()
    before = _counts(api)
    boundary = "pxpboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="architecture"\r\n\r\ndigits_vgg\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    def body():
        yield head
        for _ in range(200):
            yield b"\0" * 4096
        yield f"\r\n--{boundary}--\r\n".encode()

    resp = api.client.post(
        "/v1/models",
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body(),
    )
    _refused(api, resp, 413, "payload_too_large", before)


def test_oversize_json_body_is_413(make_api):
    api = make_api(max_json_bytes=2048)
    resp = api.client.post(
        "/v1/jobs",
        headers=api.key(),
        json={"spec": {"model": {"architecture": "digits_vgg", "kwargs": {"pad": "x" * 5000}}}},
    )
    assert resp.status_code == 413 and resp.json()["error"] == "payload_too_large"


# Datasets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "name", "fmt"),
    [
        (image_tar(imagefolder(3, 2)), "d.tar", "tar"),
        (image_tar(imagefolder(3, 2), gz=True), "d.tar.gz", "tar"),
        (image_zip(imagefolder(3, 2)), "d.zip", "zip"),
        (image_tar({k.removeprefix("data/"): v for k, v in imagefolder(3, 2).items()}), "flat.tar", "tar"),
        (image_tar({f"a/b/{k}": v for k, v in imagefolder(3, 2).items()}), "wrapped.tar", "tar"),
    ],
    ids=["tar", "tar.gz", "zip", "no-root-dir", "nested-wrappers"],
)
def test_imagefolder_archive_is_accepted_with_its_classes(api, payload, name, fmt):
    resp = _post_dataset(api, api.key(), payload, name)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (
        body["format"] == fmt
        and body["class_names"] == ["class0", "class1", "class2"]
        and body["num_files"] == 6
    )


def test_tensor_dataset_is_accepted(api):
    payload = safetensors_bytes({"images": ("U8", [4, 1, 8, 8]), "labels": ("I64", [4])})
    resp = _post_dataset(api, api.key(), payload, "d.safetensors")
    assert resp.status_code == 201, resp.text
    assert resp.json()["format"] == "safetensors"


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (image_tar({**imagefolder(2, 2), "data/class0/../../../etc/evil.png": b"x"}), "escapes"),
        (image_tar({**imagefolder(2, 2), "/abs/class0/x.png": b"x"}), "escapes"),
        (image_zip({**imagefolder(2, 2), "../evil.png": b"x"}), "escapes"),
        (image_tar(imagefolder(2, 2), links={"data/class0/link.png": "/etc/passwd"}), "link"),
        (image_tar(imagefolder(1, 5)), "1 class"),
        (image_tar({"readme.txt": b"hello"}), "no images"),
        (PICKLE_RCE, "pickle"),
        (b"just some bytes", "unrecognised"),
    ],
    ids=[
        "dotdot-tar",
        "absolute-tar",
        "dotdot-zip",
        "symlink",
        "one-class",
        "no-images",
        "pickle",
        "garbage",
    ],
)
def test_bad_dataset_is_refused(api, payload, needle):
    before = _counts(api)
    detail = _refused(api, _post_dataset(api, api.key(), payload), 422, "invalid_data", before)
    assert needle in detail


def test_archive_member_limit(make_api):
    api = make_api(max_archive_members=5)
    before = _counts(api)
    detail = _refused(
        api, _post_dataset(api, api.key(), image_tar(imagefolder(2, 4))), 422, "invalid_data", before
    )
    assert "more than 5 members" in detail


def test_archive_uncompressed_size_limit(make_api):
    """A small gzip that expands past the limit (a bomb) is refused from the headers."""
    api = make_api(max_archive_uncompressed_bytes=100_000)
    before = _counts(api)
    payload = image_tar({**imagefolder(2, 2), "data/class0/big.png": b"\0" * 200_000}, gz=True)
    assert len(payload) < 10_000
    detail = _refused(api, _post_dataset(api, api.key(), payload), 422, "invalid_data", before)
    assert "expands" in detail


def test_oversize_dataset_is_413(make_api):
    api = make_api(max_dataset_bytes=2048)
    before = _counts(api)
    _refused(
        api, _post_dataset(api, api.key(), image_tar(imagefolder(2, 5))), 413, "payload_too_large", before
    )


# URIs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("file:///etc/passwd", "scheme"),
        ("ftp://example.com/model.pt", "scheme"),
        ("s3://bucket/model.pt", "scheme"),
        ("gopher://127.0.0.1:70/", "scheme"),
        ("http://127.0.0.1:8000/model.pt", "non-public"),
        ("http://localhost/model.pt", "non-public"),
        ("http://169.254.169.254/latest/meta-data/", "non-public"),
        ("http://10.1.2.3/model.pt", "non-public"),
        ("http://[::1]/model.pt", "non-public"),
        ("http://[::ffff:127.0.0.1]/model.pt", "non-public"),
        ("http://user:pw@example.com/model.pt", "credentials"),
    ],
)
def test_disallowed_uri_is_refused(make_api, uri, needle):
    api = make_api(allow_private_addresses=False)
    before = _counts(api)
    resp = api.client.post("/v1/models", headers=api.key(), data={"architecture": "digits_vgg", "uri": uri})
    assert needle in _refused(api, resp, 422, "uri_not_allowed", before)
    resp = api.client.post("/v1/datasets", headers=api.key(), data={"uri": uri})
    assert needle in _refused(api, resp, 422, "uri_not_allowed", before)


def test_uri_in_job_spec_is_checked(make_api):
    api = make_api(allow_private_addresses=False)
    spec = {"model": {"architecture": "digits_vgg", "weights": "http://192.168.0.10/m.safetensors"}}
    resp = api.client.post("/v1/jobs", headers=api.key(), json={"spec": spec})
    assert resp.status_code == 422 and resp.json()["error"] == "uri_not_allowed"
    spec = {"model": {"architecture": "digits_vgg"}, "data": {"source": "file:///data/train.tar"}}
    resp = api.client.post("/v1/jobs", headers=api.key(), json={"spec": spec})
    assert resp.status_code == 422 and resp.json()["error"] == "uri_not_allowed"


def test_uri_registration_when_private_addresses_are_configured(make_api):
    api = make_api(allow_private_addresses=True)
    resp = api.client.post(
        "/v1/models",
        headers=api.key(),
        data={"architecture": "digits_vgg", "uri": "http://127.0.0.1:9/model.safetensors"},
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["uri"] == "http://127.0.0.1:9/model.safetensors" and resp.json()["sha256"] is None
