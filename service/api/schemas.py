"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from service.db.models import (
    Artifact,
    DatasetObject,
    DeliveryStatus,
    ErrorKind,
    Job,
    JobStatus,
    ModelObject,
    WebhookDelivery,
)


class ErrorOut(BaseModel):
    error: str = Field(description="Machine-readable error code, e.g. 'invalid_model'.")
    detail: str = Field(description="Human-readable explanation.")


class ModelOut(BaseModel):  # type: ignore[no-redef]  # pydantic mypy plugin trips on a field named kwargs
    id: str
    architecture: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    uri: str | None
    sha256: str | None
    size_bytes: int | None
    format: str | None
    filename: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: ModelObject) -> ModelOut:
        return cls(
            id=row.id,
            architecture=row.architecture,
            kwargs=row.kwargs or {},
            uri=row.uri,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            format=row.format,
            filename=row.filename,
            created_at=row.created_at,
        )


class DatasetOut(BaseModel):
    id: str
    uri: str | None
    sha256: str | None
    size_bytes: int | None
    format: str | None
    filename: str | None
    class_names: list[str] | None
    num_files: int | None
    created_at: datetime

    @classmethod
    def of(cls, row: DatasetObject) -> DatasetOut:
        return cls(
            id=row.id,
            uri=row.uri,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            format=row.format,
            filename=row.filename,
            class_names=row.class_names,
            num_files=row.num_files,
            created_at=row.created_at,
        )


#: Marks the schema :mod:`service.api.openapi` replaces with a reference to ``JobSpecIn``.
JOBSPEC_MARK = "x-pxp-jobspec"


class JobCreate(BaseModel):
    """A job. ``spec`` is a :class:`pxp.spec.JobSpec`; its ``model.weights`` may be
    ``model:<id>`` or an allowed URI and ``data.source`` ``digits``, ``dataset:<id>`` or an
    allowed URI. ``model_id`` / ``dataset_id`` are shortcuts that fill those fields (and the
    architecture and kwargs from the model)."""

    model_config = ConfigDict(extra="forbid")

    # Validated by pxp.spec.JobSpec in service.api.job_requests (after model_id/dataset_id fill
    # it in, so its errors are 422 invalid_spec); the OpenAPI schema is JobSpec's own, served by
    # service.api.openapi, with ``model`` optional when ``model_id`` is given.
    spec: Annotated[dict[str, Any], WithJsonSchema({"type": "object", JOBSPEC_MARK: True})] = Field(
        default_factory=dict
    )
    model_id: str | None = None
    dataset_id: str | None = None
    callback_url: str | None = Field(
        None,
        max_length=2000,
        description="POSTed the job's final JSON on every terminal state, signed with the tenant's "
        "webhook secret (X-Pxp-Signature, X-Pxp-Timestamp); see docs/integrations.md.",
    )
    reproduce_of: str | None = Field(
        None,
        max_length=64,
        description="Re-run this earlier succeeded job of the tenant (its spec, model and data) and "
        "compare: the result's `reproduction` says `identical` or lists what differs. "
        "`spec`, `model_id` and `dataset_id` must then be left out.",
    )


class JobError(BaseModel):
    type: str
    message: str
    kind: ErrorKind = "internal"


class JobOut(BaseModel):
    id: str
    status: JobStatus
    stage: str | None
    progress: float
    message: str
    trial: int | None
    cancel_requested: bool
    attempts: int
    model_id: str | None
    dataset_id: str | None
    metrics: dict[str, Any] | None
    error: JobError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    callback_url: str | None = None
    request_id: str | None = None
    reproduces_job_id: str | None = None
    spec: dict[str, Any] | None = None
    result: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: Job, *, full: bool = True) -> JobOut:
        return cls(
            id=row.id,
            status=JobStatus(row.status),
            stage=row.stage,
            progress=row.progress,
            message=row.message,
            trial=row.trial,
            cancel_requested=row.cancel_requested,
            attempts=row.attempts,
            model_id=row.model_id,
            dataset_id=row.dataset_id,
            metrics=row.metrics,
            error=JobError(**row.error) if row.error else None,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            updated_at=row.updated_at,
            callback_url=row.callback_url,
            request_id=row.request_id,
            reproduces_job_id=row.reproduces_job_id,
            spec=row.spec if full else None,
            result=row.result if full else None,
        )


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= to get the next page; null at the end."
    )


class ArtifactOut(BaseModel):
    name: str
    filename: str
    sha256: str
    size_bytes: int
    content_type: str
    url: str

    @classmethod
    def of(cls, row: Artifact) -> ArtifactOut:
        return cls(
            name=row.name,
            filename=row.filename,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            content_type=row.content_type,
            url=f"/v1/jobs/{row.job_id}/artifacts/{row.name}",
        )


class DeliveryOut(BaseModel):
    """One webhook delivery of a job (an outbox row) and how its attempts went."""

    id: str
    event: str
    url: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def of(cls, row: WebhookDelivery) -> DeliveryOut:
        return cls(
            id=row.id,
            event=row.event,
            url=row.url,
            status=DeliveryStatus(row.status),
            attempts=row.attempts,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            next_attempt_at=row.next_attempt_at if row.status == DeliveryStatus.PENDING else None,
            created_at=row.created_at,
            delivered_at=row.delivered_at,
        )


_ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed multipart/form-data body.",
    401: "Missing, invalid or revoked API key.",
    404: "No such object for this tenant.",
    409: "Conflict: the Idempotency-Key was used with another body, or the job already finished.",
    413: "Request body over the configured limit.",
    422: "Invalid request: validation, unstorable text (NUL, lone surrogates) or NaN/Infinity.",
    500: "Unexpected internal error (the connection stays usable).",
    503: "A dependency (the database) is unavailable; retry after the Retry-After seconds.",
}

#: Every route can answer these (auth, parameter validation, the unexpected, an outage).
COMMON_ERRORS: tuple[int, ...] = (401, 422, 500, 503)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the ``{error, detail}`` responses a route can return:
    :data:`COMMON_ERRORS` plus ``codes``."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*COMMON_ERRORS, *codes}):
        entry: dict[str, Any] = {"model": ErrorOut, "description": _ERROR_DESCRIPTIONS[code]}
        if code == 503:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        out[code] = entry
    return out
