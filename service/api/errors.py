"""The one place where errors become HTTP responses.

Every 4xx/5xx body is ``{"error": <code>, "detail": <message>}``. Domain errors from
:mod:`pxp.errors` map to status codes in :data:`DOMAIN_ERRORS` (first match wins).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import OperationalError as SAOperationalError
from sqlalchemy.exc import TimeoutError as SAPoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from pxp.errors import (
    InvalidDataError,
    InvalidModelError,
    InvalidSpecError,
    PxpError,
    UnsupportedArchitectureError,
    UserError,
)
from service.api.text import BadText
from service.storage.remote import UriNotAllowedError

log = logging.getLogger("pxp.gateway")

DOMAIN_ERRORS: tuple[tuple[type[PxpError], int, str], ...] = (
    (UriNotAllowedError, 422, "uri_not_allowed"),
    (UnsupportedArchitectureError, 422, "unsupported_architecture"),
    (InvalidModelError, 422, "invalid_model"),
    (InvalidDataError, 422, "invalid_data"),
    (InvalidSpecError, 422, "invalid_spec"),
    (UserError, 400, "bad_request"),
)

_STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}

#: Seconds a client is asked to wait (``Retry-After``) when a dependency is down.
RETRY_AFTER_S = 5


def _unavailable_types() -> tuple[type[Exception], ...]:
    import psycopg

    return (
        SAOperationalError,
        SAInterfaceError,
        SAPoolTimeout,
        psycopg.OperationalError,
        psycopg.InterfaceError,
    )


#: Exceptions that mean the database cannot be reached: 503 with ``Retry-After``, not 500.
UNAVAILABLE: tuple[type[Exception], ...] = _unavailable_types()


class ApiError(Exception):
    """An HTTP error raised by route code: ``ApiError(404, "not_found", "job ... not found")``."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def classify(exc: PxpError) -> tuple[int, str]:
    for cls, status, code in DOMAIN_ERRORS:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal"


def unavailable_response() -> JSONResponse:
    return error_response(
        503,
        "unavailable",
        "the database is unavailable; retry later",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


def unexpected_response(exc: BaseException) -> JSONResponse:
    """The response for an exception no handler took: 503 when the database is down, else 500."""
    if isinstance(exc, UNAVAILABLE):
        log.warning("database unavailable: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return unavailable_response()
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal", "internal server error")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette reports only the first route's).

    Read from the served OpenAPI paths (public and stable across FastAPI's router
    internals), plus the undocumented plain routes (docs, openapi.json).
    """
    path = request.url.path
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            methods |= {m.upper() for m in operations if m.upper() in _HTTP_METHODS}
    for route in request.app.routes:
        route_path = getattr(route, "path", None)
        if route_path == path and getattr(route, "methods", None):
            methods |= set(route.methods)
    if "GET" in methods:
        methods.add("HEAD")
    if methods:
        methods.add("OPTIONS")
    return sorted(methods)


_HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


def not_found(kind: str, object_id: str) -> ApiError:
    return ApiError(404, "not_found", f"{kind} {object_id!r} not found")


def validation_message(
    errors: Sequence[Mapping[str, Any]], *, prefix: str = "", whole: str | None = "body"
) -> str:
    """Pydantic/FastAPI validation errors as one line: ``loc: msg; loc: msg`` (first ten).

    ``prefix`` goes before each location (``spec.`` for a JobSpec inside the body);
    an error without a location is labelled ``whole`` (or shown bare when ``None``).
    """
    parts = []
    for err in list(errors)[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = err.get("msg", "invalid")
        if loc:
            parts.append(f"{prefix}{loc}: {msg}")
        else:
            parts.append(f"{whole}: {msg}" if whole else msg)
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(PxpError)
    async def _domain_error(_request: Request, exc: PxpError) -> JSONResponse:
        status, code = classify(exc)
        if status >= 500:
            log.exception("internal error", exc_info=exc)
            return error_response(500, "internal", "internal server error")
        return error_response(status, code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", validation_message(exc.errors()))

    @app.exception_handler(BadText)
    async def _bad_text(_request: Request, exc: BadText) -> JSONResponse:
        return error_response(422, "invalid_request", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            allow = ", ".join(allowed_methods(request))
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": allow})
            headers = {**(headers or {}), "Allow": allow}
        code = _STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), headers)

    for unavailable in UNAVAILABLE:

        @app.exception_handler(unavailable)
        async def _unavailable(_request: Request, _exc: Exception) -> JSONResponse:
            return unexpected_response(_exc)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return unexpected_response(exc)
