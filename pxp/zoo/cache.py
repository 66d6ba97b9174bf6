"""On-disk cache of trained zoo models, safe under concurrent processes.

Layout: ``<cache>/zoo/<name>-<key>/{weights.safetensors, meta.json}`` where
``key`` hashes architecture, effective kwargs, seed and recipe version. An
entry is built in a temporary sibling directory and renamed into place, so
readers never see a half-written entry; an exclusive ``flock`` on
``<name>-<key>.lock`` makes a second process wait for the first one's
training instead of repeating it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pxp.errors import InvalidSpecError

WEIGHTS = "weights.safetensors"
META = "meta.json"


def default_cache_dir() -> Path:
    """``$PXP_CACHE_DIR`` or ``~/.cache/pxp``."""
    env = os.environ.get("PXP_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pxp"


def cache_key(name: str, kwargs: dict[str, Any], seed: int, recipe_version: int) -> str:
    try:
        blob = json.dumps(
            {"architecture": name, "kwargs": kwargs, "seed": seed, "recipe": recipe_version}, sort_keys=True
        )
    except TypeError as exc:
        raise InvalidSpecError(f"zoo kwargs must be JSON values: {exc}") from None
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def entry_dir(cache_dir: Path, name: str, key: str) -> Path:
    return cache_dir / "zoo" / f"{name}-{key}"


def is_complete(entry: Path) -> bool:
    return (entry / WEIGHTS).is_file() and (entry / META).is_file()


@contextlib.contextmanager
def locked(entry: Path) -> Iterator[None]:
    """Exclusive inter-process lock for one entry (no-op where ``fcntl`` does not exist)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock_path = entry.with_name(entry.name + ".lock")
    with lock_path.open("a+") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: atomic rename still keeps entries whole
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def publish(entry: Path, staging: Path) -> None:
    """Move a complete ``staging`` directory to ``entry``, replacing a broken one if present."""
    if entry.exists():
        trash = entry.with_name(f".{entry.name}.old-{uuid.uuid4().hex}")
        os.replace(entry, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(staging, entry)


def staging_dir(entry: Path) -> Path:
    path = entry.with_name(f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    path.mkdir(parents=True)
    return path


def read_meta(entry: Path) -> dict[str, Any]:
    with (entry / META).open(encoding="utf-8") as handle:
        meta = json.load(handle)
    if not isinstance(meta, dict):
        raise ValueError("meta.json is not an object")
    return meta


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    (directory / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
