"""Training recipes of the digits zoo.

Bump :data:`RECIPE_VERSION` whenever anything here or in :mod:`pxp.zoo.train`
changes what training produces: it is part of the cache key, so stale cached
weights are never served.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RECIPE_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    #: Random translation of up to this many pixels (zero-padded), per sample and step.
    max_shift: int = 2

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    "digits_vgg": Recipe(epochs=15, batch_size=64, lr=2e-3, weight_decay=5e-4),
    "digits_resnet18": Recipe(epochs=15, batch_size=64, lr=2e-3, weight_decay=5e-4),
    "digits_vit": Recipe(
        epochs=30, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_epochs=3, label_smoothing=0.1
    ),
}
