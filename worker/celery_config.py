"""Celery configuration (ARCHITECTURE.md §4 durability), separate from the app instance so it
can be built from any :class:`Settings`.

Late acks and reject-on-worker-lost, so a task whose worker dies is redelivered; prefetch
1, so a long job never holds a second message hostage; soft/hard time limits; child
processes recycled after ``max_tasks_per_child`` jobs or past ``max_memory_per_child``
(the job body also frees torch's CUDA cache after every job), so memory does not creep.
Recycling after every job would cost seconds of queue latency per job (measured: 2-4 s
created->started with 1, 0.02 s with 10). The Redis visibility timeout is longer than the hard limit, so Redis does
not redeliver the message of a job still running.
"""

from __future__ import annotations

from celery import Celery

from service.settings import Settings


def make_celery(settings: Settings) -> Celery:
    if settings.broker_url is None:
        raise RuntimeError(
            "PXP_BROKER_URL is not set; the Celery worker needs Redis (embedded mode needs no worker)"
        )
    app = Celery("pxp", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.job_soft_time_limit_s,
        task_time_limit=settings.job_time_limit_s,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        worker_max_memory_per_child=settings.worker_max_memory_per_child_mb * 1024,
        worker_concurrency=settings.worker_concurrency,
        task_default_queue=settings.queue_name,
        task_ignore_result=True,
        task_track_started=False,
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.job_time_limit_s + 600,
            "socket_timeout": 10,
            "socket_connect_timeout": 10,
        },
        worker_hijack_root_logger=False,
    )
    return app
