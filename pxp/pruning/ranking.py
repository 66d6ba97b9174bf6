"""Global ranking of components and the nested keep-masks it induces."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pxp.components import PrunableLayer
from pxp.errors import InvalidSpecError


@dataclass(frozen=True)
class PruneOrder:
    """Components in the order they are pruned: ``(layer name, index)`` pairs.

    The top ``min_keep`` components of every layer never appear, so no layer
    vanishes. Masks at increasing rates are prefixes of this one order, hence nested.
    """

    layers: tuple[PrunableLayer, ...]
    order: tuple[tuple[str, int], ...]
    total: int

    def count_for_rate(self, rate: float) -> int:
        return min(round(rate * self.total), len(self.order))

    def keep_masks(self, rate: float) -> dict[str, torch.Tensor]:
        masks = {layer.name: torch.ones(layer.size, dtype=torch.bool) for layer in self.layers}
        for name, index in self.order[: self.count_for_rate(rate)]:
            masks[name][index] = False
        return masks

    def achieved_rate(self, rate: float) -> float:
        return self.count_for_rate(rate) / self.total


def normalized(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scale each layer's scores to sum to 1 in absolute value (layers of any width compete fairly)."""
    out = {}
    for name, s in scores.items():
        denom = s.abs().sum()
        out[name] = s / denom if denom > 0 else s
    return out


def rank(
    layers: list[PrunableLayer],
    scores: dict[str, torch.Tensor],
    *,
    normalize_per_layer: bool = False,
    min_keep: int = 1,
) -> PruneOrder:
    """One ascending global ranking over every component of ``layers``.

    Ties are broken by layer order then index, so the ranking is deterministic.
    """
    for layer in layers:
        if layer.name not in scores or scores[layer.name].numel() != layer.size:
            raise InvalidSpecError(f"scores for layer {layer.name} missing or of wrong size")
        if min_keep > layer.size:
            raise InvalidSpecError(f"min_keep={min_keep} exceeds the {layer.size} components of {layer.name}")
    if normalize_per_layer:
        scores = normalized(scores)
    protected: set[tuple[str, int]] = set()
    for layer in layers:
        top = torch.argsort(scores[layer.name].double(), descending=True, stable=True)[:min_keep]
        protected.update((layer.name, int(i)) for i in top)
    entries = []
    for layer in layers:
        values = scores[layer.name].double().tolist()
        for i, value in enumerate(values):
            if (layer.name, i) not in protected:
                entries.append((value, layer.index, i, layer.name))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    total = sum(layer.size for layer in layers)
    return PruneOrder(tuple(layers), tuple((name, i) for _, _, i, name in entries), total)
