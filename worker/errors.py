"""Everything a job records about how it went wrong, in one vocabulary.

A failed job's row carries ``error = {type, message, kind}``: ``kind`` is ``user`` for a
:class:`pxp.errors.UserError` (bad checkpoint, bad data, bad spec; not retried) and
``internal`` for anything else. The job body, the reconciler and the tests build those
payloads here, and the stop conditions the worker itself raises are defined here:

* :class:`JobLostError`: another worker owns the job now; stop quietly, record nothing;
* :class:`JobTimeoutError`: the job ran past its soft time limit (ours, or Celery's
  ``SoftTimeLimitExceeded`` / ``TimeLimitExceeded``, detected by class);
* :class:`WorkerLostError`: the worker running the job vanished ``max_attempts`` times;
* :class:`pxp.errors.JobCancelledError`: cancelled; the job ends ``cancelled`` with no error.
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import OperationalError as SAOperationalError
from sqlalchemy.exc import TimeoutError as SAPoolTimeout

from pxp.errors import JobCancelledError, PxpError, UserError
from service.db.models import ErrorKind

__all__ = [
    "JobCancelledError",
    "JobLostError",
    "JobTimeoutError",
    "WorkerLostError",
    "error_payload",
    "is_celery_time_limit",
    "is_database_unavailable",
    "time_limit_error",
    "worker_lost_payload",
]

#: Longest message stored on a job row.
MAX_MESSAGE = 2000


class JobLostError(PxpError):
    """Another worker owns the job now (the reconciler handed it over); stop quietly."""


class JobTimeoutError(PxpError):
    """The job ran past its soft time limit."""


class WorkerLostError(PxpError):
    """The worker running the job was lost (crash, OOM kill, host gone) too many times."""


def kind_of(exc: BaseException) -> ErrorKind:
    return "user" if isinstance(exc, UserError) else "internal"


def error_payload(exc: BaseException) -> dict[str, Any]:
    """``{type, message, kind}`` for the job row; messages are kept short."""
    message = str(exc).strip() or type(exc).__name__
    return {"type": type(exc).__name__, "message": message[:MAX_MESSAGE], "kind": kind_of(exc)}


def time_limit_error(limit_s: float) -> JobTimeoutError:
    return JobTimeoutError(f"job exceeded its time limit of {limit_s:.0f} s")


def is_celery_time_limit(exc: BaseException) -> bool:
    """Celery's soft or hard time limit fired inside the task."""
    return isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded)


def worker_lost_payload(attempts: int) -> dict[str, Any]:
    return error_payload(WorkerLostError(f"the worker running this job was lost {attempts} time(s)"))


def is_database_unavailable(exc: BaseException) -> bool:
    """The database could not be reached (outage, restart, failover, pool exhausted).

    Such a failure says nothing about the job: it is not recorded on the row (it could not
    be anyway); the task is retried and the job keeps its place.
    """
    if isinstance(exc, SAOperationalError | SAInterfaceError | SAPoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
