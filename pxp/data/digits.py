"""scikit-learn's bundled digits (1,797 8×8 images, 10 classes) with the zoo's fixed split.

The split is stratified and seeded once, forever: per class, a seeded
permutation puts round(40 %) of its images in the **held-out pool** (719
images) and the rest in the **training part** (1,078 images). The zoo trains
only on ``digits-train``; ``digits`` (the held-out pool) is what jobs draw
reference, search and test samples from, so their numbers are not measured on
training images.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from pxp.data.convert import convert_channels
from pxp.data.labelled import LabelledData

HELDOUT_FRACTION = 0.4
SPLIT_SEED = 20240601
SOURCES = ("digits", "digits-train")


@functools.cache
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


@functools.cache
def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices into the 1,797 images; sorted, disjoint, stratified."""
    _, labels = _raw()
    rng = np.random.default_rng(SPLIT_SEED)
    train: list[np.ndarray] = []
    heldout: list[np.ndarray] = []
    for cls in range(10):
        members = rng.permutation(np.flatnonzero(labels == cls))
        cut = round(HELDOUT_FRACTION * len(members))
        heldout.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(heldout))


def load_digits_data(source: str, image_size: int, channels: int) -> LabelledData:
    """``digits`` (held-out pool) or ``digits-train``, upsampled bilinearly to ``image_size``, 0..255."""
    if source not in SOURCES:
        raise ValueError(f"unknown digits source {source!r}")
    images, labels = _raw()
    train, heldout = split_indices()
    idx = heldout if source == "digits" else train
    x = torch.from_numpy(images[idx]).unsqueeze(1).mul_(255.0 / 16.0)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x8 = x.round_().clamp_(0, 255).to(torch.uint8)
    return LabelledData(
        images=convert_channels(x8, channels, source),
        labels=torch.from_numpy(labels[idx].copy()),
        class_names=[str(d) for d in range(10)],
        source=source,
    )
