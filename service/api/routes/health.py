"""Liveness, readiness (database, broker, storage) and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from service.api.metrics import render
from service.db import repo

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (does not touch dependencies)."""
    return {"status": "ok"}


def _checks(request: Request) -> dict[str, str]:
    state = request.app.state
    results: dict[str, str] = {}

    def run(name: str, fn: Any) -> None:
        try:
            fn()
            results[name] = "ok"
        except Exception as exc:
            results[name] = f"error: {type(exc).__name__}: {str(exc)[:200]}"

    def db() -> None:
        with state.session_factory() as s:
            repo.ping(s)

    run("database", db)
    run("broker", state.dispatcher.check)
    run("storage", state.storage.check)
    return results


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready to accept jobs: the database, the broker and the object store answer."""
    checks = await run_in_threadpool(_checks, request)
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


@router.get("/metrics")
async def metrics() -> Response:
    body = await run_in_threadpool(render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
