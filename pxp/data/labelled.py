"""The in-memory form of labelled reference data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pxp.errors import InvalidDataError


@dataclass
class LabelledData:
    """Images kept as uint8 (N×C×H×W, already at the model's size) to bound memory; labels int64 (N)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    source: str
    #: ``<class>/<file>`` of each image for ImageFolder data (None for tensor files and digits),
    #: so a manifest can name the exact reference images.
    file_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise InvalidDataError(
                f"{self.source}: images must be uint8 N×C×H×W, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise InvalidDataError(
                f"{self.source}: labels must be int64 of shape ({self.images.shape[0]},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalized(self, idx: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        """``images[idx]`` as float32 in model input space: ``(x / 255 − mean) / std`` per channel."""
        channels = self.images.shape[1]
        if len(mean) not in (1, channels) or len(std) not in (1, channels):
            raise InvalidDataError(
                f"mean/std have {len(mean)}/{len(std)} values but the images have {channels} channels"
            )
        x = self.images[idx].to(torch.float32).div_(255.0)
        m = torch.tensor(tuple(mean), dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(tuple(std), dtype=torch.float32).view(1, -1, 1, 1)
        return x.sub_(m).div_(s)
