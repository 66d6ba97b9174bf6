"""Refuse pickle payloads that could run code, without unpickling them.

``torch.save`` writes a zip whose ``data.pkl`` references a few torch globals. The worker
loads such files with ``torch.load(weights_only=True)``; this scan is the gateway's
torch-free early refusal of anything that unpickler would not accept either (the
allow-list mirrors ``torch._weights_only_unpickler._get_allowed_globals``).
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import re
import zipfile
from pathlib import Path

from pxp.errors import InvalidModelError, PxpError

_EXACT = frozenset(
    {
        "collections.OrderedDict",
        "collections.Counter",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "torch._tensor._rebuild_from_type_v2",
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.set",
        "builtins.complex",
    }
)
_PATTERNS = (
    re.compile(r"^torch\._utils\._rebuild_[a-z0-9_]+$"),
    re.compile(r"^torch\.(cuda\.)?[A-Za-z0-9]*(Storage|Tensor)$"),
    re.compile(r"^torch\.storage\.(Typed|Untyped)Storage$"),
    re.compile(
        r"^torch\.(u?int[0-9]+|float[0-9_a-z]*|bfloat16|half|double|bool|complex[0-9]+|q(u)?int[0-9x]+|bits[0-9x]+|[a-z0-9_]*float8[a-z0-9_]*)$"
    ),
    re.compile(r"^torch\.per_(tensor|channel)_[a-z_]+$"),
    re.compile(r"^torch\.(strided|sparse_[a-z]+|_mkldnn)$"),
)
_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
)
_MAX_PICKLE_BYTES = 256 * 1024 * 1024


def _normalise(module: str, name: str) -> str:
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def allowed_global(qualname: str) -> bool:
    return qualname in _EXACT or any(p.match(qualname) for p in _PATTERNS)


def scan_pickle(data: bytes, error_cls: type[PxpError] = InvalidModelError) -> set[str]:
    """Return the globals ``data`` references; raise ``error_cls`` on any outside the allow-list."""
    found: set[str] = set()
    recent: list[str | None] = []
    memo: dict[int, str | None] = {}
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            name = op.name
            if name in _STRING_OPS:
                recent.append(arg if isinstance(arg, str) else None)
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
                continue
            if name in {"BINPUT", "LONG_BINPUT", "PUT"}:
                memo[int(str(arg))] = recent[-1] if recent else None
                continue
            if name in {"BINGET", "LONG_BINGET", "GET"}:
                recent.append(memo.get(int(str(arg))))
                continue
            if name in {"GLOBAL", "INST"}:
                module, _, attr = str(arg).partition(" ")
                qual = _normalise(module, attr)
            elif name == "STACK_GLOBAL":
                if len(recent) < 2 or recent[-1] is None or recent[-2] is None:
                    raise error_cls("pickle payload builds a global from non-constant names")
                qual = _normalise(str(recent[-2]), str(recent[-1]))
            elif name in {"EXT1", "EXT2", "EXT4"}:
                raise error_cls("pickle payload uses the extension registry")
            else:
                recent.append(None)
                continue
            found.add(qual)
            if not allowed_global(qual):
                raise error_cls(f"pickle payload references forbidden global {qual!r}")
            recent.append(None)
    except (ValueError, EOFError) as exc:
        raise error_cls(f"malformed pickle data: {exc}") from None
    return found


def scan_torch_zip(path: Path, error_cls: type[PxpError] = InvalidModelError) -> None:
    """Check a ``torch.save`` zip checkpoint: layout, and every ``.pkl`` member's globals."""
    try:
        with zipfile.ZipFile(path) as zf:
            pickles = [i for i in zf.infolist() if i.filename.endswith(".pkl")]
            if not any(i.filename.endswith("/data.pkl") or i.filename == "data.pkl" for i in pickles):
                raise error_cls("zip file is not a torch.save checkpoint (no data.pkl)")
            for info in pickles:
                if info.file_size > _MAX_PICKLE_BYTES:
                    raise error_cls(f"{info.filename} is too large to be a checkpoint index")
                scan_pickle(zf.read(info), error_cls)
    except zipfile.BadZipFile as exc:
        raise error_cls(f"corrupt zip checkpoint: {exc}") from None
