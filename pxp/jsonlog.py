"""Structured logs: one JSON object per line, with the context of the work being done.

Torch-free and shared by the gateway and the workers. The context fields
(:data:`CONTEXT_FIELDS`: ``request_id``, ``job_id``, ``tenant``, ``stage``) live in
:mod:`contextvars`, so every log line of a request or a job carries them without being
passed around; :func:`bind` sets them for a block, :func:`set_context` until changed.
Extra fields given as ``log.info(..., extra={...})`` are added as keys too.

A line looks like::

    {"ts": "2026-12-01T17:45:34.123Z", "level": "INFO", "logger": "pxp.worker",
     "msg": "job succeeded", "request_id": "3f2a...", "job_id": "9c1e...",
     "tenant": "5b7d...", "stage": "export", "pid": 4242}

``PXP_LOG_FORMAT=text`` gives the classic one-line text format instead.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

CONTEXT_FIELDS = ("request_id", "job_id", "tenant", "stage")
_VARS: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"pxp_log_{name}", default=None) for name in CONTEXT_FIELDS
}
#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


def context() -> dict[str, str]:
    """The context fields set in the current context."""
    return {name: value for name, var in _VARS.items() if (value := var.get()) is not None}


def set_context(**fields: str | None) -> None:
    for name, value in fields.items():
        _VARS[name].set(value)


@contextmanager
def bind(**fields: str | None) -> Iterator[None]:
    """Set context fields for the duration of the block."""
    tokens = [(_VARS[name], _VARS[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "ts": stamp.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(context())
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                out[key] = value
        out["pid"] = record.process or os.getpid()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]  # StreamHandler is generic only in typeshed
    """Marks the handler :func:`configure` installed, so calling it twice installs one."""


def configure(fmt: str = "json", level: str | int = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) as JSON lines (or text)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
