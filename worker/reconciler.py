"""Re-enqueue jobs whose task was lost.

* A **running** job whose heartbeat is older than ``heartbeat_stale_s`` lost its worker
  (crash, OOM kill, host gone): it goes back to ``queued`` and is sent again, or fails
  with ``WorkerLostError`` after ``max_attempts`` claims. The next attempt resumes from
  the stage outputs left in the work directory when it lands on the same host.
* A **running** job whose worker id names this host and a process that no longer exists
  (the embedded server or a Celery child was killed) is requeued at once, without
  waiting for its heartbeat to go stale.
* A **queued** job enqueued more than ``queued_grace_s`` ago whose broker marker is
  gone (Redis restarted; it keeps nothing on disk) is sent again.
* A lost job whose cancel was requested is not requeued (no worker would claim it): it
  ends ``cancelled`` and its work directory on this host is removed. A queued one left
  so by an older version ends the same way.

Re-sending is safe because claiming a job is atomic: a duplicate message finds the job
taken and does nothing. In Celery mode every worker runs :func:`start_thread`; a Redis
lock lets one of them reconcile per interval. ``python -m worker.reconciler`` runs it
standalone.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from service.db import repo
from service.db.models import Job
from service.db.types import utcnow
from service.settings import Settings, get_settings
from worker.errors import worker_lost_payload
from worker.jobbody import WorkerContext

log = logging.getLogger("pxp.reconciler")


def _orphaned_here(worker: str | None) -> bool:
    """Whether ``worker`` (``host:pid:label``) was a process on this host that is gone."""
    if not worker:
        return False
    host, _, rest = worker.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class ReconcileReport:
    requeued: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def reconcile_once(ctx: WorkerContext, now: datetime | None = None) -> ReconcileReport:
    settings = ctx.settings
    now = now or utcnow()
    report = ReconcileReport()
    stale_before = now - timedelta(seconds=settings.heartbeat_stale_s)
    to_send: list[str] = []
    with ctx.session_factory() as s:
        lost: dict[str, tuple[Job, datetime | None]] = {
            job.id: (job, stale_before) for job in repo.stale_running_jobs(s, stale_before)
        }
        for job in repo.running_jobs(s):
            if job.id not in lost and _orphaned_here(job.worker):
                lost[job.id] = (job, None)
        for job, guard in lost.values():
            if job.cancel_requested:
                if repo.cancel_lost_job(s, job.id, job.worker, guard):
                    report.cancelled.append(job.id)
            elif job.attempts >= settings.max_attempts:
                if repo.fail_job(s, job.id, worker_lost_payload(job.attempts)):
                    report.failed.append(job.id)
            elif repo.requeue_job(s, job.id, job.worker, guard):
                report.requeued.append(job.id)
                to_send.append(job.id)
            s.commit()
        for job in repo.queued_jobs_enqueued_before(s, now - timedelta(seconds=settings.queued_grace_s)):
            if job.cancel_requested:
                if repo.cancel_requeued_job(s, job.id):
                    s.commit()
                    report.cancelled.append(job.id)
                continue
            if job.id not in to_send and not ctx.dispatcher.is_pending(job.id):
                repo.mark_enqueued(s, job.id)
                s.commit()
                report.resent.append(job.id)
                to_send.append(job.id)
    for job_id in report.cancelled:
        shutil.rmtree(settings.jobs_dir / job_id, ignore_errors=True)
    for job_id in to_send:
        ctx.dispatcher.enqueue(job_id)
    if report.requeued or report.resent or report.failed or report.cancelled:
        log.warning(
            "reconciler: requeued %s, resent %s, failed %s, cancelled %s",
            report.requeued,
            report.resent,
            report.failed,
            report.cancelled,
        )
    return report


def _acquire(ctx: WorkerContext, token: str, ttl_s: float) -> bool:
    """One reconciler per interval across workers (Celery mode only)."""
    redis = getattr(ctx.dispatcher, "redis", None)
    if redis is None:
        return True
    key = f"{ctx.settings.redis_key_prefix}reconciler-lock"
    return bool(redis.set(key, token, nx=True, px=max(int(ttl_s * 900), 100)))


def run_forever(ctx: WorkerContext, stop: threading.Event) -> None:
    token = uuid.uuid4().hex
    interval = ctx.settings.reconcile_interval_s
    while True:
        try:
            if _acquire(ctx, token, interval):
                reconcile_once(ctx)
        except Exception:
            log.exception("reconciler pass failed")
        if stop.wait(interval):
            return


def start_thread(ctx: WorkerContext) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=run_forever, args=(ctx, stop), name="pxp-reconciler", daemon=True)
    thread.start()
    return thread, stop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Re-enqueue pxp jobs whose task was lost.")
    parser.add_argument("--once", action="store_true", help="run one pass and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    settings: Settings = get_settings()
    ctx = WorkerContext.from_settings(settings)
    if args.once:
        print(reconcile_once(ctx))
        return
    run_forever(ctx, threading.Event())


if __name__ == "__main__":
    main()
