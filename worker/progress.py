"""Progress reporting from the pipeline to the job row, cancellation and heartbeats.

The pipeline calls the reporter with :class:`pxp.spec.ProgressEvent` s. The reporter
writes them to the job row (throttled, but every stage change and trial is written),
and raises :class:`JobCancelledError` when a cancel was requested, which is how the
pipeline stops between stages and trials. A heartbeat thread keeps ``heartbeat_at``
fresh during long stages so the reconciler can tell a slow job from a lost one.
"""

from __future__ import annotations

import logging
import threading
import time

from pxp import jsonlog
from pxp.errors import JobCancelledError
from pxp.spec import ProgressEvent
from service.db import repo
from service.db.session import SessionFactory
from worker.errors import JobLostError, time_limit_error

log = logging.getLogger("pxp.worker")


class JobReporter:
    def __init__(
        self,
        factory: SessionFactory,
        job_id: str,
        worker: str,
        *,
        min_interval_s: float = 0.2,
        heartbeat_interval_s: float = 10.0,
        time_limit_s: float | None = None,
    ) -> None:
        self.factory = factory
        self.job_id = job_id
        self.worker = worker
        self.min_interval_s = min_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.deadline = time.monotonic() + time_limit_s if time_limit_s else None
        self.time_limit_s = time_limit_s
        self._last_write = 0.0
        self._last_key: tuple[str, int | None] | None = None
        self._owned = True
        self._cancel = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # The progress callback -------------------------------------------------------------

    def __call__(self, event: ProgressEvent) -> None:
        key = (event.stage, event.trial)
        now = time.monotonic()
        if key != self._last_key or event.fraction >= 1.0 or now - self._last_write >= self.min_interval_s:
            self.report(event.stage, event.fraction, event.message, event.trial)
        self.check()

    def report(self, stage: str, fraction: float, message: str = "", trial: int | None = None) -> None:
        if self._last_key is None or self._last_key[0] != stage:
            jsonlog.set_context(stage=stage)
            log.info("stage %s (%.0f%%)", stage, 100 * fraction, extra={"progress": fraction})
        with self.factory() as s:
            owned, cancel = repo.update_progress(
                s, self.job_id, self.worker, stage=stage, fraction=fraction, message=message, trial=trial
            )
            s.commit()
        self._last_write = time.monotonic()
        self._last_key = (stage, trial)
        self._owned = self._owned and owned
        self._cancel = self._cancel or cancel

    def check(self) -> None:
        """Raise if the job must stop: lost to another worker, cancelled, or out of time."""
        if not self._owned:
            raise JobLostError(f"job {self.job_id} is no longer owned by {self.worker}")
        if self._cancel:
            raise JobCancelledError(f"job {self.job_id} was cancelled")
        if self.deadline is not None and time.monotonic() > self.deadline:
            assert self.time_limit_s is not None
            raise time_limit_error(self.time_limit_s)

    # Heartbeat -------------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_interval_s):
            try:
                with self.factory() as s:
                    owned, cancel = repo.heartbeat(s, self.job_id, self.worker)
                    s.commit()
                self._owned = self._owned and owned
                self._cancel = self._cancel or cancel
            except Exception:
                log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)

    def __enter__(self) -> JobReporter:
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.job_id[:8]}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
