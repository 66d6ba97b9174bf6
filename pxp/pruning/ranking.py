"""Global ranking of components and the nested keep-masks it induces."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

import torch

from pxp.components import PrunableLayer
from pxp.errors import InvalidSpecError

Component = tuple[str, int]


@dataclass(frozen=True)
class PruneOrder:
    """Components in the order they are pruned: ``(layer name, index)`` pairs.

    The top ``min_keep`` components of every layer never appear, so no layer
    vanishes. Masks at increasing rates are prefixes of this one order, hence nested.

    **Channel rounding** (``round_to > 1``): hardware runs a conv or a matrix product
    in blocks of channels (16 fp32 channels per AVX-512 register, 8 per tensor-core
    tile), so a layer cut from 64 to 50 channels costs as much as one of 64: the 14
    pruned channels lose accuracy and save no time. With rounding, every dimension
    (a layer's channels, or one coupled group's channels, e.g. a ResNet stage's
    residual stream) keeps a multiple of ``round_to`` channels (or all of them):
    of the units the prefix at a rate would prune, only the first ones of each
    dimension are pruned, as many as keep the remainder a multiple. A coupled
    group cut by the rate boundary is not pruned at all. The masks stay nested
    (each dimension's pruned count only grows with the rate), and
    :meth:`achieved_rate` reports what is really pruned.
    """

    layers: tuple[PrunableLayer, ...]
    order: tuple[Component, ...]
    total: int
    #: Keep a multiple of this many channels per dimension (1: the paper's masks, no rounding).
    round_to: int = 1
    #: Per position of ``order``: its removal unit (a coupled group's members share one).
    #: Empty: every position is its own unit.
    units: tuple[int, ...] = ()
    #: Per unit id: the dimension it belongs to. Empty: a unit's dimension is its layer.
    unit_dims: tuple[int, ...] = ()
    #: Per dimension id: how many units it has in the unpruned model (kept ones included).
    dim_sizes: tuple[int, ...] = ()

    def mask_key(self) -> tuple[object, ...]:
        """What determines this order's masks at every rate (for checkpoint keys); the order alone without rounding."""
        if self.round_to <= 1:
            return self.order
        units, unit_dims, dim_sizes, _ = self._unit_table
        return (self.order, self.round_to, units, unit_dims, dim_sizes)

    def count_for_rate(self, rate: float) -> int:
        """How many positions of the order the prefix at ``rate`` spans (before rounding)."""
        return min(round(rate * self.total), len(self.order))

    @cached_property
    def _unit_table(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], Counter[int]]:
        """(unit of each position, dimension of each unit, size of each dimension, positions per unit)."""
        if self.units:
            units, unit_dims, dim_sizes = self.units, self.unit_dims, self.dim_sizes
        else:
            layer_id = {layer.name: i for i, layer in enumerate(self.layers)}
            units = tuple(range(len(self.order)))
            unit_dims = tuple(layer_id[name] for name, _ in self.order)
            dim_sizes = tuple(layer.size for layer in self.layers)
        return units, unit_dims, dim_sizes, Counter(units)

    def pruned(self, rate: float) -> tuple[Component, ...]:
        """The components pruned at ``rate``, in order (rounded when ``round_to > 1``)."""
        prefix = self.order[: self.count_for_rate(rate)]
        if self.round_to <= 1:
            return prefix
        units, unit_dims, dim_sizes, length = self._unit_table
        seen: Counter[int] = Counter(units[: len(prefix)])
        complete = [u for u in dict.fromkeys(units[: len(prefix)]) if seen[u] == length[u]]
        taken: Counter[int] = Counter(unit_dims[u] for u in complete)
        allowed: dict[int, int] = {}
        for dim, count in taken.items():
            size = dim_sizes[dim]
            kept = min(size, math.ceil((size - count) / self.round_to) * self.round_to)
            allowed[dim] = size - kept
        chosen: set[int] = set()
        used: Counter[int] = Counter()
        for u in complete:
            dim = unit_dims[u]
            if used[dim] < allowed[dim]:
                used[dim] += 1
                chosen.add(u)
        return tuple(c for c, u in zip(prefix, units, strict=False) if u in chosen)

    def keep_masks(self, rate: float) -> dict[str, torch.Tensor]:
        """Per layer, True for each component kept at ``rate``."""
        masks = {layer.name: torch.ones(layer.size, dtype=torch.bool) for layer in self.layers}
        for name, index in self.pruned(rate):
            masks[name][index] = False
        return masks

    def achieved_rate(self, rate: float) -> float:
        """The fraction of all components really pruned at ``rate`` (after rounding)."""
        return len(self.pruned(rate)) / self.total


def normalized(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scale each layer's scores to sum to 1 in absolute value (layers of any width compete fairly)."""
    out = {}
    for name, s in scores.items():
        denom = s.abs().sum()
        out[name] = s / denom if denom > 0 else s
    return out


def checked_scores(
    layers: list[PrunableLayer],
    scores: dict[str, torch.Tensor],
    *,
    normalize_per_layer: bool,
    min_keep: int,
) -> tuple[dict[str, torch.Tensor], set[Component]]:
    """``scores`` checked against ``layers`` (normalised if asked) and each layer's top ``min_keep``.

    The protected components never enter a pruning order, so no layer vanishes.
    """
    for layer in layers:
        if layer.name not in scores or scores[layer.name].numel() != layer.size:
            raise InvalidSpecError(f"scores for layer {layer.name} missing or of wrong size")
        if min_keep > layer.size:
            raise InvalidSpecError(f"min_keep={min_keep} exceeds the {layer.size} components of {layer.name}")
    if normalize_per_layer:
        scores = normalized(scores)
    protected: set[Component] = set()
    for layer in layers:
        top = torch.argsort(scores[layer.name].double(), descending=True, stable=True)[:min_keep]
        protected.update((layer.name, int(i)) for i in top)
    return scores, protected


def check_round_to(round_to: int) -> int:
    """``round_to`` if it is a positive integer, else an :class:`InvalidSpecError`."""
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise InvalidSpecError(f"round_to must be a positive integer, got {round_to!r}")
    return round_to


def rank(
    layers: list[PrunableLayer],
    scores: dict[str, torch.Tensor],
    *,
    normalize_per_layer: bool = False,
    min_keep: int = 1,
    round_to: int = 1,
) -> PruneOrder:
    """One ascending global ranking over every component of ``layers``.

    Ties are broken by layer order then index, so the ranking is deterministic.
    ``round_to`` rounds each layer's kept count (see :class:`PruneOrder`).
    """
    scores, protected = checked_scores(
        layers, scores, normalize_per_layer=normalize_per_layer, min_keep=min_keep
    )
    entries = []
    for layer in layers:
        values = scores[layer.name].double().tolist()
        for i, value in enumerate(values):
            if (layer.name, i) not in protected:
                entries.append((value, layer.index, i, layer.name))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    total = sum(layer.size for layer in layers)
    order = tuple((name, i) for _, _, i, name in entries)
    return PruneOrder(tuple(layers), order, total, round_to=check_round_to(round_to))
