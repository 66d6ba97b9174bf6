"""Tensor files: ``images`` (N×C×H×W or N×H×W; uint8, or float in [0, 1]) and ``labels`` (N integers).

Read with safetensors or ``torch.load(weights_only=True)``, never a full
unpickle. Class names come, in order of preference, from the file itself
(safetensors metadata key ``class_names`` holding a JSON list, or a
``class_names`` list of strings in a .pt dict) or a JSON sidecar next to it
(``<stem>.json`` or ``<file name>.json``) holding a list or
``{"class_names": [...]}``; otherwise they are ``"0" … str(max label)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pxp.data.convert import convert_channels, resize
from pxp.data.labelled import LabelledData
from pxp.errors import InvalidDataError

TENSOR_SUFFIXES = (".safetensors", ".pt", ".pth")
_FLOAT_TOLERANCE = 1e-3


def _names_from_json(raw: Any, origin: str) -> list[str]:
    if isinstance(raw, dict):
        raw = raw.get("class_names")
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise InvalidDataError(f"{origin}: class_names must be a JSON list of strings")
    return list(raw)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys() if key in ("images", "labels")}  # noqa: SIM118
    except Exception as exc:
        raise InvalidDataError(f"{path.name}: not a readable safetensors file ({exc})") from None
    names = None
    if "class_names" in metadata:
        try:
            names = _names_from_json(json.loads(metadata["class_names"]), f"{path.name} metadata")
        except json.JSONDecodeError:
            raise InvalidDataError(f"{path.name}: metadata class_names is not valid JSON") from None
    return tensors, names


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise InvalidDataError(
            f"{path.name}: not a weights-only PyTorch tensor file; only tensors, plain containers "
            f"and strings are accepted ({first})"
        ) from None
    if not isinstance(obj, dict):
        raise InvalidDataError(
            f"{path.name}: expected a dict with 'images' and 'labels', got {type(obj).__name__}"
        )
    tensors = {k: v for k, v in obj.items() if k in ("images", "labels")}
    names = _names_from_json(obj["class_names"], path.name) if "class_names" in obj else None
    return tensors, names


def _sidecar_names(path: Path) -> list[str] | None:
    for sidecar in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if sidecar.is_file():
            try:
                raw = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InvalidDataError(f"{sidecar.name}: unreadable class-name sidecar ({exc})") from None
            return _names_from_json(raw, sidecar.name)
    return None


def _to_uint8(images: torch.Tensor, name: str) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise InvalidDataError(f"{name}: images must be uint8 or float in [0, 1], got {images.dtype}")
    images = images.to(torch.float32)
    if not bool(torch.isfinite(images).all()):
        raise InvalidDataError(f"{name}: images contain NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < -_FLOAT_TOLERANCE or high > 1 + _FLOAT_TOLERANCE:
        raise InvalidDataError(
            f"{name}: float images must be unnormalised values in [0, 1], found range [{low:.3g}, {high:.3g}]"
        )
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def _check_labels(labels: torch.Tensor, n: int, names: list[str] | None, source: str) -> torch.Tensor:
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise InvalidDataError(f"{source}: labels must be integers, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise InvalidDataError(
            f"{source}: labels must have shape ({n},) to match the images, got {tuple(labels.shape)}"
        )
    labels = labels.to(torch.int64)
    if n and int(labels.min()) < 0:
        raise InvalidDataError(f"{source}: labels must be non-negative, found {int(labels.min())}")
    if names is not None and n and int(labels.max()) >= len(names):
        raise InvalidDataError(
            f"{source}: label {int(labels.max())} is out of range for {len(names)} class names"
        )
    return labels


def load_tensor_file(
    path: Path, image_size: int, channels: int, source: str | None = None, *, safetensors: bool | None = None
) -> LabelledData:
    """Load a tensor file; ``safetensors`` forces the reader (default: by suffix)."""
    source = source or str(path)
    if safetensors if safetensors is not None else path.suffix.lower() == ".safetensors":
        tensors, names = _read_safetensors(path)
    else:
        tensors, names = _read_torch(path)
    missing = [k for k in ("images", "labels") if k not in tensors]
    if missing:
        raise InvalidDataError(f"{path.name}: missing tensor(s) {missing}; expected 'images' and 'labels'")
    images, labels = tensors["images"], tensors["labels"]
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise InvalidDataError(f"{path.name}: 'images' and 'labels' must be tensors")
    if names is None:
        names = _sidecar_names(path)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[0] == 0:
        raise InvalidDataError(
            f"{path.name}: images must be a non-empty N×C×H×W tensor, got {tuple(images.shape)}"
        )
    if images.shape[1] not in (1, 3, 4):
        raise InvalidDataError(
            f"{path.name}: images must be channels-first with 1, 3 or 4 channels, got shape {tuple(images.shape)}"
        )
    labels = _check_labels(labels, images.shape[0], names, path.name)
    if names is None:
        names = [str(i) for i in range(int(labels.max()) + 1)]
    if len(names) < 2 or int(labels.unique().numel()) < 2:
        raise InvalidDataError(f"{path.name}: only one class present; at least two are needed")
    uint8 = convert_channels(_to_uint8(images, path.name), channels, path.name)
    return LabelledData(
        images=resize(uint8, image_size).contiguous(), labels=labels, class_names=names, source=source
    )
