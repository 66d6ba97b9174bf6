"""``/v1/datasets``: labelled reference data, uploaded or by URI."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from sqlalchemy.orm import Session

from service.api import deps
from service.api.auth import Principal, authenticate
from service.api.errors import ApiError, not_found
from service.api.paging import page_cursor, page_limit
from service.api.schemas import DatasetOut, Page, error_responses
from service.api.text import check_text
from service.api.uploads import spool
from service.db import repo
from service.settings import Settings
from service.storage import Storage, put_blob
from service.storage.inputs import check_input_uri
from service.validation.archives import check_dataset

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _checked_uri(s: Session, principal: Principal, uri: str, settings: Settings) -> str:
    return check_input_uri(uri, repo.tenant_name(s, principal.tenant_id) or "", settings)


@router.post("", status_code=201, response_model=DatasetOut, responses=error_responses(400, 413))
def create_dataset(
    uri: Annotated[str | None, Form(description="Fetch the data from this URI instead of an upload.")] = None,
    file: Annotated[
        UploadFile | None, File(description="ImageFolder tar/tar.gz/zip (<class>/<image>) or safetensors.")
    ] = None,
    principal: Principal = Depends(authenticate),
    s: Session = Depends(deps.db),
    settings: Settings = Depends(deps.settings),
    storage: Storage = Depends(deps.storage),
) -> DatasetOut:
    """Register reference data. Send exactly one of ``file`` (multipart) and ``uri``.

    Archives are checked without extracting: member names (no absolute paths, ``..``,
    links), member count, declared size, and at least two class directories.
    """
    check_text(uri, "uri")
    if (file is None) == (uri is None):
        raise ApiError(422, "invalid_request", "send exactly one of 'file' and 'uri'")
    if uri is not None:
        row = repo.add_dataset(s, principal.tenant_id, uri=_checked_uri(s, principal, uri, settings))
        s.commit()
        return DatasetOut.of(row)
    assert file is not None
    upload = spool(file.file, file.filename, max_bytes=settings.max_dataset_bytes, default_name="dataset")
    try:
        # This route is a plain ``def``: FastAPI runs it (spooling, validation) in the
        # threadpool, never on the event loop; the validation work is bounded by the limits.
        summary = check_dataset(
            upload.path,
            max_members=settings.max_archive_members,
            max_uncompressed_bytes=settings.max_archive_uncompressed_bytes,
            max_ratio=settings.max_archive_ratio,
        )
        key = put_blob(storage, upload.path, upload.sha256)
        row = repo.add_dataset(
            s,
            principal.tenant_id,
            storage_key=key,
            sha256=upload.sha256,
            size_bytes=upload.size,
            format=summary.format,
            filename=upload.filename,
            class_names=summary.class_names,
            num_files=summary.num_files,
        )
        s.commit()
    finally:
        upload.remove()
    return DatasetOut.of(row)


@router.get("", response_model=Page[DatasetOut], responses=error_responses())
def list_datasets(
    limit: Annotated[int | None, Query(ge=1)] = None,
    cursor: str | None = None,
    principal: Principal = Depends(authenticate),
    s: Session = Depends(deps.db),
    settings: Settings = Depends(deps.settings),
) -> Page[DatasetOut]:
    page = repo.list_datasets(s, principal.tenant_id, page_limit(limit, settings), page_cursor(cursor))
    return Page[DatasetOut](items=[DatasetOut.of(r) for r in page.items], next_cursor=page.next_cursor)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=error_responses(404))
def get_dataset(
    dataset_id: str, principal: Principal = Depends(authenticate), s: Session = Depends(deps.db)
) -> DatasetOut:
    row = repo.get_dataset(s, principal.tenant_id, dataset_id)
    if row is None:
        raise not_found("dataset", dataset_id)
    return DatasetOut.of(row)
