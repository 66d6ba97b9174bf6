"""The served OpenAPI document is the contract: JobSpec's real schema, every status a route
can return (see :func:`service.api.schemas.error_responses`)."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from pxp.spec import JobSpec
from service.api.schemas import JOBSPEC_MARK


def jobspec_schemas() -> dict[str, dict[str, Any]]:
    """``JobSpec`` and the models it uses as OpenAPI components, plus ``JobSpecIn``: the same
    with ``model`` optional (``model_id`` fills it in) and ``model.architecture`` optional
    (taken from the registered model)."""
    schema = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
    components: dict[str, dict[str, Any]] = schema.pop("$defs", {})
    components["JobSpec"] = schema
    spec_in = copy.deepcopy(schema)
    spec_in["title"] = "JobSpecIn"
    spec_in["required"] = [r for r in spec_in.get("required", []) if r != "model"]
    spec_in["description"] = (
        "A pxp.spec.JobSpec. `model` may be left out when `model_id` is given, and `data.source` "
        "when `dataset_id` is; `model.weights` is null, `model:<id>` or an allowed URI; "
        "`search.storage` must be unset."
    )
    spec_in["properties"]["model"] = {"$ref": "#/components/schemas/ModelSpecIn"}
    model_in = copy.deepcopy(components["ModelSpec"])
    model_in["title"] = "ModelSpecIn"
    model_in["required"] = []
    components["JobSpecIn"] = spec_in
    components["ModelSpecIn"] = model_in
    return components


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for schema in schemas.values():
                for name, prop in schema.get("properties", {}).items():
                    if isinstance(prop, dict) and prop.get(JOBSPEC_MARK):
                        schema["properties"][name] = {"$ref": "#/components/schemas/JobSpecIn"}
            for name, schema in jobspec_schemas().items():
                if name in schemas and schemas[name] != schema:
                    raise RuntimeError(f"OpenAPI component {name!r} is defined twice")
                schemas[name] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI documents overriding app.openapi this way
