"""``/v1/jobs``: create (idempotent), list, inspect, follow, cancel, download artifacts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from service.api import deps
from service.api.auth import Principal, authenticate
from service.api.errors import ApiError, not_found
from service.api.job_requests import resolve
from service.api.metrics import JOBS_CREATED
from service.api.paging import page_cursor, page_limit
from service.api.schemas import ArtifactOut, DeliveryOut, JobCreate, JobOut, Page, error_responses
from service.db import repo
from service.db.async_reader import AsyncJobReader
from service.db.models import TERMINAL_STATUSES, Job, JobStatus
from service.db.session import SessionFactory
from service.dispatch import Dispatcher
from service.settings import Settings
from service.storage import Storage

log = logging.getLogger("pxp.gateway")


class EventStream(EventSourceResponse):
    """Only names the media type for OpenAPI; the route returns an EventSourceResponse."""

    media_type = "text/event-stream"


router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _owned_job(s: Session, principal: Principal, job_id: str) -> Job:
    job = repo.get_job(s, principal.tenant_id, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


@router.post("", status_code=202, response_model=JobOut, responses=error_responses(404, 409, 413))
def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=200,
            description="Retrying with the same key returns the same job; a different body under it is a 409.",
        ),
    ] = None,
    principal: Principal = Depends(authenticate),
    s: Session = Depends(deps.db),
    settings: Settings = Depends(deps.settings),
    dispatcher: Dispatcher = Depends(deps.dispatcher),
) -> JobOut:
    """Queue a compression job. The row is committed before the task is sent, and the
    task carries only the job id; if sending fails the reconciler sends it later.

    With ``reproduce_of``, the job re-runs an earlier succeeded job's spec and inputs and
    its result says whether everything came out identical."""
    reproduces = None
    if body.reproduce_of is not None:
        body, reproduces = _reproduction_of(s, principal, body)
    if idempotency_key is not None:
        existing = repo.job_by_idempotency_key(s, principal.tenant_id, idempotency_key)
        if existing is not None:
            return _replay(existing, body, s, principal, settings, response)
    resolved = resolve(s, principal.tenant_id, body, settings)
    try:
        job = repo.create_job(
            s,
            principal.tenant_id,
            resolved.spec,
            model_id=resolved.model_id,
            dataset_id=resolved.dataset_id,
            idempotency_key=idempotency_key,
            request_hash=resolved.request_hash,
            callback_url=resolved.callback_url,
            request_id=getattr(request.state, "request_id", None),
            reproduces_job_id=reproduces,
        )
        s.commit()
    except IntegrityError:
        s.rollback()
        existing = repo.job_by_idempotency_key(s, principal.tenant_id, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, body, s, principal, settings, response)
    JOBS_CREATED.inc()
    log.info("job created", extra={"job_id": job.id})
    try:
        dispatcher.enqueue(job.id)
    except Exception:
        log.exception("could not enqueue job %s; the reconciler will retry", job.id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.of(job)


def _reproduction_of(s: Session, principal: Principal, body: JobCreate) -> tuple[JobCreate, str]:
    """The body of a job that re-runs ``body.reproduce_of``: the earlier job's stored spec."""
    if body.spec or body.model_id is not None or body.dataset_id is not None:
        raise ApiError(
            422,
            "invalid_spec",
            "reproduce_of re-runs the earlier job's spec: leave spec, model_id and dataset_id out",
        )
    earlier = _owned_job(s, principal, body.reproduce_of or "")
    if earlier.status != JobStatus.SUCCEEDED:
        raise ApiError(
            409,
            "not_reproducible",
            f"job {earlier.id} is {earlier.status}; only a succeeded job can be reproduced",
        )
    return JobCreate(spec=dict(earlier.spec), callback_url=body.callback_url), earlier.id


def _replay(
    existing: Job, body: JobCreate, s: Session, principal: Principal, settings: Settings, response: Response
) -> JobOut:
    resolved = resolve(s, principal.tenant_id, body, settings)
    if resolved.request_hash != existing.request_hash:
        raise ApiError(409, "idempotency_conflict", "this Idempotency-Key was used with a different request")
    response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{existing.id}"
    return JobOut.of(existing)


@router.get("", response_model=Page[JobOut], responses=error_responses())
def list_jobs(
    limit: Annotated[int | None, Query(ge=1)] = None,
    cursor: str | None = None,
    status: JobStatus | None = None,
    principal: Principal = Depends(authenticate),
    s: Session = Depends(deps.db),
    settings: Settings = Depends(deps.settings),
) -> Page[JobOut]:
    """This tenant's jobs, newest first. Follow ``next_cursor`` for older ones."""
    page = repo.list_jobs(s, principal.tenant_id, page_limit(limit, settings), page_cursor(cursor), status)
    return Page[JobOut](items=[JobOut.of(j, full=False) for j in page.items], next_cursor=page.next_cursor)


def _load_job_out(factory: SessionFactory, tenant_id: str, job_id: str) -> JobOut | None:
    with factory() as s:
        job = repo.get_job(s, tenant_id, job_id)
        return JobOut.of(job) if job is not None else None


@router.get("/{job_id}", response_model=JobOut, responses=error_responses(404))
async def get_job(job_id: str, request: Request, principal: Principal = Depends(authenticate)) -> JobOut:
    """The job's status, stage, progress, trial, metrics and error. This is the route
    clients poll: one indexed query, on the event loop when the database is Postgres."""
    reader: AsyncJobReader | None = request.app.state.job_reader
    if reader is not None:
        row = await reader.job(principal.tenant_id, job_id)
        job = JobOut.of(SimpleNamespace(**row)) if row is not None else None  # type: ignore[arg-type]  # JobOut.of reads attributes; the namespace of the row has them all
    else:
        job = await run_in_threadpool(
            _load_job_out, request.app.state.session_factory, principal.tenant_id, job_id
        )
    if job is None:
        raise not_found("job", job_id)
    return job


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut, responses=error_responses(404, 409))
def cancel_job(
    job_id: str, principal: Principal = Depends(authenticate), s: Session = Depends(deps.db)
) -> JobOut:
    """Cancel: a queued job at once, a running one at its next stage or trial boundary."""
    job = _owned_job(s, principal, job_id)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise ApiError(409, "conflict", f"job {job_id} already {job.status}")
    job = repo.request_cancel(s, job)
    s.commit()
    return JobOut.of(job)


@router.get(
    "/{job_id}/events",
    response_class=EventStream,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "progress events",
        },
        **error_responses(404),
    },
)
async def job_events(
    job_id: str, request: Request, principal: Principal = Depends(authenticate)
) -> EventSourceResponse:
    """Server-sent events: ``progress`` whenever the job row changes, then ``end`` with the
    final state. The stream polls the row, so it works the same in every mode."""
    factory: SessionFactory = request.app.state.session_factory
    interval: float = request.app.state.settings.sse_poll_interval_s

    def load() -> Job | None:
        with factory() as s:
            return repo.get_job(s, principal.tenant_id, job_id)

    first = await run_in_threadpool(load)
    if first is None:
        raise not_found("job", job_id)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        job: Job | None = first
        last_seq = -1
        while job is not None:
            if job.seq != last_seq:
                last_seq = job.seq
                terminal = job.status in TERMINAL_STATUSES
                payload = JobOut.of(job, full=terminal).model_dump_json()
                yield ServerSentEvent(data=payload, event="end" if terminal else "progress", id=str(job.seq))
                if terminal:
                    return
            if await request.is_disconnected():
                return
            await asyncio.sleep(interval)
            job = await run_in_threadpool(load)

    return EventSourceResponse(stream(), ping=15)


@router.get("/{job_id}/deliveries", response_model=list[DeliveryOut], responses=error_responses(404))
def list_deliveries(
    job_id: str, principal: Principal = Depends(authenticate), s: Session = Depends(deps.db)
) -> list[DeliveryOut]:
    """Webhook deliveries of the job's terminal states (its ``callback_url``), oldest first."""
    job = _owned_job(s, principal, job_id)
    return [DeliveryOut.of(d) for d in repo.list_deliveries(s, job.id)]


@router.get("/{job_id}/artifacts", response_model=list[ArtifactOut], responses=error_responses(404))
def list_artifacts(
    job_id: str, principal: Principal = Depends(authenticate), s: Session = Depends(deps.db)
) -> list[ArtifactOut]:
    """Outputs of a finished job, each with its sha256."""
    job = _owned_job(s, principal, job_id)
    return [ArtifactOut.of(a) for a in repo.list_artifacts(s, job.id)]


@router.get(
    "/{job_id}/artifacts/{name}",
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        **error_responses(404),
    },
    response_class=StreamingResponse,
)
def download_artifact(
    job_id: str,
    name: str,
    principal: Principal = Depends(authenticate),
    s: Session = Depends(deps.db),
    storage: Storage = Depends(deps.storage),
) -> StreamingResponse:
    """Stream one artifact. ``X-Checksum-SHA256`` (also the ETag) lets clients verify it."""
    job = _owned_job(s, principal, job_id)
    artifact = repo.get_artifact(s, job.id, name)
    if artifact is None:
        raise not_found("artifact", name)
    chunks: Iterator[bytes] = storage.iter_bytes(artifact.storage_key)
    return StreamingResponse(
        chunks,
        media_type=artifact.content_type,
        headers={
            "Content-Disposition": f'attachment; filename="{artifact.filename}"',
            "Content-Length": str(artifact.size_bytes),
            "X-Checksum-SHA256": artifact.sha256,
            "ETag": f'"{artifact.sha256}"',
        },
    )
