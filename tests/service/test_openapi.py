"""The served OpenAPI document is the contract (defect 9) and /metrics leaks no tenant (defect 8)."""

from __future__ import annotations

import pytest

from pxp.spec import JobSpec

pytestmark = pytest.mark.service


@pytest.fixture
def doc(api):
    resp = api.client.get("/openapi.json")
    assert resp.status_code == 200
    return resp.json()


def test_job_create_spec_is_the_real_jobspec_schema(doc):
    schemas = doc["components"]["schemas"]
    assert schemas["JobCreate"]["properties"]["spec"] == {"$ref": "#/components/schemas/JobSpecIn"}
    real = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    assert schemas["JobSpec"]["properties"] == real["properties"]
    assert set(schemas["JobSpecIn"]["properties"]) == set(real["properties"])
    assert "model" not in schemas["JobSpecIn"].get("required", [])
    # Nested specs are served too, with their bounds (seeds, device names, std).
    assert schemas["SplitSpec"]["properties"]["seed"]["maximum"] == 2**32 - 1
    assert "pattern" in schemas["JobSpec"]["properties"]["device"]
    for ref in _refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def _refs(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def test_every_route_documents_the_statuses_it_can_return(doc):
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            codes = set(op["responses"])
            if path.startswith("/v1/"):
                assert {"401", "422", "500", "503"} <= codes, (method, path, codes)
            if "{" in path:
                assert "404" in codes, (method, path)
    assert {"400", "413"} <= set(doc["paths"]["/v1/models"]["post"]["responses"])
    assert {"400", "413"} <= set(doc["paths"]["/v1/datasets"]["post"]["responses"])
    assert {"404", "409", "413"} <= set(doc["paths"]["/v1/jobs"]["post"]["responses"])
    assert "409" in doc["paths"]["/v1/jobs/{job_id}/cancel"]["post"]["responses"]
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    events = doc["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]


def test_a_malformed_multipart_body_is_a_documented_400(api):
    headers = {**api.key(), "Content-Type": "multipart/form-data; boundary=xyz"}
    resp = api.client.post("/v1/datasets", headers=headers, content=b"--xyz\r\nnot a part")
    assert resp.status_code == 400, resp.text
    assert set(resp.json()) == {"error", "detail"}


def test_metrics_serve_text_without_tenant_labels(api):
    headers = api.key()
    assert (
        api.client.post(
            "/v1/jobs", headers=headers, json={"spec": {"model": {"architecture": "digits_vgg"}}}
        ).status_code
        == 202
    )
    resp = api.client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    assert "tenant" not in resp.text


def test_metrics_token_is_required_when_set(make_api):
    api = make_api(metrics_token="s3cret")
    assert api.client.get("/metrics").status_code == 401
    assert api.client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert api.client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
