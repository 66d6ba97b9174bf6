"""The job dashboard at ``/ui``: static HTML, CSS and JS from ``service/ui`` (no build step,
no third-party code; charts are drawn on ``<canvas>`` by hand).

The page talks to the same ``/v1`` API with the API key the user pastes, kept in
``sessionStorage`` and sent as ``Authorization: Bearer``; it holds no server-side session.
A strict Content-Security-Policy allows only this origin's own scripts, styles and API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parents[1] / "ui"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class _UiFiles(StaticFiles):
    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-cache"
        return response


def mount_ui(app: FastAPI) -> None:
    app.mount("/ui", _UiFiles(directory=UI_DIR, html=True), name="ui")
