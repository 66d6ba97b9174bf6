"""Request ids and access logs for the gateway (pure ASGI, so streaming responses pass through).

Every HTTP request gets an id: the client's ``X-Request-ID`` when it is a sane token
(1-128 of ``A-Z a-z 0-9 . _ : -``), a new 32-hex one otherwise. It is echoed in the
response's ``X-Request-ID``, bound to every log line of the request (:mod:`pxp.jsonlog`),
stored on a job the request creates (``jobs.request_id``) and from there bound to the
worker's log lines for that job. One ``pxp.access`` line per request records method,
path, status, duration and tenant.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from pxp import jsonlog

log = logging.getLogger("pxp.access")

HEADER = "x-request-id"
_VALID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
#: Probes and scrapes: logged at DEBUG so they do not drown the access log.
_QUIET = frozenset({"/healthz", "/readyz", "/metrics"})


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name.lower() == HEADER.encode():
            text = value.decode("latin-1").strip()
            if _VALID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", []))
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER.encode()]
                message = {**message, "headers": [*headers, (HEADER.encode(), request_id.encode())]}
            await send(message)

        with jsonlog.bind(request_id=request_id, tenant=None, job_id=None, stage=None):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                level = logging.DEBUG if scope.get("path") in _QUIET else logging.INFO
                log.log(
                    level,
                    "%s %s %s",
                    scope.get("method"),
                    scope.get("path"),
                    status,
                    extra={
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status,
                        "duration_ms": round((time.perf_counter() - start) * 1000, 2),
                        "tenant": state.get("tenant_id"),
                    },
                )
