"""Safe checkpoint I/O: checkpoints are untrusted input.

Only two readers are ever used: safetensors (no code at all) and
``torch.load(weights_only=True)``, whose restricted unpickler refuses any
global outside torch's tensor allow-list *before* calling it, so a malicious
pickle is rejected without running. Every failure becomes an
:class:`InvalidModelError` with a one-line reason.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pxp.errors import InvalidModelError

#: Keys under which training scripts commonly nest the state dict.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights", "params")
#: Prefixes added by DataParallel/DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:300]


def looks_like_safetensors(path: Path) -> bool:
    """True if the file starts with a plausible safetensors header (u64 length + JSON object)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + header_len <= size


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:
        raise InvalidModelError(f"{path.name}: not a readable safetensors file ({_reason(exc)})") from None


def _read_torch(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = _reason(exc)
        if "weights only load failed" in reason.lower() or "unsupported global" in str(exc).lower():
            raise InvalidModelError(
                f"{path.name}: refused to unpickle it: it needs objects beyond tensors and plain containers "
                "(a pickled nn.Module or arbitrary code). Save `model.state_dict()` or use safetensors."
            ) from None
        raise InvalidModelError(f"{path.name}: not a readable PyTorch checkpoint ({reason})") from None


def _unwrap(obj: Any) -> Any:
    for _ in range(4):
        if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            return obj
    return obj


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors (by extension or magic) or a weights-only torch file.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}``-style containers and
    ``module.`` / ``_orig_mod.`` prefixes. Raises :class:`InvalidModelError` for a
    missing, corrupt or unsafe file, or one whose values are not all tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.suffix == ".safetensors" or looks_like_safetensors(path):
        obj: Any = _read_safetensors(path)
    else:
        obj = _read_torch(path)
    obj = _unwrap(obj)
    if not isinstance(obj, Mapping):
        raise InvalidModelError(
            f"{path.name}: expected a state dict (name -> tensor), got {type(obj).__name__}"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InvalidModelError(
            f"{path.name}: {len(bad)} entr{'y is' if len(bad) == 1 else 'ies are'} not tensors: {bad[:_SHOW]}"
        )
    if not obj:
        raise InvalidModelError(f"{path.name}: the state dict is empty")
    _check_finite(path.name, obj)
    return _strip_prefixes(dict(obj))


def _check_finite(name: str, state: Mapping[str, torch.Tensor]) -> None:
    """Refuse weights holding NaN or ±Inf: no attribution or accuracy means anything then."""
    bad = [
        key
        for key, tensor in state.items()
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        more = f" (+{len(bad) - _SHOW} more)" if len(bad) > _SHOW else ""
        raise InvalidModelError(
            f"{name}: {len(bad)} tensor(s) hold NaN or infinite values: {bad[:_SHOW]}{more}; "
            "the checkpoint is corrupt or the training diverged"
        )


def state_dict_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """A readable description of how ``state_dict`` does not fit ``model``, or None if it fits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    parts = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            parts.append(f"{len(items)} {label}: {items[:_SHOW]}{more}")
    return "; ".join(parts) or None


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Strictly load ``state_dict`` into ``model`` (in place, returned for chaining).

    Raises :class:`InvalidModelError` naming missing / unexpected keys and shape mismatches.
    """
    problem = state_dict_mismatch(model, state_dict)
    if problem:
        raise InvalidModelError(f"checkpoint does not fit {type(model).__name__}: {problem}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except Exception as exc:
        raise InvalidModelError(f"checkpoint does not fit {type(model).__name__}: {_reason(exc)}") from None
    return model


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write a state dict as safetensors atomically (temp file + rename).

    Tensors are cloned contiguous so shared storage (tied weights, views) is allowed;
    non-string metadata values are JSON-encoded.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta or None)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
