"""Liveness, readiness (database, broker, storage) and Prometheus metrics."""

from __future__ import annotations

import hmac
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from service.api.errors import ApiError
from service.api.metrics import render
from service.api.schemas import ErrorOut
from service.db import repo

router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


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


@router.get(
    "/readyz",
    responses={
        200: {"model": Readiness, "description": "every dependency answers"},
        503: {"model": Readiness, "description": "a dependency does not answer"},
    },
    response_model=Readiness,
)
async def readyz(request: Request) -> JSONResponse:
    """Ready to accept jobs: the database, the broker and the object store answer."""
    checks = await run_in_threadpool(_checks, request)
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
            "description": "Prometheus text exposition format (no tenant labels).",
        },
        401: {"model": ErrorOut, "description": "`metrics_token` is set and was not sent."},
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: request counts and latencies by route template, jobs by status.

    Nothing is labelled by tenant. When ``PXP_METRICS_TOKEN`` is set, scrapes must send
    ``Authorization: Bearer <token>``.
    """
    token: str | None = request.app.state.settings.metrics_token
    if token is not None:
        sent = request.headers.get("authorization", "").partition(" ")[2].strip()
        if not hmac.compare_digest(sent.encode(), token.encode()):
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <metrics token>'")
    body = await run_in_threadpool(render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
