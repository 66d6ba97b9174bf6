"""FastAPI dependencies reading the app's wiring from ``app.state``.

The trivial ones are ``async`` so FastAPI does not hop to the threadpool to run them.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from sqlalchemy.orm import Session

from service.dispatch import Dispatcher
from service.settings import Settings
from service.storage import Storage


async def settings(request: Request) -> Settings:
    return request.app.state.settings


def db(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


async def storage(request: Request) -> Storage:
    return request.app.state.storage


async def dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher
