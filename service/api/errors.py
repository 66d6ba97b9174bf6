"""The one place where errors become HTTP responses.

Every 4xx/5xx body is ``{"error": <code>, "detail": <message>}``. Domain errors from
:mod:`pxp.errors` map to status codes in :data:`DOMAIN_ERRORS` (first match wins).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pxp.errors import (
    InvalidDataError,
    InvalidModelError,
    InvalidSpecError,
    PxpError,
    UnsupportedArchitectureError,
    UserError,
)
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

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal", "internal server error")
