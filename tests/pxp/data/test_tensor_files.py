from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pxp.data import load_data
from pxp.errors import InvalidDataError
from pxp.spec import DataSpec


def _load(path: Path, size: int = 8, channels: int = 1):
    return load_data(DataSpec(source=str(path)), image_size=size, channels=channels)


def _images(n: int = 6, c: int = 3, h: int = 8, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    x = torch.arange(n * c * h * h).reshape(n, c, h, h) % 256
    return x.to(dtype) if dtype == torch.uint8 else (x.to(dtype) / 255)


def test_safetensors_with_metadata_class_names(tmp_path: Path) -> None:
    path = tmp_path / "data.safetensors"
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    save_file({"images": _images(), "labels": labels}, str(path), metadata={"class_names": '["a", "b", "c"]'})
    data = _load(path, size=8, channels=3)
    assert data.class_names == ["a", "b", "c"]
    assert torch.equal(data.images, _images())
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels.tolist()


def test_pt_float_images_resized_and_grayscaled(tmp_path: Path) -> None:
    path = tmp_path / "data.pt"
    images = torch.rand(4, 3, 16, 16)
    torch.save(
        {
            "images": images,
            "labels": torch.tensor([1, 0, 1, 0], dtype=torch.int32),
            "class_names": ["x", "y"],
        },
        path,
    )
    data = _load(path, size=8, channels=1)
    assert data.images.shape == (4, 1, 8, 8) and data.images.dtype == torch.uint8
    assert data.class_names == ["x", "y"]


def test_json_sidecar_and_default_names(tmp_path: Path) -> None:
    path = tmp_path / "d.safetensors"
    save_file({"images": _images(c=1), "labels": torch.tensor([0, 1, 0, 1, 0, 1])}, str(path))
    assert _load(path).class_names == ["0", "1"]
    (tmp_path / "d.json").write_text(json.dumps({"class_names": ["neg", "pos"]}))
    assert _load(path).class_names == ["neg", "pos"]


def test_nhw_images_accepted(tmp_path: Path) -> None:
    path = tmp_path / "nhw.pt"
    torch.save(
        {"images": torch.zeros(4, 8, 8, dtype=torch.uint8), "labels": torch.tensor([0, 1, 0, 1])}, path
    )
    assert _load(path, channels=3).images.shape == (4, 3, 8, 8)


@pytest.mark.parametrize(
    ("labels", "names", "match"),
    [
        (torch.tensor([0, 1, 5, 0, 1, 0]), ["a", "b"], "out of range"),
        (torch.tensor([0, 1, -1, 0, 1, 0]), None, "non-negative"),
        (torch.tensor([0, 1, 0]), None, r"shape \(6,\)"),
        (torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]), None, "integers"),
        (torch.zeros(6, dtype=torch.int64), None, "only one class"),
    ],
)
def test_bad_labels(tmp_path: Path, labels: torch.Tensor, names: list[str] | None, match: str) -> None:
    path = tmp_path / "bad.pt"
    payload: dict = {"images": _images(), "labels": labels}
    if names is not None:
        payload["class_names"] = names
    torch.save(payload, path)
    with pytest.raises(InvalidDataError, match=match):
        _load(path)


def test_bad_images(tmp_path: Path) -> None:
    cases = {
        "normalised.pt": (torch.randn(4, 3, 8, 8) * 3, "unnormalised values in \\[0, 1\\]"),
        "int.pt": (torch.zeros(4, 3, 8, 8, dtype=torch.int32), "uint8 or float"),
        "channels_last.pt": (torch.zeros(4, 8, 8, 3, dtype=torch.uint8), "channels-first"),
        "nan.pt": (torch.full((4, 1, 8, 8), float("nan")), "NaN"),
    }
    for name, (images, match) in cases.items():
        torch.save({"images": images, "labels": torch.tensor([0, 1, 0, 1])}, tmp_path / name)
        with pytest.raises(InvalidDataError, match=match):
            _load(tmp_path / name)


def test_missing_tensors_named(tmp_path: Path) -> None:
    path = tmp_path / "only_images.safetensors"
    save_file({"images": _images()}, str(path))
    with pytest.raises(InvalidDataError, match=r"missing tensor\(s\) \['labels'\]"):
        _load(path)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name, zipped in (("evil.pt", True), ("evil_legacy.pt", False)):
        path = tmp_path / name
        payload = {"images": _images(), "labels": torch.tensor([0, 1] * 3), "x": _Exploit(marker)}
        if zipped:
            torch.save(payload, path)
        else:
            path.write_bytes(pickle.dumps(payload, protocol=2))
        with pytest.raises(InvalidDataError, match="weights-only"):
            _load(path)
        assert not marker.exists()


def test_corrupt_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_file({"images": _images(), "labels": torch.tensor([0, 1] * 3)}, str(path))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InvalidDataError, match=r"cut\.safetensors"):
        _load(path)
