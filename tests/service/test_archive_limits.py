"""Cheap archives must not cost the gateway expensive work (defect 7): one shared limit,
a bounded compression ratio, checked from the headers before any data is decompressed."""

from __future__ import annotations

import gzip
import io
import tarfile
import time
from pathlib import Path

import pytest

from pxp.errors import InvalidDataError
from service.settings import Settings
from service.validation.archives import check_dataset
from tests.service.payloads import image_tar, imagefolder

LIMITS = Settings()


def _check(path: Path):
    return check_dataset(
        path,
        max_members=LIMITS.max_archive_members,
        max_uncompressed_bytes=LIMITS.max_archive_uncompressed_bytes,
        max_ratio=LIMITS.max_archive_ratio,
    )


def test_gateway_and_worker_share_one_archive_limit():
    from pxp.data.load import MAX_ARCHIVE_BYTES, MAX_MEMBERS

    assert LIMITS.max_archive_uncompressed_bytes == MAX_ARCHIVE_BYTES
    assert LIMITS.max_archive_members == MAX_MEMBERS


def test_a_high_ratio_archive_is_refused_without_decompressing_it(tmp_path):
    """32 MiB of zeros in a ~35 kB .tar.gz, beside valid classes: accepted before."""
    members = {**imagefolder(2, 2), "data/class0/zeros.png": b"\0" * (32 * 1024 * 1024)}
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(image_tar(members, gz=True))
    assert path.stat().st_size < 100_000
    start = time.process_time()
    with pytest.raises(InvalidDataError, match="compression ratio"):
        _check(path)
    assert time.process_time() - start < 0.5


def test_a_member_declaring_gigabytes_is_refused_from_its_header(tmp_path):
    """The 2 GiB member of a 2 MB .tar.gz cost 10.7 s of CPU: now its header is enough."""
    buf = io.BytesIO()
    info = tarfile.TarInfo("data/class0/huge.png")
    info.size = 2 * 1024**3
    buf.write(info.tobuf())
    buf.write(b"\0" * 4096)  # the data is never reached
    path = tmp_path / "huge.tar.gz"
    path.write_bytes(gzip.compress(buf.getvalue()))
    start = time.process_time()
    with pytest.raises(InvalidDataError, match=r"compression ratio|expands"):
        _check(path)
    assert time.process_time() - start < 0.2


def test_ordinary_archives_still_pass(tmp_path):
    path = tmp_path / "ok.tar.gz"
    path.write_bytes(image_tar(imagefolder(3, 4), gz=True))
    summary = _check(path)
    assert summary.num_files == 12 and len(summary.class_names or []) == 3
