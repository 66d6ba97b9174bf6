"""A small asyncio reader for the one query clients hammer: a job's status by id.

``GET /v1/jobs/{id}`` is what pipelines poll. Through SQLAlchemy's sync session it
costs two threadpool hand-offs per request; on a busy host every hand-off is a wake-up
that waits for a CPU. This reader runs the query on the event loop with psycopg's async
connections (a few, reused), so a poll is one round trip and no thread switch. Postgres
only; SQLite (embedded mode) keeps the threadpool path.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from service.db.models import Job

_COLUMNS = [c for c in Job.__table__.columns]


def _utc(value: Any) -> Any:
    """Datetimes in UTC, as the ORM's ``UTCDateTime`` returns them, whatever the session time zone."""
    return value.astimezone(UTC) if isinstance(value, datetime) else value


def _conninfo(url: str) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


class AsyncJobReader:
    def __init__(self, url: str, size: int = 4) -> None:
        self.conninfo = _conninfo(url)
        self.size = size
        self._idle: asyncio.Queue[Any] | None = None
        self._created = 0
        query = select(*_COLUMNS).where(Job.id == "__id__", Job.tenant_id == "__tenant__")
        compiled = query.compile(dialect=postgresql.psycopg.dialect())
        self._sql = str(compiled)
        names = {value: key for key, value in compiled.params.items()}
        self._id_param, self._tenant_param = names["__id__"], names["__tenant__"]

    async def _acquire(self) -> Any:
        import psycopg

        if self._idle is None:
            self._idle = asyncio.Queue()
        if self._idle.empty() and self._created < self.size:
            self._created += 1
            try:
                return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
            except BaseException:
                self._created -= 1
                raise
        return await self._idle.get()

    async def _release(self, conn: Any, broken: bool) -> None:
        assert self._idle is not None
        if broken or conn.closed:
            self._created -= 1
            await conn.close()
        else:
            self._idle.put_nowait(conn)

    async def job(self, tenant_id: str, job_id: str) -> dict[str, Any] | None:
        """The job row as a dict of column values, or ``None`` (missing or another tenant's)."""
        import psycopg

        for attempt in range(2):
            conn = await self._acquire()
            broken = False
            try:
                cur = await conn.execute(self._sql, {self._id_param: job_id, self._tenant_param: tenant_id})
                row = await cur.fetchone()
                return None if row is None else {c.key: _utc(v) for c, v in zip(_COLUMNS, row, strict=True)}
            except psycopg.OperationalError:
                broken = True
                if attempt == 1:
                    raise
            finally:
                await self._release(conn, broken)
        return None

    async def close(self) -> None:
        if self._idle is None:
            return
        while not self._idle.empty():
            await (self._idle.get_nowait()).close()
