"""Turn a ``POST /v1/jobs`` body into a validated, canonical JobSpec for this tenant.

References the worker understands (and nothing else, so a spec can never name a path on
the worker's disk or another database):

* ``model.weights``: ``null`` (the architecture's own initialisation, e.g. a zoo model),
  ``model:<id>`` of this tenant, or an allowed URI;
* ``data.source``: ``digits`` (bundled), ``dataset:<id>`` of this tenant, or an allowed URI;
* ``search.storage`` must be unset: the service chooses the Optuna storage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from pxp.errors import InvalidSpecError
from pxp.spec import JobSpec
from service.api.errors import not_found, validation_message
from service.api.schemas import JobCreate
from service.db import repo
from service.db.refs import DATASET_REF, MODEL_REF, dataset_ref, is_uri, model_ref, parse_ref
from service.settings import Settings
from service.storage.inputs import check_input_uri
from service.storage.remote import check_callback_url
from service.validation.architectures import check_architecture

#: Mirrors ``pxp.data.digits.SOURCES`` (a test keeps them equal).
BUNDLED_DATA = frozenset({"digits", "digits-train"})


@dataclass
class ResolvedJob:
    spec: dict[str, Any]
    model_id: str | None
    dataset_id: str | None
    request_hash: str
    callback_url: str | None = None


def resolve(s: Session, tenant_id: str, body: JobCreate, settings: Settings) -> ResolvedJob:
    tenant = repo.tenant_name(s, tenant_id) or ""
    raw = json.loads(json.dumps(body.spec))
    if not isinstance(raw.get("model", {}), dict) or not isinstance(raw.get("data", {}), dict):
        raise InvalidSpecError("spec.model and spec.data must be objects")
    model_id = body.model_id
    dataset_id = body.dataset_id

    if model_id is not None:
        row = repo.get_model(s, tenant_id, model_id)
        if row is None:
            raise not_found("model", model_id)
        model = raw.setdefault("model", {})
        for field, value in (("architecture", row.architecture), ("kwargs", row.kwargs or {})):
            if field in model and model[field] != value:
                raise InvalidSpecError(f"spec.model.{field} contradicts model {model_id}; leave it out")
            model[field] = value
        if model.get("weights") not in (None, model_ref(model_id)):
            raise InvalidSpecError("spec.model.weights contradicts model_id; leave it out")
        model["weights"] = model_ref(model_id)
    if dataset_id is not None:
        data = raw.setdefault("data", {})
        if data.get("source") not in (None, dataset_ref(dataset_id)):
            raise InvalidSpecError("spec.data.source contradicts dataset_id; leave it out")
        data["source"] = dataset_ref(dataset_id)

    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise InvalidSpecError(validation_message(exc.errors(), prefix="spec.", whole=None)) from None
    check_architecture(spec.model.architecture)
    if spec.search is not None and spec.search.storage is not None:
        raise InvalidSpecError("spec.search.storage is chosen by the service; leave it out")
    if spec.search is not None and spec.search.study_user_attrs:
        raise InvalidSpecError("spec.search.study_user_attrs are set by the service; leave them out")

    weights = spec.model.weights
    if weights is not None:
        if (weights_id := parse_ref(weights, MODEL_REF)) is not None:
            model_id = weights_id
            row = repo.get_model(s, tenant_id, model_id)
            if row is None:
                raise not_found("model", model_id)
            if row.architecture != spec.model.architecture:
                raise InvalidSpecError(
                    f"model {model_id} is a {row.architecture}, not a {spec.model.architecture}"
                )
        elif is_uri(weights):
            check_input_uri(weights, tenant, settings)
        else:
            raise InvalidSpecError("spec.model.weights must be null, 'model:<id>' or a URI")

    source = spec.data.source
    if (source_id := parse_ref(source, DATASET_REF)) is not None:
        dataset_id = source_id
        if repo.get_dataset(s, tenant_id, dataset_id) is None:
            raise not_found("dataset", dataset_id)
    elif is_uri(source):
        check_input_uri(source, tenant, settings)
    elif source not in BUNDLED_DATA:
        raise InvalidSpecError(
            f"spec.data.source must be one of {sorted(BUNDLED_DATA)}, 'dataset:<id>' or a URI"
        )

    if body.callback_url is not None:
        check_callback_url(body.callback_url, settings)

    canonical = spec.model_dump(mode="json")
    # Without a callback the hash is the spec's alone (as before callbacks existed).
    hashed: Any = canonical if body.callback_url is None else [canonical, body.callback_url]
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return ResolvedJob(canonical, model_id, dataset_id, digest, body.callback_url)
