"""The embedded worker: a child process fed from the database, no broker.

Why a child process and not a thread of the gateway: torch computation would hold the
GIL and the gateway's memory; in a separate process the gateway stays light and keeps
answering status polls while a job runs, exactly as in production. The process runs the
same :func:`worker.jobbody.execute_job` as the Celery task; the database is the queue
(claims are atomic, so several embedded workers may share it), and the same reconciler
returns jobs of a crashed previous run to the queue.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import sys
import time
from typing import Any

from pxp import jsonlog
from service.db import repo
from service.dispatch import EmbeddedDispatcher
from service.settings import Settings
from worker.jobbody import Pipeline, WorkerContext, execute_job, worker_id
from worker.reconciler import reconcile_once
from worker.webhooks import start_thread as start_webhooks

log = logging.getLogger("pxp.worker")


def run_loop(
    settings_data: dict[str, Any], stop: multiprocessing.synchronize.Event, pipeline: Pipeline | None = None
) -> None:
    """Process target: claim queued jobs one at a time until ``stop`` is set.

    ``pipeline`` (a module-level function, pickled by reference into the spawned process)
    replaces ``pxp.pipeline.run``; ``None`` runs the real one."""
    settings = Settings.model_validate(settings_data)
    jsonlog.configure(settings.log_format, settings.log_level)
    _die_with_parent()
    if settings.embedded_worker_nice:
        # The gateway shares this machine: jobs yield the CPU to status polls.
        os.nice(settings.embedded_worker_nice)
    ctx = WorkerContext.from_settings(settings, dispatcher=EmbeddedDispatcher())
    webhooks = start_webhooks(ctx.session_factory, settings)
    last_reconcile = 0.0
    while not stop.is_set():
        now = time.monotonic()
        if now - last_reconcile >= settings.reconcile_interval_s:
            try:
                reconcile_once(ctx)
            except Exception:
                log.exception("reconciler pass failed")
            last_reconcile = now
        with ctx.session_factory() as s:
            job_id = repo.next_queued_job_id(s)
        if job_id is None:
            stop.wait(settings.embedded_poll_interval_s)
            continue
        try:
            execute_job(job_id, ctx, worker=worker_id("embedded"), pipeline=pipeline)
        except Exception:
            log.exception("embedded worker: job %s crashed the job body", job_id)
    if webhooks is not None:
        webhooks[1].set()


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the server process dies, even by SIGKILL, so no worker is
    left running a job the next server would also run. Elsewhere, best effort: nothing."""
    if sys.platform != "linux":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        log.warning("could not tie the embedded worker to its parent's lifetime")


class EmbeddedWorker:
    """Start/stop the worker process(es) next to an embedded gateway."""

    def __init__(self, settings: Settings, processes: int = 1, pipeline: Pipeline | None = None) -> None:
        self.settings = settings
        self.count = processes
        self.pipeline = pipeline
        self._mp = multiprocessing.get_context("spawn")
        self.stop_event = self._mp.Event()
        self.processes: list[Any] = []

    def start(self) -> None:
        data = self.settings.model_dump(mode="json")
        for i in range(self.count):
            proc = self._mp.Process(
                target=run_loop,
                args=(data, self.stop_event, self.pipeline),
                name=f"pxp-embedded-worker-{i}",
                daemon=True,
            )
            proc.start()
            self.processes.append(proc)

    def alive(self) -> bool:
        return bool(self.processes) and all(p.is_alive() for p in self.processes)

    def stop(self, timeout: float | None = None) -> None:
        """Ask the workers to stop; a job still running after ``timeout`` is terminated and
        resumes (reconciler) on the next start."""
        if timeout is None:
            timeout = self.settings.embedded_stop_timeout_s
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for proc in self.processes:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        self.processes.clear()
