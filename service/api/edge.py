"""What every request passes before a route sees it, and what every failure leaves as.

* :class:`StrictInputMiddleware` refuses text Postgres cannot store and numbers JSON does
  not have, the same way on every route: a NUL character (``\\u0000``) or a lone UTF-16
  surrogate (``\\ud800``) in the path, the query string or any string (key or value) of a
  JSON body, and ``NaN`` / ``Infinity`` in a JSON body, answer ``422 {error:
  invalid_request, detail}``. Multipart form fields are checked by the routes with
  :func:`check_text` / :func:`strict_json_loads`, the same functions.
* :class:`UnexpectedErrorMiddleware` turns an exception no handler took into a complete
  ``500 {error: internal}`` response and does not re-raise it, so the server keeps the
  client's keep-alive connection open (Starlette's ``ServerErrorMiddleware`` sends its
  500 and then re-raises, and uvicorn answers that by closing the connection). What the
  error maps to is decided in :mod:`service.api.errors`.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import errors
from service.api.text import BadText, check_text, strict_json_loads

log = logging.getLogger("pxp.gateway")


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            kind = value.decode("latin-1").split(";", 1)[0].strip().lower()
            return kind == "application/json" or kind.endswith("+json")
    # FastAPI reads a body without a content type as JSON.
    return True


class StrictInputMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_text(scope.get("path", ""), "path")
            query = scope.get("query_string", b"").decode("latin-1")
            for key, value in parse_qsl(query, keep_blank_values=True, errors="surrogateescape"):
                check_text(key, "query parameter name")
                check_text(value, f"query parameter {key!r}")
        except BadText as exc:
            await errors.error_response(422, "invalid_request", str(exc))(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE") or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        # JSON bodies are small (the size limit outside this middleware caps them).
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if body:
            try:
                strict_json_loads(body)
            except BadText as exc:
                await errors.error_response(422, "invalid_request", str(exc))(scope, receive, send)
                return
            except ValueError:
                pass  # not JSON at all: the route's own parsing reports it

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)


class UnexpectedErrorMiddleware:
    """Answer an unhandled exception with a complete 500 (or 503) and keep the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise  # a streamed body broke halfway: the connection must close
            response = errors.unexpected_response(exc)
            await response(scope, receive, send)
