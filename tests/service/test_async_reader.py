"""The event-loop status reader (Postgres): same answers as the repository, tenant-scoped,
and it survives its connections being killed."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from sqlalchemy import text

from service.api.schemas import JobOut
from service.db import repo
from service.db.async_reader import AsyncJobReader

pytestmark = pytest.mark.service


def _job(factory) -> tuple[str, str]:
    with factory() as s:
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
        # Terminal, so the live workers' reconcilers (same test database) leave it alone.
        job.status = "failed"
        job.error = {"type": "X", "message": "m", "kind": "user"}
        s.commit()
        return tenant.id, job.id


def test_reader_matches_the_repository_and_is_tenant_scoped(pg_url, committed_factory):
    tenant_id, job_id = _job(committed_factory)
    other_tenant, _ = _job(committed_factory)

    async def run():
        reader = AsyncJobReader(pg_url, size=2)
        try:
            row = await reader.job(tenant_id, job_id)
            hidden = await reader.job(other_tenant, job_id)
            missing = await reader.job(tenant_id, "nope")
            rows = await asyncio.gather(*(reader.job(tenant_id, job_id) for _ in range(10)))
        finally:
            await reader.close()
        return row, hidden, missing, rows

    row, hidden, missing, rows = asyncio.run(run())
    assert hidden is None and missing is None and all(r == row for r in rows)
    from types import SimpleNamespace

    with committed_factory() as s:
        expected = JobOut.of(repo.get_job(s, tenant_id, job_id))
    assert JobOut.of(SimpleNamespace(**row)).model_dump_json() == expected.model_dump_json()


def test_reader_reconnects_after_its_connection_is_killed(pg_url, committed_factory, pg_engine):
    tenant_id, job_id = _job(committed_factory)

    async def run():
        reader = AsyncJobReader(pg_url, size=1)
        try:
            first = await reader.job(tenant_id, job_id)
            with pg_engine.connect() as conn:
                killed = (
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%FROM jobs%'"
                        )
                    )
                    .scalars()
                    .all()
                )
                conn.commit()
            assert any(killed)
            second = await reader.job(tenant_id, job_id)
        finally:
            await reader.close()
        return first, second

    first, second = asyncio.run(run())
    assert first is not None and second == first
