"""The Optuna dashboard on the service's studies: the worker names each study after its job
and sets job id and tenant as user attributes; ``optuna-dashboard <storage URL>`` (the
documented command) lists them from the ``optuna`` schema of the service database."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import httpx
import pytest

from service.db import repo
from service.storage import make_storage
from tests.conftest import free_port, start_process, wait_for
from worker.inputs import materialise

pytestmark = pytest.mark.service

SPEC = {"model": {"architecture": "digits_vgg"}, "search": {"trials": 3}}


def test_the_worker_names_the_study_and_sets_job_and_tenant(db_factory, prod_settings, tmp_path):
    with db_factory() as s:
        tenant = repo.get_or_create_tenant(s, "optuna-tenant")
        job = repo.create_job(
            s, tenant.id, SPEC, model_id=None, dataset_id=None, idempotency_key=None, request_hash=None
        )
        spec = materialise(s, job, make_storage(prod_settings), prod_settings, tmp_path / "inputs")
    assert spec.search is not None and spec.search.study_name == f"pxp-job-{job.id}"
    assert spec.search.study_user_attrs == {
        "job_id": job.id,
        "tenant": "optuna-tenant",
        "tenant_id": tenant.id,
    }


def test_the_gateway_refuses_user_set_study_attrs(api):
    spec = {**SPEC, "search": {"trials": 3, "study_user_attrs": {"job_id": "someone-else"}}}
    resp = api.client.post("/v1/jobs", json={"spec": spec}, headers=api.key())
    assert resp.status_code == 422 and "study_user_attrs" in resp.json()["detail"]


@pytest.mark.timeout(120)
def test_optuna_dashboard_lists_the_service_studies(prod_settings, tmp_path):
    import optuna

    from pxp.search.study import open_study
    from pxp.spec import SearchSpec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    job_id = secrets.token_hex(16)
    attrs = {"job_id": job_id, "tenant": "acme", "tenant_id": "t-123"}
    # The study as pxp.search opens it in a job (name and attributes from worker.inputs).
    study, _ = open_study(
        url=prod_settings.optuna_url,
        name=f"pxp-job-{job_id}",
        spec=SearchSpec(trials=3, study_user_attrs=attrs),
        expected_fingerprint="fp",
        enqueue=[],
    )
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)

    port = free_port()
    exe = Path(sys.executable).parent / "optuna-dashboard"
    proc = start_process(
        [str(exe), prod_settings.optuna_url, "--host", "127.0.0.1", "--port", str(port)],
        {},
        tmp_path / "optuna-dashboard.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def studies() -> list[dict] | None:
            if proc.proc.poll() is not None:
                raise RuntimeError(f"optuna-dashboard exited:\n{proc.tail()}")
            try:
                return httpx.get(f"{base}/api/studies", timeout=5).json()["study_summaries"]
            except httpx.TransportError:
                return None

        listed = wait_for(studies, 60, 0.3, "optuna-dashboard")
        ours = next(s for s in listed if s["study_name"] == f"pxp-job-{job_id}")
        shown = {a["key"]: a["value"] for a in ours["user_attrs"]}
        assert {k: shown[k] for k in attrs} == attrs
        detail = httpx.get(f"{base}/api/studies/{ours['study_id']}", timeout=10).json()
        assert len(detail["trials"]) == 3
        assert httpx.get(f"{base}/dashboard/", timeout=10).status_code == 200
    finally:
        proc.stop()
        if proc.proc.returncode not in (0, -15, None):
            print(proc.tail(), file=sys.stderr)


def test_pxp_service_prints_the_optuna_url(monkeypatch, capsys, prod_settings):
    from service.cli import main

    monkeypatch.setenv("PXP_DATABASE_URL", prod_settings.db_url)
    assert main(["optuna-url"]) == 0
    assert capsys.readouterr().out.strip() == prod_settings.optuna_url
