"""Celery tasks. The message carries only the job id; the row holds everything else."""

from __future__ import annotations

from worker.celery_app import app
from worker.jobbody import WorkerContext, run_with_retry

_ctx: WorkerContext | None = None


def _context() -> WorkerContext:
    """One context per worker child process (engines must not cross a fork)."""
    global _ctx
    if _ctx is None:
        from service.settings import get_settings

        _ctx = WorkerContext.from_settings(get_settings())
    return _ctx


# max_retries=None: a job waiting out a database outage is retried until the database is back.
@app.task(name="pxp.run_job", bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_job(self, job_id: str) -> str | None:  # type: ignore[no-untyped-def]  # bind=True passes the Celery Task as self, untyped in celery
    return run_with_retry(self, job_id, _context())
