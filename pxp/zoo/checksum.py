"""Checksums of trained zoo weights, and the reference ones recorded in the repository.

Zoo training is deterministic on one machine (seeded, deterministic algorithms, one
thread: see :func:`pxp.zoo.train.deterministic`), but CPU kernels differ between
processors (vector width, oneDNN dispatch), so a retrain elsewhere can differ in the
last bits and the held-out accuracy in the last digits. Every trained entry records
``weights_sha256``; :func:`compare_with_reference` says whether it is the reference
model that README figures were measured on (``reference_checksums.json``, keyed by
architecture, cache key and torch version), so a differing retrain is reported, not silent.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

REFERENCE_FILE = Path(__file__).with_name("reference_checksums.json")


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the state dict: each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def reference_key(entry_name: str) -> str:
    """``<name>-<cache key>@torch<version>``: a reference holds for one torch build only."""
    return f"{entry_name}@torch{torch.__version__}"


def load_references(path: Path = REFERENCE_FILE) -> dict[str, str]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def compare_with_reference(entry_name: str, checksum: str, path: Path = REFERENCE_FILE) -> bool | None:
    """True if ``checksum`` is the recorded reference, False (and a warning) if not, None if none is recorded."""
    reference = load_references(path).get(reference_key(entry_name))
    if reference is None:
        return None
    if reference != checksum:
        log.warning(
            "zoo model %s retrained to weights %s, not the reference %s recorded for this torch "
            "version: this CPU's kernels round differently, so figures measured on it can differ "
            "from the README's in the last digits",
            entry_name,
            checksum[:12],
            reference[:12],
        )
        return False
    return True
