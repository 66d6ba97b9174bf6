"""Byte-level builders of uploads (torch-free)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]] | None = None) -> bytes:
    """A valid safetensors file with zero-filled tensors: ``{name: (dtype, shape)}``."""
    sizes = {"F32": 4, "I64": 8, "U8": 1}
    tensors = tensors or {"features.0.weight": ("F32", [4, 1, 3, 3]), "features.0.bias": ("F32", [4])}
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


PICKLE_RCE = b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\x02id\x94\x85\x94R\x94."


def torch_zip_bytes(pickle_payload: bytes, root: str = "archive") -> bytes:
    """A zip laid out like ``torch.save`` output with the given ``data.pkl``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{root}/data.pkl", pickle_payload)
        zf.writestr(f"{root}/version", "3\n")
    return buf.getvalue()


PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c636000000002000148afa4710000000049454e44ae426082"
)


def image_tar(members: dict[str, bytes], *, gz: bool = False, links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def image_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def imagefolder(classes: int = 2, per_class: int = 3, root: str = "data") -> dict[str, bytes]:
    return {f"{root}/class{c}/{i}.png": PNG_1x1 for c in range(classes) for i in range(per_class)}
