"""Fixtures for the core-library tests: an isolated zoo cache shared by the session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def zoo_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tiny zoo models train once per session into a private cache, never into ~/.cache."""
    path = tmp_path_factory.mktemp("zoo-cache")
    previous = os.environ.get("PXP_CACHE_DIR")
    os.environ["PXP_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("PXP_CACHE_DIR", None)
    else:
        os.environ["PXP_CACHE_DIR"] = previous
