"""Safe extraction of untrusted tar / zip archives.

Members are checked one by one before anything is written: no absolute or
drive paths, no ``..``, only regular files and directories (no symlinks,
hard links, devices or FIFOs), at most ``max_members`` members and
``max_bytes`` uncompressed bytes. The byte limit is enforced on what is
actually decompressed, not only on sizes the headers claim.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from pxp.errors import InvalidDataError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
ZIP_SUFFIXES = (".zip",)
_COPY_CHUNK = 1 << 20


def archive_kind(path: Path) -> str | None:
    """``"tar"``, ``"zip"`` or None, by file name."""
    name = path.name.lower()
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    return None


class _Budget:
    def __init__(self, archive: str, max_bytes: int, max_members: int) -> None:
        self.archive, self.max_bytes, self.max_members = archive, max_bytes, max_members
        self.bytes = 0
        self.members = 0

    def member(self) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise InvalidDataError(
                f"{self.archive}: more than {self.max_members} members; refusing to extract"
            )

    def spend(self, count: int) -> None:
        self.bytes += count
        if self.bytes > self.max_bytes:
            raise InvalidDataError(
                f"{self.archive}: uncompressed size exceeds the limit of {self.max_bytes} bytes; refusing to extract"
            )


def _safe_relative(name: str, archive: str) -> PurePosixPath | None:
    """The member's path relative to the extraction root; None for the root itself."""
    if "\x00" in name:
        raise InvalidDataError(f"{archive}: member name {name!r} contains a NUL byte")
    normalized = name.replace("\\", "/")
    path = PurePosixPath(normalized)
    if normalized.startswith("/") or path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise InvalidDataError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if ".." in path.parts:
        raise InvalidDataError(f"{archive}: member {name!r} escapes the archive root (path traversal)")
    parts = [p for p in path.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def _copy(src: IO[bytes], dest: Path, budget: _Budget) -> None:
    with dest.open("wb") as out:
        while chunk := src.read(_COPY_CHUNK):
            budget.spend(len(chunk))
            out.write(chunk)


def _target(root: Path, rel: PurePosixPath) -> Path:
    dest = root.joinpath(*rel.parts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def _extract_tar(path: Path, root: Path, budget: _Budget) -> None:
    with tarfile.open(path, mode="r:*") as archive:
        for member in archive:
            budget.member()
            rel = _safe_relative(member.name, path.name)
            if member.isdir():
                if rel is not None:
                    _target(root, rel).mkdir(exist_ok=True)
                continue
            if not member.isfile():
                kind = "link" if member.issym() or member.islnk() else "special file"
                raise InvalidDataError(
                    f"{path.name}: member {member.name!r} is a {kind}; only regular files allowed"
                )
            if rel is None:
                continue
            if member.size > budget.max_bytes - budget.bytes:
                budget.spend(member.size)
            src = archive.extractfile(member)
            if src is None:
                raise InvalidDataError(f"{path.name}: cannot read member {member.name!r}")
            with src:
                _copy(src, _target(root, rel), budget)


def _extract_zip(path: Path, root: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if len(infos) > budget.max_members:
            budget.members = len(infos) - 1
            budget.member()
        declared = sum(i.file_size for i in infos)
        if declared > budget.max_bytes:
            budget.spend(declared)
        for info in infos:
            budget.member()
            rel = _safe_relative(info.filename, path.name)
            mode = info.external_attr >> 16
            if mode and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                kind = "symlink" if stat.S_ISLNK(mode) else "special file"
                raise InvalidDataError(
                    f"{path.name}: member {info.filename!r} is a {kind}; only regular files allowed"
                )
            if info.flag_bits & 0x1:
                raise InvalidDataError(f"{path.name}: member {info.filename!r} is encrypted")
            if rel is None:
                continue
            if info.is_dir():
                _target(root, rel).mkdir(exist_ok=True)
                continue
            with archive.open(info) as src:
                _copy(src, _target(root, rel), budget)


def safe_extract(
    path: Path, dest: Path, *, max_bytes: int, max_members: int, kind: str | None = None
) -> Path:
    """Extract the tar/zip ``path`` into the existing directory ``dest``; returns ``dest``.

    ``kind`` (``"tar"``/``"zip"``) defaults to the file name's. On any refusal the
    partial extraction is removed and :class:`InvalidDataError` raised.
    """
    kind = kind or archive_kind(path)
    budget = _Budget(path.name, max_bytes, max_members)
    try:
        if kind == "tar":
            _extract_tar(path, dest, budget)
        elif kind == "zip":
            _extract_zip(path, dest, budget)
        else:
            raise InvalidDataError(f"{path.name}: not a .tar/.tar.gz/.tgz/.zip archive")
    except InvalidDataError:
        _clear(dest)
        raise
    except (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as exc:
        _clear(dest)
        raise InvalidDataError(f"{path.name}: corrupt or unreadable archive ({exc})") from None
    except Exception as exc:  # zlib/lzma/bz2 errors surface with their own types
        _clear(dest)
        raise InvalidDataError(
            f"{path.name}: corrupt or unreadable archive ({type(exc).__name__}: {exc})"
        ) from None
    return dest


def _clear(dest: Path) -> None:
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
