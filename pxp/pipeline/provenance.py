"""What a job needs to explain and rebuild its result: inputs' hashes, versions, samples, choices.

Written as ``provenance.json`` beside ``results.json`` and embedded in the exported
manifest, so a compressed checkpoint carries the record of how it was made:
the library versions and device, the effective JobSpec (defaults filled in), the
seed, the reference / search / test sample ids (indices into the loaded data,
plus ``<class>/<file>`` names for ImageFolder data), the sha256 of the checkpoint
and of the data, the chosen criterion and composite, the rate and the kept indices.
:mod:`pxp.reproduce` re-runs a job from it and compares.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from pxp import __version__
from pxp.data import LabelledData
from pxp.hashing import sha256_file
from pxp.pipeline.state import JobState

PROVENANCE_NAME = "provenance.json"
PROVENANCE_VERSION = 1
_PACKAGES = ("torch", "torchvision", "zennit", "optuna", "torch-pruning", "timm", "numpy", "safetensors")


def versions() -> dict[str, str]:
    """pxp's and its numerical dependencies' versions (and Python's)."""
    found = {"pxp": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def device_record(device: torch.device) -> dict[str, Any]:
    """The device a job ran on, precisely enough to say whether a rerun can be bit-exact."""
    record: dict[str, Any] = {
        "type": device.type,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "platform": sys.platform,
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        record["name"] = torch.cuda.get_device_name(index)
        record["cuda"] = torch.version.cuda
        record["cudnn"] = torch.backends.cudnn.version()
    else:
        record["name"] = platform.processor() or platform.machine()
    return record


def tensor_sha256(data: LabelledData) -> str:
    """sha256 of the loaded images (uint8, at the model's size) and labels: what the job really saw."""
    digest = hashlib.sha256()
    digest.update(str(tuple(data.images.shape)).encode())
    digest.update(data.images.contiguous().numpy().tobytes())
    digest.update(data.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def source_sha256(source: str) -> str | None:
    """sha256 of a data file, or of a directory tree (relative paths and file hashes); None for built-ins."""
    path = Path(source).expanduser()
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
            digest.update(sha256_file(file).encode())
        return digest.hexdigest()
    return None


def _samples(state: JobState, split: str) -> dict[str, Any]:
    idx = getattr(state.splits, split).tolist()
    record: dict[str, Any] = {"indices": idx}
    if state.data.file_names is not None:
        record["files"] = [state.data.file_names[i] for i in idx]
    return record


def build_provenance(
    state: JobState,
    *,
    chosen_label: str,
    chosen_attribution: dict[str, Any],
    rate: float,
    kept_indices: dict[str, list[int]],
    order: list[tuple[str, int]],
) -> dict[str, Any]:
    """The provenance record of a finished job (see the module docstring)."""
    spec = state.spec
    weights = spec.model.weights
    return {
        "version": PROVENANCE_VERSION,
        "versions": versions(),
        "device": device_record(state.device),
        "spec": spec.model_dump(mode="json"),
        "seed": spec.splits.seed,
        "checkpoint": {
            "path": weights,
            "sha256": sha256_file(weights) if weights and Path(weights).is_file() else None,
        },
        "data": {
            "source": spec.data.source,
            "sha256": source_sha256(spec.data.source),
            "tensor_sha256": tensor_sha256(state.data),
            "num_samples": len(state.data),
            "class_names": state.data.class_names,
        },
        "samples": {split: _samples(state, split) for split in ("reference", "search", "test")},
        "chosen": {
            "criterion": chosen_label,
            "attribution": chosen_attribution,
            "objective": "apr" if spec.search is not None else None,
            "rate": rate,
        },
        "order": [[name, int(index)] for name, index in order],
        "kept_indices": kept_indices,
    }
