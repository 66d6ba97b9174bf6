from __future__ import annotations

import io
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pxp.data import load_data
from pxp.errors import InvalidDataError
from pxp.spec import DataSpec
from tests.pxp.data.helpers import make_image_folder


def _load(source: Path | str, size: int = 8, channels: int = 3, **limits: int):
    return load_data(DataSpec(source=str(source)), image_size=size, channels=channels, **limits)


def test_image_folder_sorted_classes_resized_and_converted(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "data", {"dog": 2, "cat": 3})
    (tmp_path / "data" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "data" / "cat" / ".hidden.png").write_bytes(b"junk")
    data = _load(tmp_path / "data", size=8, channels=3)
    assert data.class_names == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.images.shape == (5, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.images[0].unique().tolist() == [0]
    assert data.images[4].unique().tolist() == [50]
    gray = _load(tmp_path / "data", size=6, channels=1)
    assert gray.images.shape == (5, 1, 6, 6)
    assert gray.images[4].unique().tolist() == [50]


def test_non_square_images_keep_aspect_and_centre_crop(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        array = np.zeros((10, 30), dtype=np.uint8)
        array[:, 10:20] = 200  # only the centre third is bright
        Image.fromarray(array, "L").save(tmp_path / cls / "x.png")
    data = _load(tmp_path, size=10, channels=1)
    assert data.images.shape == (2, 1, 10, 10)
    assert int(data.images[0].min()) >= 190


def test_grayscale_images_become_rgb(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"a": 1, "b": 1}, mode="L")
    data = _load(tmp_path, channels=3)
    assert torch.equal(data.images[:, 0], data.images[:, 1])


def test_wrapper_folder_is_accepted(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "outer" / "train", {"a": 1, "b": 1})
    assert _load(tmp_path).class_names == ["a", "b"]


def test_empty_class_is_named(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"a": 2, "b": 1})
    (tmp_path / "empty_one").mkdir()
    (tmp_path / "empty_one" / "readme.md").write_text("x")
    with pytest.raises(InvalidDataError, match="'empty_one' contains no images"):
        _load(tmp_path)


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    make_image_folder(tmp_path, {"a": 2, "b": 1})
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InvalidDataError, match=r"b/broken\.png"):
        _load(tmp_path)


def test_single_class_and_no_classes(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "one", {"only": 3})
    with pytest.raises(InvalidDataError, match="only one class"):
        _load(tmp_path / "one")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(InvalidDataError, match="no class sub-directories"):
        _load(tmp_path / "flat")


def test_unsupported_sources(tmp_path: Path) -> None:
    with pytest.raises(InvalidDataError, match="unsupported data source"):
        _load(tmp_path / "missing")
    odd = tmp_path / "data.csv"
    odd.write_text("a,b\n1,2\n")
    with pytest.raises(InvalidDataError, match="unsupported data file"):
        _load(odd)


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "tgz", "zip", "no-suffix-zip", "no-suffix-tar"])
def test_archives_of_an_image_folder(tmp_path: Path, fmt: str) -> None:
    src = make_image_folder(tmp_path / "src" / "dataset", {"x": 2, "y": 2})
    base = tmp_path / "archive"
    if fmt in ("zip", "no-suffix-zip"):
        path = Path(shutil.make_archive(str(base), "zip", src.parent))
    else:
        path = Path(shutil.make_archive(str(base), "gztar" if "gz" in fmt else "tar", src.parent))
        if fmt == "tgz":
            path = path.rename(tmp_path / "archive.tgz")
    if fmt.startswith("no-suffix"):
        path = path.rename(tmp_path / "upload-blob")
    data = _load(path, size=4)
    assert data.class_names == ["x", "y"]
    assert data.images.shape == (4, 3, 4, 4)
    assert data.source == str(path)


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for info, payload in members:
            archive.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(buffer, "PNG")
    return buffer.getvalue()


def _file(name: str, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


@pytest.mark.parametrize(
    ("evil", "match"),
    [
        ("../escape.png", "path traversal"),
        ("a/../../escape.png", "path traversal"),
        ("/abs/escape.png", "absolute path"),
    ],
)
def test_tar_path_traversal_refused(tmp_path: Path, evil: str, match: str) -> None:
    path = _tar_with(tmp_path / "evil.tar.gz", [_file("a/1.png", _png()), _file(evil, _png())])
    with pytest.raises(InvalidDataError, match=match):
        _load(path)
    assert not (tmp_path / "escape.png").exists()


@pytest.mark.parametrize("link_type", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_tar_links_and_devices_refused(tmp_path: Path, link_type: bytes) -> None:
    link = tarfile.TarInfo("a/link.png")
    link.type = link_type
    link.linkname = "/etc/passwd"
    path = _tar_with(
        tmp_path / "links.tar.gz", [_file("a/1.png", _png()), _file("b/1.png", _png()), (link, None)]
    )
    with pytest.raises(InvalidDataError, match="only regular files"):
        _load(path)


def test_zip_traversal_and_symlink_refused(tmp_path: Path) -> None:
    traversal = tmp_path / "trav.zip"
    with zipfile.ZipFile(traversal, "w") as archive:
        archive.writestr("a/1.png", _png())
        archive.writestr("../../outside.png", _png())
    with pytest.raises(InvalidDataError, match="path traversal"):
        _load(traversal)
    symlink = tmp_path / "link.zip"
    with zipfile.ZipFile(symlink, "w") as archive:
        archive.writestr("a/1.png", _png())
        info = zipfile.ZipInfo("b/1.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(InvalidDataError, match="symlink"):
        _load(symlink)


def test_member_count_limit(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "src", {"a": 4, "b": 4})
    tar_path = Path(shutil.make_archive(str(tmp_path / "many"), "tar", tmp_path / "src"))
    zip_path = Path(shutil.make_archive(str(tmp_path / "many"), "zip", tmp_path / "src"))
    for path in (tar_path, zip_path):
        with pytest.raises(InvalidDataError, match="more than 5 members"):
            _load(path, max_members=5)
        assert len(_load(path, max_members=100)) == 8


def test_uncompressed_size_limit(tmp_path: Path) -> None:
    big = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for cls in ("a", "b"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        Image.fromarray(big).save(tmp_path / "src" / cls / "big.bmp")
    for fmt in ("gztar", "zip"):
        path = Path(shutil.make_archive(str(tmp_path / "big"), fmt, tmp_path / "src"))
        with pytest.raises(InvalidDataError, match="exceeds the limit of 10000 bytes"):
            _load(path, max_archive_bytes=10_000)


def test_zip_with_lying_size_header_is_refused(tmp_path: Path) -> None:
    """A member that decompresses to more than its header declares is never written out in full."""
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a/1.png", _png())
        archive.writestr("b/zeros.png", b"\x00" * 200_000)
    data = bytearray(path.read_bytes())
    # Rewrite the declared uncompressed size of the big member in the central directory to 10 bytes.
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("b/zeros.png")
    central = data.rfind(b"PK\x01\x02", 0, data.rfind(b"b/zeros.png"))
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    local = info.header_offset
    data[local + 22 : local + 26] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidDataError, match=r"b/zeros\.png"):
        _load(path, max_archive_bytes=50_000)


def test_corrupt_archive(tmp_path: Path) -> None:
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage" * 20)
    with pytest.raises(InvalidDataError, match=r"bad\.tar\.gz"):
        _load(path)
    truncated = tmp_path / "cut.zip"
    make_image_folder(tmp_path / "src", {"a": 2, "b": 2})
    whole = Path(shutil.make_archive(str(tmp_path / "whole"), "zip", tmp_path / "src")).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidDataError, match=r"cut\.zip"):
        _load(truncated)
