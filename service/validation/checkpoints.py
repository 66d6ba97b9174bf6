"""Identify and check an uploaded checkpoint (torch-free)."""

from __future__ import annotations

import re
from pathlib import Path

from pxp.errors import InvalidModelError
from service.validation.pickle_scan import scan_torch_zip
from service.validation.safetensors_header import looks_like_safetensors, read_header

PICKLE_PROTO = 0x80
_PICKLE0_GLOBAL = re.compile(rb"^c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n")


def looks_like_pickle(head: bytes) -> bool:
    """Protocol 2+ (``\\x80`` + version) or a protocol 0/1 stream opening with a global or a container."""
    if len(head) >= 2 and head[0] == PICKLE_PROTO and 1 <= head[1] <= 5:
        return True
    return bool(_PICKLE0_GLOBAL.match(head)) or head[:2] in (b"(d", b"(l", b"}q", b"]q", b"(c")


def sniff_format(path: Path) -> str:
    """``safetensors``, ``torch-zip``, ``pickle`` or ``unknown`` from the first bytes.

    Only for checkpoints: datasets check for tar/zip first (a tar starts with a member name).
    """
    with open(path, "rb") as fh:
        head = fh.read(64)
    if looks_like_safetensors(head):
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if looks_like_pickle(head):
        return "pickle"
    return "unknown"


def check_checkpoint(path: Path) -> str:
    """Return the checkpoint format; raise :class:`InvalidModelError` for unsafe or unreadable files.

    Raw pickle (legacy ``torch.save`` with ``_use_new_zipfile_serialization=False``,
    ``pickle.dump``) is refused outright: it cannot be inspected without executing it.
    """
    fmt = sniff_format(path)
    if fmt == "safetensors":
        header = read_header(path)
        if not header:
            raise InvalidModelError("safetensors file holds no tensors")
        return fmt
    if fmt == "torch-zip":
        scan_torch_zip(path)
        return fmt
    if fmt == "pickle":
        raise InvalidModelError(
            "pickle checkpoints are refused (they can execute code); upload safetensors "
            "or a torch.save zip checkpoint of a state_dict"
        )
    raise InvalidModelError("unrecognised checkpoint format; expected safetensors or a torch.save zip")
