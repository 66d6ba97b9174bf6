"""Text Postgres cannot store and numbers JSON does not have: one check, used everywhere.

A NUL character (``\\u0000``) or a lone UTF-16 surrogate (``\\ud800``) in any string, and
``NaN`` / ``Infinity`` in JSON, are refused with :class:`BadText` (422 at the gateway, by
:mod:`service.api.edge` for paths, queries and JSON bodies, and by the routes for form
fields and cursors).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


class BadText(ValueError):
    """A string or number that cannot be stored or is not JSON."""


def bad_text_reason(value: str) -> str | None:
    """Why ``value`` cannot be stored (NUL, lone surrogate), or ``None`` if it can."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    return None


def check_text(value: str | None, where: str) -> str | None:
    """Return ``value``; raise :class:`BadText` naming ``where`` if it cannot be stored."""
    if value is not None and (reason := bad_text_reason(value)) is not None:
        raise BadText(f"{where} {reason}")
    return value


def _reject_constant(name: str) -> Any:
    raise BadText(f"{name} is not a JSON number; send a finite number or null")


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}.{key}" if path else "key", key
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}.{i}" if path else str(i))


def check_json_value(value: Any, where: str = "body") -> Any:
    """Raise :class:`BadText` if any string in ``value`` (keys too) cannot be stored."""
    for path, text in _strings(value, ""):
        reason = bad_text_reason(text)
        if reason is not None:
            label = f"{where}.{path}" if path else where
            raise BadText(f"{label}: {reason}")
    return value


def strict_json_loads(text: str | bytes, where: str = "body") -> Any:
    """``json.loads`` that refuses ``NaN``/``Infinity`` and unstorable strings (:class:`BadText`);
    malformed JSON raises ``json.JSONDecodeError`` as usual."""
    return check_json_value(json.loads(text, parse_constant=_reject_constant), where)
