"""ImageFolder-style directories: one sub-directory per class, class names sorted."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pxp.data.labelled import LabelledData
from pxp.errors import InvalidDataError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _visible(entries: list[Path]) -> list[Path]:
    return [e for e in entries if not _hidden(e.name)]


def find_class_root(root: Path) -> Path:
    """Descend through single wrapper folders (``data/train/<classes>``) to the directory of classes."""
    for _ in range(8):
        entries = _visible(list(root.iterdir()))
        dirs = [e for e in entries if e.is_dir()]
        files = [e for e in entries if e.is_file()]
        if len(dirs) == 1 and not files and any(e.is_dir() for e in _visible(list(dirs[0].iterdir()))):
            root = dirs[0]
        else:
            break
    return root


def _image_files(class_dir: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in filenames:
            if not _hidden(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found)


def _read_image(path: Path, mode: str, size: int, display: str) -> np.ndarray:
    """Decode, convert to ``mode`` (L / RGB), resize the shorter side to ``size`` and centre-crop."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()
                img: Image.Image = opened.convert(mode)
                width, height = img.size
                scale = size / min(width, height)
                new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
                if (new_w, new_h) != (width, height):
                    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
                left, top = (new_w - size) // 2, (new_h - size) // 2
                img = img.crop((left, top, left + size, top + size))
                array = np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        raise InvalidDataError(f"cannot read image {display!r}: {exc}") from None
    return array[:, :, None] if array.ndim == 2 else array


def load_image_folder(root: Path, image_size: int, channels: int, source: str | None = None) -> LabelledData:
    """Every image under ``root/<class>/`` (recursively), converted to ``channels`` and ``image_size``.

    Raises :class:`InvalidDataError` for no/one class, an empty class or an unreadable image.
    """
    if channels not in (1, 3):
        raise InvalidDataError(f"image folders can feed 1- or 3-channel models, not {channels}-channel ones")
    source = source or str(root)
    base = find_class_root(root)
    class_dirs = sorted((d for d in _visible(list(base.iterdir())) if d.is_dir()), key=lambda d: d.name)
    if not class_dirs:
        raise InvalidDataError(f"{source}: no class sub-directories (expected <root>/<class>/<image files>)")
    files_per_class = [_image_files(d) for d in class_dirs]
    for class_dir, files in zip(class_dirs, files_per_class, strict=True):
        if not files:
            raise InvalidDataError(
                f"{source}: class directory {class_dir.name!r} contains no images "
                f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
    if len(class_dirs) < 2:
        raise InvalidDataError(f"{source}: only one class ({class_dirs[0].name!r}); at least two are needed")
    total = sum(len(f) for f in files_per_class)
    images = torch.empty((total, channels, image_size, image_size), dtype=torch.uint8)
    labels = torch.empty(total, dtype=torch.int64)
    mode = "L" if channels == 1 else "RGB"
    i = 0
    names: list[str] = []
    for label, files in enumerate(files_per_class):
        for path in files:
            display = path.relative_to(base).as_posix()
            names.append(display)
            array = _read_image(path, mode, image_size, display)
            images[i] = torch.from_numpy(array.copy()).permute(2, 0, 1)
            labels[i] = label
            i += 1
    return LabelledData(
        images=images,
        labels=labels,
        class_names=[d.name for d in class_dirs],
        source=source,
        file_names=names,
    )
