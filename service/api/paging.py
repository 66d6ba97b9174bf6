"""Query-parameter helpers for keyset pagination."""

from __future__ import annotations

from service.api.errors import ApiError
from service.api.text import bad_text_reason
from service.db import repo
from service.settings import Settings


def page_limit(limit: int | None, settings: Settings) -> int:
    return min(limit or settings.page_size_default, settings.page_size_max)


def page_cursor(cursor: str | None) -> str | None:
    if cursor:
        try:
            _when, row_id = repo.decode_cursor(cursor)
        except ValueError:
            raise ApiError(422, "invalid_request", "malformed cursor") from None
        if bad_text_reason(row_id) is not None:
            raise ApiError(422, "invalid_request", "malformed cursor")
    return cursor or None
