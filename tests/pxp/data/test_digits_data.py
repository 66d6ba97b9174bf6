from __future__ import annotations

import numpy as np
import torch

from pxp.data import LabelledData, load_data
from pxp.data.digits import split_indices
from pxp.spec import DataSpec


def test_heldout_and_train_parts_are_disjoint_and_complete() -> None:
    train, heldout = split_indices()
    assert (len(train), len(heldout)) == (1078, 719)
    assert not set(train.tolist()) & set(heldout.tolist())
    assert sorted(np.concatenate([train, heldout]).tolist()) == list(range(1797))


def test_digits_pool_is_the_heldout_part() -> None:
    pool = load_data(DataSpec(source="digits"), image_size=32, channels=1)
    train = load_data(DataSpec(source="digits-train"), image_size=32, channels=1)
    assert isinstance(pool, LabelledData)
    assert pool.images.shape == (719, 1, 32, 32) and pool.images.dtype == torch.uint8
    assert train.images.shape == (1078, 1, 32, 32)
    assert pool.class_names == [str(d) for d in range(10)]
    counts = torch.bincount(pool.labels, minlength=10)
    assert int(counts.min()) >= 70 and int(counts.max()) <= 73
    assert int(pool.images.max()) == 255 and int(pool.images.min()) == 0
    # No image of the pool appears in the training part.
    train_rows = {bytes(row) for row in train.images.flatten(1).numpy()}
    overlap = sum(bytes(row) in train_rows for row in pool.images.flatten(1).numpy())
    assert overlap <= 5, "only accidental pixel-identical duplicates of the raw dataset may coincide"


def test_digits_size_and_channels_follow_the_request() -> None:
    small = load_data(DataSpec(source="digits"), image_size=16, channels=3)
    assert small.images.shape == (719, 3, 16, 16)
    assert torch.equal(small.images[:, 0], small.images[:, 2])
    override = load_data(DataSpec(source="digits", image_size=24), image_size=32, channels=1)
    assert override.images.shape[-1] == 24


def test_digits_loading_is_deterministic() -> None:
    a = load_data(DataSpec(source="digits"), image_size=32, channels=1)
    b = load_data(DataSpec(source="digits"), image_size=32, channels=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_normalized_is_model_input_space() -> None:
    data = load_data(DataSpec(source="digits"), image_size=32, channels=1)
    idx = torch.tensor([0, 5, 9])
    x = data.normalized(idx, (0.5,), (0.25,))
    assert x.dtype == torch.float32 and x.shape == (3, 1, 32, 32)
    expected = (data.images[idx].double() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected.float(), atol=1e-6, rtol=1e-6)
    assert data.images.dtype == torch.uint8
