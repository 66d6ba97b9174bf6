from __future__ import annotations

import pytest
import torch

from pxp.data import make_splits
from pxp.errors import InvalidDataError
from pxp.spec import SplitSpec


def _labels(counts: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])


def _disjoint(*parts: torch.Tensor) -> bool:
    seen: set[int] = set()
    for part in parts:
        values = set(part.tolist())
        if values & seen or len(values) != len(part):
            return False
        seen |= values
    return True


def test_reference_is_class_balanced_and_everything_disjoint() -> None:
    labels = _labels([30, 25, 40])[torch.randperm(95, generator=torch.Generator().manual_seed(3))]
    splits = make_splits(labels, SplitSpec(reference_samples_per_class=10, search_fraction=0.5))
    assert torch.bincount(labels[splits.reference]).tolist() == [10, 10, 10]
    assert _disjoint(splits.reference, splits.search, splits.test)
    assert len(splits.reference) + len(splits.search) + len(splits.test) == 95
    # Per class, the remainder is halved between search and test.
    assert torch.bincount(labels[splits.search]).tolist() == [10, 8, 15]
    assert torch.bincount(labels[splits.test]).tolist() == [10, 7, 15]
    for part in (splits.reference, splits.search, splits.test):
        assert part.dtype == torch.int64 and torch.equal(part, part.sort().values)


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    labels = _labels([50, 50])
    a = make_splits(labels, SplitSpec(seed=1))
    b = make_splits(labels, SplitSpec(seed=1))
    c = make_splits(labels, SplitSpec(seed=2))
    assert torch.equal(a.reference, b.reference) and torch.equal(a.test, b.test)
    assert not torch.equal(a.reference, c.reference)


def test_small_classes_keep_search_and_test_non_empty() -> None:
    labels = _labels([12, 12])
    splits = make_splits(labels, SplitSpec(reference_samples_per_class=10, search_fraction=0.9))
    assert torch.bincount(labels[splits.search]).tolist() == [1, 1]
    assert torch.bincount(labels[splits.test]).tolist() == [1, 1]


def test_too_few_samples_named() -> None:
    labels = _labels([20, 11, 30])
    with pytest.raises(InvalidDataError, match="class 1: 11"):
        make_splits(labels, SplitSpec(reference_samples_per_class=10))


def test_one_class_refused() -> None:
    with pytest.raises(InvalidDataError, match="one class"):
        make_splits(_labels([40]), SplitSpec())


def test_max_eval_samples_caps_each_split_balanced() -> None:
    labels = _labels([100, 100, 100, 30])
    splits = make_splits(labels, SplitSpec(reference_samples_per_class=5, max_eval_samples=40))
    assert len(splits.search) == len(splits.test) == 40
    assert torch.bincount(labels[splits.search], minlength=4).tolist() == [10, 10, 10, 10]
    capped = make_splits(labels, SplitSpec(reference_samples_per_class=5, max_eval_samples=100))
    # The small class has only 12 search samples; the others share what it cannot use.
    counts = torch.bincount(labels[capped.search], minlength=4).tolist()
    assert counts[3] == 12 and sum(counts) == 100 and max(counts) - min(counts[:3]) <= 1
    assert _disjoint(capped.reference, capped.search, capped.test)


def test_labels_with_gaps_use_present_classes() -> None:
    labels = torch.cat([torch.zeros(20, dtype=torch.int64), torch.full((20,), 7)])
    splits = make_splits(labels, SplitSpec(reference_samples_per_class=3))
    assert sorted(labels[splits.reference].unique().tolist()) == [0, 7]
