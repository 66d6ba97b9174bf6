"""Bearer API-key authentication; every request resolves to one tenant.

Verified keys are cached in-process for ``auth_cache_ttl_s`` so that status polls cost
one query, not two; a revoked key therefore stops working within that TTL.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from pxp import jsonlog
from service import keys
from service.api.errors import ApiError
from service.db import repo
from service.db.session import SessionFactory


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    key_id: str
    is_admin: bool


class KeyCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, str, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, key_id: str) -> tuple[str, Principal] | None:
        if self.ttl_s <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1], entry[2]

    def put(self, key_id: str, secret_hash: str, principal: Principal) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key_id] = (time.monotonic() + self.ttl_s, secret_hash, principal)


_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'", _UNAUTHORIZED
        )
    return token.strip()


def _lookup(factory: SessionFactory, key_id: str) -> tuple[str, Principal] | None:
    with factory() as s:
        row = repo.active_key(s, key_id)
        if row is None:
            return None
        return row.secret_hash, Principal(tenant_id=row.tenant_id, key_id=row.id, is_admin=row.is_admin)


async def authenticate(request: Request) -> Principal:
    """FastAPI dependency: the tenant behind the request's API key, or 401.

    Async so that a cache hit costs no thread hop; only a miss queries the database
    (in the threadpool).
    """
    parsed = keys.parse(_bearer(request))
    if parsed is None:
        raise ApiError(401, "unauthorized", "invalid API key", _UNAUTHORIZED)
    cache: KeyCache = request.app.state.key_cache
    found = cache.get(parsed.key_id)
    if found is None:
        found = await run_in_threadpool(_lookup, request.app.state.session_factory, parsed.key_id)
        if found is None:
            raise ApiError(401, "unauthorized", "invalid or revoked API key", _UNAUTHORIZED)
        cache.put(parsed.key_id, *found)
    secret_hash, principal = found
    if not keys.matches(parsed.secret, secret_hash):
        raise ApiError(401, "unauthorized", "invalid or revoked API key", _UNAUTHORIZED)
    # Log lines of the rest of the request (and its access line) name the tenant.
    request.state.tenant_id = principal.tenant_id
    jsonlog.set_context(tenant=principal.tenant_id)
    return principal
