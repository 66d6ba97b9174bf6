"""The job body, shared by the Celery task and the embedded worker.

claim -> fetch inputs -> ``pxp.pipeline.run`` (progress to the row, cancel between
stages/trials) -> upload artifacts under content-addressed keys -> record the outcome.
Outcomes: ``succeeded`` with result, metrics and artifacts; ``cancelled``; ``failed``
with ``error = {type, message, kind}`` built by :mod:`worker.errors`, where ``kind`` is
``user`` for :class:`pxp.errors.UserError` (bad checkpoint, bad data, bad spec; not
retried) and ``internal`` for anything else. Each step opens its own session and commits
it; the outcome (status and artifact rows) is one transaction, written only while this
worker still owns the job.
"""

from __future__ import annotations

import gc
import logging
import mimetypes
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pxp import jsonlog
from pxp.errors import JobCancelledError, UserError
from pxp.hashing import sha256_file
from pxp.spec import JobResult
from service.db import repo
from service.db.models import JobStatus
from service.db.session import SessionFactory, make_session_factory
from service.db.types import utcnow
from service.dispatch import Dispatcher, make_dispatcher
from service.settings import Settings
from service.storage import Storage, make_storage, put_blob
from worker.errors import (
    JobLostError,
    error_payload,
    is_celery_time_limit,
    is_database_unavailable,
    time_limit_error,
)
from worker.inputs import materialise
from worker.progress import JobReporter

log = logging.getLogger("pxp.worker")

Pipeline = Callable[..., JobResult]


@dataclass
class WorkerContext:
    settings: Settings
    session_factory: SessionFactory
    storage: Storage
    dispatcher: Dispatcher

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> WorkerContext:
        return cls(
            settings=settings,
            session_factory=kwargs.get("session_factory") or make_session_factory(settings),
            storage=kwargs.get("storage") or make_storage(settings),
            dispatcher=kwargs.get("dispatcher") or make_dispatcher(settings),
        )


_installed_pipeline: Pipeline | None = None


def set_pipeline(pipeline: Pipeline | None) -> None:
    """Make this process's jobs run ``pipeline`` (same signature as ``pxp.pipeline.run``)
    instead of the real one; ``None`` restores it. Launchers call this before the worker
    starts (tests run the scripted pipeline this way); a Celery child inherits it."""
    global _installed_pipeline
    _installed_pipeline = pipeline


def default_pipeline() -> Pipeline:
    """The installed pipeline, else ``pxp.pipeline.run``."""
    if _installed_pipeline is not None:
        return _installed_pipeline
    # Imported when the first job runs: it brings torch, which processes that only import
    # this module (the reconciler, the plumbing tests with the scripted pipeline) never need.
    from pxp.pipeline import run

    return run


def worker_id(label: str = "") -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{label or uuid.uuid4().hex[:8]}"


def summarise(result: JobResult) -> dict[str, Any]:
    """Headline numbers of a result for job listings (the full result is stored too).

    Accuracies are on the test split; ``test_accuracy`` is the exported (physically
    pruned) model's own, when the job exported one.
    """
    metrics: dict[str, Any] = {"chosen_label": result.chosen_label, "chosen_rate": result.chosen_rate}
    tests = [c for c in result.curves if c.split == "test"]
    chosen = next((c for c in tests if c.label == result.chosen_label), tests[0] if tests else None)
    if chosen is not None:
        metrics.update(
            test_apr=chosen.apr,
            unpruned_accuracy=chosen.unpruned_accuracy,
            safe_rate=chosen.safe_rate,
            params_removed_fraction=chosen.params_removed_fraction,
            flops_removed_fraction=chosen.flops_removed_fraction,
        )
        if result.chosen_rate in chosen.rates:
            metrics["accuracy_at_chosen_rate"] = chosen.accuracies[chosen.rates.index(result.chosen_rate)]
    compression = result.compression or {}
    for key in ("test_accuracy", "params_removed_fraction", "flops_removed_fraction"):
        if compression.get(key) is not None:
            metrics[key] = compression[key]
    if result.search is not None:
        metrics.update(
            search_test_apr_best=result.search.test_apr_best, trials=result.search.trials_completed
        )
    return metrics


def _content_type(name: str) -> str:
    if name.endswith(".safetensors"):
        return "application/octet-stream"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _upload_artifacts(ctx: WorkerContext, result: JobResult, out: Path) -> list[dict[str, Any]]:
    uploaded = []
    root = out.resolve()
    for name, rel in sorted(result.artifacts.items()):
        path = (out / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise RuntimeError(f"artifact {name!r} -> {rel!r} is not a file inside the output directory")
        sha = sha256_file(path)
        content_type = _content_type(path.name)
        key = put_blob(ctx.storage, path, sha, content_type)
        uploaded.append(
            dict(
                name=name,
                filename=path.name,
                storage_key=key,
                sha256=sha,
                size_bytes=path.stat().st_size,
                content_type=content_type,
            )
        )
    return uploaded


REPRODUCTION_NAME = "reproduction.json"


def _reproduction(ctx: WorkerContext, earlier_id: str, out_dir: Path, workdir: Path) -> dict[str, Any]:
    """Compare this job's outputs with the earlier job's stored artifacts (``pxp.reproduce.compare``).

    Writes ``reproduction.json`` into ``out_dir`` and returns what it holds.
    """
    import json

    from pxp.reproduce import compare

    original = workdir / "original"
    original.mkdir(parents=True, exist_ok=True)
    with ctx.session_factory() as s:
        earlier = repo.load_job(s, earlier_id)
        files = dict(((earlier.result if earlier is not None else None) or {}).get("artifacts", {}))
        rows = {a.name: a.storage_key for a in repo.list_artifacts(s, earlier_id)}
    for name in ("provenance", "results", "weights"):
        if name in files and name in rows:
            ctx.storage.download(rows[name], original / Path(files[name]).name)
    report = compare(original, out_dir)
    record = {
        "of_job": earlier_id,
        "identical": report.identical,
        "differences": report.differences,
        "notes": report.notes,
    }
    (out_dir / REPRODUCTION_NAME).write_text(json.dumps(record, indent=1))
    return record


def _finish(
    ctx: WorkerContext,
    job_id: str,
    worker: str,
    status: JobStatus,
    *,
    artifacts: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> bool:
    """Record the outcome in one transaction, ownership first.

    The guarded status update comes before the artifact rows: if this worker no longer
    owns the job (the reconciler handed it to another attempt), nothing is written, so
    a late worker cannot replace the owner's artifacts or outcome.
    """
    with ctx.session_factory() as s:
        if not repo.finish_job(s, job_id, worker, status, **fields):
            s.rollback()
            log.warning("job %s: not finishing as %s, %s no longer owns it", job_id, status, worker)
            return False
        for art in artifacts or []:
            repo.put_artifact(s, job_id, **art)
        s.commit()
        return True


def execute_job(
    job_id: str, ctx: WorkerContext, *, worker: str | None = None, pipeline: Pipeline | None = None
) -> str | None:
    """Run one job to a terminal state; return it, or ``None`` if the job was not ours to run.

    ``pipeline`` replaces :func:`default_pipeline` for this job (the test seam). Every log
    line meanwhile carries the job id, its tenant, the id of the request that created it
    and the current stage (:mod:`pxp.jsonlog`).
    """
    with jsonlog.bind(job_id=job_id, tenant=None, request_id=None, stage=None):
        status = _execute_job(job_id, ctx, worker=worker, pipeline=pipeline)
        log.info("job %s: %s", job_id, status or "not run here", extra={"status": status})
        return status


def _execute_job(
    job_id: str, ctx: WorkerContext, *, worker: str | None = None, pipeline: Pipeline | None = None
) -> str | None:
    settings = ctx.settings
    worker = worker or worker_id()
    stale_before = utcnow() - timedelta(seconds=settings.heartbeat_stale_s)
    with ctx.session_factory() as s:
        claimed = repo.claim_job(s, job_id, worker, stale_before)
        s.commit()
    try:
        ctx.dispatcher.forget(job_id)
    except Exception:
        log.warning("could not clear the enqueue marker of job %s", job_id, exc_info=True)
    workdir = settings.jobs_dir / job_id
    if not claimed:
        if _end_cancelled(ctx, job_id, workdir):
            return JobStatus.CANCELLED
        log.info("job %s not claimable (finished, cancelled or owned elsewhere)", job_id)
        return None
    with ctx.session_factory() as s:
        claimed_job = repo.load_job(s, job_id)
        if claimed_job is not None:
            jsonlog.set_context(tenant=claimed_job.tenant_id, request_id=claimed_job.request_id)
            log.info("job %s claimed by %s (attempt %s)", job_id, worker, claimed_job.attempts)

    reporter = JobReporter(
        ctx.session_factory,
        job_id,
        worker,
        min_interval_s=settings.progress_min_interval_s,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        time_limit_s=settings.job_soft_time_limit_s,
    )
    status: JobStatus | None
    try:
        with reporter:
            reporter.report("fetching inputs", 0.0)
            with ctx.session_factory() as s:
                job = repo.load_job(s, job_id)
                assert job is not None
                reproduces = job.reproduces_job_id
                spec = materialise(s, job, ctx.storage, settings, workdir / "inputs")
            reporter.check()
            run = pipeline or default_pipeline()
            result = run(spec, workdir / "out", reporter, study_storage=settings.optuna_url)
            result_json = result.model_dump(mode="json")
            metrics = summarise(result)
            if reproduces is not None:
                reporter.report("comparing with the earlier job", 1.0)
                result_json["reproduction"] = _reproduction(ctx, reproduces, workdir / "out", workdir)
                result.artifacts["reproduction"] = REPRODUCTION_NAME
                result_json["artifacts"] = dict(result.artifacts)
                metrics["reproduction_identical"] = result_json["reproduction"]["identical"]
            reporter.report("uploading artifacts", 1.0)
            artifacts = _upload_artifacts(ctx, result, workdir / "out")
            status = JobStatus.SUCCEEDED
            done = _finish(
                ctx,
                job_id,
                worker,
                status,
                result=result_json,
                metrics=metrics,
                artifacts=artifacts,
            )
    except JobLostError:
        log.warning("job %s was handed to another worker; stopping", job_id)
        return None
    except JobCancelledError:
        status = JobStatus.CANCELLED
        done = _finish(ctx, job_id, worker, status)
    except UserError as exc:
        status = JobStatus.FAILED
        done = _finish(ctx, job_id, worker, status, error=error_payload(exc))
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        if is_database_unavailable(exc):
            # Nothing can be recorded, and nothing is wrong with the job: the caller retries
            # it, and the work directory stays for the next attempt to resume from.
            log.warning("job %s: the database is unavailable; leaving the job for a retry", job_id)
            raise
        if is_celery_time_limit(exc):
            exc = time_limit_error(settings.job_soft_time_limit_s)
        log.exception("job %s failed", job_id)
        status = JobStatus.FAILED
        done = _finish(ctx, job_id, worker, status, error=error_payload(exc))
    if done:
        shutil.rmtree(workdir, ignore_errors=True)
    _release_memory()
    return status if done else None


#: Backoff of a task that could not reach the database: 1, 2, 4, ... seconds, at most this.
MAX_RETRY_DELAY_S = 30.0


def retry_delay(retries: int) -> float:
    return float(min(2.0**retries, MAX_RETRY_DELAY_S))


def run_with_retry(task: Any, job_id: str, ctx: WorkerContext) -> str | None:
    """Run the job; when the database cannot be reached, never lose it.

    The enqueued marker is cleared first (so the reconciler re-sends the job if the retry
    message is lost too: a worker killed while holding it, a broker restart), then the
    task is retried with exponential backoff. A duplicate message is harmless: the claim
    is atomic.
    """
    try:
        return execute_job(job_id, ctx, worker=worker_id((task.request.id or "")[:8]))
    except Exception as exc:
        if not is_database_unavailable(exc):
            raise
        try:
            ctx.dispatcher.forget(job_id)
        except Exception:
            log.warning("could not clear the enqueue marker of job %s", job_id, exc_info=True)
        delay = retry_delay(int(task.request.retries or 0))
        log.warning("job %s: database unavailable; retrying in %.0f s", job_id, delay)
        raise task.retry(exc=exc, countdown=delay) from None


def _end_cancelled(ctx: WorkerContext, job_id: str, workdir: Path) -> bool:
    """A job that came back to the queue (its worker was lost) after a cancel was requested
    ends ``cancelled`` here; its work directory goes with it. True if this call ended it."""
    with ctx.session_factory() as s:
        ended = repo.cancel_requeued_job(s, job_id)
        s.commit()
    if ended:
        log.info("job %s: cancel requested while it was requeued; cancelled", job_id)
        shutil.rmtree(workdir, ignore_errors=True)
    return ended


def _release_memory() -> None:
    """Give back what the job held; the process lives on for the next job."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
