"""Webhooks: callback_url policy, the outbox written with the terminal state, signed
delivery with retries to a real loopback receiver, and delivery after a restart."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys

import psycopg
import pytest

from pxp.client import PxpClient
from service.admin import create_key, webhook_secret
from service.api.schemas import JobOut
from service.db import repo
from service.db.documents import job_document
from service.db.migrate import upgrade
from service.db.models import JobStatus, Tenant
from service.db.session import make_engine
from tests.conftest import PG_ADMIN_DSN, ROOT, wait_for
from tests.service.receiver import Receiver, verify

pytestmark = pytest.mark.service

SPEC = {"model": {"architecture": "digits_vgg", "kwargs": {"script": "succeed", "steps": 1, "delay": 0}}}


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def test_callback_url_follows_the_uri_policy(make_api):
    strict = make_api(allow_private_addresses=False)
    resp = strict.client.post(
        "/v1/jobs", json={"spec": SPEC, "callback_url": "https://127.0.0.1/hook"}, headers=strict.key()
    )
    assert resp.status_code == 422 and resp.json()["error"] == "uri_not_allowed", resp.text
    https_only = make_api(callback_url_schemes=["https"])
    resp = https_only.client.post(
        "/v1/jobs", json={"spec": SPEC, "callback_url": "http://127.0.0.1/hook"}, headers=https_only.key()
    )
    assert resp.status_code == 422 and "scheme" in resp.json()["detail"], resp.text
    resp = https_only.client.post(
        "/v1/jobs", json={"spec": SPEC, "callback_url": "file:///etc/passwd"}, headers=https_only.key()
    )
    assert resp.status_code == 422


def test_secret_is_created_with_the_tenant_and_rotates(api):
    api.key("acme-hooks")
    with api.factory() as s:
        first = repo.webhook_secret(s, "acme-hooks")
        assert first and first.startswith("whsec_")
        assert repo.webhook_secret(s, "acme-hooks") == first
        rotated = repo.webhook_secret(s, "acme-hooks", rotate=True)
        assert rotated != first and repo.webhook_secret(s, "acme-hooks") == rotated
        assert repo.webhook_secret(s, "nobody-here") is None


def test_cancelling_a_queued_job_writes_its_delivery_in_the_same_transaction(api):
    headers = api.key()
    job = api.client.post(
        "/v1/jobs", json={"spec": SPEC, "callback_url": "http://127.0.0.1:9/hook"}, headers=headers
    ).json()
    assert job["callback_url"] == "http://127.0.0.1:9/hook"
    assert api.client.get(f"/v1/jobs/{job['id']}/deliveries", headers=headers).json() == []
    cancelled = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).json()
    deliveries = api.client.get(f"/v1/jobs/{job['id']}/deliveries", headers=headers).json()
    assert [(d["event"], d["status"], d["attempts"]) for d in deliveries] == [("job.cancelled", "pending", 0)]
    with api.factory() as s:
        (row,) = repo.list_deliveries(s, job["id"])
        body = json.loads(row.payload)
        stored = repo.load_job(s, job["id"])
        assert stored is not None
        # The body is the job's final JSON, exactly as GET /v1/jobs/{id} shows it.
        assert body == JobOut.of(stored).model_dump(mode="json") == job_document(stored)
    assert body["status"] == cancelled["status"] == "cancelled"
    # Another tenant cannot see them.
    other = api.client.get(f"/v1/jobs/{job['id']}/deliveries", headers=api.key())
    assert other.status_code == 404


def test_delivery_is_signed_and_retried_after_a_500(celery_worker, live_gateway, worker_settings, receiver):
    receiver.codes = [500, 200]
    tenant = f"hooks-{secrets.token_hex(4)}"
    key = create_key(tenant, settings=worker_settings).key
    with PxpClient(live_gateway, key, timeout=30) as client:
        job = client.submit(SPEC, callback_url=receiver.url)
        final = client.wait(job["id"], timeout=60, poll_interval=0.1)
        assert final["status"] == "succeeded"
        wait_for(lambda: len(receiver.requests) >= 2, 30, what="the retried webhook")
        deliveries = wait_for(
            lambda: [d for d in client.deliveries(job["id"]) if d["status"] == "delivered"],
            10,
            what="the delivery row to say delivered",
        )
        assert len(deliveries) == 1 and deliveries[0]["attempts"] == 2
        assert deliveries[0]["last_status_code"] == 200 and deliveries[0]["event"] == "job.succeeded"
        current = client.job(job["id"])
    secret = webhook_secret(tenant, settings=worker_settings)
    assert secret is not None
    first, second = receiver.requests[:2]
    for req in (first, second):
        assert verify(secret, req), req.headers
        assert req.headers["x-pxp-event"] == "job.succeeded"
        assert req.headers["x-pxp-delivery"] == deliveries[0]["id"]
    assert first.body == second.body
    assert json.loads(second.body) == current
    assert not verify("whsec_wrong", second)
    tampered = type(second)(second.path, second.headers, second.body.replace(b"succeeded", b"failed"))
    assert not verify(secret, tampered)


@pytest.fixture
def fresh_db():
    name = f"pxp_hooks_{secrets.token_hex(4)}"
    admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_a_delivery_survives_a_restart(fresh_db, receiver, tmp_path):
    """A terminal job's outbox row is retried by one delivery process, which is killed;
    a new process sends it. (Own database, so no other test's worker can send it.)"""
    from sqlalchemy.orm import sessionmaker

    engine = make_engine(fresh_db)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    with factory() as s:
        key, _ = repo.create_api_key(s, "restart-tenant")
        job = repo.create_job(
            s,
            key.tenant_id,
            SPEC,
            model_id=None,
            dataset_id=None,
            idempotency_key=None,
            request_hash=None,
            callback_url=receiver.url,
        )
        s.commit()
        assert repo.claim_job(s, job.id, "w1", repo.utcnow())
        assert repo.finish_job(s, job.id, "w1", JobStatus.FAILED, error={"type": "X", "message": "m"})
        s.commit()
        secret = s.get(Tenant, key.tenant_id).webhook_secret  # type: ignore[union-attr]
    env = {
        **os.environ,
        "PXP_DATABASE_URL": fresh_db,
        "PXP_CALLBACK_URL_SCHEMES": "http",
        "PXP_ALLOW_PRIVATE_ADDRESSES": "true",
        "PXP_WEBHOOK_BACKOFF_BASE_S": "0.2",
        "PXP_WEBHOOK_POLL_INTERVAL_S": "0.1",
        "PXP_WEBHOOK_TIMEOUT_S": "1",
        "PXP_DATA_DIR": str(tmp_path),
    }
    cmd = [sys.executable, "-m", "worker.webhooks"]

    def delivery():
        with factory() as s:
            (row,) = repo.list_deliveries(s, job.id)
            return row

    receiver.codes = [500]
    first = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        wait_for(lambda: delivery().attempts >= 2, 30, what="two failed attempts")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    row = delivery()
    assert row.status == "pending" and row.last_status_code == 500
    tried = len(receiver.requests)
    receiver.codes = [500] * tried + [200]
    second = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        wait_for(lambda: delivery().status == "delivered", 30, what="delivery by the new process")
    finally:
        second.terminate()
        second.wait(10)
    final = receiver.requests[-1]
    assert verify(secret, final) and final.headers["x-pxp-event"] == "job.failed"
    assert json.loads(final.body)["error"]["type"] == "X"
    assert delivery().attempts == tried + 1
    engine.dispose()


def test_the_documented_verification_snippet_accepts_our_signature():
    import re
    import time

    from worker.webhooks import sign

    doc = (ROOT / "docs" / "integrations.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "verify_pxp_webhook" in b)
    namespace: dict = {}
    exec(snippet, namespace)
    verify_doc = namespace["verify_pxp_webhook"]
    body, stamp = b'{"id":"j","status":"succeeded"}', str(int(time.time()))
    headers = {"X-Pxp-Timestamp": stamp, "X-Pxp-Signature": sign("whsec_s", stamp, body)}
    assert verify_doc("whsec_s", headers, body)
    assert not verify_doc("whsec_other", headers, body)
    assert not verify_doc("whsec_s", headers, body + b" ")
    old = str(int(time.time()) - 3600)
    assert not verify_doc(
        "whsec_s", {"X-Pxp-Timestamp": old, "X-Pxp-Signature": sign("whsec_s", old, body)}, body
    )


def _embedded_cancelled_job(tmp_path, tenant, callback_url):  # type: ignore[no-untyped-def]
    """An embedded (SQLite) stack with one job of ``tenant`` cancelled while queued, so its
    terminal state's delivery to ``callback_url`` is due; returns (settings, factory, secret)."""
    from service.db.session import make_session_factory
    from service.settings import Settings

    settings = Settings(
        data_dir=tmp_path, callback_url_schemes=["http"], allow_private_addresses=True, webhook_timeout_s=2
    )
    upgrade(settings.db_url)
    factory = make_session_factory(settings)
    with factory() as s:
        key, _ = repo.create_api_key(s, tenant)
        job = repo.create_job(
            s,
            key.tenant_id,
            SPEC,
            model_id=None,
            dataset_id=None,
            idempotency_key=None,
            request_hash=None,
            callback_url=callback_url,
        )
        s.commit()
        repo.request_cancel(s, job)
        s.commit()
        secret = repo.webhook_secret(s, tenant)
    return settings, factory, secret


def test_embedded_mode_delivers_from_sqlite(tmp_path, receiver):
    """The same outbox and loop on the embedded stack (SQLite: no row locks, one writer)."""
    from worker.webhooks import deliver_due

    settings, factory, secret = _embedded_cancelled_job(tmp_path, "embedded", receiver.url)
    report = deliver_due(factory, settings)
    assert len(report.delivered) == 1 and report.retried == []
    assert (
        verify(secret, receiver.requests[0])
        and json.loads(receiver.requests[0].body)["status"] == "cancelled"
    )
    assert deliver_due(factory, settings).delivered == []  # sent once


def test_migration_gives_existing_tenants_a_secret(tmp_path):
    from sqlalchemy import text

    from service.db.migrate import downgrade

    url = f"sqlite:///{tmp_path}/m.db"
    upgrade(url, "0001")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'old', '2026-01-01')"))
    upgrade(url)
    with engine.connect() as conn:
        secret = conn.execute(text("SELECT webhook_secret FROM tenants WHERE id = 't1'")).scalar()
    assert secret and secret.startswith("whsec_")
    downgrade(url, "0001")
    upgrade(url)
    engine.dispose()


def test_delivery_connects_to_the_address_that_was_checked(tmp_path, receiver, monkeypatch):
    """No DNS rebinding window: the host is resolved once, by the policy check, and the POST goes
    to that address. ``hooks.pxp.invalid`` resolves only inside the check (no DNS knows it), so the
    delivery can succeed only if it connects to the checked address."""
    import socket
    import types
    from urllib.parse import urlsplit

    from service.storage import remote
    from worker.webhooks import deliver_due

    port = urlsplit(receiver.url).port
    real = socket.getaddrinfo

    def checked_resolution(host, *args, **kwargs):
        return real("127.0.0.1" if host == "hooks.pxp.invalid" else host, *args, **kwargs)

    monkeypatch.setattr(
        remote, "socket", types.SimpleNamespace(**{**vars(socket), "getaddrinfo": checked_resolution})
    )
    settings, factory, _ = _embedded_cancelled_job(
        tmp_path, "pinned", f"http://hooks.pxp.invalid:{port}/hook"
    )
    report = deliver_due(factory, settings)
    assert len(report.delivered) == 1, report
    assert receiver.requests[0].headers["host"] == f"hooks.pxp.invalid:{port}"
