"""Seeded, class-balanced, disjoint reference / search / test splits (ARCHITECTURE.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pxp.errors import InvalidDataError
from pxp.spec import SplitSpec


@dataclass
class Splits:
    """Sorted int64 indices into the data; pairwise disjoint."""

    reference: torch.Tensor
    search: torch.Tensor
    test: torch.Tensor

    def sizes(self) -> dict[str, int]:
        return {"reference": len(self.reference), "search": len(self.search), "test": len(self.test)}


def _round_robin(per_class: list[torch.Tensor], cap: int | None) -> torch.Tensor:
    """All indices, or ``cap`` of them taken one per class in turn (so classes stay balanced)."""
    if cap is None or cap >= sum(len(p) for p in per_class):
        return torch.cat(per_class)
    taken: list[int] = []
    depth = 0
    while len(taken) < cap:
        for members in per_class:
            if depth < len(members) and len(taken) < cap:
                taken.append(int(members[depth]))
        depth += 1
    return torch.tensor(taken, dtype=torch.int64)


def make_splits(labels: torch.Tensor, spec: SplitSpec) -> Splits:
    """Per class (in label order): a seeded permutation gives ``reference_samples_per_class``
    reference samples, then ``search_fraction`` of the rest (at least one, at most all but one)
    for search and the remainder for test. ``max_eval_samples`` caps search and test each,
    taking classes in turn. Every class present needs ``reference + 2`` samples.
    """
    if labels.dim() != 1 or labels.numel() == 0:
        raise InvalidDataError(f"labels must be a non-empty 1-D tensor, got shape {tuple(labels.shape)}")
    generator = torch.Generator().manual_seed(spec.seed)
    ref_n = spec.reference_samples_per_class
    classes = [int(c) for c in torch.unique(labels)]
    if len(classes) < 2:
        raise InvalidDataError("only one class in the data; at least two are needed")
    too_small = {c: int((labels == c).sum()) for c in classes if int((labels == c).sum()) < ref_n + 2}
    if too_small:
        listed = ", ".join(f"class {c}: {n}" for c, n in list(too_small.items())[:10])
        raise InvalidDataError(
            f"{len(too_small)} class(es) have fewer than {ref_n + 2} samples "
            f"({ref_n} reference + at least 1 search + 1 test): {listed}"
        )
    reference, search, test = [], [], []
    for cls in classes:
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        rest = members[ref_n:]
        n_search = min(max(1, round(spec.search_fraction * len(rest))), len(rest) - 1)
        reference.append(members[:ref_n])
        search.append(rest[:n_search])
        test.append(rest[n_search:])
    return Splits(
        reference=torch.cat(reference).sort().values,
        search=_round_robin(search, spec.max_eval_samples).sort().values,
        test=_round_robin(test, spec.max_eval_samples).sort().values,
    )
