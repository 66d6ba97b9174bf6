"""Repository layer: every query the gateway, the workers and the admin CLI run.

Functions take a :class:`Session` and add, flush and query; none of them commits. The
route or task that opened the session commits once (ARCHITECTURE.md §1), so a guarded
write whose guard fails can be rolled back together with everything written beside it.
Tenant-scoped getters return ``None`` for another tenant's objects, so callers cannot
tell them from missing ones.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, text, tuple_, update
from sqlalchemy.orm import Session

from service import keys
from service.db.documents import job_json
from service.db.models import (
    TERMINAL_STATUSES,
    ApiKey,
    Artifact,
    DatasetObject,
    DeliveryStatus,
    Job,
    JobStatus,
    ModelObject,
    Tenant,
    WebhookDelivery,
    new_webhook_secret,
)
from service.db.types import utcnow


def ping(s: Session) -> None:
    """One round trip to the database (readiness checks)."""
    s.execute(text("SELECT 1"))


# Tenants and API keys --------------------------------------------------------------------


def get_or_create_tenant(s: Session, name: str) -> Tenant:
    tenant = s.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        s.add(tenant)
        s.flush()
    return tenant


def create_api_key(
    s: Session, tenant_name: str, name: str = "", is_admin: bool = False
) -> tuple[ApiKey, str]:
    """Create a key for ``tenant_name`` (created if new); return the row and the plaintext key."""
    tenant = get_or_create_tenant(s, tenant_name)
    key_id, plaintext, secret_hash = keys.generate()
    row = ApiKey(id=key_id, tenant_id=tenant.id, name=name, secret_hash=secret_hash, is_admin=is_admin)
    s.add(row)
    s.flush()
    return row, plaintext


def active_key(s: Session, key_id: str) -> ApiKey | None:
    return s.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)))


def revoke_api_key(s: Session, key_id: str) -> bool:
    result = s.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]  # DML execute() returns a CursorResult, which has rowcount


def list_api_keys(s: Session, tenant_name: str | None = None) -> list[tuple[ApiKey, str]]:
    query = (
        select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(ApiKey.created_at)
    )
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    return [(k, t) for k, t in s.execute(query).all()]


def webhook_secret(s: Session, tenant_name: str, *, rotate: bool = False) -> str | None:
    """The tenant's webhook signing secret (a new one with ``rotate``); None for an unknown tenant."""
    tenant = s.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        return None
    if rotate:
        tenant.webhook_secret = new_webhook_secret()
        s.flush()
    return tenant.webhook_secret


def tenant_name(s: Session, tenant_id: str) -> str | None:
    return s.scalar(select(Tenant.name).where(Tenant.id == tenant_id))


# Models and datasets ---------------------------------------------------------------------


def add_model(s: Session, tenant_id: str, **fields: Any) -> ModelObject:
    row = ModelObject(tenant_id=tenant_id, **fields)
    s.add(row)
    s.flush()
    return row


def get_model(s: Session, tenant_id: str, model_id: str) -> ModelObject | None:
    return s.scalar(select(ModelObject).where(ModelObject.id == model_id, ModelObject.tenant_id == tenant_id))


def add_dataset(s: Session, tenant_id: str, **fields: Any) -> DatasetObject:
    row = DatasetObject(tenant_id=tenant_id, **fields)
    s.add(row)
    s.flush()
    return row


def get_dataset(s: Session, tenant_id: str, dataset_id: str) -> DatasetObject | None:
    return s.scalar(
        select(DatasetObject).where(DatasetObject.id == dataset_id, DatasetObject.tenant_id == tenant_id)
    )


# Pagination ------------------------------------------------------------------------------


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raise ``ValueError`` for a malformed cursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, row_id = json.loads(raw)
        when = datetime.fromisoformat(stamp)
    except Exception as exc:
        raise ValueError("malformed cursor") from exc
    if when.tzinfo is None or not isinstance(row_id, str):
        raise ValueError("malformed cursor")
    return when, row_id


@dataclass
class Page:
    items: list[Any]
    next_cursor: str | None


def _page(s: Session, query: Any, model: Any, limit: int, cursor: str | None) -> Page:
    """Newest first, keyset-paginated on ``(created_at, id)`` so pages are stable under inserts."""
    if cursor:
        when, row_id = decode_cursor(cursor)
        query = query.where(tuple_(model.created_at, model.id) < tuple_(when, row_id))
    rows = list(s.scalars(query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return Page(rows, next_cursor)


def list_models(s: Session, tenant_id: str, limit: int, cursor: str | None = None) -> Page:
    return _page(s, select(ModelObject).where(ModelObject.tenant_id == tenant_id), ModelObject, limit, cursor)


def list_datasets(s: Session, tenant_id: str, limit: int, cursor: str | None = None) -> Page:
    return _page(
        s, select(DatasetObject).where(DatasetObject.tenant_id == tenant_id), DatasetObject, limit, cursor
    )


# Jobs ------------------------------------------------------------------------------------


def create_job(
    s: Session,
    tenant_id: str,
    spec: dict[str, Any],
    *,
    model_id: str | None,
    dataset_id: str | None,
    idempotency_key: str | None,
    request_hash: str | None,
    callback_url: str | None = None,
    request_id: str | None = None,
    reproduces_job_id: str | None = None,
) -> Job:
    job = Job(
        callback_url=callback_url,
        request_id=request_id,
        reproduces_job_id=reproduces_job_id,
        tenant_id=tenant_id,
        spec=spec,
        model_id=model_id,
        dataset_id=dataset_id,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        status=JobStatus.QUEUED,
        stage=JobStatus.QUEUED,
        enqueued_at=utcnow(),
    )
    s.add(job)
    s.flush()
    return job


def job_by_idempotency_key(s: Session, tenant_id: str, key: str) -> Job | None:
    return s.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def get_job(s: Session, tenant_id: str, job_id: str) -> Job | None:
    return s.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))


def load_job(s: Session, job_id: str) -> Job | None:
    """A job by id, any tenant (workers and the reconciler)."""
    return s.get(Job, job_id)


def list_jobs(
    s: Session, tenant_id: str, limit: int, cursor: str | None = None, status: str | None = None
) -> Page:
    query = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        query = query.where(Job.status == status)
    return _page(s, query, Job, limit, cursor)


def mark_enqueued(s: Session, job_id: str) -> None:
    s.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))


def request_cancel(s: Session, job: Job) -> Job:
    """Cancel a queued job at once; flag a running one for its worker to stop at the next stage/trial."""
    now = utcnow()
    if job.status == JobStatus.QUEUED:
        s.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.CANCELLED,
                stage=JobStatus.CANCELLED,
                cancel_requested=True,
                finished_at=now,
                updated_at=now,
            )
        )
    elif job.status == JobStatus.RUNNING:
        s.execute(update(Job).where(Job.id == job.id).values(cancel_requested=True, updated_at=now))
    s.flush()
    s.refresh(job)
    if job.status == JobStatus.CANCELLED:
        _queue_webhook(s, job.id)
    return job


def claim_job(s: Session, job_id: str, worker: str, stale_before: datetime) -> bool:
    """Atomically take a job: queued, or running with a heartbeat older than ``stale_before``.

    Duplicate deliveries of the same task are harmless: only one claim succeeds. The
    caller commits at once, so other workers see the claim.
    """
    now = utcnow()
    result = s.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            or_(
                Job.status == JobStatus.QUEUED,
                (Job.status == JobStatus.RUNNING)
                & (func.coalesce(Job.heartbeat_at, Job.created_at) < stale_before),
            ),
        )
        .values(
            status=JobStatus.RUNNING,
            worker=worker,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
            heartbeat_at=now,
            updated_at=now,
            stage="starting",
            error=None,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]  # DML execute() returns a CursorResult, which has rowcount


def cancel_requeued_job(s: Session, job_id: str) -> bool:
    """End a queued job whose cancel was requested as ``cancelled`` (the reconciler requeued
    it after its worker was lost, and the claim refuses cancelled-requested jobs)."""
    now = utcnow()
    res = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(True))
        .values(
            status=JobStatus.CANCELLED,
            stage=JobStatus.CANCELLED,
            worker=None,
            finished_at=now,
            updated_at=now,
            seq=Job.seq + 1,
        )
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]  # DML execute() returns a CursorResult, which has rowcount


def cancel_lost_job(s: Session, job_id: str, worker: str | None, stale_before: datetime | None) -> bool:
    """End a running job whose worker vanished after a cancel was requested as ``cancelled``
    (guarded like :func:`requeue_job`)."""
    now = utcnow()
    guard = [
        Job.id == job_id,
        Job.status == JobStatus.RUNNING,
        Job.worker == worker,
        Job.cancel_requested.is_(True),
    ]
    if stale_before is not None:
        guard.append(func.coalesce(Job.heartbeat_at, Job.created_at) < stale_before)
    res = s.execute(
        update(Job)
        .where(*guard)
        .values(
            status=JobStatus.CANCELLED,
            stage=JobStatus.CANCELLED,
            worker=None,
            finished_at=now,
            updated_at=now,
            seq=Job.seq + 1,
        )
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]  # DML execute() returns a CursorResult, which has rowcount


def next_queued_job_id(s: Session) -> str | None:
    return s.scalar(
        select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.created_at, Job.id).limit(1)
    )


def update_progress(
    s: Session,
    job_id: str,
    worker: str,
    *,
    stage: str,
    fraction: float,
    message: str = "",
    trial: int | None = None,
) -> tuple[bool, bool]:
    """Write progress if ``worker`` still owns the job; return ``(owned, cancel_requested)``."""
    now = utcnow()
    result = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.RUNNING)
        .values(
            stage=stage,
            progress=fraction,
            message=message[:2000],
            trial=trial,
            seq=Job.seq + 1,
            heartbeat_at=now,
            updated_at=now,
        )
        .returning(Job.cancel_requested)
    )
    row = result.first()
    if row is None:
        return False, True
    return True, bool(row[0])


def heartbeat(s: Session, job_id: str, worker: str) -> tuple[bool, bool]:
    """Refresh the heartbeat; return ``(owned, cancel_requested)``."""
    result = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.RUNNING)
        .values(heartbeat_at=utcnow())
        .returning(Job.cancel_requested)
    )
    row = result.first()
    if row is None:
        return False, True
    return True, bool(row[0])


def finish_job(
    s: Session,
    job_id: str,
    worker: str,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """Move a job the worker owns to a terminal state; False (nothing written) if it does not.

    The guard on ``worker`` keeps a worker that lost its job (the reconciler handed it
    to another) from overwriting the new attempt's outcome. Call it before writing
    anything else of the outcome (artifacts) in the same transaction, and roll back when
    it returns False.
    """
    assert status in TERMINAL_STATUSES
    now = utcnow()
    values: dict[str, Any] = {
        "status": status,
        "stage": status,
        "finished_at": now,
        "updated_at": now,
        "seq": Job.seq + 1,
        "result": result,
        "metrics": metrics,
        "error": error,
    }
    if status == JobStatus.SUCCEEDED:
        values["progress"] = 1.0
    res = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.RUNNING)
        .values(**values)
    )
    done = bool(res.rowcount)  # type: ignore[attr-defined]  # DML execute() returns a CursorResult, which has rowcount
    if done:
        _queue_webhook(s, job_id)
    return done


def fail_job(s: Session, job_id: str, error: dict[str, Any]) -> bool:
    """Fail a non-terminal job regardless of owner (reconciler, after too many attempts)."""
    now = utcnow()
    res = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        .values(
            status=JobStatus.FAILED,
            stage=JobStatus.FAILED,
            error=error,
            finished_at=now,
            updated_at=now,
            seq=Job.seq + 1,
        )
    )
    done = bool(res.rowcount)  # type: ignore[attr-defined]  # DML execute() returns a CursorResult, which has rowcount
    if done:
        _queue_webhook(s, job_id)
    return done


def stale_running_jobs(s: Session, stale_before: datetime) -> list[Job]:
    return list(
        s.scalars(
            select(Job).where(
                Job.status == JobStatus.RUNNING,
                func.coalesce(Job.heartbeat_at, Job.created_at) < stale_before,
            )
        )
    )


def queued_jobs_enqueued_before(s: Session, before: datetime) -> list[Job]:
    return list(
        s.scalars(
            select(Job).where(
                Job.status == JobStatus.QUEUED, func.coalesce(Job.enqueued_at, Job.created_at) < before
            )
        )
    )


def running_jobs(s: Session) -> list[Job]:
    return list(s.scalars(select(Job).where(Job.status == JobStatus.RUNNING)))


def requeue_job(s: Session, job_id: str, worker: str | None, stale_before: datetime | None = None) -> bool:
    """Put a running job whose worker vanished back in the queue.

    Guarded on ``worker`` still owning it and, with ``stale_before``, on its heartbeat
    still being older than that, so a job that moved on or came back to life is left alone.
    """
    now = utcnow()
    guard = [Job.id == job_id, Job.status == JobStatus.RUNNING, Job.worker == worker]
    if stale_before is not None:
        guard.append(func.coalesce(Job.heartbeat_at, Job.created_at) < stale_before)
    res = s.execute(
        update(Job)
        .where(*guard)
        .values(
            status=JobStatus.QUEUED,
            stage=JobStatus.QUEUED,
            worker=None,
            enqueued_at=now,
            updated_at=now,
            seq=Job.seq + 1,
        )
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]  # DML execute() returns a CursorResult, which has rowcount


def count_jobs_by_status(s: Session) -> dict[str, int]:
    return {status: n for status, n in s.execute(select(Job.status, func.count()).group_by(Job.status)).all()}


# Artifacts -------------------------------------------------------------------------------


def put_artifact(
    s: Session,
    job_id: str,
    *,
    name: str,
    filename: str,
    storage_key: str,
    sha256: str,
    size_bytes: int,
    content_type: str,
) -> Artifact:
    """Record an artifact; a retried job replaces the row of the same name."""
    s.execute(delete(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    row = Artifact(
        job_id=job_id,
        name=name,
        filename=filename,
        storage_key=storage_key,
        sha256=sha256,
        size_bytes=size_bytes,
        content_type=content_type,
    )
    s.add(row)
    s.flush()
    return row


def list_artifacts(s: Session, job_id: str) -> list[Artifact]:
    return list(s.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def get_artifact(s: Session, job_id: str, name: str) -> Artifact | None:
    return s.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))


# Webhook outbox --------------------------------------------------------------------------


def _queue_webhook(s: Session, job_id: str) -> WebhookDelivery | None:
    """In the transaction that made ``job_id`` terminal: an outbox row with the job's final
    JSON, if the job has a ``callback_url``. Every terminal transition calls this."""
    s.flush()
    job = s.get(Job, job_id, populate_existing=True)
    if job is None or not job.callback_url:
        return None
    row = WebhookDelivery(
        job_id=job.id,
        tenant_id=job.tenant_id,
        event=f"job.{job.status}",
        url=job.callback_url,
        payload=job_json(job),
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at=utcnow(),
    )
    s.add(row)
    s.flush()
    return row


def list_deliveries(s: Session, job_id: str) -> list[WebhookDelivery]:
    return list(
        s.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        )
    )


@dataclass
class DueDelivery:
    id: str
    job_id: str
    event: str
    url: str
    payload: str
    attempts: int
    secret: str


def lease_due_deliveries(s: Session, now: datetime, lease_until: datetime, limit: int) -> list[DueDelivery]:
    """Pending deliveries due at ``now``, leased to the caller until ``lease_until`` (their
    ``next_attempt_at`` moves there, so another loop skips them; a crashed sender's lease
    simply expires). Rows locked by a concurrent caller are skipped (Postgres)."""
    rows = list(
        s.execute(
            select(WebhookDelivery, Tenant.webhook_secret)
            .join(Tenant, Tenant.id == WebhookDelivery.tenant_id)
            .where(WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        ).all()
    )
    out = []
    for row, secret in rows:
        row.next_attempt_at = lease_until
        out.append(DueDelivery(row.id, row.job_id, row.event, row.url, row.payload, row.attempts, secret))
    s.flush()
    return out


def record_delivery_attempt(
    s: Session,
    delivery_id: str,
    *,
    delivered: bool,
    status_code: int | None,
    error: str | None,
    retry_at: datetime | None,
) -> None:
    """The outcome of one attempt: delivered, retried at ``retry_at``, or (None) given up."""
    now = utcnow()
    values: dict[str, Any] = {
        "attempts": WebhookDelivery.attempts + 1,
        "last_status_code": status_code,
        "last_error": error[:2000] if error else None,
    }
    if delivered:
        values.update(status=DeliveryStatus.DELIVERED, delivered_at=now)
    elif retry_at is None:
        values.update(status=DeliveryStatus.FAILED)
    else:
        values.update(next_attempt_at=retry_at)
    s.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == DeliveryStatus.PENDING)
        .values(**values)
    )
