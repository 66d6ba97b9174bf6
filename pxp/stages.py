"""Checkpointed stage outputs, so a retried job resumes instead of redoing finished work.

Each stage result is stored under ``out_dir/.stages/<key>.<ext>``, where the key
hashes everything the result depends on. Writes are atomic (temp file + rename),
so a killed process never leaves a half-written stage behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def stage_key(name: str, *parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return f"{name}-{hashlib.sha256(blob).hexdigest()[:16]}"


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")


def write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = _atomic_target(path)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


class StageStore:
    def __init__(self, out_dir: Path) -> None:
        self.root = out_dir / ".stages"

    def load_json(self, key: str) -> Any | None:
        path = self.root / f"{key}.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def save_json(self, key: str, data: Any) -> None:
        write_json_atomic(self.root / f"{key}.json", data)

    def load_tensors(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self.root / f"{key}.safetensors"
        if not path.exists():
            return None
        try:
            return load_file(str(path))
        except Exception:
            return None

    def save_tensors(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        fd, tmp = _atomic_target(self.root / f"{key}.safetensors")
        os.close(fd)
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, self.root / f"{key}.safetensors")
