"""Check an uploaded dataset (ImageFolder tar/zip or a tensor file) without extracting it."""

from __future__ import annotations

import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pxp.errors import InvalidDataError
from service.validation.checkpoints import looks_like_pickle
from service.validation.pickle_scan import scan_torch_zip
from service.validation.safetensors_header import looks_like_safetensors, read_header

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


@dataclass
class DatasetSummary:
    format: str
    class_names: list[str] | None = None
    num_files: int | None = None
    extras: dict[str, object] = field(default_factory=dict)


def _safe_name(name: str) -> PurePosixPath:
    if not name or "\x00" in name or "\\" in name:
        raise InvalidDataError(f"archive member {name!r} has an invalid name")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise InvalidDataError(f"archive member {name!r} escapes the archive root")
    return path


def _hidden(path: PurePosixPath) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.parts)


def _tar_members(path: Path) -> Iterator[tuple[str, int, bool]]:
    try:
        with tarfile.open(path, mode="r:*") as tf:
            for m in tf:
                if m.isdir():
                    yield m.name, 0, False
                elif m.isreg():
                    yield m.name, m.size, True
                else:
                    raise InvalidDataError(f"archive member {m.name!r} is a link or special file")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidDataError(f"corrupt tar archive: {exc}") from None


def _zip_members(path: Path) -> Iterator[tuple[str, int, bool]]:
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                if mode and stat.S_ISLNK(mode):
                    raise InvalidDataError(f"archive member {info.filename!r} is a symbolic link")
                yield info.filename, info.file_size, not info.is_dir()
    except zipfile.BadZipFile as exc:
        raise InvalidDataError(f"corrupt zip archive: {exc}") from None


#: Archives this small may expand to at most this much whatever their ratio.
RATIO_FLOOR_BYTES = 16 * 1024 * 1024


def expansion_limit(compressed_bytes: int, max_uncompressed_bytes: int, max_ratio: float) -> int:
    """How far an archive of ``compressed_bytes`` may expand: the absolute limit, and at most
    ``max_ratio`` times its own size (above a small floor)."""
    by_ratio = max(int(compressed_bytes * max_ratio), RATIO_FLOOR_BYTES)
    return min(max_uncompressed_bytes, by_ratio)


def check_image_archive(
    path: Path,
    kind: str,
    *,
    max_members: int,
    max_uncompressed_bytes: int,
    max_ratio: float = float("inf"),
) -> DatasetSummary:
    """Validate member names, counts and sizes, and read the ImageFolder classes.

    The work is bounded before it is done: each member's declared size is checked when its
    header is read, before the reader decompresses its data to reach the next header, so
    an archive can make the gateway decompress at most :func:`expansion_limit` bytes.

    Layout: ``<class>/<image>`` or ``<root>/<class>/<image>`` (one top-level directory).
    Single wrapper directories are skipped (``data/train/<class>/...``), as ``pxp.data`` does.
    At least two classes are required, since pruning by relevance needs class labels.
    """
    members = _tar_members(path) if kind == "tar" else _zip_members(path)
    compressed = path.stat().st_size
    limit = expansion_limit(compressed, max_uncompressed_bytes, max_ratio)
    total = 0
    images: list[PurePosixPath] = []
    for count, (name, size, is_file) in enumerate(members, start=1):
        if count > max_members:
            raise InvalidDataError(f"archive has more than {max_members} members")
        total += size
        if total > max_uncompressed_bytes:
            raise InvalidDataError(f"archive expands to more than {max_uncompressed_bytes} bytes")
        if total > limit:
            raise InvalidDataError(
                f"archive expands more than {max_ratio:g} times its size of {compressed} bytes "
                "(compression ratio limit)"
            )
        member = _safe_name(name)
        if is_file and not _hidden(member) and member.suffix.lower() in IMAGE_SUFFIXES:
            images.append(member)
    if not images:
        raise InvalidDataError("archive contains no images (expected <class>/<image>.png layout)")
    # Like pxp.data: descend through single wrapper folders, then one directory per class
    # (images may sit deeper inside a class directory).
    parts = [p.parts for p in images]
    prefix = 0
    while all(len(p) > prefix + 2 for p in parts) and len({p[prefix] for p in parts}) == 1:
        prefix += 1
    classes = sorted({p[prefix] for p in parts if len(p) > prefix + 1})
    if len(classes) < 2:
        raise InvalidDataError(f"dataset has {len(classes)} class(es); at least two are required")
    return DatasetSummary(format=kind, class_names=classes, num_files=len(images))


def check_dataset(
    path: Path, *, max_members: int, max_uncompressed_bytes: int, max_ratio: float = float("inf")
) -> DatasetSummary:
    """Identify the upload's format and validate it; raise :class:`InvalidDataError` if unusable."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if looks_like_safetensors(head):
        header = read_header(path, InvalidDataError)
        if len(header) < 2:
            raise InvalidDataError("a tensor dataset needs an images tensor and a labels tensor")
        return DatasetSummary(format="safetensors", extras={"tensors": sorted(header)})
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            is_torch = any(n.endswith("/data.pkl") or n == "data.pkl" for n in zf.namelist())
        if is_torch:
            scan_torch_zip(path, InvalidDataError)
            return DatasetSummary(format="torch-zip")
        return check_image_archive(
            path,
            "zip",
            max_members=max_members,
            max_uncompressed_bytes=max_uncompressed_bytes,
            max_ratio=max_ratio,
        )
    if _is_tar(path):
        return check_image_archive(
            path,
            "tar",
            max_members=max_members,
            max_uncompressed_bytes=max_uncompressed_bytes,
            max_ratio=max_ratio,
        )
    if looks_like_pickle(head):
        raise InvalidDataError("pickle files are refused (they can execute code); use safetensors")
    raise InvalidDataError(
        "unrecognised dataset format; expected a tar/zip ImageFolder archive or safetensors"
    )


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError, EOFError):
        return False
