"""Handing job ids to workers.

The job row is committed before :meth:`Dispatcher.enqueue` is called and the message
carries only the job id, so the database stays the source of truth.

* :class:`CeleryDispatcher` (production) sends ``pxp.run_job`` to the Redis broker and
  sets a marker key next to the broker's own keys. Redis keeps nothing on disk, so a
  Redis restart wipes both the queue and the markers; the reconciler re-sends queued jobs
  whose marker is gone. Workers delete the marker when they claim the job.
* :class:`EmbeddedDispatcher`: the embedded worker polls the database for queued jobs,
  so there is nothing to send.

Used by the gateway and the worker's reconciler; imports neither torch nor FastAPI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from service.settings import Settings

TASK_NAME = "pxp.run_job"


class Dispatcher(Protocol):
    def enqueue(self, job_id: str) -> None: ...

    def is_pending(self, job_id: str) -> bool:
        """Whether the broker still holds a message for ``job_id``."""
        ...

    def forget(self, job_id: str) -> None:
        """Called by the worker that claimed ``job_id``."""
        ...

    def check(self) -> None:
        """Raise if jobs cannot be dispatched (readiness probe)."""
        ...


class CeleryDispatcher:
    def __init__(self, settings: Settings) -> None:
        import redis
        from celery import Celery

        assert settings.broker_url is not None
        self.settings = settings
        self.celery = Celery("pxp-gateway", broker=settings.broker_url, set_as_current=False)
        self.celery.conf.update(
            broker_connection_retry_on_startup=True,
            broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
            task_default_queue=settings.queue_name,
        )
        self.redis = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=5)

    def _marker(self, job_id: str) -> str:
        return f"{self.settings.redis_key_prefix}enqueued:{job_id}"

    def enqueue(self, job_id: str) -> None:
        self.redis.set(self._marker(job_id), "1")
        self.celery.send_task(TASK_NAME, args=[job_id], queue=self.settings.queue_name)

    def is_pending(self, job_id: str) -> bool:
        return bool(self.redis.exists(self._marker(job_id)))

    def forget(self, job_id: str) -> None:
        self.redis.delete(self._marker(job_id))

    def check(self) -> None:
        self.redis.ping()

    def close(self) -> None:
        self.redis.close()


class EmbeddedDispatcher:
    def __init__(self, alive: Callable[[], bool] | None = None) -> None:
        self._alive = alive

    def enqueue(self, job_id: str) -> None:
        return None

    def is_pending(self, job_id: str) -> bool:
        return True

    def forget(self, job_id: str) -> None:
        return None

    def check(self) -> None:
        if self._alive is not None and not self._alive():
            raise RuntimeError("embedded worker is not running")


def make_dispatcher(settings: Settings, **kwargs: Any) -> Dispatcher:
    if settings.embedded:
        return EmbeddedDispatcher(**kwargs)
    return CeleryDispatcher(settings)
