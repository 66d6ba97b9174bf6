"""The Celery app carries the durability settings of ARCHITECTURE.md §4."""

from __future__ import annotations

import pytest

from service.settings import Settings
from worker.celery_config import make_celery


def test_durability_settings():
    settings = Settings(
        broker_url="redis://127.0.0.1:6379/15", job_soft_time_limit_s=100, job_time_limit_s=130
    )
    conf = make_celery(settings).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_soft_time_limit == 100 and conf.task_time_limit == 130
    assert conf.worker_max_tasks_per_child == settings.worker_max_tasks_per_child > 1
    assert conf.worker_max_memory_per_child == settings.worker_max_memory_per_child_mb * 1024
    assert conf.task_default_queue == settings.queue_name
    # Redis must not redeliver the message of a job that is still running.
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


def test_task_is_registered_with_late_ack(monkeypatch):
    from service.settings import get_settings

    monkeypatch.setenv("PXP_BROKER_URL", "redis://127.0.0.1:6379/15")
    get_settings.cache_clear()
    try:
        from worker import tasks
    finally:
        get_settings.cache_clear()
    task = tasks.app.tasks["pxp.run_job"]
    assert task.acks_late is True and task.reject_on_worker_lost is True


def test_celery_needs_a_broker():
    with pytest.raises(RuntimeError, match="PXP_BROKER_URL"):
        make_celery(Settings(broker_url=None))


def test_the_task_retries_a_database_outage_without_limit(monkeypatch):
    from service.settings import get_settings

    monkeypatch.setenv("PXP_BROKER_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    try:
        from worker.tasks import run_job
    finally:
        get_settings.cache_clear()

    assert run_job.max_retries is None and run_job.acks_late
