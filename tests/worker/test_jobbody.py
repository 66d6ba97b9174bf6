"""execute_job in-process, on the embedded stack (SQLite + local directory): claims,
ownership guards, error payloads and the per-job work directory."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import timedelta

import pytest

from pxp.errors import InvalidDataError
from service.db import repo
from service.db.migrate import upgrade
from service.db.session import make_session_factory
from service.db.types import utcnow
from service.dispatch import EmbeddedDispatcher
from service.settings import Settings
from service.storage import LocalStorage, put_blob
from tests.service.payloads import safetensors_bytes
from tests.worker import scripted_pipeline
from worker.errors import JobLostError, error_payload, is_celery_time_limit, worker_lost_payload
from worker.jobbody import WorkerContext, execute_job


@pytest.fixture
def ctx(tmp_path) -> WorkerContext:
    settings = Settings(data_dir=tmp_path / "pxp", progress_min_interval_s=0, heartbeat_interval_s=0.2)
    settings.data_dir.mkdir()
    upgrade(settings.db_url)
    return WorkerContext(
        settings=settings,
        session_factory=make_session_factory(settings),
        storage=LocalStorage(settings.artifact_dir),
        dispatcher=EmbeddedDispatcher(),
    )


def _job(ctx, script="succeed", **kw) -> str:
    with ctx.session_factory() as s:
        tenant = repo.get_or_create_tenant(s, "t")
        spec = {"model": {"architecture": "digits_vgg", "kwargs": {"script": script, **kw}}}
        job = repo.create_job(
            s, tenant.id, spec, model_id=None, dataset_id=None, idempotency_key=None, request_hash=None
        )
        s.commit()
        return job.id


def _load(ctx, job_id):
    with ctx.session_factory() as s:
        return repo.load_job(s, job_id)


def test_success_on_sqlite_and_local_storage(ctx):
    job_id = _job(ctx)
    assert execute_job(job_id, ctx, pipeline=scripted_pipeline.run) == "succeeded"
    job = _load(ctx, job_id)
    assert job.status == "succeeded" and job.progress == 1.0 and job.seq > 3
    with ctx.session_factory() as s:
        arts = repo.list_artifacts(s, job_id)
    assert {a.name for a in arts} == {"model.safetensors", "results.json"}
    assert all(ctx.storage.exists(a.storage_key) and a.storage_key.endswith(a.sha256) for a in arts)
    assert not (ctx.settings.jobs_dir / job_id).exists(), "the work directory is removed after a finished job"
    # A duplicate delivery of the same task does nothing.
    assert execute_job(job_id, ctx, pipeline=scripted_pipeline.run) is None
    assert _load(ctx, job_id).attempts == 1


def test_cancelled_queued_job_is_not_run(ctx):
    job_id = _job(ctx)
    with ctx.session_factory() as s:
        repo.request_cancel(s, repo.load_job(s, job_id))
        s.commit()
    assert execute_job(job_id, ctx, pipeline=scripted_pipeline.run) is None
    assert _load(ctx, job_id).status == "cancelled"


def test_worker_that_lost_its_job_does_not_overwrite_the_new_attempt(ctx):
    job_id = _job(ctx)

    def hijacked(spec, out_dir, progress, *, study_storage=None):
        with ctx.session_factory() as s:
            assert repo.requeue_job(s, job_id, "first", utcnow() + timedelta(seconds=1))
            s.commit()
        with ctx.session_factory() as s:
            assert repo.claim_job(s, job_id, "other-worker", utcnow())
            s.commit()
        return scripted_pipeline.run(spec, out_dir, progress, study_storage=study_storage)

    assert execute_job(job_id, ctx, worker="first", pipeline=hijacked) is None
    job = _load(ctx, job_id)
    assert job.status == "running" and job.worker == "other-worker"


def _artifact_rows(ctx, job_id) -> list[tuple[int, str, str]]:
    with ctx.session_factory() as s:
        return [(a.id, a.name, a.sha256) for a in repo.list_artifacts(s, job_id)]


def test_late_worker_cannot_overwrite_the_new_attempts_artifacts(ctx, tmp_path):
    """A is handed over (requeued) while it runs; B claims attempt 2 and finishes. When A
    finishes late, its finish is refused and writes nothing: B's artifact rows and
    outcome stay exactly as B left them."""
    job_id = _job(ctx)
    ctx_b = dataclasses.replace(
        ctx, settings=ctx.settings.model_copy(update={"work_dir": tmp_path / "b-work"})
    )
    owners: dict[str, object] = {}

    def handed_over_after_running(spec, out_dir, progress, *, study_storage=None):
        result = scripted_pipeline.run(spec, out_dir, progress, study_storage=study_storage)
        (out_dir / "results.json").write_text('{"from": "the late worker"}')
        with ctx.session_factory() as s:
            assert repo.requeue_job(s, job_id, "A", utcnow() + timedelta(seconds=1))
            s.commit()
        assert execute_job(job_id, ctx_b, worker="B", pipeline=scripted_pipeline.run) == "succeeded"
        owners["artifacts"] = _artifact_rows(ctx, job_id)
        job = _load(ctx, job_id)
        owners["job"] = (job.status, job.worker, job.attempts, job.result, job.finished_at, job.seq)
        return result

    assert execute_job(job_id, ctx, worker="A", pipeline=handed_over_after_running) is None
    assert owners["job"][:3] == ("succeeded", "B", 2)
    assert _artifact_rows(ctx, job_id) == owners["artifacts"]
    job = _load(ctx, job_id)
    assert (job.status, job.worker, job.attempts, job.result, job.finished_at, job.seq) == owners["job"]


def test_soft_time_limit_fails_the_job(ctx):
    ctx.settings = ctx.settings.model_copy(update={"job_soft_time_limit_s": 1})
    job_id = _job(ctx, steps=30, delay=0.1)
    assert execute_job(job_id, ctx, pipeline=scripted_pipeline.run) == "failed"
    error = _load(ctx, job_id).error
    assert error["type"] == "JobTimeoutError" and error["kind"] == "internal"


def test_missing_dataset_reference_is_a_user_error(ctx):
    with ctx.session_factory() as s:
        tenant = repo.get_or_create_tenant(s, "t")
        spec = {"model": {"architecture": "digits_vgg"}, "data": {"source": "dataset:does-not-exist"}}
        job = repo.create_job(
            s, tenant.id, spec, model_id=None, dataset_id=None, idempotency_key=None, request_hash=None
        )
        s.commit()
    assert execute_job(job.id, ctx, pipeline=scripted_pipeline.run) == "failed"
    assert _load(ctx, job.id).error["kind"] == "user"


def test_error_payload_kinds():
    assert error_payload(InvalidDataError("one class")) == {
        "type": "InvalidDataError",
        "message": "one class",
        "kind": "user",
    }
    assert error_payload(KeyError("x"))["kind"] == "internal"
    assert error_payload(JobLostError("gone"))["type"] == "JobLostError"
    assert worker_lost_payload(3) == {
        "type": "WorkerLostError",
        "message": "the worker running this job was lost 3 time(s)",
        "kind": "internal",
    }


def test_celery_time_limits_are_recognised_by_class():
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    assert is_celery_time_limit(SoftTimeLimitExceeded()) and is_celery_time_limit(TimeLimitExceeded())

    class SoftTimeLimitExceeded(Exception):  # same name, not Celery's
        pass

    assert not is_celery_time_limit(SoftTimeLimitExceeded()) and not is_celery_time_limit(TimeoutError())


def test_checkpoint_that_does_not_fit_fails_as_user_error_in_the_real_pipeline(ctx, tmp_path):
    """The check the gateway cannot do without torch: the worker reports it on the job."""
    pytest.importorskip("torch")
    path = tmp_path / "wrong.safetensors"
    path.write_bytes(safetensors_bytes())
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    key = put_blob(ctx.storage, path, sha)
    with ctx.session_factory() as s:
        tenant = repo.get_or_create_tenant(s, "t")
        model = repo.add_model(
            s,
            tenant.id,
            architecture="digits_vgg",
            kwargs={},
            storage_key=key,
            sha256=sha,
            format="safetensors",
        )
        spec = {
            "model": {"architecture": "digits_vgg", "weights": f"model:{model.id}"},
            "criteria": [{"criterion": "weight"}],
        }
        job = repo.create_job(
            s, tenant.id, spec, model_id=model.id, dataset_id=None, idempotency_key=None, request_hash=None
        )
        s.commit()
    assert execute_job(job.id, ctx) == "failed"
    loaded = _load(ctx, job.id)
    assert loaded.error["type"] == "InvalidModelError" and loaded.error["kind"] == "user"
    message = loaded.error["message"]
    # Either the checkpoint's own numbers (read from its tensors) or the missing keys are named.
    assert "does not match digits_vgg" in message or "features.0.weight" in message or "missing" in message
    with ctx.session_factory() as s:
        assert repo.list_artifacts(s, job.id) == []


def test_a_job_that_reproduces_an_earlier_one_says_identical(ctx, tmp_path):
    """Issue 15 over the service: the rerun of a finished job compares itself with its artifacts."""
    pytest.importorskip("torch")
    from pxp.models import save_safetensors
    from pxp.zoo import TINY_KWARGS, load_zoo_model

    model, _ = load_zoo_model("digits_vgg", TINY_KWARGS["digits_vgg"])
    path = tmp_path / "tiny.safetensors"
    save_safetensors(model.state_dict(), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    key = put_blob(ctx.storage, path, sha)
    with ctx.session_factory() as s:
        tenant = repo.get_or_create_tenant(s, "t")
        row = repo.add_model(
            s,
            tenant.id,
            architecture="digits_vgg",
            kwargs=TINY_KWARGS["digits_vgg"],
            storage_key=key,
            sha256=sha,
            format="safetensors",
        )
        spec = {
            "model": {
                "architecture": "digits_vgg",
                "kwargs": TINY_KWARGS["digits_vgg"],
                "weights": f"model:{row.id}",
            },
            "criteria": [{"criterion": "weight"}],
            "prune": {"rates": [0.0, 0.5], "rate": 0.5},
            "export": {"measure_latency": False},
        }
        first = repo.create_job(
            s, tenant.id, spec, model_id=row.id, dataset_id=None, idempotency_key=None, request_hash=None
        )
        s.commit()
    assert execute_job(first.id, ctx) == "succeeded"
    with ctx.session_factory() as s:
        again = repo.create_job(
            s,
            tenant.id,
            spec,
            model_id=row.id,
            dataset_id=None,
            idempotency_key=None,
            request_hash=None,
            reproduces_job_id=first.id,
        )
        s.commit()
    assert execute_job(again.id, ctx) == "succeeded"
    job = _load(ctx, again.id)
    assert job.result["reproduction"]["of_job"] == first.id
    assert job.result["reproduction"]["identical"] is True, job.result["reproduction"]
    assert job.metrics["reproduction_identical"] is True
    with ctx.session_factory() as s:
        assert "reproduction" in {a.name for a in repo.list_artifacts(s, again.id)}
