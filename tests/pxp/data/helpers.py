from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(
    root: Path, classes: dict[str, int], size: tuple[int, int] = (20, 12), mode: str = "RGB"
) -> Path:
    """``root/<class>/<i>.png`` images whose pixel value encodes class and index."""
    for c, (name, count) in enumerate(sorted(classes.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            value = 40 * c + 10 * i
            channels = 3 if mode == "RGB" else 1
            array = np.full((size[1], size[0], channels), value, dtype=np.uint8).squeeze()
            Image.fromarray(array, mode).save(root / name / f"{i}.png")
    return root
