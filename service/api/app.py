"""The FastAPI application factory.

Everything the routes need (settings, session factory, storage, dispatcher) hangs off
``app.state``, so tests and the embedded server can wire their own. Importing this
module does not import torch.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request

from service.api import errors, openapi
from service.api.auth import KeyCache, authenticate
from service.api.edge import StrictInputMiddleware, UnexpectedErrorMiddleware
from service.api.errors import ApiError
from service.api.limits import MULTIPART_OVERHEAD, BodySizeLimitMiddleware
from service.api.metrics import MetricsMiddleware, track_jobs
from service.api.request_context import RequestContextMiddleware
from service.api.routes import datasets, health, jobs, models
from service.api.ui import mount_ui
from service.db.async_reader import AsyncJobReader
from service.db.session import SessionFactory, make_session_factory
from service.dispatch import Dispatcher, make_dispatcher
from service.settings import Settings, get_settings
from service.storage import Storage, make_storage

log = logging.getLogger("pxp.gateway")

UPLOAD_PATHS = ("/v1/models", "/v1/datasets")

DESCRIPTION = """
Compress a trained CNN or Vision Transformer by pruning the components that carry the
least LRP relevance on a few reference samples per class (no retraining).

1. `POST /v1/models` a checkpoint (or its URI) and `POST /v1/datasets` labelled data;
2. `POST /v1/jobs` a JobSpec referencing them (send an `Idempotency-Key`);
3. poll `GET /v1/jobs/{id}` or follow `GET /v1/jobs/{id}/events`;
4. download `GET /v1/jobs/{id}/artifacts/model.safetensors`.

Authenticate with `Authorization: Bearer <API key>`. Errors are `{"error", "detail"}`.
"""


def _limits(settings: Settings) -> Any:
    def limit_for(method: str, path: str) -> int:
        if path.rstrip("/") == "/v1/models":
            return settings.max_model_bytes + MULTIPART_OVERHEAD
        if path.rstrip("/") == "/v1/datasets":
            return settings.max_dataset_bytes + MULTIPART_OVERHEAD
        return settings.max_json_bytes

    return limit_for


class UploadAuthMiddleware:
    """Authenticate uploads before their body is read, so anonymous clients cannot make
    the gateway spool gigabytes to disk."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].rstrip("/") in UPLOAD_PATHS
        ):
            try:
                await authenticate(Request(scope))
            except ApiError as exc:
                response = errors.error_response(exc.status, exc.error, exc.detail, exc.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    session_factory: SessionFactory | None = None,
    storage: Storage | None = None,
    dispatcher: Dispatcher | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    # The async status reader opens its own connections, so it is used only when the app
    # owns its database access (not with an injected, e.g. transactional, session factory).
    reader = None if settings.is_sqlite or session_factory is not None else AsyncJobReader(settings.db_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if reader is not None:
            await reader.close()

    app = FastAPI(
        lifespan=lifespan,
        title="pxp",
        version="1",
        description=DESCRIPTION,
        docs_url="/docs",
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.session_factory = session_factory or make_session_factory(settings)
    app.state.storage = storage or make_storage(settings)
    app.state.dispatcher = dispatcher or make_dispatcher(settings)
    app.state.key_cache = KeyCache(settings.auth_cache_ttl_s)
    app.state.job_reader = reader
    track_jobs(app.state.session_factory)

    errors.install(app)
    openapi.install(app)
    for router in (health.router, models.router, datasets.router, jobs.router):
        app.include_router(router)
    mount_ui(app)
    # Added last = outermost: metrics see every response, limits run before auth parsing,
    # unstorable text is refused before any route, an unhandled error still answers a 500.
    app.add_middleware(StrictInputMiddleware)
    app.add_middleware(UploadAuthMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, limit_for=_limits(settings))
    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(MetricsMiddleware)
    # Outermost: every response (errors from the limits and auth above included) carries
    # X-Request-ID, and every log line of the request its id.
    app.add_middleware(RequestContextMiddleware)
    return app
