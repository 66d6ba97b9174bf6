"""Channel-count conversion and resizing of uint8 image batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pxp.errors import InvalidDataError

#: ITU-R 601-2 luma, the weights PIL uses for RGB -> L.
_LUMA = (0.299, 0.587, 0.114)
_CHUNK = 256


def convert_channels(images: torch.Tensor, channels: int, source: str = "data") -> torch.Tensor:
    """uint8 N×C×H×W with C in {1, 3, 4} to ``channels`` (1 or 3): grayscale↔RGB, alpha dropped."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 4:
        images, have = images[:, :3], 3
        if channels == 3:
            return images.contiguous()
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        out = torch.empty((images.shape[0], 1, *images.shape[2:]), dtype=torch.uint8)
        weights = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
        for start in range(0, images.shape[0], _CHUNK):
            chunk = images[start : start + _CHUNK].to(torch.float32)
            luma = (chunk * weights).sum(dim=1, keepdim=True)
            out[start : start + _CHUNK] = luma.round_().clamp_(0, 255).to(torch.uint8)
        return out
    raise InvalidDataError(f"{source}: cannot convert {have}-channel images to {channels} channels")


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N×C×H×W to N×C×size×size: shorter side to ``size`` (bilinear, antialiased), centre crop."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], _CHUNK):
        chunk = images[start : start + _CHUNK].to(torch.float32)
        scaled = F.interpolate(
            chunk, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
        crop = scaled[..., top : top + size, left : left + size]
        out[start : start + _CHUNK] = crop.round_().clamp_(0, 255).to(torch.uint8)
    return out
