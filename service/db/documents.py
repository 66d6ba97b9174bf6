"""A job's JSON document, as ``GET /v1/jobs/{id}`` returns it, built without the API layer.

The webhook outbox stores this at the moment a job becomes terminal (the row is written by
the worker, the reconciler or the gateway, so it cannot depend on :mod:`service.api`). A
test keeps it equal to ``JobOut.of(job).model_dump(mode="json")``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import to_jsonable_python

from service.db.models import Job


def job_document(job: Job) -> dict[str, Any]:
    error = None
    if job.error:
        error = {"type": job.error.get("type"), "message": job.error.get("message")}
        error["kind"] = job.error.get("kind", "internal")
    doc = {
        "id": job.id,
        "status": job.status,
        "stage": job.stage,
        "progress": job.progress,
        "message": job.message,
        "trial": job.trial,
        "cancel_requested": job.cancel_requested,
        "attempts": job.attempts,
        "model_id": job.model_id,
        "dataset_id": job.dataset_id,
        "metrics": job.metrics,
        "error": error,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "updated_at": job.updated_at,
        "callback_url": job.callback_url,
        "request_id": job.request_id,
        "reproduces_job_id": job.reproduces_job_id,
        "spec": job.spec,
        "result": job.result,
    }
    out: dict[str, Any] = to_jsonable_python(doc)
    return out


def job_json(job: Job) -> str:
    """:func:`job_document` as compact JSON text (the exact webhook body)."""
    return json.dumps(job_document(job), separators=(",", ":"))
