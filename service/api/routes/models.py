"""``/v1/models``: checkpoints with their architecture, uploaded or by URI."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from sqlalchemy.orm import Session

from pxp.errors import InvalidSpecError
from service.api import deps
from service.api.auth import Principal, authenticate
from service.api.errors import ApiError, not_found
from service.api.paging import page_cursor, page_limit
from service.api.schemas import ModelOut, Page, error_responses
from service.api.text import check_text, strict_json_loads
from service.api.uploads import spool
from service.db import repo
from service.settings import Settings
from service.storage import Storage, put_blob
from service.storage.inputs import check_input_uri
from service.validation.architectures import check_architecture
from service.validation.checkpoints import check_checkpoint

router = APIRouter(prefix="/v1/models", tags=["models"])


def parse_kwargs(text: str) -> dict[str, Any]:
    try:
        value = strict_json_loads(text or "{}", "kwargs")
    except json.JSONDecodeError as exc:
        raise InvalidSpecError(f"kwargs is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidSpecError("kwargs must be a JSON object")
    return value


def _checked_uri(s: Session, principal: Principal, uri: str, settings: Settings) -> str:
    return check_input_uri(uri, repo.tenant_name(s, principal.tenant_id) or "", settings)


@router.post("", status_code=201, response_model=ModelOut, responses=error_responses(400, 413))
def create_model(
    architecture: Annotated[
        str, Form(description="Registry name, e.g. 'resnet18' or 'timm/vit_tiny_patch16_224'.")
    ],
    kwargs: Annotated[str, Form(description="Constructor kwargs as a JSON object.")] = "{}",
    uri: Annotated[
        str | None, Form(description="Fetch the checkpoint from this URI instead of an upload.")
    ] = None,
    file: Annotated[
        UploadFile | None, File(description="safetensors or torch.save zip of a state_dict.")
    ] = None,
    principal: Principal = Depends(authenticate),
    s: Session = Depends(deps.db),
    settings: Settings = Depends(deps.settings),
    storage: Storage = Depends(deps.storage),
) -> ModelOut:
    """Register a checkpoint. Send exactly one of ``file`` (multipart) and ``uri``.

    The gateway checks the container format (pickle is refused) without torch; whether
    the weights fit the architecture is checked by the worker when a job uses the model.
    """
    check_text(architecture, "architecture")
    check_text(uri, "uri")
    check_architecture(architecture)
    kw = parse_kwargs(kwargs)
    if (file is None) == (uri is None):
        raise ApiError(422, "invalid_request", "send exactly one of 'file' and 'uri'")
    if uri is not None:
        row = repo.add_model(
            s,
            principal.tenant_id,
            architecture=architecture,
            kwargs=kw,
            uri=_checked_uri(s, principal, uri, settings),
        )
        s.commit()
        return ModelOut.of(row)
    assert file is not None
    upload = spool(file.file, file.filename, max_bytes=settings.max_model_bytes, default_name="checkpoint")
    try:
        fmt = check_checkpoint(upload.path)
        key = put_blob(storage, upload.path, upload.sha256)
        row = repo.add_model(
            s,
            principal.tenant_id,
            architecture=architecture,
            kwargs=kw,
            storage_key=key,
            sha256=upload.sha256,
            size_bytes=upload.size,
            format=fmt,
            filename=upload.filename,
        )
        s.commit()
    finally:
        upload.remove()
    return ModelOut.of(row)


@router.get("", response_model=Page[ModelOut], responses=error_responses())
def list_models(
    limit: Annotated[int | None, Query(ge=1)] = None,
    cursor: str | None = None,
    principal: Principal = Depends(authenticate),
    s: Session = Depends(deps.db),
    settings: Settings = Depends(deps.settings),
) -> Page[ModelOut]:
    page = repo.list_models(s, principal.tenant_id, page_limit(limit, settings), page_cursor(cursor))
    return Page[ModelOut](items=[ModelOut.of(r) for r in page.items], next_cursor=page.next_cursor)


@router.get("/{model_id}", response_model=ModelOut, responses=error_responses(404))
def get_model(
    model_id: str, principal: Principal = Depends(authenticate), s: Session = Depends(deps.db)
) -> ModelOut:
    row = repo.get_model(s, principal.tenant_id, model_id)
    if row is None:
        raise not_found("model", model_id)
    return ModelOut.of(row)
