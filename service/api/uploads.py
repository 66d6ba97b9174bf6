"""Copy an upload to a named temporary file, hashing it on the way."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from service.api.errors import ApiError

CHUNK = 1024 * 1024


@dataclass
class SpooledUpload:
    path: Path
    sha256: str
    size: int
    filename: str

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def clean_filename(name: str | None, default: str) -> str:
    base = os.path.basename((name or "").replace("\\", "/"))
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")[:200]
    return base or default


def spool(src: BinaryIO, filename: str | None, *, max_bytes: int, default_name: str) -> SpooledUpload:
    """Write ``src`` to a temp file; raise 413 past ``max_bytes`` and 422 when empty."""
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(prefix="pxp-upload-")
    path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ApiError(413, "payload_too_large", f"upload exceeds the limit of {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise ApiError(422, "invalid_request", "the uploaded file is empty")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return SpooledUpload(path, digest.hexdigest(), size, clean_filename(filename, default_name))
