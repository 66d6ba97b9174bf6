"""reconcile_once against the real Postgres and Redis (no worker consumes this queue)."""

from __future__ import annotations

import json
import os
import secrets
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy.orm import sessionmaker

from service.db import repo
from service.db.migrate import upgrade
from service.db.session import make_engine
from service.db.types import utcnow
from service.dispatch import CeleryDispatcher
from service.storage import S3Storage
from tests.conftest import PG_ADMIN_DSN
from worker.jobbody import WorkerContext
from worker.reconciler import reconcile_once

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def own_database():
    """A database of its own: the session's live workers run reconcilers of their own on the
    shared test database, and would race these tests for the same jobs."""
    name = f"pxp_reconcile_{secrets.token_hex(4)}"
    admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade(url)
    engine = make_engine(url)
    try:
        yield sessionmaker(bind=engine, expire_on_commit=False)
    finally:
        engine.dispose()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def ctx(prod_settings, own_database):
    settings = prod_settings.model_copy(
        update={
            "queue_name": f"{prod_settings.queue_name}-reconcile-{secrets.token_hex(3)}",
            "max_attempts": 2,
        }
    )
    return WorkerContext(
        settings=settings,
        session_factory=own_database,
        storage=S3Storage.from_settings(settings),
        dispatcher=CeleryDispatcher(settings),
    )


def _job(ctx, *, status="queued", heartbeat_age_s=0.0, attempts=0, enqueued_age_s=0.0) -> str:
    now = utcnow()
    with ctx.session_factory() as s:
        tenant = repo.get_or_create_tenant(s, f"t-{secrets.token_hex(4)}")
        job = repo.create_job(
            s,
            tenant.id,
            {"model": {"architecture": "digits_vgg"}},
            model_id=None,
            dataset_id=None,
            idempotency_key=None,
            request_hash=None,
        )
        job.status = status
        job.attempts = attempts
        job.enqueued_at = now - timedelta(seconds=enqueued_age_s)
        if status == "running":
            job.worker = "gone-worker"
            job.heartbeat_at = now - timedelta(seconds=heartbeat_age_s)
        s.commit()
        return job.id


def _sent(redis_client, queue: str) -> list[str]:
    """Job ids of the messages waiting in ``queue``."""
    return [
        json.loads(raw)["headers"]["argsrepr"].strip("()[]',") for raw in redis_client.lrange(queue, 0, -1)
    ]


def _status(ctx, job_id):
    with ctx.session_factory() as s:
        return repo.load_job(s, job_id)


def test_stale_running_job_is_requeued_and_sent(ctx, redis_client):
    stale = _job(ctx, status="running", heartbeat_age_s=ctx.settings.heartbeat_stale_s + 5, attempts=1)
    fresh = _job(ctx, status="running", heartbeat_age_s=0.5, attempts=1)
    report = reconcile_once(ctx)
    assert stale in report.requeued and fresh not in report.requeued
    job = _status(ctx, stale)
    assert job.status == "queued" and job.worker is None
    assert _status(ctx, fresh).status == "running"
    sent = _sent(redis_client, ctx.settings.queue_name)
    assert sent.count(stale) == 1 and fresh not in sent
    assert ctx.dispatcher.is_pending(stale)


def test_job_that_lost_its_worker_too_often_fails(ctx):
    job_id = _job(ctx, status="running", heartbeat_age_s=ctx.settings.heartbeat_stale_s + 5, attempts=2)
    report = reconcile_once(ctx)
    assert job_id in report.failed
    job = _status(ctx, job_id)
    assert job.status == "failed"
    assert job.error["type"] == "WorkerLostError" and job.error["kind"] == "internal"


def test_queued_job_without_broker_marker_is_resent_once(ctx, redis_client):
    lost = _job(ctx, enqueued_age_s=ctx.settings.queued_grace_s + 5)
    pending = _job(ctx, enqueued_age_s=ctx.settings.queued_grace_s + 5)
    ctx.dispatcher.enqueue(pending)
    young = _job(ctx, enqueued_age_s=0)
    report = reconcile_once(ctx)
    assert lost in report.resent
    assert pending not in report.resent and young not in report.resent
    assert ctx.dispatcher.is_pending(lost)
    # The resend refreshed enqueued_at, so an immediate second pass does nothing more.
    assert lost not in reconcile_once(ctx).resent


def test_finished_and_cancelled_jobs_are_left_alone(ctx):
    done = _job(ctx, status="running", heartbeat_age_s=999, attempts=1)
    with ctx.session_factory() as s:
        assert repo.finish_job(s, done, "gone-worker", "succeeded")
        s.commit()
    cancelled = _job(ctx, enqueued_age_s=999)
    with ctx.session_factory() as s:
        repo.request_cancel(s, repo.load_job(s, cancelled))
        s.commit()
    report = reconcile_once(ctx)
    assert {done, cancelled}.isdisjoint(report.requeued + report.resent + report.failed)


def test_job_of_a_dead_process_on_this_host_is_requeued_at_once(ctx):
    import socket
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    job_id = _job(ctx, status="running", heartbeat_age_s=0.1, attempts=1)
    alive = _job(ctx, status="running", heartbeat_age_s=0.1, attempts=1)
    with ctx.session_factory() as s:
        repo.load_job(s, job_id).worker = f"{socket.gethostname()}:{gone.pid}:embedded"
        repo.load_job(s, alive).worker = f"{socket.gethostname()}:{os.getpid()}:embedded"
        s.commit()
    report = reconcile_once(ctx)
    assert job_id in report.requeued and alive not in report.requeued
    assert _status(ctx, job_id).status == "queued" and _status(ctx, alive).status == "running"


# Defect 2: cancel after a worker crash ------------------------------------------------------


def _request_cancel(ctx, job_id):
    with ctx.session_factory() as s:
        repo.request_cancel(s, repo.load_job(s, job_id))
        s.commit()


def test_lost_job_with_cancel_requested_ends_cancelled_and_its_workdir_goes(ctx, redis_client):
    job_id = _job(ctx, status="running", heartbeat_age_s=ctx.settings.heartbeat_stale_s + 5, attempts=1)
    _request_cancel(ctx, job_id)  # running: only flagged, for the worker that is gone
    workdir = ctx.settings.jobs_dir / job_id
    (workdir / "out").mkdir(parents=True)
    (workdir / "out" / "stage0").write_text("ok")
    report = reconcile_once(ctx)
    assert job_id in report.cancelled and job_id not in report.requeued
    job = _status(ctx, job_id)
    assert job.status == "cancelled" and job.finished_at is not None and job.worker is None
    assert not workdir.exists()
    assert job_id not in _sent(redis_client, ctx.settings.queue_name)
    # The next pass has nothing left to do with it.
    again = reconcile_once(ctx)
    assert job_id not in again.requeued + again.resent + again.cancelled


def test_requeued_job_with_cancel_requested_ends_cancelled(ctx, redis_client):
    """A job an older reconciler requeued with its cancel flag set (resent forever before)."""
    job_id = _job(ctx, enqueued_age_s=ctx.settings.queued_grace_s + 5)
    with ctx.session_factory() as s:
        repo.load_job(s, job_id).cancel_requested = True
        s.commit()
    report = reconcile_once(ctx)
    assert job_id in report.cancelled and job_id not in report.resent
    assert _status(ctx, job_id).status == "cancelled"
    assert job_id not in _sent(redis_client, ctx.settings.queue_name)


def test_a_worker_given_a_requeued_cancelled_job_ends_it(ctx):
    from worker.jobbody import execute_job

    job_id = _job(ctx)
    with ctx.session_factory() as s:
        repo.load_job(s, job_id).cancel_requested = True
        s.commit()
    workdir = ctx.settings.jobs_dir / job_id
    workdir.mkdir(parents=True)
    assert execute_job(job_id, ctx, pipeline=lambda *a, **k: pytest.fail("must not run")) == "cancelled"
    assert _status(ctx, job_id).status == "cancelled" and not workdir.exists()


# Defect 1: a task that cannot reach the database is not lost ---------------------------------


class _FakeTask:
    """Stands in for the bound Celery task: records the retry it was asked for."""

    class Retry(Exception):
        pass

    def __init__(self, retries: int = 0) -> None:
        self.request = type("Request", (), {"id": "abcdef0123", "retries": retries})()
        self.retried: list[dict] = []

    def retry(self, **kwargs):
        self.retried.append(kwargs)
        return self.Retry()


def test_a_task_that_cannot_reach_the_database_retries_and_clears_its_marker(ctx, tmp_path):
    from service.db.session import make_session_factory
    from tests.conftest import free_port
    from worker.jobbody import MAX_RETRY_DELAY_S
    from worker.jobbody import run_with_retry as run

    job_id = _job(ctx, enqueued_age_s=ctx.settings.queued_grace_s + 5)
    ctx.dispatcher.enqueue(job_id)  # the message that is consumed during the outage
    dead = ctx.settings.model_copy(
        update={"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone"}
    )
    outage = WorkerContext(
        settings=dead,
        session_factory=make_session_factory(dead),
        storage=ctx.storage,
        dispatcher=ctx.dispatcher,
    )
    task = _FakeTask(retries=3)
    with pytest.raises(_FakeTask.Retry):
        run(task, job_id, outage)
    assert task.retried and task.retried[0]["countdown"] == 8.0
    assert _FakeTask(retries=50) and min(2.0**50, MAX_RETRY_DELAY_S) == MAX_RETRY_DELAY_S
    # The marker is gone, so even if the retry message is lost the reconciler sends it again
    # once the database is back; the job itself is untouched.
    assert not ctx.dispatcher.is_pending(job_id)
    assert _status(ctx, job_id).status == "queued"
    assert job_id in reconcile_once(ctx).resent


def test_other_errors_are_not_retried(ctx):
    from worker.jobbody import run_with_retry as run

    class Boom(Exception):
        pass

    class Ctx:
        settings = ctx.settings
        dispatcher = ctx.dispatcher

        def session_factory(self):
            raise Boom("not a database outage")

    with pytest.raises(Boom):
        run(_FakeTask(), "x" * 32, Ctx())  # type: ignore[arg-type]
