"""Parse and bounds-check a safetensors header without reading the tensors."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from pxp.errors import InvalidModelError, PxpError

MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= MAX_HEADER_BYTES and head[8:9] == b"{"


def read_header(path: Path, error_cls: type[PxpError] = InvalidModelError) -> dict[str, dict[str, Any]]:
    """Return ``{tensor name: {dtype, shape, data_offsets}}``; raise ``error_cls`` if malformed."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise error_cls("safetensors file is truncated")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise error_cls("safetensors header length is out of bounds")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise error_cls(f"safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise error_cls("safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    end_max = 0
    for name, info in header.items():
        if not isinstance(info, dict):
            raise error_cls(f"safetensors tensor {name!r}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise error_cls(f"safetensors tensor {name!r}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise error_cls(f"safetensors tensor {name!r}: invalid shape {shape!r}")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise error_cls(f"safetensors tensor {name!r}: data offsets {offsets!r} out of bounds")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise error_cls(f"safetensors tensor {name!r}: byte length does not match dtype and shape")
        end_max = max(end_max, offsets[1])
    if end_max != data_size:
        raise error_cls("safetensors data section does not match the header")
    return header
