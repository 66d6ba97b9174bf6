"""One entry point for every kind of labelled data a job can name."""

from __future__ import annotations

import struct
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pxp.data.digits as digits
from pxp.data.archive import archive_kind, safe_extract
from pxp.data.folder import load_image_folder
from pxp.data.labelled import LabelledData
from pxp.data.tensors import TENSOR_SUFFIXES, load_tensor_file
from pxp.errors import InvalidDataError
from pxp.spec import DataSpec

#: Defaults for untrusted archives: 2 GiB uncompressed, 100,000 members.
MAX_ARCHIVE_BYTES = 2 * 1024**3
MAX_MEMBERS = 100_000


def _looks_like_safetensors(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(9)
    return (
        len(head) == 9 and head[8:9] == b"{" and 8 + struct.unpack("<Q", head[:8])[0] <= path.stat().st_size
    )


def _sniff(path: Path) -> str | None:
    """What a file without a known suffix holds: ``safetensors``, ``torch``, ``zip``, ``tar`` or None."""
    if _looks_like_safetensors(path):
        return "safetensors"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        is_torch = any(n == "data.pkl" or n.endswith("/data.pkl") for n in names[:64])
        return "torch" if is_torch else "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        return None
    return None


def load_data(
    spec: DataSpec,
    *,
    image_size: int,
    channels: int,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    max_members: int = MAX_MEMBERS,
) -> LabelledData:
    """Load ``spec.source`` as uint8 images of ``channels`` × S × S, S = ``spec.image_size or image_size``.

    Sources: ``digits`` (the zoo's held-out pool, 719 images), ``digits-train`` (the zoo's
    training part, 1,078 images), an ImageFolder directory, a ``.tar``/``.tar.gz``/``.tgz``/
    ``.zip`` of one (extracted safely to a temporary directory that is removed afterwards),
    or a ``.safetensors``/``.pt``/``.pth`` tensor file. Files without a known suffix are
    recognised by content. Everything wrong with the data raises :class:`InvalidDataError`.
    """
    size = spec.image_size or image_size
    if channels < 1:
        raise InvalidDataError(f"channels must be positive, got {channels}")
    source = spec.source
    if source in digits.SOURCES:
        return digits.load_digits_data(source, size, channels)
    path = Path(source).expanduser()
    if path.is_dir():
        return load_image_folder(path, size, channels, source)
    if not path.is_file():
        raise InvalidDataError(
            f"unsupported data source {source!r}: not 'digits', 'digits-train' or an existing directory or file"
        )
    kind = archive_kind(path)
    suffix = path.suffix.lower()
    if kind is None and suffix in TENSOR_SUFFIXES:
        return load_tensor_file(path, size, channels, source)
    if kind is None:
        sniffed = _sniff(path)
        if sniffed in ("safetensors", "torch"):
            return load_tensor_file(path, size, channels, source, safetensors=sniffed == "safetensors")
        kind = sniffed
    if kind is None:
        raise InvalidDataError(
            f"unsupported data file {path.name!r}: expected an ImageFolder archive (.tar, .tar.gz, .tgz, .zip) "
            "or a tensor file (.safetensors, .pt)"
        )
    with tempfile.TemporaryDirectory(prefix="pxp-data-") as tmp:
        root = safe_extract(path, Path(tmp), max_bytes=max_archive_bytes, max_members=max_members, kind=kind)
        return load_image_folder(root, size, channels, source)
